"""Pronunciation overrides: per addon (in addon.json) and per request, applied before G2P."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import addons
from addons.text.config import LexiconEntry
from addons.text.frontend import LexiconError, Sentence
from serve_app.schemas import SpeechRequest, install_error_handlers

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


# -- IPA, PLS and lexicon files -------------------------------------------------------------------

PLS = """<?xml version="1.0" encoding="UTF-8"?>
<lexicon version="1.0" xmlns="http://www.w3.org/2005/01/pronunciation-lexicon" alphabet="ipa" xml:lang="en-US">
  <lexeme><grapheme>tomato</grapheme><phoneme>təˈmɑːtoʊ</phoneme></lexeme>
  <lexeme><grapheme>Chorus</grapheme><grapheme>CHORUS</grapheme><alias>core us</alias></lexeme>
  <lexeme><grapheme>US</grapheme><phoneme alphabet="x-espeak">ju:'Es</phoneme><alias prefer="true">you ess</alias></lexeme>
</lexicon>"""


def test_ipa_entries_say_what_espeak_mnemonics_say(voice: addons.Voice) -> None:
    ipa = LexiconEntry.model_validate({"grapheme": "tomato", "phonemes": "təˈmɑːtoʊ", "alphabet": "ipa"})
    assert ipa.phonemes == TOMATO.phonemes
    assert _by_word(list(voice.sentences(TEXT, [ipa]))) == _by_word(list(voice.sentences(TEXT, [TOMATO])))
    with pytest.raises(ValueError, match="U\\+0298"):
        LexiconEntry.model_validate({"grapheme": "click", "phonemes": "ʘa", "alphabet": "ipa"})


def test_a_pls_document_is_the_same_lexicon_as_its_json(voice: addons.Voice) -> None:
    from addons.text.pls import read_pls

    entries = read_pls(PLS)
    assert [(e.grapheme, e.phonemes, e.alias) for e in entries] == [
        ("tomato", TOMATO.phonemes, None),
        ("Chorus", None, "core us"),
        ("CHORUS", None, "core us"),
        ("US", None, "you ess"),  # prefer="true" wins
    ]
    as_json = [e.model_dump() for e in entries]
    text = "Chorus says tomato in the US."
    by_pls = np.concatenate([c.samples for c in voice.stream(text, lexicon=PLS)])
    by_json = np.concatenate([c.samples for c in voice.stream(text, lexicon=as_json)])
    assert np.array_equal(by_pls, by_json)


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ('<!DOCTYPE lexicon [<!ENTITY a "b">]><lexicon><lexeme><grapheme>&a;</grapheme></lexeme></lexicon>', "DOCTYPE"),
        ("<lexicon><lexeme><grapheme>two words</grapheme><alias>x</alias></lexeme></lexicon>", "multi-word"),
        ("<lexicon><lexeme><grapheme>x</grapheme></lexeme></lexicon>", "needs a <phoneme> or an <alias>"),
        ('<lexicon alphabet="x-sampa"><lexeme/></lexicon>', "x-sampa"),
        ("<lexicon><lexeme><grapheme>x</grapheme><phoneme>ʘ</phoneme></lexeme></lexicon>", "U+0298"),
        ("<lexicon><lexeme>", "malformed"),
        ("<words/>", "root element must be <lexicon>"),
    ],
)
def test_bad_pls_is_refused_by_name(document: str, fragment: str) -> None:
    from addons.text.pls import LexiconFileError, read_pls

    with pytest.raises(LexiconFileError) as caught:
        read_pls(document)
    assert fragment in str(caught.value)
    with pytest.raises(ValueError, match="lexicon"):
        addons.engine.voice.SynthesisOptions(lexicon=document)


def test_an_addon_ships_lexicon_files(edit_addon: Callable[..., Path]) -> None:
    def add(m: dict[str, Any]) -> None:
        m["frontend"]["lexicon_files"] = ["words.pls", "more.json"]

    directory = edit_addon("tiny-fast", add)
    (directory / "words.pls").write_text(
        '<lexicon alphabet="x-espeak"><lexeme><grapheme>tomato</grapheme><alias>potato</alias></lexeme></lexicon>'
    )
    (directory / "more.json").write_text('[{"grapheme": "Chorus", "alias": "core us"}]')
    voice = addons.load(directory)
    assert _by_word(list(voice.sentences("A tomato.")))[1][1] == _by_word(list(voice.sentences("A potato.")))[1][1]
    asked = [LexiconEntry(grapheme="Chorus", alias="core us")]
    assert _by_word(list(voice.sentences("Chorus."))) == _by_word(list(voice.sentences("Chorus.", asked)))

    def outside(m: dict[str, Any]) -> None:
        m["frontend"]["lexicon_files"] = ["../../elsewhere.json"]

    with pytest.raises(addons.AddonError, match="outside the addon directory"):
        addons.load(edit_addon("tiny-taco", outside))


# -- lexicon errors: one code, a message naming the entry, the limit stated (issue 22) ------------

BAD_LEXICONS = [
    (
        [{"grapheme": "Kyiv", "alias": "keev"}, {"grapheme": "click", "phonemes": "ʘa", "alphabet": "ipa"}],
        "entry [1] 'click': phonemes 'ʘa' (alphabet 'ipa'): IPA symbol 'ʘ' (U+0298) has no English espeak-ng phoneme",
    ),
    (
        [{"grapheme": "Kyiv", "phonemes": "k[i:v"}],
        "entry [0] 'Kyiv': phonemes: 'k[i:v' has '[' (U+005B), which espeak-ng mnemonics (printable ASCII "
        "without [ or ]) never have; for IPA, give alphabet 'ipa'",
    ),
    (
        [{"grapheme": "two words", "alias": "x"}],
        "entry [0] 'two words': grapheme: one word without spaces, got 'two words' (give each word an entry of its own)",
    ),
    ([{"grapheme": "Kyiv"}], "entry [0] 'Kyiv': give exactly one of phonemes or alias"),
    ([5], "entry [0]: must be an object {'grapheme': ..., 'phonemes' or 'alias': ...}"),
    ([{"grapheme": "x", "alias": "y"}] * 101, "at most 100 entries per request, got 101"),
    ("<lexicon><lexeme>", "PLS: malformed XML: no element found (at line 1, column 18)"),
    (
        "<lexicon><lexeme><grapheme>x</grapheme><phoneme>ʘ</phoneme></lexeme></lexicon>",
        "PLS: lexeme 'x': phonemes 'ʘ' (alphabet 'ipa'): IPA symbol 'ʘ' (U+0298) has no English espeak-ng phoneme "
        "(at line 1, column 60)",
    ),
]


def _speech(body: SpeechRequest) -> dict[str, str]:
    return {}


@pytest.mark.parametrize(("lexicon", "problem"), BAD_LEXICONS)
def test_every_lexicon_error_over_http_is_invalid_lexicon(lexicon: Any, problem: str) -> None:
    app = FastAPI()  # the edge's own error mapping (serve_app.schemas), without Ray
    install_error_handlers(app)
    app.post("/v1/audio/speech")(_speech)
    got = TestClient(app).post("/v1/audio/speech", json={"model": "m", "input": "Kyiv.", "lexicon": lexicon})
    assert got.status_code == 400
    assert got.json() == {
        "error": {
            "message": f"lexicon: {problem}",
            "type": "invalid_request_error",
            "param": "lexicon",
            "code": "invalid_lexicon",
        }
    }


@pytest.mark.parametrize(("lexicon", "problem"), BAD_LEXICONS)
def test_every_lexicon_error_on_the_websocket_is_invalid_lexicon(lexicon: Any, problem: str) -> None:
    import json

    from serve_app.realtime import ProtocolError, SpeechSocket

    socket = SpeechSocket.__new__(SpeechSocket)  # _parse reads nothing of the connection
    with pytest.raises(ProtocolError) as caught:
        socket._parse(json.dumps({"type": "open", "model": "m", "context_id": "c1", "lexicon": lexicon}))
    error = caught.value
    assert (str(error), error.code, error.param, error.context_id) == (
        f"lexicon: {problem}",
        "invalid_lexicon",
        "lexicon",
        "c1",
    )


def test_the_python_api_holds_the_one_declared_limit() -> None:
    """One options model: in process as over HTTP, at most MAX_REQUEST_LEXICON entries, and the
    refusal names the field."""
    from addons.engine.options import MAX_REQUEST_LEXICON, OptionError, SynthesisOptions, resolve_options

    assert MAX_REQUEST_LEXICON == 100
    manifest = addons.load("chorus-fast").manifest
    with pytest.raises(OptionError) as caught:
        resolve_options(manifest, lexicon=[{"grapheme": "x", "alias": "y"}] * 101)
    assert str(caught.value) == "lexicon: at most 100 entries per request, got 101"
    assert (caught.value.param, caught.value.code) == ("lexicon", "invalid_option")
    with pytest.raises(ValueError) as bad:
        SynthesisOptions(lexicon=[{"grapheme": "click", "phonemes": "ʘa", "alphabet": "ipa"}])
    assert bad.value.errors()[0]["type"] == "invalid_lexicon"  # type: ignore[attr-defined]
    assert len(SynthesisOptions(lexicon=[{"grapheme": "x", "alias": "y"}] * 100).lexicon) == 100
    with pytest.raises(OptionError) as speed:
        resolve_options(manifest, speed=9)
    assert speed.value.param == "speed" and "4" in str(speed.value)
    with pytest.raises(OptionError) as voice:
        resolve_options(manifest, voice="nobody")
    assert (voice.value.param, voice.value.code) == ("voice", "voice_not_found")


def test_a_json_lexicon_file_names_the_bad_entry(tmp_path: Path) -> None:
    from addons.text.pls import LexiconFileError, load_lexicon

    path = tmp_path / "words.json"
    path.write_text(
        '[{"grapheme": "Kyiv", "alias": "keev"}, {"grapheme": "click", "phonemes": "ʘa", "alphabet": "ipa"}]'
    )
    with pytest.raises(LexiconFileError) as caught:
        load_lexicon(path)
    assert str(caught.value) == (
        f"{path}: entry [1] 'click': phonemes 'ʘa' (alphabet 'ipa'): IPA symbol 'ʘ' (U+0298) has no English "
        "espeak-ng phoneme"
    )
