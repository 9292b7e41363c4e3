"""End-to-end behaviour of loaded fixture addons: contexts, swaps, nesting, effects, streaming."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import addons
from blocks import Request

SHORT = "Hi."
LONG = (
    "The quick brown fox jumps over the lazy dog, and then it runs all the way home to sleep in the warm sun "
    "while the birds sing songs about 42 apples."
)
ALL = ["tiny-fast", "tiny-neural", "tiny-taco"]


def mel_of(voice: addons.Voice, text: str) -> np.ndarray:
    return np.concatenate([c.frames for c in voice.stream_mel(text)])


@pytest.mark.parametrize("name", ALL)
@pytest.mark.slow
def test_wav_length_is_frames_times_hop(fixture_dir: Path, name: str) -> None:
    voice = addons.load(fixture_dir / name)
    audio, mel = voice.synthesize("Hello world. How are you today?")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size == mel.shape[0] * voice.hop_length
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("text", [SHORT, "Exactly eight tokens.", LONG, f"{LONG} {LONG}"])
@pytest.mark.slow
def test_static_context_equals_dynamic(fixture_dir: Path, name: str, text: str) -> None:
    dynamic = mel_of(addons.load(fixture_dir / name, context="dynamic"), text)
    static = mel_of(addons.load(fixture_dir / name, context="static"), text)
    assert static.shape == dynamic.shape
    np.testing.assert_allclose(static, dynamic, atol=1e-4)


def test_static_windows_cover_short_equal_and_long_inputs(fixture_dir: Path) -> None:
    voice = addons.load(fixture_dir / "tiny-fast")
    spec = voice.manifest.networks["text_encoder"]
    centre = spec.static_length - 2 * spec.receptive_field
    lengths = {len(s.ids) for text in (SHORT, LONG) for s in voice.sentences(text)}
    assert min(lengths) < centre < max(lengths)


@pytest.mark.parametrize("name", ["tiny-fast", "tiny-taco"])
@pytest.mark.slow
def test_customized_encoders_swap_changes_nothing(
    fixture_dir: Path, edit_addon: Callable[..., Path], name: str
) -> None:
    def rename(m: dict[str, Any]) -> None:
        assert m["stack"][0]["sequence_block"]["type"] == "Encoders"
        m["stack"][0]["sequence_block"]["type"] = "CustomizedEncoders"

    swapped = addons.load(edit_addon(name, rename))
    assert type(swapped.encoders.block).__name__ == "CustomizedEncoders"
    a = addons.load(fixture_dir / name).synthesize(LONG)
    b = swapped.synthesize(LONG)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_nested_pipeline_in_a_streamable_slot(fixture_dir: Path, edit_addon: Callable[..., Path]) -> None:
    def nest(m: dict[str, Any]) -> None:
        # Pipeline(Encoders -> Stack[Pipeline(Container[] -> Upsampler), Decoder]): same result as flat.
        m["stack"] = [
            {
                "type": "StreamablePipeline",
                "sequence_block": {"type": "SequenceBlockContainer", "blocks": [{"type": "Encoders"}]},
                "streamable_block": {
                    "type": "StreamableStack",
                    "stack": [
                        {
                            "type": "StreamablePipeline",
                            "sequence_block": {"type": "Encoders", "networks": ["duration_predictor"]},
                            "streamable_block": {"type": "Upsampler", "chunk_frames": 7},
                        },
                        {"type": "ChunkStats", "label": "frames"},
                        {"type": "Decoder", "chunk_frames": 5},
                    ],
                },
            }
        ]

    flat = mel_of(addons.load(fixture_dir / "tiny-fast"), LONG)
    nested_voice = addons.load(edit_addon("tiny-fast", nest))
    request = Request(options={"speed": 1.0})
    chunks = [c.frames for c in nested_voice.stream_mel(LONG, request=request)]
    np.testing.assert_allclose(np.concatenate(chunks), flat, atol=1e-5)
    sizes = [c.shape[0] for c in chunks]
    assert max(sizes) == 5 and sizes.count(5) >= len(sizes) - 3  # a short last chunk per sentence
    assert sum(s["size"] for s in request.report["frames"]) == flat.shape[0]


def test_dsp_effect_added_by_config(fixture_dir: Path, edit_addon: Callable[..., Path]) -> None:
    plain = addons.load(fixture_dir / "tiny-neural").synthesize(LONG)[0]
    quieter = addons.load(edit_addon("tiny-neural", lambda m: m.update(effects=[{"type": "Gain", "db": -6.0}])))
    np.testing.assert_allclose(quieter.synthesize(LONG)[0], plain * 10 ** (-6 / 20), atol=1e-6)


def test_diagnostic_block_reports_chunks(fixture_dir: Path, edit_addon: Callable[..., Path]) -> None:
    voice = addons.load(edit_addon("tiny-fast", lambda m: m.update(effects=[{"type": "ChunkStats", "label": "audio"}])))
    request = Request(options={"speed": 1.0, "gain_db": 0.0})
    samples = sum(c.samples.size for c in voice.stream(LONG, request=request))
    stats = request.report["audio"]
    assert sum(s["size"] for s in stats) == samples and all(s["rms"] >= 0 for s in stats)


@pytest.mark.slow
def test_speed_and_voices(fixture_dir: Path) -> None:
    voice = addons.load(fixture_dir / "tiny-fast")
    normal = voice.synthesize(LONG)[1].shape[0]
    assert voice.synthesize(LONG, speed=2.0)[1].shape[0] < normal * 0.6
    assert voice.synthesize(LONG, voice="fast")[1].shape[0] < normal
    with pytest.raises(addons.TextError, match="unknown voice"):
        voice.synthesize(LONG, voice="nobody")
    with pytest.raises(addons.TextError, match="speed"):
        voice.synthesize(LONG, speed=9)


def test_attention_decoder_reports_stop_reason(fixture_dir: Path) -> None:
    voice = addons.load(fixture_dir / "tiny-taco")
    request = Request(options={"speed": 1.0})
    frames = sum(c.frames.shape[0] for c in voice.stream_mel(LONG, request=request))
    reports = request.report["AttentionDecoder"]  # one per sentence
    assert all(r["stop"] == "length_guard" for r in reports)  # random weights never stop: the guard ends them
    assert sum(r["frames"] for r in reports) == frames
    assert all(r["frames"] <= 4.0 * r["tokens"] for r in reports)


def test_first_chunk_needs_only_the_first_sentence(fixture_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    voice = addons.load(fixture_dir / "tiny-fast")
    calls: list[str] = []
    original = voice.frontend.phonemize_aligned
    monkeypatch.setattr(voice.frontend, "phonemize_aligned", lambda t, **kw: calls.append(t) or original(t, **kw))
    stream = voice.stream(" ".join([f"Sentence number {i} is here." for i in range(2000)]))
    next(stream)
    assert len(calls) <= 2
    stream.close()


def test_exported_networks_have_no_pickled_code(fixture_dir: Path) -> None:
    import zipfile

    for name in ALL:
        for pt2 in (fixture_dir / name).glob("*.pt2"):
            with zipfile.ZipFile(pt2) as z:
                assert not any(n.endswith(".pkl") and "code" in n for n in z.namelist())
        manifest = json.loads((fixture_dir / name / "addon.json").read_text())
        assert manifest["schema_version"] == 1


@pytest.mark.gpu
def test_customized_encoders_on_cuda_match_cpu(fixture_dir: Path, edit_addon: Callable[..., Path]) -> None:
    def to_cuda(m: dict[str, Any]) -> None:
        m["stack"][0]["sequence_block"] = {"type": "CustomizedEncoders", "device": "cuda"}

    cpu = addons.load(fixture_dir / "tiny-fast").synthesize(LONG)[1]
    gpu_voice = addons.load(edit_addon("tiny-fast", to_cuda))
    assert all(r.device.type == "cuda" for r in gpu_voice.encoders.block.runners)  # type: ignore[attr-defined]
    np.testing.assert_allclose(gpu_voice.synthesize(LONG)[1], cpu, atol=1e-4)


def test_static_context_pads_a_network_without_receptive_field(
    fixture_dir: Path, edit_addon: Callable[..., Path]
) -> None:
    def unbounded(m: dict[str, Any]) -> None:
        m["networks"]["text_encoder"]["receptive_field"] = None
        m["networks"]["text_encoder"]["static_length"] = 12

    dynamic = mel_of(addons.load(fixture_dir / "tiny-fast"), "Hello there.")
    static = addons.load(edit_addon("tiny-fast", unbounded), context="static")
    np.testing.assert_allclose(mel_of(static, "Hello there."), dynamic, atol=1e-4)
    with pytest.raises(ValueError, match="exceed its static_length 12"):
        mel_of(static, LONG)


def test_batched_encoding_equals_one_by_one(fixture_dir: Path) -> None:
    voice = addons.load(fixture_dir / "tiny-fast")
    sentences = [s.ids for s in voice.sentences(f"Hi. {LONG} Good morning to you all.")]
    batched = voice.encode_batch(sentences)
    for ids, feats in zip(sentences, batched, strict=True):
        alone = voice.encode(ids)
        assert feats.keys() == alone.keys()
        for key in alone:
            np.testing.assert_allclose(feats[key], alone[key], rtol=1e-5, atol=1e-5)


def test_audio_stage_loads_alone_and_matches_the_voice(fixture_dir: Path) -> None:
    from addons.engine.voice import AudioStage

    voice = addons.load(fixture_dir / "tiny-neural")
    audio, mel = voice.synthesize("Hello there.")
    stage = AudioStage.load_from(fixture_dir / "tiny-neural", voice.manifest)
    request = Request(options={"gain_db": 0.0})
    state = stage.start()
    alone = np.concatenate(
        [stage.process(state, mel[:7], request), stage.process(state, mel[7:], request), stage.finish(state, request)]
    )
    np.testing.assert_allclose(alone, audio, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-fast", "tiny-neural"])
@pytest.mark.slow
def test_vocoder_state_travels_as_plain_data(fixture_dir: Path, name: str) -> None:
    from addons.engine.voice import AudioStage

    voice = addons.load(fixture_dir / name)
    audio, mel = voice.synthesize(LONG)
    stage = voice.audio
    request = Request(options={"gain_db": 0.0})
    plain, parts = stage.pack(stage.start()), []
    for i in range(0, mel.shape[0], 29):
        live = AudioStage.unpack(plain)
        parts.append(stage.process(live, mel[i : i + 29], request))
        plain = stage.pack(live)
        assert _is_plain(plain)
    parts.append(stage.finish(AudioStage.unpack(plain), request))
    np.testing.assert_allclose(np.concatenate(parts), audio, atol=1e-5)
    with pytest.raises(ValueError, match="refusing"):
        AudioStage.unpack({"__state_type__": "os:system"})


def _is_plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return value is None or isinstance(value, (np.ndarray, int, float, str))


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Dr. Smith paid 42 dollars. Then he left!", ["Dr. Smith paid 42 dollars.", "Then he left!"]),
        ("See e.g. this one. J. R. R. Tolkien wrote it.", ["See e.g. this one.", "J. R. R. Tolkien wrote it."]),
        (
            'He said "stop." She did; then: silence…  Done',
            ['He said "stop."', "She did;", "then:", "silence...", "Done"],
        ),
    ],
)
def test_sentence_splitting_keeps_abbreviations(text: str, sentences: list[str]) -> None:
    from addons.text.frontend import Frontend

    assert Frontend.split_sentences(Frontend.normalize(text)) == sentences


AHEAD_TEXTS = [
    LONG,
    '<speak>Hello <break time="300ms"/> there. <prosody volume="+3dB">Louder now.</prosody>'
    '<break time="200ms"/><mark name="m"/>Done, 42 times.</speak>',
]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("text", AHEAD_TEXTS)
@pytest.mark.slow
def test_decoding_ahead_in_a_thread_changes_nothing(fixture_dir: Path, name: str, text: str) -> None:
    """The decoder in a worker thread, chunks ahead of the vocoder: the same chunks, samples, mel
    and marks, in the same order, to the bit."""
    marks = ("sentence", "word", "ssml")
    here = list(addons.load(fixture_dir / name, ahead=0).stream(text, marks=marks, with_mel=True))
    ahead = list(addons.load(fixture_dir / name, ahead=3).stream(text, marks=marks, with_mel=True))
    assert len(here) == len(ahead)
    for a, b in zip(here, ahead, strict=True):
        assert np.array_equal(a.samples, b.samples) and a.marks == b.marks
        assert (a.mel is None) == (b.mel is None)
        assert a.mel is None or np.array_equal(a.mel, b.mel)


def test_decoding_ahead_stops_with_the_stream_and_passes_errors_on(fixture_dir: Path) -> None:
    import threading

    from addons.text.frontend import TextError
    from addons.text.ssml import SSMLError

    voice = addons.load(fixture_dir / "tiny-taco", ahead=2)
    before = set(threading.enumerate())
    stream = voice.stream(f"{LONG} {LONG} {LONG}")
    next(stream)
    assert set(threading.enumerate()) - before  # the mel side runs in a worker
    stream.close()  # hung up after the first chunk: the worker is stopped and joined
    assert not set(threading.enumerate()) - before
    with pytest.raises(ValueError, match="ahead"):
        addons.load(fixture_dir / "tiny-taco", ahead=-1)
    with pytest.raises(TextError):
        list(voice.stream("   "))
    with pytest.raises(SSMLError, match="emphasis"):
        list(voice.stream("<speak><emphasis>no</emphasis></speak>"))
    assert not set(threading.enumerate()) - before
