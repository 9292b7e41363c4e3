"""Text edges (issue 22): offsets through Unicode normalization, and lexicon words inside punctuation.

A word mark's ``text_start:text_end`` slices the word in the input as it was sent, whatever NFKC
composed or expanded; a lexicon entry says its word the same way whatever punctuation is around it.
"""

from __future__ import annotations

import functools
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest

import addons
from addons.text.config import PiperFrontendConfig
from addons.text.frontend import _CONTROL, Frontend, Lexicon, split_edges
from addons.text.piper import PiperFrontend

VOICES = ["chorus-fast", "chorus-taco"]
_voice = functools.cache(addons.load)  # each bundled voice loaded once for the module
E_ACUTE = "e\u0301"  # e + COMBINING ACUTE ACCENT: NFKC composes them into é
HAN = "\u1112\u1161\u11ab"  # Hangul jamo h + a + n: NFKC composes them into the syllable 한
HANGUL = HAN + "\u1100\u1173\u11af"  # 한글, six jamo
FI = "\ufb01"  # LATIN SMALL LIGATURE FI: NFKC expands it to "fi"

#: Combining sequences at the start, in the middle and at the end of words, sentences and the text.
CAFE = f"Caf{E_ACUTE} owners r{E_ACUTE}sum{E_ACUTE} work here."
MIXED = f"{FI}ne words: {HANGUL} today, and na\u0308ive {FI}sh.\n{HAN} r{E_ACUTE}sum{E_ACUTE}"


def _expected(text: str) -> list[tuple[str, int, int]]:
    """Each word of ``text`` as sent, without edge punctuation: (word, start, end)."""
    out, at = [], 0
    for word in text.split():
        at = text.index(word, at)
        before, core, _ = split_edges(word)
        out.append((core, at + len(before), at + len(before) + len(core)))
        at += len(word)
    return out


# -- offsets through normalization ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalized", "spans"),
    [
        (f"Caf{E_ACUTE}", "Café", [(0, 1), (1, 2), (2, 3), (3, 5)]),
        (f"{E_ACUTE}a", "éa", [(0, 2), (2, 3)]),
        (HANGUL, "한글", [(0, 3), (3, 6)]),
        (f"{FI}ne", "fine", [(0, 1), (0, 1), (1, 2), (2, 3)]),
        (f"of{FI}", "offi", [(0, 1), (1, 2), (2, 3), (2, 3)]),
        ("a\x01\t\n b", "a b", [(0, 1), (1, 2), (5, 6)]),
        (f"  {E_ACUTE}\u0301 x  ", "é\u0301 x", [(2, 5), (2, 5), (5, 6), (6, 7)]),
    ],
)
def test_each_normalized_character_knows_what_it_was_written_as(
    text: str, normalized: str, spans: list[tuple[int, int]]
) -> None:
    assert Frontend.normalize_with_offsets(text) == (normalized, spans)
    assert Frontend.normalize(text) == normalized


def test_normalizing_in_runs_equals_normalizing_the_whole_text() -> None:
    pool = ["a", "e", " ", "\t", "\x01", ".", "(", "\u0301", "\u0308", "\u0327", "\u1112", "\u1161", "\u11ab",
            "\u1100", FI, "\u00a0", "\u3000", "ｶ", "\uff9e", "\u2460", "\u00bd", "Å", "\u212b", "\u0344"]  # fmt: skip
    rng = random.Random(22)
    for _ in range(20000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        whole = " ".join(_CONTROL.sub(" ", unicodedata.normalize("NFKC", text)).split())
        normalized, spans = Frontend.normalize_with_offsets(text)
        assert normalized == whole == Frontend.normalize(text), repr(text)
        assert len(spans) == len(normalized)
        assert all(0 <= a < b <= len(text) for a, b in spans)
        assert [a for a, _ in spans] == sorted(a for a, _ in spans)


@pytest.mark.parametrize("name", VOICES)
@pytest.mark.parametrize("text", [CAFE, MIXED])
def test_word_marks_slice_the_words_as_sent(name: str, text: str) -> None:
    voice = _voice(name)
    marks = [(m.value, m.text_start, m.text_end) for c in voice.stream(text, marks=["word"]) for m in c.marks]
    assert marks == _expected(text)
    assert all(text[a:b] == value for value, a, b in marks)


def test_word_marks_of_the_task_example_are_the_written_words() -> None:
    voice = _voice("chorus-fast")
    marks = [(m.value, m.text_start, m.text_end) for c in voice.stream(CAFE, marks=["word"]) for m in c.marks]
    assert marks == [
        ("Cafe\u0301", 0, 5),
        ("owners", 6, 12),
        ("re\u0301sume\u0301", 13, 21),
        ("work", 22, 26),
        ("here", 27, 31),
    ]


def test_ssml_word_marks_slice_the_document() -> None:
    voice = _voice("chorus-fast")
    doc = f"<speak>Caf{E_ACUTE} <sub alias='owners'>own{E_ACUTE}rs</sub> re&#x301;sum{E_ACUTE} {FI}ne {HAN}.</speak>"
    chunks = voice.stream(doc, marks=["word"], input_format="ssml")
    marks = [(m.value, doc[m.text_start : m.text_end]) for c in chunks for m in c.marks]
    assert marks == [
        (f"Caf{E_ACUTE}", f"Caf{E_ACUTE}"),
        (f"own{E_ACUTE}rs", f"own{E_ACUTE}rs"),
        (f"r{E_ACUTE}sum{E_ACUTE}", f"re&#x301;sum{E_ACUTE}"),  # the value is the text; the offsets cover the entity
        (f"{FI}ne", f"{FI}ne"),
        (HAN, HAN),
    ]


@pytest.fixture(scope="module")
def piper_config(fixture_dir: Path) -> PiperFrontendConfig:
    config = addons.load(fixture_dir / "tiny-piper").manifest.frontend
    assert isinstance(config, PiperFrontendConfig)
    return config


@pytest.mark.parametrize("text", [CAFE, MIXED])
def test_piper_words_slice_the_words_as_sent(piper_config: PiperFrontendConfig, text: str) -> None:
    words = [(w.text, w.start, w.end) for s in PiperFrontend(piper_config).sentences(text) for w in s.words]
    assert words == _expected(text)


def test_piper_word_marks_slice_the_words_as_sent(fixture_dir: Path) -> None:
    voice = addons.load(fixture_dir / "tiny-piper")
    marks = [(m.value, m.text_start, m.text_end) for c in voice.stream(CAFE, marks=["word"]) for m in c.marks]
    assert marks == _expected(CAFE)


# -- lexicon words inside punctuation ---------------------------------------------------------------

KYIV_FORMS = ["Kyiv", "“Kyiv,”", "(Kyiv)", "'Kyiv'", "Kyiv."]
KYIV = {"grapheme": "Kyiv", "phonemes": "k'i:v"}
KEEV = {"grapheme": "Kyiv", "alias": "keev"}


@pytest.mark.parametrize(
    ("word", "cut"),
    [
        ("“Kyiv,”", ("“", "Kyiv", ",”")),
        ("(Kyiv)", ("(", "Kyiv", ")")),
        ("Kyiv.", ("", "Kyiv", ".")),
        ("rock'n'roll", ("", "rock'n'roll", "")),
        ("...", ("", "...", "")),
        ("-", ("", "-", "")),
    ],
)
def test_split_edges(word: str, cut: tuple[str, str, str]) -> None:
    assert split_edges(word) == cut


def test_the_lexicon_looks_words_up_without_their_edge_punctuation() -> None:
    lexicon = Lexicon([KYIV, {"grapheme": "U.S.", "alias": "you ess", "case_sensitive": True}])
    for form in KYIV_FORMS:
        found = lexicon.find(form)
        assert found is not None and found.phonemes == "k'i:v", form
    assert [lexicon.find(w) is not None for w in ("U.S.", "(U.S.),", "U.S", "u.s.")] == [True, True, True, False]


@pytest.mark.parametrize("name", VOICES)
@pytest.mark.parametrize("form", KYIV_FORMS)
def test_a_phoneme_entry_is_said_whatever_punctuation_is_around_it(name: str, form: str) -> None:
    voice = _voice(name)
    text = f"We flew to {form} last spring."
    said = {}
    for kind, entry in (("phonemes", KYIV), ("alias", KEEV)):
        words = [
            (w.text, s.phonemes, s.phoneme_words, i)
            for s in voice.sentences(text, [entry])
            for i, w in enumerate(s.words)
        ]
        kyiv = [
            tuple(p for p, w in zip(ps, owners, strict=True) if w == i)
            for word, ps, owners, i in words
            if word == "Kyiv"
        ]
        chunks = list(voice.stream(text, marks=["word"], lexicon=[entry]))
        marks = [(m.value, m.text_start, m.text_end) for c in chunks for m in c.marks]
        said[kind] = (kyiv, marks, sum(c.samples.size for c in chunks))
    start = text.index("Kyiv")
    assert said["phonemes"][0] == said["alias"][0] == [("k", "'i:", "v")]
    assert ("Kyiv", start, start + 4) in said["phonemes"][1]
    assert said["phonemes"][1] == said["alias"][1]
    assert abs(said["phonemes"][2] - said["alias"][2]) <= 3 * voice.hop_length


@pytest.mark.parametrize("form", KYIV_FORMS)
def test_piper_says_an_ipa_entry_whatever_punctuation_is_around_it(
    piper_config: PiperFrontendConfig, form: str
) -> None:
    entry = {"grapheme": "Kyiv", "phonemes": "kˈiːv", "alphabet": "ipa"}
    text = f"We flew to {form} last spring."
    (sentence, *_) = PiperFrontend(piper_config).sentences(text, lexicon=[entry], normalize=False)
    index = [w.text for w in sentence.words].index("Kyiv")
    said = "".join(p for p, w in zip(sentence.phonemes, sentence.phoneme_words, strict=True) if w == index)
    assert said == unicodedata.normalize("NFD", "kˈiːv")
    start = text.index("Kyiv")
    assert (sentence.words[index].start, sentence.words[index].end) == (start, start + 4)


def test_audio_of_a_phoneme_entry_in_quotes_equals_its_alias() -> None:
    voice = _voice("chorus-fast")
    text = "“Kyiv,” she said."
    by_phonemes = np.concatenate([c.samples for c in voice.stream(text, lexicon=[KYIV])])
    by_alias = np.concatenate([c.samples for c in voice.stream(text, lexicon=[KEEV])])
    assert np.array_equal(by_phonemes, by_alias)
