"""Importing Piper voices (VITS in ONNX) as ordinary addons, on the tiny Piper-shaped fixture voices.

The split is found from the graph's structure (a renamed graph imports the same), proven against
the whole graph, and the noise the graph drew itself now comes from a seed Chorus controls.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import addons
from addons.formats.manifest import AddonError, read_manifest
from addons.formats.piper import PiperImportError, import_piper
from blocks import Request
from tests.helpers import chorus

IDS = np.asarray([1, 0, 20, 0, 59, 0, 24, 0, 27, 0, 3, 0, 35, 0, 61, 0, 88, 0, 24, 0, 17, 0, 10, 0, 2], dtype=np.int64)


def _whole(model: Path, ids: np.ndarray, scales: tuple[float, float, float] = (0.0, 1.0, 0.0), sid: int | None = None):
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = {"input": ids[None], "input_lengths": np.asarray([len(ids)]), "scales": np.asarray(scales, np.float32)}
    if sid is not None:
        feed["sid"] = np.asarray([sid])
    return sess.run(None, feed)[0].reshape(-1)


def _speak(voice: addons.Voice, ids: np.ndarray, **options: object) -> tuple[np.ndarray, list[np.ndarray]]:
    """Audio of one sentence's ids through the voice's stages (no text front end), and its chunks."""
    request = Request(options={"speed": 1.0, **options})
    features = voice.encoders.encode(ids, request)
    state = voice.audio.start()
    chunks = [voice.audio.process(state, mel, request) for mel in voice.decoder.decode(features, request)]
    chunks.append(voice.audio.finish(state, request))
    return np.concatenate(chunks), chunks


def _noise_off(directory: Path, target: Path) -> Path:
    shutil.copytree(directory, target)
    manifest = json.loads((target / "addon.json").read_text())
    manifest["stack"][0]["sequence_block"].update(noise_scale=0.0, noise_w=0.0)
    (target / "addon.json").write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize("name", ["tiny-piper", "tiny-piper-renamed", "tiny-piper-multi"])
def test_import_is_an_ordinary_addon_split_at_the_waveform_decoder(fixture_dir: Path, name: str) -> None:
    manifest = read_manifest(fixture_dir / name)
    assert set(manifest.networks) == {"front", "waveform"}
    assert manifest.networks["front"].runtime == manifest.networks["waveform"].runtime == "onnx"
    assert manifest.vocoder["type"] == "NeuralVocoder" and manifest.networks["waveform"].receptive_field == 16
    sequence = manifest.stack[0]["sequence_block"]
    assert sequence["type"] == "VitsInputs" and (sequence["noise_scale"], sequence["noise_w"]) == (0.667, 0.8)
    assert [n["per"] for n in sequence["noise"]] == ["token", "frame"]  # the duration predictor's, the prior's
    assert manifest.frontend.type == "piper" and manifest.frontend.phoneme_id_map["^"] == [1]
    speakers = {v.speaker for v in manifest.voices.values()}
    assert speakers == ({0, 1} if name.endswith("multi") else {None})


def test_chained_parts_equal_the_whole_graph_with_noise_off(fixture_dir: Path, tmp_path: Path) -> None:
    for name, sids in (("tiny-piper", [None]), ("tiny-piper-multi", [0, 1])):
        source = (
            fixture_dir
            / "piper-sources"
            / ("en_US-tiny_multi-medium.onnx" if sids[0] is not None else "en_US-tiny-medium.onnx")
        )
        voice = addons.load(_noise_off(fixture_dir / name, tmp_path / name))
        for sid in sids:
            options = {} if sid is None else {"speaker": sid}
            audio, chunks = _speak(voice, IDS, **options)
            whole = _whole(source, IDS, sid=sid)
            assert len(chunks) > 2  # streamed in windows, not in one piece
            assert audio.shape == whole.shape
            np.testing.assert_allclose(audio, whole, atol=1e-4, rtol=0)


def test_the_same_request_gives_the_same_audio_and_the_seed_varies_it(fixture_dir: Path) -> None:
    voice = addons.load(fixture_dir / "tiny-piper")
    a, _ = _speak(voice, IDS)
    b, _ = _speak(voice, IDS)
    c, _ = _speak(voice, IDS, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[: min(len(a), len(c))], c[: min(len(a), len(c))])
    off = _whole(fixture_dir / "piper-sources" / "en_US-tiny-medium.onnx", IDS)
    assert not np.allclose(a[: len(off)], off[: len(a)], atol=1e-3)  # the noise is really drawn (0.667, 0.8)


def test_speed_shortens_the_durations(fixture_dir: Path, tmp_path: Path) -> None:
    voice = addons.load(_noise_off(fixture_dir / "tiny-piper", tmp_path / "v"))
    normal, _ = _speak(voice, IDS)
    fast, _ = _speak(voice, IDS, speed=2.0)
    features = voice.encoders.encode(IDS, Request(options={"speed": 2.0}))
    assert len(fast) < 0.7 * len(normal)
    assert int(features["durations"].sum()) == len(features["frames"]) == len(fast) // 256


def test_frames_are_aligned_to_the_phonemes_by_the_durations(fixture_dir: Path) -> None:
    voice = addons.load(fixture_dir / "tiny-piper")
    features = voice.encoders.encode(IDS, Request(options={"speed": 1.0}))
    tokens = np.concatenate([t for _, t in voice.decoder.decode_aligned(features, Request(options={"speed": 1.0}))])
    expected = np.repeat(np.arange(len(IDS)), features["durations"].astype(np.int64))
    np.testing.assert_array_equal(tokens, expected)


def test_padded_encoder_batches_equal_one_by_one(fixture_dir: Path) -> None:
    voice = addons.load(fixture_dir / "tiny-piper")
    items = [IDS, IDS[:9].copy(), IDS[::-1].copy()]
    alone = [voice.encoders.encode(ids, Request(options={"speed": 1.0})) for ids in items]
    together = voice.encoders.encode_batch(items, Request(options={"speed": 1.0}))
    for a, b in zip(alone, together, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.slow
def test_import_cli_writes_an_addon_and_refuses_bad_input_with_exit_2(fixture_dir: Path, tmp_path: Path) -> None:
    model = fixture_dir / "piper-sources" / "en_US-tiny-medium.onnx"
    ok = chorus("addon", "import", "piper", str(model), "--out", str(tmp_path / "voice"))
    assert ok.returncode == 0, ok.stderr
    assert "split at the waveform decoder" in ok.stdout and (tmp_path / "voice" / "waveform.onnx").is_file()
    missing = chorus("addon", "import", "piper", str(tmp_path / "nope.onnx"))
    assert missing.returncode == 2 and "no such config" in missing.stderr and "Traceback" not in missing.stderr


def _variant(fixture_dir: Path, tmp_path: Path, edit_model=None, edit_config=None) -> Path:
    source = fixture_dir / "piper-sources" / "en_US-tiny-medium.onnx"
    target = tmp_path / "variant.onnx"
    model = onnx.load(source)
    if edit_model is not None:
        model = edit_model(model) or model
    onnx.save(model, target)
    config = json.loads(Path(f"{source}.json").read_text())
    if edit_config is not None:
        config = edit_config(config) or config
    Path(f"{target}.json").write_text(json.dumps(config))
    return target


def _custom_op(model: onnx.ModelProto) -> None:
    node = model.graph.node[-1]
    node.domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))


def _external_outside(model: onnx.ModelProto) -> None:
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../../etc/passwd")


def _set(key: str, value: object):
    def edit(config: dict) -> None:
        config[key] = value

    return edit


@pytest.mark.parametrize(
    ("edit_model", "edit_config", "message"),
    [
        (_custom_op, None, "custom operator"),
        (_external_outside, None, "outside the addon directory"),
        (None, _set("num_speakers", 3), "3 speakers but the graph takes no 'sid'"),
        (None, _set("phoneme_id_map", {"_": [0], "^": [1], "$": [2], "a": [900]}), "embeds only"),
        (None, _set("phoneme_type", "text"), "phoneme_type 'text' is not supported"),
        (None, lambda c: {k: v for k, v in c.items() if k != "phoneme_id_map"}, "missing phoneme_id_map"),
        (
            None,
            lambda c: {**c, "phoneme_id_map": {k: v for k, v in c["phoneme_id_map"].items() if k not in "ɪə"}},
            "phoneme_id_map lacks ə ɪ, which espeak-ng",
        ),
        (None, _set("espeak", {"voice": "xx-nowhere"}), "espeak-ng has no voice named 'xx-nowhere'"),
    ],
    ids=[
        "custom-op",
        "external-data-outside",
        "speakers-mismatch",
        "ids-beyond-embedding",
        "phoneme-type",
        "no-map",
        "map-lacks-phonemes",
        "unknown-espeak-voice",
    ],
)
def test_bad_voices_are_refused_naming_the_problem(
    fixture_dir: Path, tmp_path: Path, edit_model, edit_config, message: str
) -> None:
    model = _variant(fixture_dir, tmp_path, edit_model, edit_config)
    with pytest.raises(PiperImportError, match=message):
        import_piper(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half written


def test_truncated_and_foreign_files_are_refused(fixture_dir: Path, tmp_path: Path) -> None:
    source = fixture_dir / "piper-sources" / "en_US-tiny-medium.onnx"
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(source.read_bytes()[:5000])
    shutil.copy(f"{source}.json", f"{truncated}.json")
    with pytest.raises(PiperImportError, match="not a valid ONNX model"):
        import_piper(truncated, tmp_path / "a")
    foreign = tmp_path / "waveform.onnx"  # an ONNX file, but not a Piper voice
    shutil.copy(fixture_dir / "tiny-piper" / "waveform.onnx", foreign)
    shutil.copy(f"{source}.json", f"{foreign}.json")
    with pytest.raises(PiperImportError, match="not a Piper voice graph"):
        import_piper(foreign, tmp_path / "b")


def test_a_graph_without_a_split_point_is_imported_whole_and_still_speaks(fixture_dir: Path, tmp_path: Path) -> None:
    def scaled_by_length_scale(model: onnx.ModelProto) -> None:
        """The output times length_scale / length_scale: no tensor inside decides the output alone."""
        graph = model.graph
        graph.node[-1].output[0] = "raw_output"
        graph.initializer.append(onnx.numpy_helper.from_array(np.asarray([1], np.int64), "one_index"))
        graph.node.extend(
            [
                helper.make_node("Gather", ["scales", "one_index"], ["ls"], axis=0),
                helper.make_node("Div", ["ls", "ls"], ["unit"]),
                helper.make_node("Mul", ["raw_output", "unit"], ["output"]),
            ]
        )

    model = _variant(fixture_dir, tmp_path, scaled_by_length_scale)
    report = import_piper(model, tmp_path / "whole")
    assert not report.split and report.marks
    manifest = read_manifest(tmp_path / "whole")
    assert set(manifest.networks) == {"front"} and manifest.vocoder == {"type": "FramedAudio"}
    voice = addons.load(_noise_off(tmp_path / "whole", tmp_path / "whole-off"))
    audio, _ = _speak(voice, IDS)
    np.testing.assert_allclose(audio, _whole(model, IDS), atol=1e-5, rtol=0)


def test_onnx_network_files_are_checked_when_an_addon_loads(fixture_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "broken"
    shutil.copytree(fixture_dir / "tiny-piper", target)
    (target / "waveform.onnx").write_bytes(b"\x08\x07not really onnx")
    with pytest.raises(AddonError, match=r"waveform\.onnx: is not a valid ONNX model"):
        addons.load(target).audio.load()
