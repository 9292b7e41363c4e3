"""ONNX networks: read with the same trust rules as ``.pt2`` files, run by ONNX Runtime.

An ONNX file is a protobuf: parsing it runs nothing. What could reach outside the addon is
refused before a session is made, with one line that names the file and the reason:

- operators outside the standard domain (custom operators are native code a runtime would load)
  and model-local functions (a way to define such domains);
- tensors whose data lives in external files outside the addon directory, or missing, or
  shorter than the tensor says (ONNX Runtime would read them as they are);
- files, and external data, larger than :data:`addons.formats.netfile.MAX_NETWORK_BYTES`;
- a graph whose inputs and outputs differ from the signature the manifest declares.

A session is made once per network per process (:func:`session`), with explicit options: the
intra-op threads follow torch's (which Chorus sets from the replica's CPU share), graph
optimizations on, the CUDA provider where the device is a GPU and the runtime has one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from addons.formats.netfile import MAX_NETWORK_BYTES, NetworkFileError
from blocks import NetworkSpec

__all__ = ["STANDARD_DOMAINS", "OnnxModule", "check_onnx", "load_onnx", "read_onnx", "session"]

#: Operator domains a network may use: the standard ONNX operators only.
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
_DTYPES = {"float32": 1, "int64": 7}  # TensorProto element types of the dtypes a spec may name


def read_onnx(path: Path, directory: Path | None = None) -> Any:
    """Parse and check one ONNX file (see the module doc); its external data is checked, not read."""
    import onnx

    size = path.stat().st_size
    if size > MAX_NETWORK_BYTES:
        raise NetworkFileError(f"is {size} bytes, more than the {MAX_NETWORK_BYTES} a network may have")
    try:
        model = onnx.load_model_from_string(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends: a truncated or foreign file
        raise NetworkFileError(f"is not a valid ONNX model ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise NetworkFileError("is not a valid ONNX model (it has no graph)")
    _check_domains(model)
    _check_external(model, (directory or path.parent).resolve())
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise NetworkFileError(f"is not a valid ONNX model ({str(exc).splitlines()[0][:200]})") from None
    return model


def _graphs(graph: Any) -> Iterator[Any]:
    """A graph and every subgraph inside it (If, Loop, Scan bodies)."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _check_domains(model: Any) -> None:
    if model.functions:
        raise NetworkFileError(f"defines model-local functions ({model.functions[0].name!r}), which Chorus refuses")
    for opset in model.opset_import:
        if opset.domain not in STANDARD_DOMAINS:
            raise NetworkFileError(f"imports the custom operator domain {opset.domain!r} (only standard ONNX is run)")
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS:
                raise NetworkFileError(
                    f"node {node.name or node.op_type!r} is the custom operator {node.domain}.{node.op_type} "
                    "(only standard ONNX is run)"
                )


def _check_external(model: Any, root: Path) -> None:
    import onnx

    total = 0
    for graph in _graphs(model.graph):
        for tensor in [*graph.initializer, *(s.values for s in graph.sparse_initializer)]:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in tensor.external_data}
            where = info.get("location", "")
            target = (root / where).resolve()
            if not where or Path(where).is_absolute() or not target.is_relative_to(root):
                raise NetworkFileError(f"tensor {tensor.name!r} keeps its data outside the addon directory ({where!r})")
            if not target.is_file():
                raise NetworkFileError(f"tensor {tensor.name!r} keeps its data in {where!r}, which is missing")
            offset, length = int(info.get("offset", 0)), int(info.get("length", 0) or target.stat().st_size)
            if offset < 0 or length < 0 or offset + length > target.stat().st_size:
                raise NetworkFileError(f"tensor {tensor.name!r} reads past the end of {where!r}")
            total += length
    if total > MAX_NETWORK_BYTES:
        raise NetworkFileError(f"has {total} bytes of external data, more than the {MAX_NETWORK_BYTES} allowed")


def check_onnx(model: Any, spec: NetworkSpec) -> None:
    """Refuse a graph whose inputs and outputs are not the ones ``spec`` declares (names, dtypes, ranks)."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    for what, declared, actual in (("inputs", spec.inputs, inputs), ("outputs", spec.outputs, graph.output)):
        have = {v.name: v for v in actual}
        names = [t.name for t in declared]
        if sorted(names) != sorted(have):
            raise NetworkFileError(f"has {what} {sorted(have)}, the manifest declares {sorted(names)}")
        for t in declared:
            kind = have[t.name].type.tensor_type
            if kind.elem_type != _DTYPES[t.dtype]:
                raise NetworkFileError(f"{what[:-1]} {t.name!r} is not {t.dtype} as the manifest declares")
            if kind.HasField("shape") and len(kind.shape.dim) != len(t.shape):
                raise NetworkFileError(
                    f"{what[:-1]} {t.name!r} has {len(kind.shape.dim)} dimensions, the manifest declares {len(t.shape)}"
                )


_shared_arena = False


def share_cpu_arena() -> None:
    """Let every ONNX Runtime session this process creates from now on allocate from one shared CPU
    arena, rather than each growing its own: a replica holding many voices of one family then holds
    one working set, not one per voice (each session's arena keeps the high-water mark of its
    largest batch)."""
    global _shared_arena
    if _shared_arena:
        return
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
    _shared_arena = True


def session(model: Any, device: torch.device | str = "cpu", path: Path | None = None) -> Any:
    """An ONNX Runtime session for a checked ``model`` on ``device`` (``path``: where its external data is)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads()
    options.inter_op_num_threads = 1
    # Threads that spin while waiting steal the cores other replicas and streams compute on.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if _shared_arena:
        options.add_session_config_entry("session.use_env_allocators", "1")
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        index = torch.device(device).index or 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]  # type: ignore[list-item]
    has_external = any(_external(model))
    source = str(path) if has_external and path is not None else model.SerializeToString()
    return ort.InferenceSession(source, sess_options=options, providers=providers)


def _threads() -> int:
    """Intra-op threads of a session: ``CHORUS_ORT_THREADS``, else torch's (which Chorus sets from
    the process's CPU share; a Serve replica has 1)."""
    value = os.environ.get("CHORUS_ORT_THREADS", "")
    return max(1, int(value)) if value.isdigit() else max(1, torch.get_num_threads())


def _external(model: Any) -> Iterator[bool]:
    import onnx

    for graph in _graphs(model.graph):
        for tensor in graph.initializer:
            yield tensor.data_location == onnx.TensorProto.EXTERNAL


class OnnxModule:
    """An ONNX Runtime session called like a network module: torch tensors in (in the spec's input
    order), a tuple of torch tensors out (in its output order). ``session.run`` is thread-safe."""

    def __init__(self, sess: Any, spec: NetworkSpec) -> None:
        self.session = sess
        self.inputs = [t.name for t in spec.inputs]
        self.outputs = [t.name for t in spec.outputs]

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = {name: np.ascontiguousarray(a.detach().cpu().numpy()) for name, a in zip(self.inputs, args, strict=True)}
        return tuple(torch.from_numpy(np.asarray(o)) for o in self.session.run(self.outputs, feed))


def load_onnx(path: Path, spec: NetworkSpec, directory: Path | None, device: torch.device | str) -> OnnxModule:
    """Read, check and open one ONNX network of an addon (raises ``NetworkFileError``)."""
    model = read_onnx(path, directory)
    check_onnx(model, spec)
    return OnnxModule(session(model, device, path), spec)
