"""Pronunciation overrides: per addon (in addon.json) and per request, applied before G2P."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import addons
from addons.frontend import LexiconError, Sentence
from addons.manifest import LexiconEntry

TEXT = "Say tomato, then Chorus. The US and us agree: tomato!"
TOMATO = LexiconEntry(grapheme="tomato", phonemes="t@m'A:toU")


def _by_word(sentences: list[Sentence]) -> list[tuple[str, tuple[str, ...]]]:
    """(word, its phonemes) for every word of every sentence, in order."""
    out = []
    for s in sentences:
        for i, word in enumerate(s.words):
            out.append((word.text, tuple(p for p, w in zip(s.phonemes, s.phoneme_words, strict=True) if w == i)))
    return out


@pytest.fixture(scope="module")
def voice() -> addons.Voice:
    return addons.load("chorus-fast")


@pytest.mark.parametrize(
    ("entry", "changed"),
    [
        (TOMATO, {"tomato"}),
        (LexiconEntry(grapheme="Chorus", alias="core us"), {"Chorus"}),
        (LexiconEntry(grapheme="US", alias="you ess", case_sensitive=True), {"US"}),
        (LexiconEntry(grapheme="us", alias="you ess"), {"US", "us"}),  # case-blind by default
    ],
)
def test_an_override_changes_exactly_the_phonemes_of_its_word(
    voice: addons.Voice, entry: LexiconEntry, changed: set[str]
) -> None:
    plain = _by_word(list(voice.sentences(TEXT)))
    said = _by_word(list(voice.sentences(TEXT, [entry])))
    assert [w for w, _ in plain] == [w for w, _ in said]  # the words as written, punctuation aside
    differ = {w for (w, a), (_, b) in zip(plain, said, strict=True) if a != b}
    assert differ == changed
    if entry.phonemes:
        assert dict(said)["tomato"] == ("t", "@", "m", "'A:", "t#", "oU")


def test_a_request_entry_wins_over_the_addons(edit_addon: Callable[..., Path]) -> None:
    def add(m: dict[str, Any]) -> None:
        m["frontend"]["lexicon"] = [{"grapheme": "tomato", "alias": "potato"}]

    voice = addons.load(edit_addon("tiny-fast", add))
    shipped = _by_word(list(voice.sentences("A tomato.")))
    plain = _by_word(list(voice.sentences("A potato.")))
    assert shipped[1][1] == plain[1][1]  # the addon's own entry applies by default
    asked = _by_word(list(voice.sentences("A tomato.", [LexiconEntry(grapheme="tomato", alias="tomahto")])))
    wanted = _by_word(list(voice.sentences("A tomahto.")))
    assert asked[1][1] == wanted[1][1] != shipped[1][1]


def test_phonemes_outside_the_inventory_are_refused_by_name(voice: addons.Voice) -> None:
    with pytest.raises(LexiconError, match="lexicon entry 'tomato': phoneme 'Q' is not in this voice's inventory"):
        list(voice.sentences("A tomato.", [LexiconEntry(grapheme="tomato", phonemes="Qa")]))
    with pytest.raises(ValueError, match="exactly one of phonemes or alias"):
        LexiconEntry(grapheme="tomato")


def test_brackets_in_the_text_stay_text(voice: addons.Voice) -> None:
    text = "Read [[this]] as words, and tomato."
    assert _by_word(list(voice.sentences(text, [TOMATO])))[:2] == _by_word(list(voice.sentences(text)))[:2]


def test_marks_keep_the_written_word_and_audio_follows_the_override(voice: addons.Voice) -> None:
    entry = LexiconEntry(grapheme="Chorus", alias="core us")
    plain = np.concatenate([c.samples for c in voice.stream("Chorus sings.")])
    chunks = list(voice.stream("Chorus sings.", marks=["word"], lexicon=[entry.model_dump()]))
    said = np.concatenate([c.samples for c in chunks])
    assert [m.value for c in chunks for m in c.marks] == ["Chorus", "sings"]
    assert plain.size != said.size or not np.array_equal(plain, said)
