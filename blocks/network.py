"""Exported networks and how they are run in the two execution contexts.

A network is an ``ExportedProgram`` (``.pt2``) whose signature the addon declares. Every tensor
with a sequence axis has it at axis 1, named ``"T"`` in the declared shape (``"T*256"`` for an
output that has 256 samples per input frame); axis 0 is the batch ``"B"``. An input named
``mask`` (``[B, T]``, 1.0 on real positions) is never a feature: the runner supplies it.

Contexts
--------
- ``dynamic``: tensors of any length go in as they are (GPUs, CPUs).
- ``static``: each network has a fixed ``static_length`` (as compiled for AWS Inferentia).
  The runner splits longer inputs into overlapping windows of exactly that length, pads the
  last one, and keeps only each window's centre. A network with ``receptive_field = R`` frames
  on each side gives, for window centres of ``static_length - 2R`` frames, the same output as
  the whole sequence would: padding is masked, and masked networks treat it as the sequence
  edge. Static and dynamic outputs therefore agree to float rounding.
"""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from blocks.batching import BatchQueue, default_lanes, stack_call

__all__ = [
    "FORMATS",
    "FREE_LENGTH",
    "MAX_FRAMES",
    "ExecutionContext",
    "NetworkError",
    "NetworkRunner",
    "NetworkSpec",
    "TensorSpec",
    "WindowState",
    "WindowedStream",
]

#: The longest sequence, in frames, that a size in a block config or a network's static_length may
#: name (networks exported by addons.formats.export accept up to this many); larger values are refused.
MAX_FRAMES = 65536

_TIME = re.compile(r"^T(?:\*(\d+))?$")
#: A sequence axis whose length the network decides (e.g. frames after its own durations): never
#: windowed or padded by the runner.
FREE_LENGTH = "F"
#: Network file formats by extension, and the runtime that runs each.
FORMATS = {".pt2": "torch.export", ".onnx": "onnx"}
_DTYPES = {"float32": torch.float32, "int64": torch.int64}


class NetworkError(RuntimeError):
    """An addon's network failed when called (wrong file, bad graph, shapes it cannot take)."""


class ExecutionContext(str, enum.Enum):
    DYNAMIC = "dynamic"
    STATIC = "static"


class TensorSpec(BaseModel):
    """One input or output of a network."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Feature name (or 'mask' for the runner's mask).")
    dtype: str = Field("float32", description="float32 or int64.")
    shape: tuple[int | str, ...] = Field(
        description='Dimensions: integers, "B" (batch, axis 0), "T" or "T*k" (sequence, axis 1), '
        '"F" (a length the network decides, axis 1).'
    )

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in _DTYPES:
            raise ValueError(f'unsupported dtype "{v}" (known: {", ".join(_DTYPES)})')
        return v

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: tuple[int | str, ...]) -> tuple[int | str, ...]:
        for i, d in enumerate(v):
            if (
                isinstance(d, str)
                and not (d == "B" and i == 0)
                and not ((_TIME.match(d) or d == FREE_LENGTH) and i == 1)
            ):
                raise ValueError(f'dimension {i} is "{d}": only "B" at axis 0 and "T"/"T*k"/"F" at axis 1 are symbolic')
            if isinstance(d, int) and d <= 0:
                raise ValueError(f"dimension {i} must be positive, got {d}")
        return v

    @property
    def time_scale(self) -> int | None:
        """Samples (or steps) per input frame along axis 1, or None without a sequence axis."""
        if len(self.shape) < 2 or not isinstance(self.shape[1], str) or self.shape[1] == FREE_LENGTH:
            return None
        m = _TIME.match(self.shape[1])
        assert m is not None
        return int(m.group(1) or 1)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


class NetworkSpec(BaseModel):
    """An exported network of an addon: its file, signature and how it may be chunked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field(description="The network's file in the addon directory: .pt2 (torch.export) or .onnx (ONNX).")
    format: Literal["torch.export", "onnx"] | None = Field(
        None, description="Its format, which picks the runtime; null: from the file's extension."
    )
    role: str = Field(description="encoder, decoder, decoder_step or vocoder.")
    inputs: tuple[TensorSpec, ...] = Field(min_length=1, description="Inputs, in call order.")
    outputs: tuple[TensorSpec, ...] = Field(min_length=1, description="Outputs, in return order.")
    receptive_field: int | None = Field(
        None, ge=0, le=MAX_FRAMES, description="Frames of context each output needs on each side; null if unbounded."
    )
    static_length: int | None = Field(
        None, gt=0, le=MAX_FRAMES, description="Sequence length the network is compiled for in the static context."
    )

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        roles = ("encoder", "decoder", "decoder_step", "vocoder")
        if v not in roles:
            raise ValueError(f'unknown role "{v}" (known: {", ".join(roles)})')
        return v

    @field_validator("file")
    @classmethod
    def _file(cls, v: str) -> str:
        if not v.endswith(tuple(FORMATS)) or "/" in v or "\\" in v or v.startswith("."):
            raise ValueError(
                f'"{v}" must be a plain file name ending in {" or ".join(FORMATS)} inside the addon directory'
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> NetworkSpec:
        by_extension = FORMATS[next(ext for ext in FORMATS if self.file.endswith(ext))]
        if self.format is not None and self.format != by_extension:
            raise ValueError(f'format "{self.format}" does not match the file {self.file} ({by_extension})')
        names = [t.name for t in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError("input names must be unique")
        rf, length = self.receptive_field, self.static_length
        if rf is not None and length is not None and length <= 2 * rf:
            raise ValueError(
                f"static_length {length} leaves no room for a window centre with "
                f"receptive_field {rf} on each side (needs > {2 * rf})"
            )
        return self

    @property
    def runtime(self) -> str:
        """The format that picks the runtime: ``torch.export`` or ``onnx``."""
        return self.format or FORMATS[next(ext for ext in FORMATS if self.file.endswith(ext))]

    @property
    def feature_inputs(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs if t.name != "mask")

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def takes_mask(self) -> bool:
        return any(t.name == "mask" for t in self.inputs)


class LazyModule:
    """A module built on its first call (thread-safe): a process that never runs a network (a
    replica serving another stage) never holds its weights."""

    def __init__(self, build: Callable[[], Callable[..., object]]) -> None:
        self._build: Callable[[], Callable[..., object]] | None = build
        self._module: Callable[..., object] | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._module is not None

    def load(self) -> Callable[..., object]:
        if self._module is None:
            with self._lock:
                if self._module is None:
                    assert self._build is not None
                    self._module, self._build = self._build(), None
        return self._module

    def __call__(self, *args: torch.Tensor) -> object:
        return self.load()(*args)


_BATCHING_LOCK = threading.Lock()


@dataclass
class NetworkRunner:
    """Calls one exported network in the configured context, on the configured device."""

    name: str
    spec: NetworkSpec
    module: Callable[..., object]
    context: ExecutionContext = ExecutionContext.DYNAMIC
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_queue: BatchQueue[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]] | None = None
    #: > 0: turn batching on (up to this many) at the first call, see :meth:`batch_when_used`
    batching_wanted: int = 0
    #: Answers of the batching probe shared by networks of one shape (a voice family's members):
    #: the first runner of a name and signature probes, the others read its answer.
    probes: dict[str, bool] | None = None

    @property
    def loaded(self) -> bool:
        """Whether the network's weights are in memory (a :class:`LazyModule` not yet called: no)."""
        return not isinstance(self.module, LazyModule) or self.module.loaded

    def load(self) -> None:
        """Read the weights now (and decide batching), rather than at the first call: a server
        warms its own stage up before its first request."""
        if isinstance(self.module, LazyModule):
            self.module.load()
        with _BATCHING_LOCK:
            if self.batching_wanted:
                self.enable_batching(self.batching_wanted)  # settles batching_wanted

    def batch_when_used(self, max_batch: int = 32) -> None:
        """:meth:`enable_batching` at the first call: its probe runs the network, which would
        otherwise load it in a process that may never use it."""
        self.batching_wanted = max_batch

    # -- plain calls -------------------------------------------------------------------------
    def call(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One forward pass on exactly these tensors (``mask`` included if the network takes it)."""
        if self.batching_wanted:
            with _BATCHING_LOCK:
                if self.batching_wanted:
                    self.enable_batching(self.batching_wanted)  # settles batching_wanted
        args = []
        device = self.device
        for t in self.spec.inputs:
            x = inputs.get(t.name)
            if x is None:
                raise KeyError(f"network {self.name!r} needs input {t.name!r}")
            dtype = t.torch_dtype
            args.append(x if x.dtype == dtype and x.device == device else x.to(device, dtype))
        try:
            if self.batch_queue is not None and all(a.shape[0] == 1 for a in args):
                outs = self.batch_queue(tuple(args))
            else:
                outs = self._forward(*args)
        except Exception as exc:  # the addon's network, not Chorus: say which one, keep the cause
            shapes = ", ".join(f"{t.name} {list(a.shape)}" for t, a in zip(self.spec.inputs, args, strict=True))
            raise NetworkError(f"network {self.name!r} failed on {shapes}: {type(exc).__name__}: {exc}") from exc
        if device.type == "cpu":  # already plain CPU tensors (run under inference_mode: nothing to detach)
            return {t.name: o for t, o in zip(self.spec.outputs, outs, strict=True)}
        return {t.name: o.detach().to("cpu") for t, o in zip(self.spec.outputs, outs, strict=True)}

    def _forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            out = self.module(*args)
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        if len(outs) != len(self.spec.outputs):
            raise NetworkError(
                f"network {self.name!r} returned {len(outs)} outputs, its signature declares {len(self.spec.outputs)}"
            )
        return outs  # type: ignore[return-value]

    def enable_batching(self, max_batch: int = 32) -> bool:
        """Share forward passes between streams calling at once (see :mod:`blocks.batching`).

        Only where every input and output has the batch on axis 0, not in the static context
        (networks compiled for fixed sizes are compiled for batch 1), and only if a probe shows
        that this network's batched results equal its one-by-one results to the bit on this
        machine: kernels may sum in another order for another batch size, and a vocoder such as
        Griffin-Lim can turn such rounding into audible differences. Returns whether on.
        """
        self.batching_wanted = 0  # decided now, not again at the first call
        batched = all(t.shape[0] == "B" for t in (*self.spec.inputs, *self.spec.outputs))
        if self.context is ExecutionContext.STATIC or not batched or not self._probed_exact():
            return False
        lanes = default_lanes(self.device)
        self.batch_queue = BatchQueue(lambda items: stack_call(self._forward, items), _shapes, max_batch, lanes)
        return True

    def _probed_exact(self) -> bool:
        if self.probes is None:
            return self._batch_exact()
        key = f"{self.name}:{self.device}:" + ";".join(
            f"{t.name}{t.shape}{t.dtype}" for t in (*self.spec.inputs, *self.spec.outputs)
        )
        if key not in self.probes:
            self.probes[key] = self._batch_exact()
        return self.probes[key]

    def _batch_exact(self, lengths: tuple[int, ...] = (23, 96), sizes: tuple[int, ...] = (2, 3, 8)) -> bool:
        gen = torch.Generator().manual_seed(0)
        for length in lengths:
            items = [self._probe_inputs(length, gen) for _ in range(max(sizes))]
            single = [self._forward(*item) for item in items]
            for size in sizes:
                for got, want in zip(stack_call(self._forward, items[:size]), single, strict=False):
                    if not all(torch.equal(g, w) for g, w in zip(got, want, strict=True)):
                        return False
        return True

    def _probe_inputs(self, length: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        args = []
        for t in self.spec.inputs:
            shape = [1 if d == "B" else length * (t.time_scale or 1) if isinstance(d, str) else d for d in t.shape]
            if t.name == "mask":
                args.append(torch.ones(shape))
            elif t.dtype == "int64":
                args.append(torch.randint(1, 3, shape, generator=gen))
            else:
                args.append(torch.randn(shape, generator=gen))
        return tuple(a.to(self.device) for a in args)

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Whole-sequence call: as is in the dynamic context; windowed and padded in the static one."""
        length = self._length(inputs)
        if self.context is ExecutionContext.DYNAMIC or self.spec.static_length is None:
            return self.call(self._with_mask(inputs, length))
        if self.spec.receptive_field is None:
            return self._run_padded(inputs, length, self.spec.static_length)
        stream = self.windowed()
        parts = stream.push(inputs) + stream.finish()
        return _concat_outputs(parts, self.spec)

    def windowed(
        self, chunk: int = 64, state: WindowState | None = None, max_chunk: int | None = None
    ) -> WindowedStream:
        """A push-style runner for sequences that arrive in pieces (see :class:`WindowedStream`).

        ``chunk`` is the output granularity in the dynamic context, doubling after each window
        up to ``max_chunk`` if given (a quick first piece, then fewer, cheaper ones); the static
        context uses windows of exactly ``static_length`` frames instead.
        """
        if self.spec.receptive_field is None:
            raise ValueError(f"network {self.name!r} declares no receptive_field, so it cannot be chunked")
        if self.context is ExecutionContext.STATIC:
            if self.spec.static_length is None:
                raise ValueError(f"network {self.name!r} has no static_length for the static context")
            return WindowedStream(self, self.spec.static_length - 2 * self.spec.receptive_field, True, state)
        return WindowedStream(self, chunk, False, state, max_chunk)

    def _run_padded(self, inputs: Mapping[str, torch.Tensor], length: int, size: int) -> dict[str, torch.Tensor]:
        """Static context for a network whose context is unbounded: one padded call, no splitting."""
        if length > size:
            raise ValueError(
                f"network {self.name!r} sees the whole sequence (no receptive_field), so it cannot be split; "
                f"{length} frames exceed its static_length {size}"
            )
        seq = {t.name for t in self._time_inputs()}
        padded = {k: _pad_axis1(v, size) if k in seq else v for k, v in inputs.items()}
        out = self.call(self._with_mask(padded, size, valid=length))
        return {t.name: out[t.name][:, : length * s] if (s := t.time_scale) else out[t.name] for t in self.spec.outputs}

    # -- helpers -----------------------------------------------------------------------------
    def _time_inputs(self) -> list[TensorSpec]:
        return [t for t in self.spec.inputs if t.time_scale is not None and t.name != "mask"]

    def _length(self, inputs: Mapping[str, torch.Tensor]) -> int:
        time_inputs = self._time_inputs()
        if not time_inputs:
            raise ValueError(f"network {self.name!r} has no sequence input")
        return int(inputs[time_inputs[0].name].shape[1])

    def _with_mask(
        self, inputs: Mapping[str, torch.Tensor], length: int, valid: int | None = None
    ) -> dict[str, torch.Tensor]:
        full = dict(inputs)
        if self.spec.takes_mask and "mask" not in full:
            batch = next(iter(inputs.values())).shape[0]
            mask = torch.zeros(batch, length)
            mask[:, : length if valid is None else valid] = 1.0
            full["mask"] = mask
        return full


def _shapes(args: tuple[torch.Tensor, ...]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(a.shape) for a in args)


def _concat_outputs(parts: list[dict[str, torch.Tensor]], spec: NetworkSpec) -> dict[str, torch.Tensor]:
    if not parts:
        raise ValueError("empty input sequence")
    return {t.name: torch.cat([p[t.name] for p in parts], dim=1) for t in spec.outputs if t.time_scale is not None}


@dataclass
class WindowState:
    """Where a :class:`WindowedStream` stands; plain tensors and ints, so it can be pickled."""

    buffer: dict[str, torch.Tensor] = field(default_factory=dict)
    static: dict[str, torch.Tensor] = field(default_factory=dict)
    offset: int = 0  # absolute index of buffer frame 0
    emitted: int = 0  # absolute index of the next output frame
    total: int = 0  # frames received so far
    windows: int = 0  # windows run so far (a growing schedule doubles the centre each time)


class WindowedStream:
    """Runs a network with a finite receptive field over a sequence that arrives in pieces.

    ``push(inputs)`` appends frames (every sequence input sliced alike, axis 1) and returns the
    outputs that are now final; ``finish()`` returns the rest. Each emitted output frame was
    computed with ``receptive_field`` real (or edge-masked) frames on both sides, so the
    concatenated outputs equal one whole-sequence call. Outputs come in pieces of ``centre``
    frames (the last may be shorter). With ``fixed=True`` every call gets exactly
    ``centre + 2 * receptive_field`` frames, padded and masked at the end.
    """

    def __init__(
        self,
        runner: NetworkRunner,
        centre: int,
        fixed: bool,
        state: WindowState | None = None,
        max_centre: int | None = None,
    ) -> None:
        if centre < 1:
            raise ValueError("window centre must be at least one frame")
        self.runner = runner
        self.first_centre, self.max_centre = centre, max(centre, max_centre or centre)
        self.fixed = fixed
        self.context = runner.spec.receptive_field or 0
        self.state = state if state is not None else WindowState()
        self._seq = {t.name for t in runner._time_inputs()}

    @property
    def centre(self) -> int:
        """Output frames of the next window: the first size, doubled per window run, up to the most."""
        return min(self.first_centre << min(self.state.windows, 16), self.max_centre)

    def push(self, inputs: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        st = self.state
        missing = self._seq - set(inputs)
        if missing:
            raise KeyError(f"network {self.runner.name!r} needs sequence inputs {sorted(missing)}")
        for name, value in inputs.items():
            if name in self._seq:
                prev = st.buffer.get(name)
                st.buffer[name] = value if prev is None else torch.cat([prev, value], dim=1)
            else:
                st.static[name] = value
        st.total += int(inputs[next(iter(self._seq))].shape[1])
        return self._drain(final=False)

    def finish(self) -> list[dict[str, torch.Tensor]]:
        return self._drain(final=True)

    def _drain(self, final: bool) -> list[dict[str, torch.Tensor]]:
        st = self.state
        outs = []
        while st.emitted < st.total:
            end = min(st.emitted + self.centre, st.total)
            if not final and (end + self.context > st.total or end - st.emitted < self.centre):
                break  # wait for a whole chunk and its right context
            outs.append(self._run_window(st.emitted, end))
            st.emitted = end
            st.windows += 1
            self._trim()
        return outs

    def _run_window(self, start: int, end: int) -> dict[str, torch.Tensor]:
        st = self.state
        lo = max(0, start - self.context)
        hi = min(st.total, end + self.context)
        window = {k: v[:, lo - st.offset : hi - st.offset] for k, v in st.buffer.items()}
        length = hi - lo
        if self.fixed:
            length = self.centre + 2 * self.context
            window = {k: _pad_axis1(v, length) for k, v in window.items()}
        window.update(st.static)
        out = self.runner.call(self.runner._with_mask(window, length, valid=hi - lo))
        result = {}
        for t in self.runner.spec.outputs:
            scale = t.time_scale
            if scale is not None:
                result[t.name] = out[t.name][:, (start - lo) * scale : (end - lo) * scale]
        return result

    def _trim(self) -> None:
        st = self.state
        keep_from = max(0, st.emitted - self.context)
        drop = keep_from - st.offset
        if drop > 0:
            st.buffer = {k: v[:, drop:] for k, v in st.buffer.items()}
            st.offset = keep_from


def _pad_axis1(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[1] >= size:
        return x
    pad = torch.zeros((x.shape[0], size - x.shape[1], *x.shape[2:]), dtype=x.dtype)
    return torch.cat([x, pad], dim=1)
