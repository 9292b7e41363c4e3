"""Speech marks from the decoder's own alignment, for both architectures (addons.engine.marks)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import addons
from addons.engine.marks import MarkTracker, SpeechMark
from blocks import parse_stack
from blocks.stages import provides_alignment

TEXT = "Dr. Smith paid $3.50 for twelve (fresh) apples. Did she?\n  Yes, she did!"


def _run(voice: addons.Voice, text: str, **options: object) -> tuple[np.ndarray, list[SpeechMark]]:
    chunks = list(voice.stream(text, marks=["sentence", "word", "phoneme"], **options))  # type: ignore[arg-type]
    return np.concatenate([c.samples for c in chunks]), [m for c in chunks for m in c.marks]


@pytest.mark.parametrize("name", ["chorus-fast", "chorus-taco"])
@pytest.mark.slow
def test_marks_cover_every_word_once_in_order_and_sit_on_frames(name: str) -> None:
    voice = addons.load(name)  # the bundled voices: trained, so every word gets frames
    assert voice.provides_marks
    audio, marks = _run(voice, TEXT)
    plain = np.concatenate([c.samples for c in voice.stream(TEXT)])
    assert np.array_equal(audio, plain)  # asking for marks changes nothing in the audio
    words = [m for m in marks if m.type == "word"]
    spoken = [w for s in voice.sentences(TEXT) for w in s.words]
    assert [(w.value, w.text_start, w.text_end) for w in words] == [(w.text, w.start, w.end) for w in spoken]
    assert [w.value for w in words] == [
        "Dr",
        "Smith",
        "paid",
        "$3.50",
        "for",
        "twelve",
        "fresh",
        "apples",
        "Did",
        "she",
        "Yes",
        "she",
        "did",
    ]
    assert all(TEXT[w.text_start : w.text_end] == w.value for w in words)
    for mark in marks:  # exact: a mark's time is the sample offset of its first frame
        assert mark.start_sample % voice.hop_length == 0 and mark.end_sample % voice.hop_length == 0
        assert mark.start_ms == pytest.approx(1000 * mark.start_sample / voice.sample_rate)
        assert 0 <= mark.start_sample < mark.end_sample <= audio.size
    starts = [w.start_sample for w in words]
    assert starts == sorted(starts)
    sentences = [m for m in marks if m.type == "sentence"]
    assert len(sentences) == 3 and sentences[-1].end_sample == audio.size  # they end at the audio's end
    assert all(a.end_sample == b.start_sample for a, b in itertools.pairwise(sentences))
    phonemes = [m for m in marks if m.type == "phoneme"]
    assert {p.value for p in phonemes} <= {p for s in voice.sentences(TEXT) for p in s.phonemes}


@pytest.mark.slow
def test_marks_follow_speed() -> None:
    voice = addons.load("chorus-fast")
    _, normal = _run(voice, TEXT)
    audio, fast = _run(voice, TEXT, speed=2.0)
    words = [m for m in normal if m.type == "word"]
    quick = [m for m in fast if m.type == "word"]
    assert [w.value for w in words] == [w.value for w in quick]
    assert quick[-1].end_sample < 0.7 * words[-1].end_sample
    assert quick[-1].end_sample <= audio.size


@pytest.mark.parametrize("name", ["tiny-fast", "tiny-taco"])
@pytest.mark.slow
def test_static_context_gives_the_same_marks(fixture_dir: Path, name: str) -> None:
    _, dynamic = _run(addons.load(fixture_dir / name), TEXT)
    _, static = _run(addons.load(fixture_dir / name, context="static"), TEXT)
    assert [(m.type, m.value, m.start_sample, m.end_sample) for m in dynamic] == [
        (m.type, m.value, m.start_sample, m.end_sample) for m in static
    ]


def test_a_stack_without_alignment_gives_no_marks() -> None:
    assert not provides_alignment(parse_stack([{"type": "ChunkStats"}]))
    assert provides_alignment(parse_stack([{"type": "Upsampler"}, {"type": "Decoder"}]))
    tracker = MarkTracker(256, 22050, ["word"])
    assert tracker.end() == []
    with pytest.raises(ValueError, match="unknown mark type 'syllable'"):
        MarkTracker(256, 22050, ["syllable"])


@pytest.mark.slow
def test_cli_writes_marks_as_json_lines(fixture_dir: Path, tmp_path: Path) -> None:
    import json

    from tests.helpers import chorus

    out, marks = tmp_path / "a.wav", tmp_path / "marks.jsonl"
    text = "Marks from the command line. Two sentences."
    result = chorus(
        "synth", "--addon", str(fixture_dir / "tiny-fast"), "--text", text, "--out", str(out), "--marks-out", str(marks)
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in marks.read_text().splitlines()]
    want = [
        m.as_dict()
        for c in addons.load(fixture_dir / "tiny-fast").stream(text, marks=["sentence", "word", "phoneme"])
        for m in c.marks
    ]
    assert lines == want and lines


@pytest.mark.slow
def test_word_marks_sit_on_the_words_in_the_voices_own_audio() -> None:
    """addons.recipes.marks_check on one held-out text: the teacher's word boundaries, mapped onto
    the voice's audio by DTW, fall within 25 ms of the marks; every word once, in order."""
    from addons.recipes.marks_check import TEXTS, check

    for name in ("chorus-fast", "chorus-taco"):
        result = check(addons.load(name), TEXTS[0])
        assert result is not None
        assert result["words_in_order_once"] and result["ends_at_audio_end"]
        errors = np.asarray(result["errors_ms"])
        assert np.median(errors) <= 25 and np.mean(errors <= 25) >= 0.8, (name, errors)


@pytest.mark.parametrize(
    ("n", "previous", "focus", "tokens"),
    [
        (3, -1, 2, [2, 2, 2]),  # first step: all the focus
        (6, 4, 4, [4] * 6),  # stayed
        (3, 4, 5, [4, 5, 5]),  # one token on: the first frame stays behind
        (5, 4, 5, [4, 5, 5, 5, 5]),  # ... whatever the step's length
        (6, 4, 5, [4, 5, 5, 5, 5, 5]),
        (2, 4, 5, [4, 5]),
        (6, 4, 6, [5, 5, 5, 6, 6, 6]),  # two on: the token passed over gets its share
        (3, 4, 7, [5, 6, 7]),  # three on in three frames: one each (4 had the steps before)
        (5, 4, 7, [5, 6, 6, 7, 7]),
        (6, 5, 3, [5, 5, 5, 3, 3, 3]),  # back: the first half stays
    ],
)
def test_attention_step_frames_sweep_the_tokens_passed(n: int, previous: int, focus: int, tokens: list[int]) -> None:
    from blocks.attention import AttentionDecoder

    assert AttentionDecoder._step_tokens(n, previous, focus) == tokens
