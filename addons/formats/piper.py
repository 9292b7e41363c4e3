"""Import a Piper voice (VITS exported to ONNX: ``MODEL.onnx`` + ``MODEL.onnx.json``) as an ordinary addon.

The import happens once and proves itself; serving never reads the Piper files again.

1. The voice's config is read and checked against the graph (inputs, speakers, phoneme ids).
2. The graph is split where its waveform decoder starts, found from the graph's structure: the
   earliest tensor from which the output is computed with no other input (no mask, no scales, no
   speaker), i.e. the latent frames ``[B, C, F]`` a HiFi-GAN turns into ``F * hop`` samples. The
   per-phoneme durations are the ``Ceil`` output whose values add up to ``F``. Names are never
   relied on: they differ between exports.
3. The front part (text -> latent frames + durations) becomes the addon's encoder network. Each
   random node in it (``RandomNormalLike``: the duration predictor's noise and the prior's) is
   replaced by an input that Chorus fills from a seed, so the same request gives the same audio.
   The back part (frames -> audio) becomes the addon's waveform stage, run on windows of frames with
   context on both sides, so the first audio of a sentence comes before the sentence is decoded.
4. Both parts are run against the whole graph (noise off) before anything is written: chained they
   must give its output; windowed, the whole back part's output. A graph that cannot be split is
   imported whole and streams sentence by sentence.

The result is an addon directory like any other: ``addon.json`` (the voice's inference settings
``noise_scale``, ``length_scale`` and ``noise_w`` in its stack, where a user can edit them; a
multi-speaker voice's speakers as its voices), ``front.onnx`` and ``waveform.onnx``.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from addons.formats.manifest import AddonError, read_manifest
from addons.formats.netfile import NetworkFileError
from addons.formats.onnxfile import read_onnx

__all__ = ["PiperImportError", "import_piper"]

#: The graph interface every Piper export has (its internal names differ between exports).
IDS, LENGTHS, SCALES, SPEAKER, OUTPUT = "input", "input_lengths", "scales", "sid", "output"
_RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
#: Frames of context on each side of a back-part window, tried in order until windows equal the whole.
_CONTEXTS = (16, 24, 32, 48, 64)
_WINDOW = 32
_SPLIT_TOLERANCE = 1e-4  # front then back against the whole graph, noise off
_WINDOW_TOLERANCE = 1e-3  # windows with context against the whole back part


class PiperImportError(AddonError):
    """A file that cannot be imported as a Piper voice; the message says what is missing or wrong."""


@dataclass
class _Noise:
    node: Any  # the random node
    channels: int = 0
    per: str = "token"


@dataclass
class _Plan:
    """What the structural analysis and the probe found."""

    cut: str | None
    durations: str | None
    hop: int
    channels: int
    noise: list[_Noise] = field(default_factory=list)


# -- the voice's config --------------------------------------------------------------------------


def _read_config(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PiperImportError(f"{path}: no such config (a Piper voice's .onnx.json; give it with --config)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PiperImportError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise PiperImportError(f"{path}: not a Piper voice config (a JSON object is expected)")
    missing = [k for k in ("audio", "phoneme_id_map", "inference") if k not in raw]
    if missing:
        raise PiperImportError(f"{path}: not a Piper voice config (missing {', '.join(missing)})")
    kind = raw.get("phoneme_type", "espeak")
    if kind != "espeak":
        raise PiperImportError(f"{path}: phoneme_type {kind!r} is not supported (Chorus reads espeak voices)")
    try:
        rate = int(raw["audio"]["sample_rate"])
        inference = {k: float(raw["inference"].get(k, d)) for k, d in _INFERENCE.items()}
        id_map = {str(k): [int(i) for i in v] for k, v in raw["phoneme_id_map"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PiperImportError(f"{path}: audio.sample_rate, inference or phoneme_id_map is malformed ({exc})") from None
    speakers = int(raw.get("num_speakers", 1) or 1)
    return {**raw, "_rate": rate, "_inference": inference, "_ids": id_map, "_speakers": speakers}


_INFERENCE = {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8}


# -- the graph's structure -----------------------------------------------------------------------


def _static_tensors(graph: Any) -> set[str]:
    """Tensors that depend on no graph input: initializers, constants and what is computed from them."""
    static = {t.name for t in graph.initializer} | {""}
    for node in graph.node:
        if node.op_type in _RANDOM_OPS:
            continue
        if node.op_type == "Constant" or all(i in static for i in node.input):
            static.update(node.output)
    return static


def _cut_candidates(graph: Any, static: set[str]) -> list[str]:
    """Tensors from which the output follows alone, latest first (a sweep back from the output:
    where the set of tensors still needed is one tensor, the rest of the graph needs only it)."""
    needed = {graph.output[0].name}
    found = []
    for node in reversed(graph.node):
        if not needed.intersection(node.output):
            continue
        needed.difference_update(node.output)
        needed.update(i for i in node.input if i not in static)
        if len(needed) == 1:
            (only,) = needed
            if only not in {i.name for i in graph.input}:
                found.append(only)
    return found


def _probe_ids(id_map: dict[str, list[int]], count: int = 48) -> np.ndarray:
    """A sentence's worth of ids in Piper's layout (``^ _ p _ p ... _ $``), from letters the map has."""
    symbols = [p for p in id_map if p not in {"_", "^", "$", " "} and p.isalpha()] or [
        p for p in id_map if p not in {"_", "^", "$"}
    ]
    if not symbols:
        raise PiperImportError("phoneme_id_map has no phonemes besides _ ^ $")
    gen = np.random.default_rng(0)
    ids = [*id_map["^"], *id_map["_"]]
    for p in gen.choice(len(symbols), count):
        ids += [*id_map[symbols[int(p)]], *id_map["_"]]
    return np.asarray([*ids, *id_map["$"]], dtype=np.int64)


def _feeds(ids: np.ndarray, speakers: int, scales: Iterable[float] = (0.0, 1.0, 0.0)) -> dict[str, np.ndarray]:
    feed = {
        IDS: ids[None],
        LENGTHS: np.asarray([len(ids)], dtype=np.int64),
        SCALES: np.asarray(list(scales), dtype=np.float32),
    }
    if speakers > 1:
        feed[SPEAKER] = np.asarray([min(1, speakers - 1)], dtype=np.int64)
    return feed


def _run(model: Any, feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in outputs if n not in have)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    sess = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = [n for n in outputs if n in names]
    return dict(zip(wanted, sess.run(wanted, feed), strict=True))


def _analyse(model: Any, ids: np.ndarray, speakers: int) -> _Plan:
    graph = model.graph
    static = _static_tensors(graph)
    randoms = [n for n in graph.node if n.op_type in _RANDOM_OPS]
    unsupported = [n for n in randoms if n.op_type != "RandomNormalLike"]
    if unsupported:
        raise PiperImportError(
            f"the graph draws random numbers with {unsupported[0].op_type}, which Chorus cannot seed "
            "(only RandomNormalLike is replaced by seeded noise)"
        )
    ceils = [o for n in graph.node if n.op_type == "Ceil" for o in n.output]
    candidates = _cut_candidates(graph, static)
    templates = [n.input[0] for n in randoms]
    try:
        got = _run(model, _feeds(ids, speakers), [OUTPUT, *ceils, *candidates, *templates])
    except Exception as exc:  # the graph itself fails on a sentence of the config's ids
        raise PiperImportError(f"the graph does not run on the config's phoneme ids ({_first_line(exc)})") from None
    samples = int(np.asarray(got[OUTPUT]).size)
    frames, durations = _durations(got, ceils, len(ids))
    cut, channels, hop = None, 0, 0
    if frames:
        for name in reversed(candidates):  # the earliest first
            shape = np.asarray(got.get(name, np.zeros(0))).shape
            if len(shape) == 3 and shape[0] == 1 and shape[2] == frames and samples % frames == 0:
                cut, channels, hop = name, int(shape[1]), samples // frames
                break
        hop = hop or (samples // frames if samples % frames == 0 else 0)
    plan = _Plan(cut, durations, hop, channels)
    for node, template in zip(randoms, templates, strict=True):
        shape = np.asarray(got[template]).shape
        if len(shape) != 3:
            raise PiperImportError(f"a random node draws noise of shape {list(shape)}; Chorus seeds [1, C, L] only")
        per = "token" if shape[2] == len(ids) else "frame"
        plan.noise.append(_Noise(node, int(shape[1]), per))
    return plan


def _durations(got: dict[str, np.ndarray], ceils: list[str], tokens: int) -> tuple[int, str | None]:
    """(frames, the Ceil output holding each token's frames): the one with a value per token
    whose sum is a whole number of frames that divides the output (the first such, in graph order)."""
    samples = int(np.asarray(got[OUTPUT]).size)
    for name in ceils:
        value = np.asarray(got[name])
        if value.size == tokens and value.ndim >= 2:
            total = round(float(value.sum()))
            if total > 0 and samples % total == 0:
                return total, name
    return 0, None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:200]


# -- rewriting the parts -------------------------------------------------------------------------


class _Graph:
    """Appends nodes to a graph with fresh names."""

    def __init__(self, graph: Any, prefix: str) -> None:
        self.graph, self.prefix, self.count = graph, prefix, 0
        self.nodes: list[Any] = []

    def name(self, hint: str) -> str:
        self.count += 1
        return f"chorus/{self.prefix}/{hint}_{self.count}"

    def const(self, values: Iterable[int], hint: str = "const") -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(list(values), dtype=np.int64), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = output or self.name(op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out


def _seeded(g: _Graph, node: Any, noise_input: str) -> list[Any]:
    """Nodes that give what random ``node`` gave: ``noise_input`` [B, L, C] as [B, C, L], tiled where L
    is shorter than the template's, cut to the template's shape, scaled and shifted as the node was."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    template, out = node.input[0], node.output[0]
    channels_first = g.op("Transpose", [noise_input], perm=[0, 2, 1])
    want = g.op("Shape", [template])
    have = g.op("Shape", [channels_first])
    two = g.const([2])
    need_len = g.op("Gather", [want, two], axis=0)
    have_len = g.op("Gather", [have, two], axis=0)
    one = g.const([1])
    reps = g.op("Div", [g.op("Sub", [g.op("Add", [need_len, have_len]), one]), have_len])
    tiled = g.op("Tile", [channels_first, g.op("Concat", [one, one, reps], axis=0)])
    drawn = g.op("Slice", [tiled, g.const([0, 0, 0]), want, g.const([0, 1, 2])])
    scale, mean = float(attrs.get("scale", 1.0)), float(attrs.get("mean", 0.0))
    if scale != 1.0:
        drawn = g.op("Mul", [drawn, _float_const(g, scale)])
    g.op("Add" if mean else "Identity", [drawn, _float_const(g, mean)] if mean else [drawn], output=out)
    return g.nodes


def _float_const(g: _Graph, value: float) -> str:
    from onnx import numpy_helper

    name = g.name("scalar")
    g.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
    return name


def _front(model: Any, plan: _Plan, speakers: int, whole: bool) -> Any:
    """The front part (or, ``whole``, the whole graph) with Chorus's interface: inputs ``phoneme_ids``
    [B, T], ``mask`` [B, T], ``scales`` [3], ``noise_k`` [B, L, C], ``speaker`` [B]; outputs
    ``frames`` [B, F, C] (whole: [B, F, hop] audio samples) and ``durations`` [B, T]."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [IDS, LENGTHS, SCALES] + ([SPEAKER] if speakers > 1 else [])
    last = OUTPUT if whole else plan.cut
    assert last is not None
    part = _extract(model, inputs, [last] + ([plan.durations] if plan.durations else []))
    graph = part.graph
    g = _Graph(graph, "front")
    nodes = list(graph.node)
    for k, noise in enumerate(plan.noise):  # each random node -> the seeded noise input, in its place
        name = f"noise_{k}"
        graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", "L", noise.channels]))
        at = next((i for i, n in enumerate(nodes) if list(n.output) == list(noise.node.output)), None)
        if at is None:
            continue
        g.nodes = []
        nodes[at : at + 1] = _seeded(g, nodes[at], name)
    g.nodes = []
    summed = g.op("ReduceSum", ["mask", g.const([1])], keepdims=0)
    g.op("Cast", [summed], output=LENGTHS, to=TensorProto.INT64)
    g.op("Identity", ["phoneme_ids"], output=IDS)
    new_inputs = [
        helper.make_tensor_value_info("phoneme_ids", TensorProto.INT64, ["B", "T"]),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", "T"]),
    ]
    if speakers > 1:
        g.op("Identity", ["speaker"], output=SPEAKER)
        new_inputs.append(helper.make_tensor_value_info("speaker", TensorProto.INT64, ["B"]))
    nodes[0:0] = g.nodes
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [i for i in graph.input if i.name not in (IDS, LENGTHS, SPEAKER)]
    del graph.input[:]
    graph.input.extend(kept + new_inputs)
    _ordered_inputs(graph, ["phoneme_ids", "mask", SCALES, *(f"noise_{k}" for k in range(len(plan.noise))), "speaker"])
    g.nodes = []
    del graph.output[:]
    shaped = (
        g.op("Reshape", [OUTPUT, g.const([0, -1, plan.hop])]) if whole else g.op("Transpose", [last], perm=[0, 2, 1])
    )
    g.op("Identity", [shaped], output="frames")
    width = plan.hop if whole else plan.channels
    graph.output.append(helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["B", "F", width]))
    if plan.durations:
        g.op("Reshape", [plan.durations, g.const([0, -1])], output="durations")
        graph.output.append(helper.make_tensor_value_info("durations", TensorProto.FLOAT, ["B", "T"]))
    graph.node.extend(g.nodes)
    _clean(part)
    onnx.checker.check_model(part)
    return part


def _extract(model: Any, inputs: list[str], outputs: list[str]) -> Any:
    """``onnx.utils.Extractor``'s part of ``model``; tensors shape inference left unnamed get an
    untyped entry (this module types every input and output of the parts itself)."""
    import onnx
    from onnx.utils import Extractor

    with contextlib.suppress(Exception):  # inference is a convenience here, not a check
        model = onnx.shape_inference.infer_shapes(model)
    known = {v.name for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    model.graph.value_info.extend(onnx.ValueInfoProto(name=n) for n in (*inputs, *outputs) if n not in known)
    return Extractor(model).extract_model(inputs, outputs)


def _ordered_inputs(graph: Any, order: list[str]) -> None:
    by_name = {i.name: i for i in graph.input}
    ordered = [by_name[n] for n in order if n in by_name] + [i for i in graph.input if i.name not in order]
    del graph.input[:]
    graph.input.extend(ordered)


def _back(model: Any, plan: _Plan) -> Any:
    """The back part with Chorus's interface: ``frames`` [B, T, C] in, ``audio`` [B, T * hop] out."""
    import onnx
    from onnx import TensorProto, helper

    assert plan.cut is not None
    part = _extract(model, [plan.cut], [OUTPUT])
    graph = part.graph
    g = _Graph(graph, "back")
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["B", "T", plan.channels]))
    graph.node.insert(
        0, helper.make_node("Transpose", ["frames"], [plan.cut], name="chorus/back/frames", perm=[0, 2, 1])
    )
    g.op("Reshape", [OUTPUT, g.const([0, -1])], output="audio")
    graph.node.extend(g.nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["B", f"T*{plan.hop}"]))
    _clean(part)
    onnx.checker.check_model(part)
    return part


def _clean(model: Any) -> None:
    """Drop stale value_info (shapes of the original graph) and give the parts a producer name."""
    del model.graph.value_info[:]
    model.producer_name = "chorus addon import piper"


# -- proving the parts ---------------------------------------------------------------------------


def _session(model: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _front_feed(plan: _Plan, ids: np.ndarray, speakers: int, scales: Iterable[float]) -> dict[str, np.ndarray]:
    feed = {
        "phoneme_ids": ids[None],
        "mask": np.ones((1, len(ids)), dtype=np.float32),
        SCALES: np.asarray(list(scales), dtype=np.float32),
    }
    for k, noise in enumerate(plan.noise):
        length = len(ids) if noise.per == "token" else len(ids) * 16
        feed[f"noise_{k}"] = np.random.default_rng(k).standard_normal((1, length, noise.channels), dtype=np.float32)
    if speakers > 1:
        feed["speaker"] = np.asarray([min(1, speakers - 1)], dtype=np.int64)
    return feed


def _prove_split(model: Any, front: Any, back: Any, plan: _Plan, ids: np.ndarray, speakers: int) -> float:
    """Max difference between front-then-back and the whole graph, noise off."""
    whole = np.asarray(_session(model).run([OUTPUT], _feeds(ids, speakers))[0]).reshape(-1)
    frames, *_ = _session(front).run(None, _front_feed(plan, ids, speakers, (0.0, 1.0, 0.0)))
    audio = np.asarray(_session(back).run(["audio"], {"frames": frames})[0]).reshape(-1)
    if audio.shape != whole.shape:
        return float("inf")
    return float(np.max(np.abs(audio - whole))) if whole.size else 0.0


def _context(back: Any, frames: np.ndarray) -> tuple[int, float]:
    """The fewest frames of context per side (of :data:`_CONTEXTS`) for which windows of
    :data:`_WINDOW` frames give the whole back part's audio, and the difference measured."""
    sess = _session(back)
    whole = np.asarray(sess.run(["audio"], {"frames": frames})[0])[0]
    total = frames.shape[1]
    hop = len(whole) // total
    worst = float("inf")
    for context in _CONTEXTS:
        worst = 0.0
        for start in range(0, total, _WINDOW):
            end = min(total, start + _WINDOW)
            lo, hi = max(0, start - context), min(total, end + context)
            out = np.asarray(sess.run(["audio"], {"frames": frames[:, lo:hi]})[0])[0]
            piece = out[(start - lo) * hop : (end - lo) * hop]
            worst = max(worst, float(np.max(np.abs(piece - whole[start * hop : end * hop]))))
        if worst <= _WINDOW_TOLERANCE:
            return context, worst
    raise PiperImportError(
        f"the waveform decoder needs more than {_CONTEXTS[-1]} frames of context "
        f"(windows differ by {worst:.2g} from the whole)"
    )


# -- the addon -----------------------------------------------------------------------------------


def addon_name(model_path: Path) -> str:
    """``en_US-joe-medium.onnx`` -> ``en_us-joe-medium`` (addon names are lower case)."""
    stem = model_path.name.removesuffix(".onnx")
    name = re.sub(r"[^a-z0-9_.-]+", "-", stem.lower()).strip("-._")
    return (name or "piper-voice")[:64]


def _language(config: dict[str, Any]) -> str:
    code = str((config.get("language") or {}).get("code") or config.get("espeak", {}).get("voice") or "en")
    tag = code.replace("_", "-")
    return tag if re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*", tag) else tag.split("-")[0].lower()[:3] or "en"


def _voices(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    voices: dict[str, dict[str, Any]] = {"default": {"description": "The voice's first speaker", "speaker": 0}}
    if config["_speakers"] <= 1:
        return {"default": {"description": "The voice as Piper ships it"}}
    for name, sid in sorted((config.get("speaker_id_map") or {}).items(), key=lambda kv: kv[1]):
        key = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))[:64] or f"speaker_{sid}"
        voices.setdefault(key, {"description": f"Speaker {name!r} (id {sid})", "speaker": int(sid)})
    return voices


def _manifest(config: dict[str, Any], name: str, source: str, plan: _Plan, context: int | None) -> dict[str, Any]:
    speakers = config["_speakers"]
    whole = context is None
    front_inputs = [
        {"name": "phoneme_ids", "dtype": "int64", "shape": ["B", "T"]},
        {"name": "mask", "dtype": "float32", "shape": ["B", "T"]},
        {"name": SCALES, "dtype": "float32", "shape": [3]},
        *(
            {"name": f"noise_{k}", "dtype": "float32", "shape": ["B", "T" if n.per == "token" else "F", n.channels]}
            for k, n in enumerate(plan.noise)
        ),
        *([{"name": "speaker", "dtype": "int64", "shape": ["B"]}] if speakers > 1 else []),
    ]
    width = plan.hop if whole else plan.channels
    front_outputs = [{"name": "frames", "dtype": "float32", "shape": ["B", "F", width]}]
    if plan.durations:
        front_outputs.append({"name": "durations", "dtype": "float32", "shape": ["B", "T"]})
    networks: dict[str, Any] = {
        "front": {"file": "front.onnx", "role": "encoder", "inputs": front_inputs, "outputs": front_outputs}
    }
    if not whole:
        networks["waveform"] = {
            "file": "waveform.onnx",
            "role": "vocoder",
            "inputs": [{"name": "frames", "dtype": "float32", "shape": ["B", "T", plan.channels]}],
            "outputs": [{"name": "audio", "dtype": "float32", "shape": ["B", f"T*{plan.hop}"]}],
            "receptive_field": context,
        }
    inference = config["_inference"]
    sequence = {
        "type": "VitsInputs",
        **inference,
        "noise": [{"input": f"noise_{k}", "channels": n.channels, "per": n.per} for k, n in enumerate(plan.noise)],
        "speaker_input": "speaker" if speakers > 1 else None,
        "encoders": {"type": "Encoders"},
    }
    streamable = {"type": "FrameSource", "durations": "durations" if plan.durations else None, "chunk_frames": 32}
    vocoder = (
        {"type": "FramedAudio"}
        if whole
        else {"type": "NeuralVocoder", "network": "waveform", "chunk_frames": _WINDOW, "max_chunk_frames": 256}
    )
    rate = config["_rate"]
    return {
        "schema_version": 1,
        "name": name,
        "description": f"Piper voice {source}, imported by chorus addon import piper"
        + (" (whole graph: streams sentence by sentence)" if whole else ""),
        "version": str(config.get("piper_version") or "1.0.0"),
        "language": _language(config),
        "mel": {
            "sample_rate": rate,
            "hop_length": plan.hop,
            "n_fft": 1024,
            "win_length": 1024,
            "n_mels": 80,
            "f_min": 0.0,
            "f_max": min(8000.0, rate / 2),
        },
        "frontend": {
            "type": "piper",
            "voice": str((config.get("espeak") or {}).get("voice") or "en-us"),
            "phoneme_id_map": config["_ids"],
        },
        "networks": networks,
        "stack": [{"type": "StreamablePipeline", "sequence_block": sequence, "streamable_block": streamable}],
        "vocoder": vocoder,
        "voices": _voices(config),
        # Where a cluster runs each stage: a share of a GPU node's GPU, as the bundled voices ask
        # (serve_app.placement.SHIPPED_GPU_STAGES); one machine without them drops these (docs/deploy.md).
        "deployment": {
            stage: {"ray_actor_options": {"num_cpus": 0.25, "num_gpus": share, "resources": {"gpu_node": 0.01}}}
            for stage, share in (("encoders", 0.125), ("decoder", 0.25), ("vocoder", 0.25))
        },
    }


@dataclass(frozen=True)
class ImportReport:
    """What an import found and measured."""

    directory: Path
    split: bool
    split_difference: float | None
    context_frames: int | None
    window_difference: float | None
    hop: int
    channels: int
    noise_inputs: int
    marks: bool


def import_piper(
    model_path: Path, out: Path | None = None, config_path: Path | None = None, name: str | None = None
) -> ImportReport:
    """Import ``model_path`` (config beside it as ``.onnx.json`` unless ``config_path``) into the addon
    directory ``out`` (default: ``./<name>``); raises :class:`PiperImportError` naming the problem."""
    import onnx

    config = _read_config(config_path or Path(f"{model_path}.json"))
    if not model_path.is_file():
        raise PiperImportError(f"{model_path}: no such file")
    try:
        model = read_onnx(model_path)
    except NetworkFileError as exc:
        raise PiperImportError(f"{model_path}: {exc}") from None
    _check_interface(model, config, model_path)
    _check_coverage(config, model_path)
    name = name or addon_name(model_path)
    out = out or Path.cwd() / name
    ids = _probe_ids(config["_ids"])
    plan = _analyse(model, ids, config["_speakers"])
    if not plan.hop:
        raise PiperImportError(f"{model_path}: cannot tell how many samples the graph makes per frame")
    split_difference = window_difference = None
    context: int | None = None
    parts: dict[str, Any] = {}
    if plan.cut is not None:
        front, back = _front(model, plan, config["_speakers"], False), _back(model, plan)
        split_difference = _prove_split(model, front, back, plan, ids, config["_speakers"])
        if split_difference <= _SPLIT_TOLERANCE:
            frames = _session(front).run(["frames"], _front_feed(plan, ids, config["_speakers"], (0, 1, 0)))[0]
            context, window_difference = _context(back, frames)
            parts = {"front.onnx": front, "waveform.onnx": back}
    if not parts:  # no cut, or one that does not reproduce the graph: the whole graph, sentence by sentence
        parts = {"front.onnx": _front(model, plan, config["_speakers"], True)}
    manifest = _manifest(config, name, model_path.name, plan, context)
    _write(out, manifest, parts, onnx)
    return ImportReport(
        out,
        context is not None,
        split_difference,
        context,
        window_difference,
        plan.hop,
        plan.channels,
        len(plan.noise),
        plan.durations is not None,
    )


def _check_interface(model: Any, config: dict[str, Any], path: Path) -> None:
    initializers = {t.name for t in model.graph.initializer}
    inputs = {i.name for i in model.graph.input if i.name not in initializers}
    outputs = [o.name for o in model.graph.output]
    missing = [n for n in (IDS, LENGTHS, SCALES) if n not in inputs]
    if missing or outputs != [OUTPUT]:
        raise PiperImportError(
            f"{path}: not a Piper voice graph (inputs {sorted(inputs)}, outputs {outputs}; a Piper voice takes "
            f"{IDS}, {LENGTHS}, {SCALES} and gives {OUTPUT})"
        )
    speakers = config["_speakers"]
    if speakers > 1 and SPEAKER not in inputs:
        raise PiperImportError(f"{path}: the config says {speakers} speakers but the graph takes no {SPEAKER!r}")
    if speakers <= 1 and SPEAKER in inputs:
        raise PiperImportError(f"{path}: the graph takes a speaker ({SPEAKER!r}) but the config says num_speakers 1")
    table = _embedding_rows(model)
    largest = max(i for v in config["_ids"].values() for i in v)
    if table is not None and largest >= table:
        raise PiperImportError(
            f"{path}: the config's phoneme_id_map uses id {largest}, but the graph embeds only {table} symbols "
            "(a config from another voice?)"
        )


#: Read in the voice's own language (espeak-ng says numbers in it), so any espeak voice gets a probe.
_COVERAGE_PROBE = "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 30 40 50 60 70 80 90 100 1000 1000000."


def _check_coverage(config: dict[str, Any], path: Path) -> None:
    """Refuse an id map that lacks phonemes espeak-ng makes for ordinary text in the voice's language
    (Piper would drop them without a word: a config from another voice, or a cut-down map)."""
    from addons.text.espeak import get_espeak

    voice = str((config.get("espeak") or {}).get("voice") or "en-us")
    try:
        clauses = get_espeak(voice).clauses_ipa(_COVERAGE_PROBE)
    except ValueError as exc:  # an espeak voice this espeak-ng does not have
        raise PiperImportError(f"{path}: {_first_line(exc)}") from None
    ipa = re.sub(r"\([^)]*\)", "", " ".join(c.ipa for c in clauses))  # language switch flags, as Piper drops them
    said = {c for c in unicodedata.normalize("NFD", ipa) if not c.isspace()}
    missing = sorted(said - set(config["_ids"]))
    if missing:
        raise PiperImportError(
            f"{path}: phoneme_id_map lacks {' '.join(missing)}, which espeak-ng ({voice}) says for ordinary text "
            "(a config from another voice?)"
        )


def _embedding_rows(model: Any) -> int | None:
    """Rows of the table the phoneme ids index (the first Gather reading the ids input)."""
    sizes = {t.name: list(t.dims) for t in model.graph.initializer}
    aliases = {IDS}
    for node in model.graph.node:
        if node.op_type in ("Identity", "Cast") and node.input and node.input[0] in aliases:
            aliases.update(node.output)
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in aliases:
            dims = sizes.get(node.input[0])
            if dims:
                return int(dims[0])
    return None


def _write(out: Path, manifest: dict[str, Any], parts: dict[str, Any], onnx: Any) -> None:
    """Write the addon next to ``out`` first, check it loads as an addon, then move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and any(out.iterdir()) and not (out / "addon.json").is_file():
        raise PiperImportError(f"{out}: exists and is not an addon (refusing to write into it)")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for file, part in parts.items():
            onnx.save_model(part, str(staging / file))
        (staging / "addon.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        read_manifest(staging)  # the import is an ordinary addon, or nothing is written
        out.mkdir(exist_ok=True)
        for old in out.iterdir():
            if old.is_file():
                old.unlink()
        for item in staging.iterdir():
            item.replace(out / item.name)
    finally:
        for item in staging.glob("*"):
            item.unlink()
        staging.rmdir()
