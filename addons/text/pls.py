"""Pronunciation lexicons from files and documents: W3C PLS (a subset) and Chorus's JSON form.

A lexicon is a list of :class:`addons.formats.manifest.LexiconEntry`: a word said as phonemes (espeak-ng
mnemonics or IPA) or read as an alias. They come from a request (``lexicon``: a JSON list, or a
PLS document as a string), from the server's configuration (``lexicons`` in the Serve arguments)
and from the addon (``frontend.lexicon`` and ``frontend.lexicon_files``); the first entry that
matches a word wins, in that order.

PLS read here: ``<lexicon alphabet>`` of ``<lexeme>``s, each with one or more ``<grapheme>``
(one word each) and a ``<phoneme>`` (``alphabet`` "ipa" or "x-espeak") or an ``<alias>``; where
a lexeme has several, the one with ``prefer="true"``, else the first. ``<example>`` is ignored.
As for SSML, a document type declaration is refused, so no entity is ever expanded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from xml.parsers import expat

from pydantic import BeforeValidator, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError

from addons.text.config import LexiconEntry, format_validation_error
from addons.text.ssml import guarded_parser

__all__ = ["LEXICON_ERROR", "MAX_LEXICON_BYTES", "LexiconFileError", "LexiconInput", "load_lexicon", "read_pls"]

MAX_LEXICON_BYTES = 8 << 20
#: The error type (and so the HTTP error code) of every problem with a request's ``lexicon``.
LEXICON_ERROR = "invalid_lexicon"
_ALPHABETS = {"ipa": "ipa", "x-espeak": "x-espeak", "espeak": "x-espeak"}
_ELEMENTS = {
    "lexicon": {"version", "alphabet", "xmlns", "xml:lang", "xmlns:xsi", "xsi:schemaLocation", "xml:base"},
    "lexeme": {"role", "xml:id"},
    "grapheme": {"orthography"},
    "phoneme": {"alphabet", "prefer"},
    "alias": {"prefer"},
    "example": set(),
    "meta": {"name", "content", "http-equiv"},
    "metadata": set(),
}


class LexiconFileError(ValueError):
    """A lexicon document or file that cannot be read; the message names the place and the reason."""


class _PlsReader:
    def __init__(self) -> None:
        self.parser = guarded_parser(self._refuse, self._start, self._end, self._text)
        self.stack: list[str] = []
        self.alphabet = "ipa"
        self.entries: list[LexiconEntry] = []
        self.graphemes: list[str] = []
        self.said: list[tuple[str, str, str, bool]] = []  # (kind, text, alphabet, preferred)
        self.text: list[str] = []
        self.attrs: dict[str, str] = {}

    def fail(self, message: str) -> LexiconFileError:
        where = f"line {self.parser.CurrentLineNumber}, column {self.parser.CurrentColumnNumber + 1}"
        return LexiconFileError(f"PLS: {message} (at {where})")

    def _refuse(self, *_: object) -> None:
        raise self.fail("a document type declaration (<!DOCTYPE>) or entity declaration is not allowed")

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        local = name.rsplit(" ", 1)[-1]
        if not self.stack and local != "lexicon":
            raise self.fail(f"the root element must be <lexicon>, not <{local}>")
        if local not in _ELEMENTS:
            raise self.fail(f"<{local}> is not supported (supported: {', '.join(f'<{e}>' for e in _ELEMENTS)})")
        for key in attrs:
            if key not in _ELEMENTS[local] and not key.startswith("xmlns"):
                raise self.fail(f"<{local}> attribute '{key}' is not supported")
        if local == "lexicon":
            self.alphabet = self._alphabet(attrs.get("alphabet", "ipa"))
        elif local == "lexeme":
            self.graphemes, self.said = [], []
        self.stack.append(local)
        self.text, self.attrs = [], dict(attrs)

    def _alphabet(self, value: str) -> str:
        if value.strip().lower() not in _ALPHABETS:
            raise self.fail(f"alphabet '{value}' is not supported (supported: ipa, x-espeak)")
        return _ALPHABETS[value.strip().lower()]

    def _text(self, data: str) -> None:
        self.text.append(data)

    def _end(self, name: str) -> None:
        local = self.stack.pop()
        text = " ".join("".join(self.text).split())
        if local == "grapheme":
            if not text or " " in text:
                raise self.fail(f"grapheme {text!r}: give one word (multi-word graphemes are not supported)")
            self.graphemes.append(text)
        elif local in ("phoneme", "alias"):
            alphabet = self._alphabet(self.attrs["alphabet"]) if "alphabet" in self.attrs else self.alphabet
            self.said.append((local, text, alphabet, self.attrs.get("prefer", "false").lower() == "true"))
        elif local == "lexeme":
            self._lexeme()
        self.text = []

    def _lexeme(self) -> None:
        if not self.graphemes:
            raise self.fail("a <lexeme> needs a <grapheme>")
        if not self.said:
            raise self.fail(f"lexeme {self.graphemes[0]!r} needs a <phoneme> or an <alias>")
        kind, text, alphabet, _ = next((s for s in self.said if s[3]), self.said[0])
        for grapheme in self.graphemes:
            raw: dict[str, Any] = {"grapheme": grapheme}
            raw.update({"phonemes": text, "alphabet": alphabet} if kind == "phoneme" else {"alias": text})
            try:
                self.entries.append(LexiconEntry.model_validate(raw))
            except ValidationError as exc:
                raise self.fail(f"lexeme {grapheme!r}: {format_validation_error(exc)}") from None


def read_pls(document: str | bytes) -> list[LexiconEntry]:
    """The entries of a PLS document; raises :class:`LexiconFileError` naming the problem and where."""
    reader = _PlsReader()
    try:
        reader.parser.Parse(document.encode("utf-8") if isinstance(document, str) else document, True)
    except expat.ExpatError as exc:
        message = expat.ErrorString(exc.code) if exc.code else str(exc)
        raise LexiconFileError(
            f"PLS: malformed XML: {message} (at line {exc.lineno}, column {exc.offset + 1})"
        ) from None
    return reader.entries


def _entries(raw: Any) -> list[LexiconEntry]:
    if not isinstance(raw, list):
        raise LexiconFileError("a JSON lexicon is a list of entries ({'grapheme': ..., 'phonemes' or 'alias': ...})")
    entries = []
    for i, item in enumerate(raw):
        try:
            entries.append(LexiconEntry.model_validate(item))
        except ValidationError as exc:
            raise LexiconFileError(f"{_entry_name(raw, i)}: {format_validation_error(exc)}") from None
    return entries


def load_lexicon(path: Path) -> list[LexiconEntry]:
    """A lexicon file: PLS (``.pls``, ``.xml``) or a JSON list of entries (``.json``)."""
    try:
        if path.stat().st_size > MAX_LEXICON_BYTES:
            raise LexiconFileError(f"{path}: larger than {MAX_LEXICON_BYTES >> 20} MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise LexiconFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        if path.suffix.lower() in (".pls", ".xml"):
            return read_pls(data)
        if path.suffix.lower() == ".json":
            return _entries(json.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LexiconFileError(f"{path}: not valid JSON ({exc})") from None
    except LexiconFileError as exc:
        raise LexiconFileError(f"{path}: {exc}") from None
    raise LexiconFileError(f"{path}: a lexicon file is .pls, .xml (PLS) or .json")


def _pls_or_list(value: Any) -> Any:
    """A request's ``lexicon``: a list of entries as it is, or a PLS document (a string) read."""
    if isinstance(value, str):
        try:
            return [e.model_dump() for e in read_pls(value)]
        except LexiconFileError as exc:
            raise ValueError(str(exc)) from None
    return value


def _entry_name(entries: Any, i: int) -> str:
    """Entry ``i`` of a list as a message names it: ``entry [3] 'Kyiv'``."""
    item = entries[i] if isinstance(entries, list) and i < len(entries) else None
    grapheme = item.get("grapheme") if isinstance(item, dict) else getattr(item, "grapheme", None)
    return f"entry [{i}] {grapheme!r}" if isinstance(grapheme, str) else f"entry [{i}]"


def _problem(error: Any, entries: Any) -> str:
    """One pydantic error about a request's lexicon, in words that name the entry and the problem."""
    loc, kind, ctx = tuple(error["loc"]), error["type"], error.get("ctx") or {}
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "too_long" and not loc:
        return f"at most {ctx['max_length']} entries per request, got {ctx['actual_length']}"
    if kind == "list_type" and not loc:
        return "must be a list of entries (each {'grapheme': ..., 'phonemes' or 'alias': ...}) or a PLS document"
    if not loc or not isinstance(loc[0], int):
        return message
    field = ".".join(str(part) for part in loc[1:])
    if kind.endswith("_type") and not field:
        message = "must be an object {'grapheme': ..., 'phonemes' or 'alias': ...}"
    return f"{_entry_name(entries, loc[0])}: {field + ': ' if field else ''}{message}"


def _one_lexicon_error(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Every problem with a request's lexicon (a bad entry, too many of them, a PLS document that
    cannot be read) as one error of type :data:`LEXICON_ERROR`, so each edge reports it alike."""
    try:
        return handler(value)
    except ValidationError as exc:
        message = "; ".join(_problem(error, value) for error in exc.errors()[:3])
        raise PydanticCustomError(LEXICON_ERROR, "{problem}", {"problem": message}) from None


#: A request's pronunciation overrides: a JSON list of entries, or a PLS document as a string.
#: The field's own ``max_length`` is checked inside, so too many entries is an ``invalid_lexicon`` too.
LexiconInput = Annotated[list[LexiconEntry], BeforeValidator(_pls_or_list), WrapValidator(_one_lexicon_error)]
