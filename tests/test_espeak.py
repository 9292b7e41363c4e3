"""Tests for the libespeak-ng binding (addons/text/espeak.py). Fast, no network."""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from addons.text import espeak
from addons.text.espeak import Espeak, TeacherUtterance, get_espeak, is_pause

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I have 3 apples, 12 oranges and 1,000,000 grapes.",
    "Dr. Smith met Mr. Jones on Baker St. at 10:30 a.m.",
    "We need eggs, milk, butter, etc.",
    "Wait... what? No; really: yes!",
    "It costs $4.99, or 50% of the 2nd price.",
    'He said, "stop" (quietly) - and left.',
    "First sentence. Second sentence? Third sentence!",
]


@pytest.fixture(scope="module")
def tts() -> Espeak:
    return get_espeak()


def _digest(utterance: TeacherUtterance) -> str:
    blob = utterance.audio.tobytes() + repr(utterance.phonemes).encode()
    return hashlib.sha256(blob).hexdigest()


@pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="64-bit layout")
def test_event_struct_matches_speak_lib_h() -> None:
    names = [field[0] for field in espeak._Event._fields_]
    offsets = {name: getattr(espeak._Event, name).offset for name in names}
    assert offsets == {
        "type": 0,
        "unique_identifier": 4,
        "text_position": 8,
        "length": 12,
        "audio_position": 16,
        "sample": 20,
        "user_data": 24,
        "id": 32,
    }
    assert ctypes.sizeof(espeak._Event) == 40


def test_name_is_decoded_up_to_first_nul() -> None:
    # espeak leaves stale bytes after the NUL; 0xff is not even valid UTF-8.
    assert espeak._decode_name(b"h\x00\x81\x03\xff\xff\xff\xff") == "h"
    assert espeak._decode_name(b"'oU\x00\x00\x00\x00\x00") == "'oU"
    assert espeak._decode_name(b"abcdefgh") == "abcdefgh"  # full 8 bytes, no NUL


def test_sample_rate(tts: Espeak) -> None:
    assert tts.sample_rate == 22050
    assert tts.synthesize("Hello.").sample_rate == 22050


@pytest.mark.parametrize("text", SENTENCES)
def test_utterance_is_well_formed(tts: Espeak, text: str) -> None:
    utterance = tts.synthesize(text)
    audio = utterance.audio
    assert utterance.text == text
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert audio.size > 0
    assert np.abs(audio).max() <= 1.0
    names = [event.name for event in utterance.phonemes]
    assert all(name and "\0" not in name for name in names)
    assert not all(is_pause(name) for name in names)
    samples = [event.sample for event in utterance.phonemes]
    assert samples[0] >= 0
    assert all(a <= b for a, b in itertools.pairwise(samples))
    assert samples[-1] <= audio.size
    # espeak closes every call with a zero-length "_" at the very end of the audio.
    assert names[-1] == "_"
    assert samples[-1] == audio.size


@pytest.mark.parametrize("text", SENTENCES)
def test_phonemize_matches_synthesize(tts: Espeak, text: str) -> None:
    assert tts.phonemize(text) == [event.name for event in tts.synthesize(text).phonemes]


def test_same_text_gives_identical_output(tts: Espeak) -> None:
    text = SENTENCES[0]
    first = tts.synthesize(text)
    # Calls in between (other text, another voice and rate) must leave no trace.
    tts.synthesize("Something else entirely, said loudly! AAAH!")
    Espeak("en", rate=220).synthesize("A British interlude.")
    second = tts.synthesize(text)
    assert np.array_equal(first.audio, second.audio)
    assert first.phonemes == second.phonemes


@pytest.mark.slow
def test_output_matches_a_fresh_process(tts: Espeak) -> None:
    text = SENTENCES[2]
    tts.synthesize(SENTENCES[1])  # advance this process's synthesizer first
    script = (
        "import hashlib; from addons.text.espeak import get_espeak; "
        f"u = get_espeak().synthesize({text!r}); "
        "print(hashlib.sha256(u.audio.tobytes() + repr(u.phonemes).encode()).hexdigest())"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == _digest(tts.synthesize(text))


def test_one_call_covers_several_sentences(tts: Espeak) -> None:
    one = tts.synthesize("Hello world.")
    two = tts.synthesize("Hello world. Hello world.")
    names = [event.name for event in one.phonemes[:-2]]  # without the closing "_:", "_"
    assert [event.name for event in two.phonemes[: len(names)]] == names
    assert two.phonemes[: len(names)] == one.phonemes[: len(names)]
    # The second sentence's samples count from the start of the call, not of the sentence.
    second = two.phonemes[len(names) + 2 :]
    assert [event.name for event in second] == [event.name for event in one.phonemes]
    assert second[0].sample > one.phonemes[-2].sample


def test_numbers_and_abbreviations_are_spoken(tts: Espeak) -> None:
    assert tts.phonemize("3 apples") == tts.phonemize("three apples")
    assert tts.phonemize("Dr. Jones")[:5] == ["d", "'0", "k", "t", "3"]  # doctor
    assert tts.phonemize("etc.") == ["E", "t", "s", "'E", "t", "r", "@", "_:", "_"]  # etcetera


def test_comma_inserts_a_pause(tts: Espeak) -> None:
    plain = tts.synthesize("Hello world.")
    comma = tts.synthesize("Hello, world.")
    assert [e.name for e in comma.phonemes].count("_:") == 2
    assert [e.name for e in plain.phonemes].count("_:") == 1
    assert comma.audio.size - plain.audio.size > 0.1 * comma.sample_rate


@pytest.mark.parametrize("text", ["", "   ", "...", "?!", "\u2014"])
def test_text_without_phonemes_raises(tts: Espeak, text: str) -> None:
    with pytest.raises(ValueError, match="no phonemes"):
        tts.synthesize(text)
    with pytest.raises(ValueError, match="no phonemes"):
        tts.phonemize(text)


def test_bad_arguments_raise(tts: Espeak) -> None:
    with pytest.raises(ValueError, match="no voice"):
        Espeak("xx-not-a-voice")
    with pytest.raises(ValueError, match="rate"):
        Espeak(rate=450)  # espeak-ng switches to libsonic there; samples would drift
    with pytest.raises(ValueError, match="NUL"):
        tts.synthesize("a\0b")


def test_rate_changes_duration_and_keeps_events_aligned() -> None:
    text = SENTENCES[0]
    slow, fast = Espeak(rate=120).synthesize(text), Espeak(rate=449).synthesize(text)
    assert slow.audio.size > 2 * fast.audio.size
    for utterance in (slow, fast):
        assert utterance.phonemes[-1].sample == utterance.audio.size


def test_get_espeak_caches_per_voice() -> None:
    assert get_espeak() is get_espeak("en-us")
    assert get_espeak("en") is not get_espeak()


def test_concurrent_calls_match_sequential(tts: Espeak) -> None:
    expected = {text: _digest(tts.synthesize(text)) for text in SENTENCES}
    results: dict[str, str] = {}

    def work(text: str) -> None:
        results[text] = _digest(tts.synthesize(text))

    threads = [threading.Thread(target=work, args=(text,)) for text in SENTENCES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected


def test_callback_errors_propagate(tts: Espeak, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = tts.phonemize("Hello.")

    def broken(raw: bytes) -> str:
        raise KeyError("boom")

    monkeypatch.setattr(espeak, "_decode_name", broken)
    with pytest.raises(KeyError, match="boom"):
        tts.synthesize("Hello.")
    monkeypatch.undo()
    assert tts.phonemize("Hello.") == expected
