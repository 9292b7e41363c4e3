"""An SSML subset, read into a script: parts of text said with their own settings, and pauses.

Supported: ``<speak>`` (the root), ``<p>``, ``<s>``, ``<break time strength>``, ``<prosody rate
volume>``, ``<phoneme alphabet ph>`` (IPA, or ``x-espeak`` mnemonics), ``<sub alias>``, ``<say-as
interpret-as format>`` (characters, spell-out, cardinal, number, ordinal, digits, telephone, date)
and ``<mark name>``. Anything else is an :class:`SSMLError` naming the tag or attribute and where it
is (line, column): markup is never read aloud, and nothing is silently dropped.

The XML is read with expat, and a document type declaration is refused before anything in it is
read, so no entity can be declared: no entity expansion ("billion laughs"), no external entities.
Only XML's five predefined entities and character references are read.

How the script is said (``addons.engine.driver.speak``, in process and on a
server): each :class:`Part` is split into sentences by the front-end like plain text; its ``rate``
multiplies the request's speed and its ``volume_db`` adds to the voice's gain. A :class:`Pause` is
exact digital silence of a whole number of mel frames (the vocoder's stream is finished before it
and started again after it, so the audio after a break is exactly the audio of that text said
alone). A change of volume also starts a new vocoder stream, so the gain applies to exactly its
part's audio. ``<sub>``, ``<say-as>`` and ``<phoneme>`` become one placeholder word each, said
through a lexicon entry of the part (an alias, or phonemes), so speech marks name the words as
written and give their offsets in the document.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from xml.parsers import expat

from addons.text.config import LexiconEntry
from addons.text.frontend import TextError, pause_mark
from addons.text.ipa import ESPEAK_MNEMONICS, ipa_to_espeak
from addons.text.normalize import cardinal, ordinal, year
from blocks.tempo import MAX_SPEED, MIN_SPEED

__all__ = [
    "MAX_BREAK_MS",
    "Part",
    "Pause",
    "SSMLError",
    "guarded_parser",
    "is_ssml",
    "parse",
    "pause_frames",
    "plain_text",
    "script_of",
]

MAX_BREAK_MS = 10_000.0  # one <break>; as Amazon Polly
MAX_DEPTH = 32
MAX_ELEMENTS = 2_000
#: Placeholder words for <sub>, <say-as> and <phoneme>: characters of Unicode's private use area.
_PLACEHOLDER_BASE, _PLACEHOLDER_LAST = 0xE000, 0xF8FF

_BREAK_STRENGTH_MS = {"none": 0.0, "x-weak": 100.0, "weak": 250.0, "medium": 400.0, "strong": 700.0, "x-strong": 1000.0}
_RATE_WORDS = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "default": 1.0, "fast": 1.33, "x-fast": 1.75}
_VOLUME_WORDS = {
    "silent": -120.0,
    "x-soft": -12.0,
    "soft": -6.0,
    "medium": 0.0,
    "default": 0.0,
    "loud": 6.0,
    "x-loud": 12.0,
}
_MIN_RATE, _MAX_RATE = 0.2, 4.0
_MAX_GAIN_DB = 24.0

_ANYWHERE = frozenset({"xml:lang", "xml:base", "xml:space"})  # accepted on every element, not acted on
_ATTRIBUTES: dict[str, frozenset[str]] = {
    "speak": frozenset({"version", "xmlns", "xmlns:xsi", "xsi:schemaLocation"}),
    "p": frozenset(),
    "s": frozenset(),
    "break": frozenset({"time", "strength"}),
    "prosody": frozenset({"rate", "volume"}),
    "phoneme": frozenset({"alphabet", "ph"}),
    "sub": frozenset({"alias"}),
    "say-as": frozenset({"interpret-as", "format", "detail"}),
    "mark": frozenset({"name"}),
}
_REQUIRED = {"phoneme": ("ph",), "sub": ("alias",), "say-as": ("interpret-as",), "mark": ("name",)}
_EMPTY = frozenset({"break", "mark"})  # elements that take no content
_WORDLIKE = frozenset({"phoneme", "sub", "say-as"})  # their content is text only, said as one word


class SSMLError(TextError):
    """Markup that cannot be read: malformed, unsupported, or a value out of range."""


@dataclass(frozen=True)
class Part:
    """Text said with one set of settings; its sentences are split as plain text's are.

    ``spans[i]`` is where character ``i`` of ``text`` was written in the document (start, end);
    ``written`` maps each placeholder character to the text it stands for; ``marks`` are the
    ``<mark>`` names in it, each with its offset in ``text`` (heard when the next word starts) and
    in the document.
    """

    text: str
    spans: tuple[tuple[int, int], ...] | None = None  # None: text is the document itself
    rate: float = 1.0
    volume_db: float = 0.0
    lexicon: tuple[LexiconEntry, ...] = ()
    written: tuple[tuple[str, str], ...] = ()
    marks: tuple[tuple[str, int, int], ...] = ()

    def options(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """Resolved request options (``addons.engine.options.ResolvedOptions``) as this part says them:
        a changed copy through their ``replace`` (a plain mapping: a changed dict).

        Raises :class:`SSMLError` when the part's rate takes the speed outside the range the voices take
        (``blocks.tempo.MIN_SPEED`` to ``MAX_SPEED``).
        """
        if self.rate == 1.0 and not self.volume_db and not self.lexicon:
            return options
        changes: dict[str, Any] = {}
        if self.rate != 1.0:
            speed = float(options.get("speed", 1.0)) * self.rate
            if not MIN_SPEED <= speed <= MAX_SPEED:
                raise SSMLError(
                    f"<prosody rate> {self.rate:g}x at speed {options.get('speed', 1.0)} gives speed {speed:.3g}, "
                    f"outside {MIN_SPEED:g} to {MAX_SPEED:g}"
                )
            changes["speed"] = speed
        if self.volume_db:
            changes["gain_db"] = float(options.get("gain_db", 0.0)) + self.volume_db
        if self.lexicon:
            changes["lexicon"] = [e.model_dump() for e in self.lexicon] + list(options.get("lexicon", ()))
        replace = getattr(options, "replace", None)
        return replace(**changes) if callable(replace) else {**options, **changes}


@dataclass(frozen=True)
class Pause:
    """Silence of ``ms`` milliseconds (rounded to whole mel frames); ``marks`` (name, offset in the
    document) are heard at its start."""

    ms: float
    marks: tuple[tuple[str, int], ...] = ()


def pause_frames(ms: float, sample_rate: int, hop_length: int) -> int:
    """The whole number of mel frames closest to ``ms`` (within half a frame of it)."""
    return max(0, round(ms * sample_rate / (1000.0 * hop_length)))


def is_ssml(text: str) -> bool:
    """Whether ``text`` is meant as markup: it starts with an element, an XML declaration or a
    document type declaration (``<speak``, ``<?xml``, ``<!DOCTYPE``, ``<p>``...). Such text is read
    as SSML, so markup is refused with a reason rather than read aloud; "<3" stays text."""
    return re.match(r"\s*<[A-Za-z?!]", text) is not None


def plain_text(text: str) -> list[Part | Pause]:
    """The script of plain text: one part, the text itself."""
    return [Part(text)]


def script_of(text: str, input_format: str = "text") -> list[Part | Pause]:
    """What to say: an SSML document's script (``input_format`` "ssml", or a ``<speak>`` root),
    else the text as one part. Raises :class:`SSMLError` on bad markup."""
    if is_ssml(text):
        return parse(text)
    if input_format == "ssml":
        if not text.lstrip().startswith("<"):
            raise SSMLError("SSML: the input is not an SSML document: wrap it in <speak>...</speak>")
        return parse(text)
    return plain_text(text)


# -- reading the document ------------------------------------------------------------------------


def guarded_parser(
    refuse: Callable[..., None],
    start: Callable[[str, dict[str, str]], None],
    end: Callable[[str], None],
    text: Callable[[str], None],
) -> expat.XMLParserType:
    """An expat parser that calls ``refuse`` (which raises) at a document type declaration or an
    entity declaration, before anything in it is read, and never reads parameter entities: no DTD,
    no entity expansion, no external entities."""
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    return parser


@dataclass
class _Settings:
    rate: float = 1.0
    volume_db: float = 0.0


@dataclass
class _Open:
    """An element being read: its name, where it started, and what its text collects into."""

    name: str
    position: str
    start: int
    settings: _Settings
    attrs: dict[str, str] = field(default_factory=dict)
    chars: list[str] = field(default_factory=list)  # a word-like element's content
    spans: list[tuple[int, int]] = field(default_factory=list)


class _Reader:
    def __init__(self, document: str) -> None:
        self.document = document
        self.data = document.encode("utf-8")
        # byte offset -> character offset (expat reports bytes)
        self._chars = [0] * (len(self.data) + 1)
        at = 0
        for i, ch in enumerate(document):
            n = len(ch.encode("utf-8"))
            for k in range(n):
                self._chars[at + k] = i
            at += n
        self._chars[at] = len(document)
        self.parser = guarded_parser(self._doctype, self._start, self._end, self._text)
        self.parser.EntityDeclHandler = self._entity
        self.parser.ProcessingInstructionHandler = self._instruction
        self.stack: list[_Open] = []
        self.elements = 0
        self.script: list[Part | Pause] = []
        self.placeholders = 0
        # the part being collected
        self.chars: list[str] = []
        self.spans: list[tuple[int, int]] = []
        self.lexicon: list[LexiconEntry] = []
        self.written: list[tuple[str, str]] = []
        self.marks: list[tuple[str, int, int]] = []
        self.settings = _Settings()  # the settings of the text collected so far
        self.spoken = False

    # -- positions and errors
    def where(self) -> str:
        return f"line {self.parser.CurrentLineNumber}, column {self.parser.CurrentColumnNumber + 1}"

    def offset(self) -> int:
        return self._chars[min(max(self.parser.CurrentByteIndex, 0), len(self.data))]

    def fail(self, message: str) -> SSMLError:
        return SSMLError(f"SSML: {message} (at {self.where()})")

    # -- expat handlers
    def _doctype(self, *_: object) -> None:
        raise self.fail("a document type declaration (<!DOCTYPE>) is not allowed: no DTDs, no entity declarations")

    def _entity(self, *_: object) -> None:
        raise self.fail("entity declarations are not allowed")

    def _instruction(self, target: str, _data: str) -> None:
        raise self.fail(f"processing instruction <?{target}?> is not supported")

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise self.fail(f"more than {MAX_ELEMENTS} elements")
        if len(self.stack) >= MAX_DEPTH:
            raise self.fail(f"elements nested deeper than {MAX_DEPTH}")
        if not self.stack and name != "speak":
            raise self.fail(f"the root element must be <speak>, not <{name}>")
        if self.stack and name == "speak":
            raise self.fail("<speak> inside <speak>")
        if name not in _ATTRIBUTES:
            known = ", ".join(f"<{n}>" for n in _ATTRIBUTES)
            raise self.fail(f"<{name}> is not supported (supported: {known})")
        for key in attrs:
            if key not in _ATTRIBUTES[name] and key not in _ANYWHERE and not key.startswith("xmlns:"):
                allowed = ", ".join(sorted(_ATTRIBUTES[name])) or "none"
                raise self.fail(f"<{name}> attribute '{key}' is not supported (supported: {allowed})")
        for key in _REQUIRED.get(name, ()):
            if key not in attrs:
                raise self.fail(f"<{name}> needs a '{key}' attribute")
        parent = self.stack[-1] if self.stack else None
        if parent is not None and (parent.name in _WORDLIKE or parent.name in _EMPTY):
            raise self.fail(f"<{parent.name}> takes only text, not <{name}>")
        settings = parent.settings if parent is not None else _Settings()
        if name == "prosody":
            settings = _Settings(
                settings.rate * _rate(attrs["rate"], self) if "rate" in attrs else settings.rate,
                settings.volume_db + _volume(attrs["volume"], self) if "volume" in attrs else settings.volume_db,
            )
            if not _MIN_RATE <= settings.rate <= _MAX_RATE:
                raise self.fail(f"<prosody rate> gives {settings.rate:g}x, outside {_MIN_RATE:g} to {_MAX_RATE:g}")
            if settings.volume_db > _MAX_GAIN_DB:
                raise self.fail(f"<prosody volume> gives +{settings.volume_db:g} dB, more than +{_MAX_GAIN_DB:g} dB")
        element = _Open(name, self.where(), self.offset(), settings, dict(attrs))
        if name in ("p", "s"):
            self.flush()
        elif name == "break":
            self.pause(_break_ms(attrs, self))
        elif name == "mark":
            self.marks.append((attrs["name"], len(self.chars), self.offset()))
        self.stack.append(element)

    def _end(self, name: str) -> None:
        element = self.stack.pop()
        if element.name in ("p", "s"):
            self.flush()
        elif element.name in _WORDLIKE:
            self.word(element)

    def _text(self, data: str) -> None:
        element = self.stack[-1] if self.stack else None
        spans = self._spans(data)
        if element is None:
            return
        if element.name in _EMPTY:
            if data.strip():
                raise self.fail(f"<{element.name}> takes no text")
            return
        if element.name in _WORDLIKE:
            element.chars.extend(data)
            element.spans.extend(spans)
            return
        self.add(data, spans, element.settings)

    def _spans(self, data: str) -> list[tuple[int, int]]:
        """Where each character of ``data`` (just read) was written: itself, or its whole entity."""
        at = self.offset()
        doc = self.document
        if doc.startswith("&", at):  # an entity or character reference (a bare & is not XML)
            end = doc.find(";", at)
            return [(at, end + 1 if end >= 0 else at + 1)] * len(data)
        if doc.startswith(data, at):
            return [(at + i, at + i + 1) for i in range(len(data))]
        found = doc.find(data, at)  # CDATA
        if found >= 0:
            return [(found + i, found + i + 1) for i in range(len(data))]
        return [(at, at + 1)] * len(data)

    # -- building the script
    def add(self, data: str, spans: list[tuple[int, int]], settings: _Settings) -> None:
        if data.strip() and self.spoken and settings != self.settings:
            self.flush()
        if data.strip():
            self.settings = settings
            self.spoken = True
        self.chars.extend(data)
        self.spans.extend(spans)

    def word(self, element: _Open) -> None:
        """A <sub>, <say-as> or <phoneme>: one placeholder word, said through a lexicon entry."""
        written = " ".join("".join(element.chars).split())
        if not written and element.name != "sub":
            raise self.fail(f"<{element.name}> (from {element.position}) has no text")
        if self.placeholders > _PLACEHOLDER_LAST - _PLACEHOLDER_BASE:
            raise self.fail("too many <sub>, <say-as> and <phoneme> elements")
        mark = chr(_PLACEHOLDER_BASE + self.placeholders)
        self.placeholders += 1
        attrs = element.attrs
        try:
            if element.name == "sub":
                entry = LexiconEntry(grapheme=mark, alias=attrs["alias"].strip() or " ", case_sensitive=True)
            elif element.name == "say-as":
                said = say_as(attrs["interpret-as"], written, attrs.get("format"))
                entry = LexiconEntry(grapheme=mark, alias=said, case_sensitive=True)
            else:
                ph, alphabet = _phonemes(attrs, self)  # IPA kept as written too, for voices that read IPA
                entry = LexiconEntry(grapheme=mark, phonemes=ph, alphabet=alphabet, case_sensitive=True)
        except SSMLError as exc:
            raise SSMLError(f"{exc.args[0]} (<{element.name}> at {element.position})") from None
        except ValueError as exc:  # the entry's own validation (lengths, characters)
            raise SSMLError(f"SSML: <{element.name}> at {element.position}: {_first_line(exc)}") from None
        span = (element.spans[0][0], element.spans[-1][1]) if element.spans else (element.start, element.start)
        self.add(f" {mark} ", [span] * 3, element.settings)
        self.lexicon.append(entry)
        self.written.append((mark, written))

    def pause(self, ms: float) -> None:
        """A <break>: a pause mark in the text, where the words around it are said as one sentence
        (the decoder stage adds its silence after the word before it); between parts, a Pause."""
        if ms <= 0:
            return  # strength="none": no pause, and the sentence goes on
        if not self.spoken:
            self.flush()
            self.script.append(Pause(ms))
            return
        at = self.offset()
        self.chars.extend(f" {pause_mark(ms)} ")
        self.spans.extend([(at, at)] * 3)

    def flush(self) -> None:
        """End the part being collected (a sentence boundary)."""
        text = "".join(self.chars)
        if text.strip():
            self.script.append(
                Part(
                    text,
                    tuple(self.spans),
                    self.settings.rate,
                    self.settings.volume_db,
                    tuple(self.lexicon),
                    tuple(self.written),
                    tuple(self.marks),
                )
            )
        elif self.marks:  # marks with nothing said after them: heard where the stream is
            self.script.append(Pause(0.0, tuple((name, doc) for name, _, doc in self.marks)))
        self.chars, self.spans, self.lexicon, self.written, self.marks = [], [], [], [], []
        self.spoken = False

    def read(self) -> list[Part | Pause]:
        try:
            self.parser.Parse(self.data, True)
        except expat.ExpatError as exc:
            message = expat.ErrorString(exc.code) if exc.code else str(exc)
            raise SSMLError(f"SSML: malformed XML: {message} (at line {exc.lineno}, column {exc.offset + 1})") from None
        self.flush()
        return self.script


def parse(document: str) -> list[Part | Pause]:
    """The script of an SSML document; raises :class:`SSMLError` naming what is wrong and where."""
    script = _Reader(document).read()
    if not any(isinstance(item, Part) and any(c.isalnum() for c in item.text) for item in script) and not any(
        isinstance(item, Part) and item.lexicon for item in script
    ):
        raise SSMLError("SSML: the document has nothing to say")
    return script


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[-1].strip() if str(exc) else type(exc).__name__


# -- attribute values --------------------------------------------------------------------------


def _rate(value: str, reader: _Reader) -> float:
    v = value.strip().lower()
    if v in _RATE_WORDS:
        return _RATE_WORDS[v]
    if m := re.fullmatch(r"([+-]?)(\d+(?:\.\d+)?)%", v):
        sign, number = m.group(1), float(m.group(2))
        return 1.0 + (number if sign == "+" else -number) / 100.0 if sign else number / 100.0
    if m := re.fullmatch(r"\d+(?:\.\d+)?", v):
        return float(m.group(0))
    raise reader.fail(
        f"<prosody rate='{value}'>: give a percentage ('150%', '+20%'), a factor ('1.5') or one of "
        + ", ".join(_RATE_WORDS)
    )


def _volume(value: str, reader: _Reader) -> float:
    v = value.strip().lower()
    if v in _VOLUME_WORDS:
        return _VOLUME_WORDS[v]
    if m := re.fullmatch(r"([+-]?\d+(?:\.\d+)?)\s*db", v):
        return float(m.group(1))
    raise reader.fail(
        f"<prosody volume='{value}'>: give decibels ('+6dB', '-3dB') or one of " + ", ".join(_VOLUME_WORDS)
    )


def _break_ms(attrs: dict[str, str], reader: _Reader) -> float:
    if "time" in attrs:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)\s*", attrs["time"].lower())
        if m is None:
            raise reader.fail(f"<break time='{attrs['time']}'>: give milliseconds or seconds ('500ms', '1.5s')")
        ms = float(m.group(1)) * (1000.0 if m.group(2) == "s" else 1.0)
        if ms > MAX_BREAK_MS:
            raise reader.fail(f"<break time='{attrs['time']}'> is longer than {MAX_BREAK_MS / 1000:g} s")
        return ms
    strength = attrs.get("strength", "medium").strip().lower()
    if strength not in _BREAK_STRENGTH_MS:
        raise reader.fail(f"<break strength='{strength}'>: give one of " + ", ".join(_BREAK_STRENGTH_MS))
    return _BREAK_STRENGTH_MS[strength]


# -- <phoneme>: IPA or espeak-ng mnemonics ------------------------------------------------------


def _phonemes(attrs: dict[str, str], reader: _Reader) -> tuple[str, Literal["ipa", "x-espeak"]]:
    """The element's phonemes and their alphabet (IPA is checked to map to mnemonics here)."""
    alphabet = attrs.get("alphabet", "ipa").strip().lower()
    ph = attrs["ph"].strip()
    if alphabet == "ipa":
        try:
            ipa_to_espeak(ph)
        except ValueError as exc:
            raise SSMLError(f"SSML: <phoneme ph='{ph}'>: {exc}") from None
        return ph, "ipa"
    if alphabet in ("x-espeak", "espeak"):
        if not ph or not ESPEAK_MNEMONICS.match(ph):
            raise SSMLError(f"SSML: <phoneme alphabet='{alphabet}' ph='{ph}'>: espeak-ng mnemonics are printable ASCII")
        return ph, "x-espeak"
    raise SSMLError(f"SSML: <phoneme alphabet='{alphabet}'> is not supported (supported: ipa, x-espeak)")


# -- <say-as> -----------------------------------------------------------------------------------

_LETTERS = dict(
    zip(
        "abcdefghijklmnopqrstuvwxyz",
        [
            "ay",
            "bee",
            "see",
            "dee",
            "ee",
            "ef",
            "gee",
            "aitch",
            "eye",
            "jay",
            "kay",
            "el",
            "em",
            "en",
            "oh",
            "pee",
            "cue",
            "ar",
            "ess",
            "tee",
            "you",
            "vee",
            "double-you",
            "ex",
            "why",
            "zee",
        ],
        strict=True,
    )
)
_DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_SYMBOLS = {
    "+": "plus", "-": "dash", "&": "and", "@": "at", "#": "hash", "%": "percent", "*": "star", "/": "slash",
    ".": "dot", "_": "underscore", "$": "dollar", "=": "equals", ":": "colon",
}  # fmt: skip
_MONTH_NAMES = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
_SAY_AS = ("characters", "spell-out", "verbatim", "cardinal", "number", "ordinal", "digits", "telephone", "date")


def say_as(kind: str, text: str, fmt: str | None = None) -> str:
    """The words ``text`` is read as for ``<say-as interpret-as=kind>``; raises :class:`SSMLError`."""
    kind = kind.strip().lower()
    if kind in ("characters", "spell-out", "verbatim"):
        return _spelled(text)
    if kind in ("cardinal", "number"):
        return _cardinal(text)
    if kind == "ordinal":
        m = re.fullmatch(r"(\d[\d,]*)(st|nd|rd|th)?\.?", text.strip(), re.IGNORECASE)
        if m is None:
            raise SSMLError(f"SSML: say-as ordinal: {text!r} is not a whole number")
        return ordinal(int(m.group(1).replace(",", "")))
    if kind == "digits":
        if not re.fullmatch(r"[\d\s]+", text):
            raise SSMLError(f"SSML: say-as digits: {text!r} has characters that are not digits")
        return " ".join(_DIGITS[int(d)] for d in text if d.isdigit())
    if kind == "telephone":
        return _telephone(text)
    if kind == "date":
        return _date(text, (fmt or "mdy").strip().lower())
    raise SSMLError(f"SSML: say-as interpret-as='{kind}' is not supported (supported: {', '.join(_SAY_AS)})")


def _spelled(text: str) -> str:
    said: list[str] = []
    for ch in text:
        low = ch.lower()
        if low in _LETTERS:
            said.append(_LETTERS[low])
        elif ch.isdigit() and ch.isascii():
            said.append(_DIGITS[int(ch)])
        elif ch in _SYMBOLS:
            said.append(_SYMBOLS[ch])
        elif ch.isspace():
            continue
        elif ch.isalpha():
            said.append(ch)  # a letter of another alphabet: espeak-ng names it
        else:
            raise SSMLError(f"SSML: say-as characters: cannot spell {ch!r}")
    if not said:
        raise SSMLError("SSML: say-as characters: nothing to spell")
    return " ".join(said)


def _cardinal(text: str) -> str:
    m = re.fullmatch(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?", text.strip())
    if m is None:
        raise SSMLError(f"SSML: say-as cardinal: {text!r} is not a number")
    sign, whole, frac = m.groups()
    n = int(whole.replace(",", ""))
    if n >= 10**15:
        raise SSMLError(f"SSML: say-as cardinal: {text!r} is too large (at most 15 digits)")
    words = cardinal(n) + (" point " + " ".join(_DIGITS[int(d)] for d in frac) if frac else "")
    return ("minus " if sign == "-" else "") + words


def _telephone(text: str) -> str:
    if not re.fullmatch(r"[\d\s()+\-./x]+", text) or not any(c.isdigit() for c in text):
        raise SSMLError(f"SSML: say-as telephone: {text!r} is not a telephone number")
    groups = [g for g in re.split(r"[\s()\-./]+", text) if g]
    said: list[str] = []
    for g in groups:
        words = []
        for c in g:
            if c.isdigit():
                words.append(_DIGITS[int(c)])
            elif c == "+":
                words.append("plus")
            elif c == "x":
                words.append("extension")
        said.append(" ".join(words))
    return ", ".join(s for s in said if s)


def _date(text: str, fmt: str) -> str:
    if not fmt or set(fmt) - set("ymd") or any(fmt.count(c) > 1 for c in fmt):
        raise SSMLError(f"SSML: say-as date format='{fmt}': give letters y, m, d in order (mdy, dmy, ymd, md, ym, y)")
    fields = [f for f in re.split(r"[\s/\-.,]+", text.strip()) if f]
    if len(fields) != len(fmt):
        raise SSMLError(f"SSML: say-as date: {text!r} does not have the fields of format '{fmt}'")
    values: dict[str, int] = {}
    for letter, value in zip(fmt, fields, strict=True):
        if letter == "m" and not value.isdigit():
            names = [n.lower() for n in _MONTH_NAMES]
            hit = [i for i, n in enumerate(names) if len(value) >= 3 and n.startswith(value.lower().rstrip("."))]
            if not hit:
                raise SSMLError(f"SSML: say-as date: {value!r} is not a month")
            values["m"] = hit[0] + 1
        elif value.isdigit():
            values[letter] = int(value)
        else:
            raise SSMLError(f"SSML: say-as date: {value!r} is not a number")
    if not 1 <= values.get("m", 1) <= 12 or not 1 <= values.get("d", 1) <= 31:
        raise SSMLError(f"SSML: say-as date: {text!r} is not a date (month 1-12, day 1-31)")
    if "y" in values and values["y"] < 100 and len(fields[fmt.index("y")]) == 2:
        values["y"] += 2000 if values["y"] < 50 else 1900
    month = _MONTH_NAMES[values["m"] - 1] if "m" in values else None
    day = ordinal(values["d"]) if "d" in values else None
    spoken_year = year(values["y"]) if "y" in values and values["y"] >= 1000 else None
    if "y" in values and spoken_year is None:
        spoken_year = cardinal(values["y"])
    if month and day:
        head = f"the {day} of {month}" if fmt.index("d") < fmt.index("m") else f"{month} {day}"
        return f"{head}, {spoken_year}" if spoken_year else head
    return " ".join(w for w in (month, day, spoken_year) if w)
