"""The legacy architecture: attention over the encoder output, previous frame fed back."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from pydantic import Field

from blocks.base import (
    MAX_FRAMES,
    Block,
    BlockConfig,
    BlockNode,
    BuildEnv,
    Features,
    PlanEnv,
    Request,
    StreamableBlock,
    StreamKind,
)
from blocks.network import ExecutionContext, NetworkSpec, TensorSpec

__all__ = ["AttentionDecoder"]

STEP_INPUTS = ("prev_frame", "memory", "mask", "attention_prev", "attention_cum")
STEP_OUTPUTS = ("frames", "stop_logit", "attention")


class AttentionDecoderConfig(BlockConfig):
    network: str = Field("decoder_step", description="The step network (see AttentionDecoder).")
    memory: str = Field("memory", description="Feature holding the encoder output [1, T, D].")
    window: int = Field(
        64, ge=2, le=MAX_FRAMES, description="Tokens of memory attended at each step (monotonic window)."
    )
    stop_threshold: float = Field(0.5, gt=0, lt=1, description="Stop once sigmoid(stop_logit) exceeds this.")
    max_frames_per_token: float = Field(
        12.0, gt=0, le=1000, description="Length guard: at most this many frames per token."
    )
    max_frames: int = Field(4000, ge=1, le=MAX_FRAMES, description="Length guard: absolute cap on frames per sentence.")
    chunk_frames: int = Field(
        16, ge=1, le=MAX_FRAMES, description="Frames per yielded chunk (rounded up to whole steps)."
    )


class AttentionDecoder(StreamableBlock[AttentionDecoderConfig]):
    """Autoregressive decoding with attention, a stop token and a maximum-length guard.

    The step network is called once per step with ``prev_frame`` ``[1, n_mels]`` (the last frame
    of the previous step, zeros at first), a window of ``memory`` ``[1, W, D]`` with its
    ``mask``, the window's ``attention_prev`` and ``attention_cum`` ``[1, W]``, and any
    recurrent states (every further input, e.g. LSTM states, zeros at first). It returns
    ``frames`` ``[1, r, n_mels]`` (r = reduction factor), ``stop_logit`` ``[1, r]``,
    ``attention`` ``[1, W]`` and the new states under the same names.

    A further input with a token axis (``[1, T, ...]``, e.g. ``keys``: the attention keys of
    every token, computed once per sentence by an encoder network instead of at every step) is a
    per-token feature: read from the features under its own name and windowed like ``memory``.

    The block owns the alignment over the whole text: the window of ``window`` tokens follows
    the attention's focus, so text of any length fits a network compiled for ``window`` tokens
    (static context: padded and masked to ``static_length``). Decoding ends at the first frame
    whose stop probability passes ``stop_threshold``, or at the length guard; the reason is
    reported under ``request.report["AttentionDecoder"]``.
    """

    type_name = "AttentionDecoder"
    aligns = True
    Config = AttentionDecoderConfig

    @classmethod
    def plan(cls, config: AttentionDecoderConfig, env: PlanEnv, children: Sequence[BlockNode] = ()) -> PlanEnv:
        if env.kind is not None:
            raise env.error(
                f'{cls.type_name} starts a stream; it cannot follow a block that produces "{env.kind.value}"'
            )
        env.require_keys([config.memory], cls.type_name)
        spec = env.require_network(config.network, "decoder_step", cls.type_name)
        names = [t.name for t in spec.inputs]
        outs = [t.name for t in spec.outputs]
        if tuple(names[: len(STEP_INPUTS)]) != STEP_INPUTS:
            raise env.error(f'network "{config.network}" must take {", ".join(STEP_INPUTS)} first, takes {names}')
        if tuple(outs[: len(STEP_OUTPUTS)]) != STEP_OUTPUTS:
            raise env.error(f'network "{config.network}" must return {", ".join(STEP_OUTPUTS)} first, returns {outs}')
        tokens = [t.name for t in _per_token(spec)]
        env.require_keys(tokens, f'{cls.type_name} (per-token inputs of network "{config.network}")')
        states_in = [n for n in names[len(STEP_INPUTS) :] if n not in tokens]
        states_out = outs[len(STEP_OUTPUTS) :]
        if states_in != states_out:
            raise env.error(f'network "{config.network}": recurrent states in {states_in} and out {states_out} differ')
        for t in spec.inputs[len(STEP_INPUTS) :]:
            if t.name not in tokens and (t.time_scale is not None or not all(isinstance(d, int) for d in t.shape[1:])):
                raise env.error(f'network "{config.network}": state "{t.name}" must have a fixed shape, has {t.shape}')
        if spec.static_length is not None and spec.static_length < config.window:
            raise env.error(
                f'window {config.window} exceeds network "{config.network}" static_length {spec.static_length}'
            )
        return PlanEnv(env.keys, StreamKind.MEL, env.networks, env.path)

    def __init__(self, config: AttentionDecoderConfig, env: BuildEnv, children: Sequence[Block] = ()) -> None:
        super().__init__(config, env, children)
        self.runner = env.networks(config.network)
        spec = self.runner.spec
        self.n_mels = int(spec.inputs[0].shape[-1])
        self.token_inputs = tuple(t.name for t in _per_token(spec))
        self.state_specs = [t for t in spec.inputs[len(STEP_INPUTS) :] if t.name not in self.token_inputs]
        self.static = env.context is ExecutionContext.STATIC
        if self.static and spec.static_length is None:
            raise ValueError(f'network "{config.network}" has no static_length for the static context')

    def stream(
        self, source: Iterator[torch.Tensor] | None, features: Features, request: Request
    ) -> Iterator[torch.Tensor]:
        cfg = self.config
        memory = features[cfg.memory]
        tokens = int(memory.shape[1])
        per_token = {name: features[name] for name in self.token_inputs}
        for name, x in per_token.items():
            if x.dim() < 2 or x.shape[1] != tokens:
                raise ValueError(
                    f'per-token feature "{name}" has shape {list(x.shape)}; {cfg.memory} has {tokens} tokens'
                )
        width = min(cfg.window, tokens)
        size = self.runner.spec.static_length if self.static else width
        assert size is not None
        guard = min(cfg.max_frames, math.ceil(cfg.max_frames_per_token * tokens))
        # sigmoid(logit) > threshold as the network's float32 compares it, on plain floats
        stop_above = float(torch.tensor(cfg.stop_threshold, dtype=torch.float32))
        whole = width == tokens == size  # the window is the whole text: nothing to slice or pad
        prev_att, cum_att = torch.zeros(1, tokens), torch.zeros(1, tokens)
        mask = torch.zeros(1, size)
        mask[:, :width] = 1.0
        inputs: dict[str, torch.Tensor] = {
            "prev_frame": torch.zeros(1, self.n_mels),
            "memory": memory,
            "mask": mask,
            **per_token,
            **{t.name: torch.zeros(1, *[int(d) for d in t.shape[1:]]) for t in self.state_specs},
        }
        states = [t.name for t in self.state_specs]
        focus, produced, reason, pending, aligned, held = 0, 0, "length_guard", [], [], 0
        heard = -1  # the focus of the previous step's frames (-1: none yet)
        start = 0
        while produced < guard:
            if whole:
                inputs["attention_prev"], inputs["attention_cum"] = prev_att, cum_att
            else:
                start = max(0, min(focus - width // 4, tokens - width))
                window = _Window(start, width, size)
                inputs["memory"] = window(memory)
                inputs["attention_prev"], inputs["attention_cum"] = window(prev_att), window(cum_att)
                inputs.update({name: window(x) for name, x in per_token.items()})
            out = self.runner.call(inputs)
            if whole:  # the attention as it came
                att = prev_att = out["attention"]
            else:
                att = out["attention"][:, :width]
                prev_att = torch.zeros(1, tokens)
                prev_att[:, start : start + width] = att
            cum_att = cum_att + prev_att
            focus = start + int(torch.argmax(att))
            inputs.update({name: out[name] for name in states})
            frames = out["frames"]
            n = int(frames.shape[1])
            for i, p in enumerate(torch.sigmoid(out["stop_logit"][0]).tolist()):
                if p > stop_above:
                    n, reason = i + 1, "stop_token"
                    break
            n = min(n, guard - produced)
            if n < frames.shape[1]:
                frames = frames[:, :n]
            aligned += self._step_tokens(n, heard, focus)
            heard = focus
            produced += n
            inputs["prev_frame"] = frames[:, -1]
            pending.append(frames)
            held += n
            if reason == "stop_token" or held >= cfg.chunk_frames:
                request.align(torch.tensor(aligned, dtype=torch.int64))
                yield torch.cat(pending, dim=1)
                pending, aligned, held = [], [], 0
            if reason == "stop_token":
                break
        if pending:
            request.align(torch.tensor(aligned, dtype=torch.int64))
            yield torch.cat(pending, dim=1)
        request.log(self.type_name, {"stop": reason, "frames": produced, "tokens": tokens, "final_focus": focus})

    @staticmethod
    def _step_tokens(n: int, previous: int, focus: int) -> list[int]:
        """The input token of each of a step's ``n`` frames.

        Where the focus stayed (or this is the first step), all are the focus. Where it moved on
        from ``previous`` to ``focus`` during the step, the step's frames sweep the tokens between
        at an even pace: frame ``i`` is at ``previous + (focus - previous) * (i + a) / n``, rounded
        half up and at most ``focus``, with ``a = max(0.5, (n - 2) / 2)``. One token on, the
        step's first frame stays with the previous token and the rest go to the new one: measured
        against the teacher's word timing, the move lands about one frame into a step whether it
        has 3 frames or 5 (half the step, or the step's start, were a frame or more off). Several
        tokens on (short phonemes, a large reduction factor), each token passed over gets its
        share instead of none, so no word goes unheard. A move back gives the first half to the
        previous token.
        """
        if previous < 0 or previous == focus:
            return [focus] * n
        if focus < previous:
            return [previous] * (n // 2) + [focus] * (n - n // 2)
        a = max(0.5, (n - 2) / 2)
        return [min(focus, math.floor(previous + (focus - previous) * (i + a) / n + 0.5)) for i in range(n)]


@dataclass(frozen=True)
class _Window:
    """A step's view of a per-token tensor ``[1, T, ...]``: ``width`` tokens from ``start``,
    zero-padded to the network's ``size``."""

    start: int
    width: int
    size: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        part = x[:, self.start : self.start + self.width]
        if self.size == self.width:
            return part
        pad = torch.zeros((1, self.size - self.width, *part.shape[2:]), dtype=part.dtype)
        return torch.cat([part, pad], dim=1)


def _per_token(spec: NetworkSpec) -> list[TensorSpec]:
    """The step network's per-token inputs: those after :data:`STEP_INPUTS` with a token axis
    ``[B, T, ...]`` (the axis ``memory`` has)."""
    memory = spec.inputs[STEP_INPUTS.index("memory")].shape  # plan() checked the inputs' order
    axis = memory[1] if len(memory) > 1 else None
    return [t for t in spec.inputs[len(STEP_INPUTS) :] if axis is not None and len(t.shape) >= 2 and t.shape[1] == axis]
