"""Reading an addon's network files without running anything that comes from them.

A network file is a ``torch.export`` archive (``.pt2``, a zip). ``torch.export.load`` is not safe
for files from third parties: it unpickles weights and constants marked ``use_pickle``, custom and
opaque objects and the sample inputs with ``weights_only=False``, evaluates the graph's symbolic
shape expressions with ``sympy.sympify`` (Python ``eval``), and resolves each node's call target
by attribute path from ``torch`` (``torch.os.system`` is such a path). Any of these runs code
chosen by whoever wrote the file.

Chorus never calls ``torch.export.load`` on an addon's files. :func:`load_program` reads the
archive itself and refuses it, naming the member and the reason, unless:

- every member is one that a plain ``torch.export.save`` of one program writes, under one root,
  and the archive is of a sane size;
- weights and constants are raw tensor bytes described by JSON (no pickled payloads, no custom or
  opaque objects), of an allowed dtype, with sizes that fit their bytes;
- the graph's call targets are ATen operators or the few shape-arithmetic builtins, it has no
  subgraphs (higher-order operators), and every symbolic expression is arithmetic over shape
  symbols;
- the sample-inputs member (a pickle Chorus never unpickles) names only tensor-rebuilding
  globals, checked by reading its opcodes without executing them.

Only then is the program rebuilt, from the checked JSON and tensors made from the raw bytes, and
its inputs and outputs compared with the signature the manifest declares.

Rebuilding is the slow part (torch parses every symbolic shape of the graph). A process that loads
the same bytes again (voices sharing a vocoder, ``addon validate`` then synthesis, a reload) gets a
copy of the program it rebuilt before: programs are cached by the SHA-256 of the file's bytes, up
to ``$CHORUS_NETWORK_CACHE_MB`` of weights (default 64, 0 turns it off); each caller gets its own
deep copy, so nothing one caller does to its program reaches another.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import io
import json
import os
import pickletools
import re
import threading
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from addons.formats.manifest import AddonError
from blocks import NetworkSpec

__all__ = [
    "MAX_NETWORK_BYTES",
    "NetworkFileError",
    "check_expression",
    "check_inside",
    "check_signature",
    "executable",
    "load_program",
    "max_length",
    "runnable",
    "traced",
]

MAX_NETWORK_BYTES = 2 << 30  # one network file, and the sum of its members, at most 2 GiB
_MAX_JSON_BYTES = 64 << 20
_MAX_EXPR_CHARS = 4096

_FIXED_MEMBERS = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    "models/model.json",
    "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json",
    "data/sample_inputs/model.pt",
}
_WEIGHT = re.compile(r"^data/weights/(weight_\d+)$")
_CONSTANT = re.compile(r"^data/constants/(tensor_\d+)$")

_DTYPES: dict[int, torch.dtype] = {}  # serialized ScalarType -> torch dtype, filled lazily

_ATEN_TARGET = re.compile(r"^torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+$")
_BLOCKED_ATEN = re.compile(r"^torch\.ops\.aten\.(from_file|_?[A-Za-z0-9_]*file[A-Za-z0-9_]*)\.")
_SYMBOLIC_TARGETS = frozenset(
    [f"_operator.{op}" for op in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow")]
    + [f"_operator.{op}" for op in ("eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_")]
    + [f"torch.{op}" for op in ("sym_max", "sym_min", "sym_not", "sym_float", "sym_int", "sym_sqrt", "sym_ite")]
    + [f"math.{op}" for op in ("ceil", "floor", "trunc")]
)
_SYMBOL = re.compile(r"^[a-z]{1,8}\d+$")
_EXPR_FUNCTIONS = frozenset(
    {"Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "floor", "ceiling"}
    | {"FloorDiv", "CeilDiv", "Mod", "PythonMod", "CleanDiv", "IntTrueDiv", "FloatTrueDiv", "TruncToInt"}
    | {"TruncToFloat", "ToFloat", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "True", "False"}
)
_EXPR_ASSUMPTIONS = frozenset({"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite"})
_EXPR_NODES = (
    ast.Expression,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.keyword,
    ast.BinOp,
    ast.UnaryOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.USub,
    ast.UAdd,
)
# What torch.save writes for a tuple of tensors: the only globals a sample-inputs pickle may name.
_PICKLE_GLOBALS = frozenset(
    {"torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_parameter", "collections OrderedDict"}
    | {f"torch {k}Storage" for k in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char")}
    | {"torch ByteStorage", "torch BoolStorage"}
)
_PICKLE_REFUSED_OPS = frozenset({"STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"})


class NetworkFileError(AddonError):
    """A network file that Chorus refuses to load; the message names the member and the reason."""


def check_inside(path: Path, directory: Path) -> Path:
    """``path`` resolved (links followed); refused unless it is a regular file inside ``directory``."""
    resolved = path.resolve()
    root = directory.resolve()
    if not resolved.is_relative_to(root):
        raise NetworkFileError(f"resolves outside the addon directory (to {resolved})")
    if not resolved.is_file():
        raise NetworkFileError("is not a regular file")
    return resolved


def load_program(path: Path, spec: NetworkSpec, directory: Path | None = None) -> torch.export.ExportedProgram:
    """The checked program of one network file (see the module docstring); raise NetworkFileError."""
    resolved = check_inside(path, directory) if directory is not None else path
    size = resolved.stat().st_size
    if size > MAX_NETWORK_BYTES:
        raise NetworkFileError(f"is {size} bytes, more than the {MAX_NETWORK_BYTES} a network file may have")
    data = resolved.read_bytes()  # read once: what is checked is what is loaded
    digest = hashlib.sha256(data).digest()
    program = _CACHE.get(digest)
    if program is None:
        program = _check_and_rebuild(data)
        _CACHE.put(digest, program)
    check_signature(program, spec)
    return program


def _check_and_rebuild(data: bytes) -> Any:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise NetworkFileError("is not a torch.export archive (.pt2 is a zip; this file is not one)") from None
    with archive:
        members = _members(archive)
        _check_header(members)
        _check_sample_inputs(members)
        doc = _read_json(members, "models/model.json")
        _check_graph(doc)
        weights = _tensors(members, "data/weights/model_weights_config.json", _WEIGHT, "weight")
        constants = _tensors(members, "data/constants/model_constants_config.json", _CONSTANT, "tensor")
    return _rebuild(doc, weights, constants)


class _ProgramCache:
    """Rebuilt programs by the digest of their file's bytes, least recently used first out, up to
    ``limit`` bytes of weights and constants. Hands out deep copies only; safe across threads
    (stages may load their networks side by side)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> Any | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            self._entries.move_to_end(digest)
        return _copy(entry[0])

    def put(self, digest: bytes, program: Any) -> None:
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _program_tensors(program)}
        size = sum(storages.values())
        if size > self.limit:
            return
        kept = _copy(program)
        with self._lock:
            if digest in self._entries:
                return
            self._entries[digest] = (kept, size)
            self._bytes += size
            while self._bytes > self.limit:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped


def _program_tensors(program: Any) -> Iterator[torch.Tensor]:
    yield from program.state_dict.values()
    yield from (v for v in program.constants.values() if isinstance(v, torch.Tensor))


def _copy(program: Any) -> Any:
    with warnings.catch_warnings():  # torch's own pytree classes warn as deepcopy rebuilds them
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(program)


_CACHE = _ProgramCache(int(float(os.environ.get("CHORUS_NETWORK_CACHE_MB", "64")) * (1 << 20)))


# -- the archive ----------------------------------------------------------------------------------
class _Members:
    """An archive's members by their name under the archive's one root folder."""

    def __init__(self, archive: zipfile.ZipFile, root: str, names: dict[str, zipfile.ZipInfo]) -> None:
        self.archive, self.root, self.names = archive, root, names

    def read(self, name: str) -> bytes:
        info = self.names.get(name)
        if info is None:
            raise NetworkFileError(f"has no member {self.root}/{name}")
        return self.archive.read(info)


def _members(archive: zipfile.ZipFile) -> _Members:
    infos = archive.infolist()
    roots = {info.filename.split("/", 1)[0] for info in infos}
    if len(roots) != 1:
        raise NetworkFileError(f"holds {len(roots)} top-level folders; an exported network has exactly one")
    root = roots.pop()
    names: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename[len(root) + 1 :]
        if info.is_dir():
            continue
        if name in names:
            raise NetworkFileError(f"member {info.filename} appears twice")
        if not (name in _FIXED_MEMBERS or _WEIGHT.match(name) or _CONSTANT.match(name)):
            raise NetworkFileError(f"member {info.filename} is not part of an exported network (refused)")
        total += info.file_size
        if total > MAX_NETWORK_BYTES:
            raise NetworkFileError(f"members unpack to more than {MAX_NETWORK_BYTES} bytes")
        names[name] = info
    return _Members(archive, root, names)


def _check_header(members: _Members) -> None:
    for name, want in (("archive_format", b"pt2"), ("byteorder", b"little")):
        got = members.read(name).strip()
        if got != want:
            raise NetworkFileError(f"member {members.root}/{name} says {got[:20]!r}, expected {want!r}")


def _read_json(members: _Members, name: str) -> Any:
    info = members.names.get(name)
    if info is not None and info.file_size > _MAX_JSON_BYTES:
        raise NetworkFileError(f"member {members.root}/{name} is larger than {_MAX_JSON_BYTES} bytes")
    try:
        return json.loads(members.read(name))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise NetworkFileError(f"member {members.root}/{name} is not valid JSON ({exc})") from None


def _check_sample_inputs(members: _Members) -> None:
    """Read the sample inputs' pickle opcodes without executing them: only tensor globals allowed."""
    name = "data/sample_inputs/model.pt"
    if name not in members.names:
        return
    where = f"member {members.root}/{name}"
    try:
        inner = zipfile.ZipFile(io.BytesIO(members.read(name)))
        pickles = [n for n in inner.namelist() if n.endswith(".pkl")]
        for pkl in pickles:
            for op, arg, _ in pickletools.genops(inner.read(pkl)):
                if op.name in _PICKLE_REFUSED_OPS:
                    raise NetworkFileError(f"{where} holds pickle opcode {op.name}, which can run code (refused)")
                if op.name == "GLOBAL" and str(arg) not in _PICKLE_GLOBALS:
                    raise NetworkFileError(
                        f"{where} names {str(arg)!r}; a sample input may only hold tensors (refused)"
                    )
    except NetworkFileError:
        raise
    except Exception as exc:  # a truncated or foreign payload: refuse rather than guess
        raise NetworkFileError(f"{where} is not a torch tensor file ({type(exc).__name__})") from None


# -- the graph ------------------------------------------------------------------------------------
def _walk(value: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every (path, key, value) of a JSON document, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield path, key, item
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


def check_expression(expr: str) -> None:
    """Refuse a symbolic shape expression that is more than arithmetic over shape symbols.

    torch writes them in sympy's ``srepr`` form, e.g. ``Mul(Integer(80), Symbol('s45', positive=True,
    integer=True))``, and reads them with ``sympify`` (``eval``). Python's parser (which runs
    nothing) must find only calls of sympy's arithmetic classes on numbers and symbol names.
    """
    if len(expr) > _MAX_EXPR_CHARS:
        raise NetworkFileError(f"symbolic expression {expr[:60]!r}... is longer than {_MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise NetworkFileError(f"symbolic expression {expr[:60]!r} does not parse (refused)") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _EXPR_FUNCTIONS):
            raise NetworkFileError(f"symbolic expression {expr[:60]!r} calls something other than arithmetic (refused)")
        if isinstance(node, ast.Name) and node.id not in _EXPR_FUNCTIONS and not _SYMBOL.match(node.id):
            raise NetworkFileError(f"symbolic expression {expr[:60]!r} names {node.id!r} (refused)")
        if isinstance(node, ast.keyword) and node.arg not in _EXPR_ASSUMPTIONS:
            raise NetworkFileError(f"symbolic expression {expr[:60]!r} sets {node.arg!r} (refused)")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not _SYMBOL.match(node.value):
            raise NetworkFileError(f"symbolic expression {expr[:60]!r} holds the string {node.value[:20]!r} (refused)")
        if not isinstance(node, _EXPR_NODES):
            raise NetworkFileError(f"symbolic expression {expr[:60]!r} holds {type(node).__name__} (refused)")


def _check_target(target: Any) -> None:
    if not isinstance(target, str):
        raise NetworkFileError(f"graph node target {target!r} is not an operator name")
    if _BLOCKED_ATEN.match(target) or not (_ATEN_TARGET.match(target) or target in _SYMBOLIC_TARGETS):
        raise NetworkFileError(f"graph calls {target[:80]!r}; only ATen operators are allowed (refused)")


def _check_graph(doc: Any) -> None:
    if not isinstance(doc, dict) or not isinstance(doc.get("graph_module"), dict):
        raise NetworkFileError("member models/model.json is not an exported program")
    graph = doc["graph_module"].get("graph")
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise NetworkFileError("member models/model.json has no graph")
    if graph.get("custom_obj_values"):
        raise NetworkFileError("graph holds custom objects, which are pickled code (refused)")
    for node in graph["nodes"]:
        if not isinstance(node, dict):
            raise NetworkFileError("graph node is not an object")
        _check_target(node.get("target"))
    for key in doc.get("range_constraints") or {}:
        if not _SYMBOL.match(str(key)):
            raise NetworkFileError(f"range constraint names {str(key)[:40]!r}, not a shape symbol (refused)")
    for path, key, value in _walk(doc):
        if key in ("as_graph", "as_custom_obj", "as_custom_objs"):
            raise NetworkFileError(f"graph uses {key} at {path or 'top'}: subgraphs and custom objects are refused")
        if key == "expr_str":
            check_expression(str(value))


# -- the tensors ----------------------------------------------------------------------------------
def _dtype(code: Any) -> torch.dtype:
    if not _DTYPES:
        from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

        allowed = {torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.bool}
        _DTYPES.update({int(k): v for k, v in _SERIALIZE_TO_TORCH_DTYPE.items() if v in allowed})
    if code not in _DTYPES:
        raise NetworkFileError(f"tensor dtype code {code!r} is not a plain numeric dtype (refused)")
    return _DTYPES[code]


def _ints(items: Any, what: str) -> list[int]:
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("as_int"), int) for i in items):
        raise NetworkFileError(f"{what} must be plain integers")
    values = [int(i["as_int"]) for i in items]
    if any(v < 0 for v in values):
        raise NetworkFileError(f"{what} must not be negative")
    return values


def _tensors(members: _Members, config_name: str, pattern: re.Pattern[str], prefix: str) -> dict[str, torch.Tensor]:
    """Tensors by name from a payload config: raw bytes only, never a pickle."""
    if config_name not in members.names:
        return {}
    config = _read_json(members, config_name)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise NetworkFileError(f"member {members.root}/{config_name} has no config object")
    folder = config_name.rsplit("/", 1)[0]
    storages: dict[str, torch.Tensor] = {}  # shared files stay shared (aliased weights)
    out: dict[str, torch.Tensor] = {}
    for name, meta in entries.items():
        where = f"{members.root}/{config_name} entry {name!r}"
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise NetworkFileError(f"{where} is a pickled payload, which can run code (refused)")
        file = meta.get("path_name")
        if not isinstance(file, str) or not pattern.match(f"{folder}/{file}") or not file.startswith(prefix):
            raise NetworkFileError(f"{where} points at {str(file)[:40]!r}, not a {prefix} file (refused)")
        tmeta = meta.get("tensor_meta")
        if not isinstance(tmeta, dict):
            raise NetworkFileError(f"{where} is not a tensor (refused)")
        dtype = _dtype(tmeta.get("dtype"))
        sizes = _ints(tmeta.get("sizes"), f"{where} sizes")
        strides = _ints(tmeta.get("strides"), f"{where} strides")
        offset = _ints([tmeta.get("storage_offset")], f"{where} storage_offset")[0]
        if len(sizes) != len(strides):
            raise NetworkFileError(f"{where}: sizes and strides differ in rank")
        if file not in storages:
            raw = members.read(f"{folder}/{file}")
            itemsize = torch.empty(0, dtype=dtype).element_size()
            if len(raw) % itemsize:
                raise NetworkFileError(f"{where}: {len(raw)} bytes are not whole {dtype} elements")
            storages[file] = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        storage = storages[file]
        if storage.dtype != dtype:
            raise NetworkFileError(f"{where}: file {file} is shared with a different dtype")
        numel = 1
        for s in sizes:
            numel *= s
        last = offset + sum((s - 1) * st for s, st in zip(sizes, strides, strict=True)) if numel else 0
        if numel and last >= storage.numel():
            raise NetworkFileError(f"{where}: shape {sizes} does not fit the {storage.numel()} values stored")
        tensor = storage.as_strided(sizes, strides, offset) if numel else torch.zeros(sizes, dtype=dtype)
        out[name] = torch.nn.Parameter(tensor, requires_grad=False) if meta.get("is_param") else tensor
    return out


# -- rebuilding and checking ----------------------------------------------------------------------
def _rebuild(doc: dict[str, Any], weights: dict[str, torch.Tensor], constants: dict[str, torch.Tensor]) -> Any:
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    for node in doc["graph_module"]["graph"]["nodes"]:
        node["metadata"] = {}  # stack traces and module paths: not needed to run, and not trusted
    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, doc)
        return ExportedProgramDeserializer().deserialize(serialized, weights, constants, None)
    except NetworkFileError:
        raise
    except Exception as exc:
        raise NetworkFileError(f"is not a program this torch can rebuild ({type(exc).__name__}: {exc})") from None


def _fixed_shape(value: Any) -> list[int | None]:
    return [int(d) if isinstance(d, int) else None for d in value.shape]


def check_signature(program: Any, spec: NetworkSpec) -> None:
    """The program's user inputs and outputs against the manifest's declared signature."""
    signature = program.graph_signature
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs = [placeholders[name].meta.get("val") for name in signature.user_inputs]
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    by_name = {str(a): a for a in output_node.args[0] if hasattr(a, "meta")}
    outputs = [by_name[name].meta.get("val") if name in by_name else None for name in signature.user_outputs]
    for kind, declared, actual in (("inputs", spec.inputs, inputs), ("outputs", spec.outputs, outputs)):
        if len(declared) != len(actual):
            raise NetworkFileError(
                f"has {len(actual)} {kind}, the manifest declares {len(declared)} "
                f"({', '.join(t.name for t in declared)}): is it the right file?"
            )
        for t, val in zip(declared, actual, strict=True):
            if not isinstance(val, torch.Tensor):
                continue
            if val.dtype != t.torch_dtype or val.dim() != len(t.shape):
                raise NetworkFileError(
                    f"{kind[:-1]} {t.name!r} is {str(val.dtype).removeprefix('torch.')} of rank {val.dim()}, "
                    f"the manifest declares {t.dtype} {list(t.shape)}: is it the right file?"
                )
            for axis, (want, got) in enumerate(zip(t.shape, _fixed_shape(val), strict=True)):
                if isinstance(want, int) and got is not None and want != got:
                    raise NetworkFileError(
                        f"{kind[:-1]} {t.name!r} has size {got} at axis {axis}, the manifest declares {want}"
                    )


def max_length(program: Any, spec: NetworkSpec) -> int | None:
    """The longest sequence (axis 1 of the first sequence input) the program was exported for."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for t, name in zip(spec.inputs, program.graph_signature.user_inputs, strict=False):
        val = placeholders[name].meta.get("val")
        if t.time_scale is None or not isinstance(val, torch.Tensor) or val.dim() < 2:
            continue
        dim = val.shape[1]
        if isinstance(dim, int):
            return dim
        bound = program.range_constraints.get(dim.node.expr)
        upper = getattr(bound, "upper", None)
        try:
            return int(upper) if upper is not None else None
        except (TypeError, ValueError):  # unbounded (infinity)
            return None
    return None


def runnable(program: Any) -> torch.nn.Module:
    """``program.module()`` with torch.export's per-call input check (symbolic shape arithmetic,
    about 1 ms a call: most of a small step network's time) replaced by the same range check on
    plain integers: each input's rank and every dim within the range it was exported for, and
    dims that share a symbol equal."""
    module: torch.nn.Module = program.module()
    if not hasattr(module, "validate_inputs"):
        return module  # another torch: keep its own check
    setattr(module, "validate_inputs", False)  # noqa: B010  (the attribute is not on nn.Module's type)
    check = _checker(_input_limits(program))
    module.register_forward_pre_hook(lambda _module, args: check(args))
    return module


class _Traced:
    """A TorchScript trace of a runnable program, behind the same input check."""

    def __init__(self, script: Any, check: Callable[[tuple[Any, ...]], None]) -> None:
        self.script, self.check = script, check

    def __call__(self, *args: torch.Tensor) -> Any:
        self.check(args)
        return self.script(*args)


#: The sizes a shape symbol takes in :func:`traced`'s probes (each clamped into its exported range).
PROBE_SIZES = (3, 11, 1)


def traced(program: Any, module: torch.nn.Module, device: torch.device | str = "cpu") -> Callable[..., Any]:
    """``module`` (the :func:`runnable` of ``program``, on ``device``) recorded as a TorchScript
    trace: one graph run in C++ instead of a Python call per operator, about twice as fast for a
    small network called once per step (an attention decoder's), the same for large ones.

    The trace is recorded from Chorus's own module of the checked graph (nothing from the file
    runs) and used only if it gives the same outputs as ``module``, to the bit, on random inputs
    of every size in :data:`PROBE_SIZES` (a trace may fix a size it saw; such a network keeps
    ``module``). Inputs are checked as :func:`runnable` checks them.
    """
    limits = _input_limits(program)
    if any(high is None and low == 0 and symbol is None for _, dims in limits for low, high, symbol in dims):
        return module  # a dim given by an expression of symbols: probes could not be sized right
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    dtypes = [getattr(placeholders[name].meta.get("val"), "dtype", torch.float32) for name, _ in limits]
    gen = torch.Generator().manual_seed(0)
    try:
        probes = [_probe(limits, dtypes, size, gen, device) for size in PROBE_SIZES]
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            script = torch.jit.trace(module, probes[0], check_trace=False)
            for args in probes:
                for got, want in zip(_flat(script(*args)), _flat(module(*args)), strict=True):
                    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    except Exception:  # no trace, or not the same: the module as it is
        return module
    return _Traced(script, _checker(limits))


def executable(program: Any, device: torch.device | str) -> Callable[..., Any]:
    """How Chorus runs a checked program on ``device``: :func:`traced` where the trace is exact,
    else :func:`runnable`."""
    return traced(program, runnable(program).to(device), device)


def _flat(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _probe(
    limits: list[tuple[str, list[tuple[int, int | None, str | None]]]],
    dtypes: list[torch.dtype],
    size: int,
    gen: torch.Generator,
    device: torch.device | str,
) -> tuple[torch.Tensor, ...]:
    args = []
    for (_, dims), dtype in zip(limits, dtypes, strict=True):
        shape = [
            low if symbol is None else max(low, min(size, high if high is not None else size))
            for low, high, symbol in dims
        ]
        if dtype.is_floating_point:
            arg = torch.randn(shape, generator=gen).to(dtype)
        elif dtype == torch.bool:
            arg = torch.randint(0, 2, shape, generator=gen).bool()
        else:
            arg = torch.randint(1, 3, shape, generator=gen).to(dtype)
        args.append(arg.to(device))
    return tuple(args)


def _checker(
    limits: list[tuple[str, list[tuple[int, int | None, str | None]]]],
) -> Callable[[tuple[Any, ...]], None]:
    passed: set[tuple[Any, ...]] = set()  # the shapes of calls that passed (a step network sees few)

    def check(args: tuple[Any, ...]) -> None:
        shapes = tuple(arg.shape if isinstance(arg, torch.Tensor) else type(arg) for arg in args)
        if shapes in passed:
            return
        seen: dict[str, int] = {}
        for (name, dims), arg in zip(limits, args, strict=False):
            if not isinstance(arg, torch.Tensor) or arg.dim() != len(dims):
                got = arg.dim() if isinstance(arg, torch.Tensor) else type(arg).__name__
                raise ValueError(f"input {name!r} must have {len(dims)} dims, got {got}")
            for axis, (low, high, symbol) in enumerate(dims):
                size = int(arg.shape[axis])
                if size < low or (high is not None and size > high):
                    span = f"{low}..{high if high is not None else 'any'}"
                    raise ValueError(f"input {name!r} axis {axis} is {size}; the network was exported for {span}")
                if symbol is not None and seen.setdefault(symbol, size) != size:
                    raise ValueError(f"input {name!r} axis {axis} is {size}, but {symbol} is {seen[symbol]} elsewhere")
        if len(passed) < 4096:
            passed.add(shapes)

    return check


def _input_limits(program: Any) -> list[tuple[str, list[tuple[int, int | None, str | None]]]]:
    """Per user input: its name and, per dim, (lowest, highest or None, shared symbol or None)."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    out = []
    for name in program.graph_signature.user_inputs:
        val = placeholders[name].meta.get("val")
        dims: list[tuple[int, int | None, str | None]] = []
        for dim in getattr(val, "shape", ()):
            if isinstance(dim, int):
                dims.append((dim, dim, None))
                continue
            bound = program.range_constraints.get(dim.node.expr)
            if bound is None:  # a compound expression of symbols: its range is not stated
                dims.append((0, None, None))
                continue
            dims.append((_as_int(bound.lower, 0), _as_int(bound.upper, None), str(dim.node.expr)))
        out.append((name, dims))
    return out


def _as_int(value: Any, unbounded: int | None) -> Any:
    """A range bound as an int; ``unbounded`` for infinity."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return unbounded
