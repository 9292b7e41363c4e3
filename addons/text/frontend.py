"""The text front-end: normalization, sentence splitting, espeak-ng G2P and phoneme ids.

The phoneme sequence comes from espeak-ng's phoneme events (the same path the teacher corpus
is labelled with), so a voice sees at run time exactly the symbols it was trained on.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from addons.text.config import FrontendConfig, LexiconEntry

__all__ = [
    "Frontend",
    "Lexicon",
    "LexiconError",
    "Sentence",
    "TextError",
    "Word",
    "pause_mark",
    "pause_ms",
    "split_edges",
]

_SENTENCE_END = re.compile(r"[.!?;:…][\"')\]]*(\s+)")  # the whitespace group is where one ends
# A full stop after these does not end a sentence ("Dr. Smith", "e.g. this", "J. R. R. Tolkien").
_ABBREVIATION = re.compile(
    r"(?:^|\s)(?:mr|mrs|ms|dr|prof|sr|jr|st|mt|vs|etc|e\.g|i\.e|cf|no|fig|approx|inc|ltd|co|[a-z])\.$", re.IGNORECASE
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
#: A pause inside a sentence (an SSML <break> between words) is written in the text as one
#: character of Unicode's plane-15 private use area: U+F0000 + its milliseconds (at most 65,533).
PAUSE_BASE, PAUSE_LAST = 0xF0000, 0xFFFFD


def pause_mark(ms: float) -> str:
    """The character that stands for a pause of ``ms`` milliseconds inside a sentence."""
    return chr(PAUSE_BASE + max(1, min(round(ms), PAUSE_LAST - PAUSE_BASE)))


def pause_ms(word: str) -> int | None:
    """The milliseconds of a pause mark (see :func:`pause_mark`), or None for any other word."""
    return ord(word) - PAUSE_BASE if len(word) == 1 and PAUSE_BASE <= ord(word) <= PAUSE_LAST else None


def _only_pauses(text: str) -> bool:
    return all(pause_ms(w) is not None for w in text.split())


_EDGE_PUNCTUATION = ".,;:!?\"'()[]{}…“”‘’«»—–-"


def split_edges(word: str) -> tuple[str, str, str]:
    """A written word as (punctuation before, the word proper, punctuation after): ``"“Kyiv,”"`` is
    ``("“", "Kyiv", ",”")``; a word of punctuation only is its own core. Every path that places a
    word or looks it up in a lexicon cuts it here, so they all agree on what the word is."""
    start = len(word) - len(word.lstrip(_EDGE_PUNCTUATION))
    end = len(word.rstrip(_EDGE_PUNCTUATION))
    if start >= end:
        return "", word, ""
    return word[:start], word[start:end], word[end:]


#: Where each character of a normalized text was written: ``(start, end)`` in the text as sent.
Spans = list[tuple[int, int]]


class TextError(ValueError):
    """Text that cannot be synthesized (empty, nothing speakable)."""


class LexiconError(TextError):
    """A pronunciation override the voice cannot say (phonemes outside its inventory)."""


@dataclass(frozen=True)
class Word:
    """A whitespace-separated word as the caller wrote it: ``text == original[start:end]``."""

    text: str
    start: int  # character offsets in the text given to Frontend.sentences
    end: int


@dataclass(frozen=True)
class Sentence:
    text: str
    phonemes: tuple[str, ...]
    ids: np.ndarray  # int64 [T]; 0 is padding and never appears here
    words: tuple[Word, ...] = ()
    #: per phoneme, the index in ``words`` of the word it was read from; -1 for pauses
    phoneme_words: tuple[int, ...] = ()
    start: int = 0  # where the sentence starts in the text given to Frontend.sentences
    #: pauses inside the sentence: (index of the phoneme they follow, -1 before the first; milliseconds)
    pauses: tuple[tuple[int, int], ...] = ()


class Lexicon:
    """Pronunciation overrides by word: the first entry that matches wins (a request's before the
    addon's). A word matches without its edge punctuation, and case-blind unless the entry says."""

    def __init__(self, entries: Sequence[LexiconEntry | Mapping[str, Any]] = (), normalize: bool = False) -> None:
        self.normalize = normalize  # also read money, times, dates, units as words (addons.text.normalize)
        self.entries: dict[str, list[LexiconEntry]] = {}
        for raw in entries:
            entry = raw if isinstance(raw, LexiconEntry) else LexiconEntry.model_validate(raw)
            self.entries.setdefault(split_edges(entry.grapheme)[1].casefold(), []).append(entry)

    def __bool__(self) -> bool:
        return bool(self.entries) or self.normalize

    def find(self, word: str) -> LexiconEntry | None:
        """The entry for ``word`` as written (its edge punctuation is no part of it), or None."""
        core = split_edges(word)[1]
        for entry in self.entries.get(core.casefold(), ()):
            if not entry.case_sensitive or split_edges(entry.grapheme)[1] == core:
                return entry
        return None


def _nfkc_runs(text: str) -> Iterator[tuple[int, int]]:
    """``text`` cut into runs that NFKC normalizes each on its own, as it would the whole: a run
    starts at each character whose decomposition starts with a character of combining class 0 and
    that composes with nothing before it, so a base and its combining marks, or the jamo of one
    Hangul syllable, stay in one run."""
    start = 0
    for i in range(1, len(text)):
        ch = text[i]
        if ch.isascii():  # an ASCII character never composes with what comes before it
            yield start, i
            start = i
            continue
        if unicodedata.combining(unicodedata.normalize("NFKD", ch)[0]):
            continue  # a combining mark (or a form of one, such as U+FF9E) may move or compose backwards
        head = text[start:i]
        if unicodedata.normalize("NFKC", head + ch) == unicodedata.normalize("NFKC", head) + unicodedata.normalize(
            "NFKC", ch
        ):
            yield start, i
            start = i
    if text:
        yield start, len(text)


def _normalized(written: str, core: str, cut: int, previous: str | None) -> str:
    """``written`` with its core read as words where espeak-ng would misread it."""
    from addons.text.normalize import spoken

    end = cut + len(core)
    if written[end : end + 1] == "." and (said := spoken(core + ".", previous)) is not None:
        return written[:cut] + said + written[end + 1 :]  # an abbreviation takes its full stop
    said = spoken(core, previous)
    return written if said is None else written[:cut] + said + written[end:]


class Frontend:
    def __init__(self, config: FrontendConfig) -> None:
        self.config = config
        self.ids = {p: i + 1 for i, p in enumerate(config.phonemes)}

    @staticmethod
    def normalize(text: str) -> str:
        """NFKC, control characters to spaces, runs of whitespace collapsed (the text of
        :meth:`normalize_with_offsets`, so sentences found in one are found in the other)."""
        if text.isascii():  # NFKC leaves ASCII as it is
            return " ".join(_CONTROL.sub(" ", text).split())
        return Frontend.normalize_with_offsets(text)[0]

    @staticmethod
    def normalize_with_offsets(text: str) -> tuple[str, Spans]:
        """:meth:`normalize`, and for each character of the result where it was written in ``text``:
        ``(start, end)``. A character NFKC composed ("e" + U+0301 -> "é", Hangul jamo -> a syllable)
        spans everything it was made of; each character a compatibility form expands to ("ﬁ" -> "fi")
        spans that form; a space that stands for a run of whitespace, the run's first character."""
        chars: list[str] = []
        spans: Spans = []
        for a, b in _nfkc_runs(text):
            for c in _CONTROL.sub(" ", unicodedata.normalize("NFKC", text[a:b])):
                if c.isspace():
                    if not chars or chars[-1] == " ":
                        continue
                    c = " "
                chars.append(c)
                spans.append((a, b))
        if chars and chars[-1] == " ":
            chars.pop()
            spans.pop()
        return "".join(chars), spans

    @staticmethod
    def split_sentences(text: str) -> list[str]:
        """Sentences of normalized ``text``, not split after common abbreviations or initials."""
        cuts = [m.start(1) for m in _SENTENCE_END.finditer(text)]
        pieces = [text[a:b].strip() for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        sentences: list[str] = []
        for piece in pieces:
            if not piece:
                continue
            if sentences and (_ABBREVIATION.search(sentences[-1]) or _only_pauses(sentences[-1])):
                sentences[-1] = f"{sentences[-1]} {piece}"
            else:
                sentences.append(piece)
        if len(sentences) > 1 and _only_pauses(sentences[-1]):  # a pause after the last sentence ends it
            sentences[-2:] = [f"{sentences[-2]} {sentences[-1]}"]
        return sentences

    def phonemize(self, text: str) -> list[str]:
        """espeak-ng phoneme names for ``text`` ([] if nothing in it is speakable)."""
        from addons.text.espeak import get_espeak

        try:
            return get_espeak(self.config.voice).phonemize(text)
        except ValueError:
            return []

    def phonemize_aligned(self, text: str, phoneme_input: bool = False) -> list[tuple[str, int]]:
        """(phoneme, offset in ``text`` of the word it was read from) pairs ([] if nothing is speakable);
        ``phoneme_input``: ``[[...]]`` in ``text`` are phoneme mnemonics."""
        from addons.text.espeak import get_espeak

        try:
            events = get_espeak(self.config.voice).phonemize_aligned(text, phoneme_input)
        except ValueError:
            return []
        return [(e.name, e.text_position) for e in events]

    def sentences(
        self, text: str, lexicon: Sequence[LexiconEntry | Mapping[str, Any]] = (), normalize: bool = True
    ) -> Iterator[Sentence]:
        """Speakable sentences of ``text``, prepared lazily (a long text costs nothing up front).

        Each carries its words with their offsets in ``text`` and, per phoneme, which word it was
        read from. ``lexicon`` entries (then the addon's) override how words are said, and
        ``normalize`` reads money, times, dates, units and abbreviations as words
        (:mod:`addons.text.normalize`; the marks keep the words as written). Raises
        :class:`TextError` on the first pull if ``text`` is empty or nothing in it is speakable,
        or a lexicon entry gives phonemes the voice does not have, so a caller fails before
        producing any output.
        """
        overrides = Lexicon([*lexicon, *self.config.lexicon], normalize)
        normalized, spans = self.normalize_with_offsets(text)
        if not normalized:
            raise TextError("text is empty")
        produced = False
        at = 0
        for part in self.split_sentences(normalized):
            at = normalized.find(part, at)
            for sentence in self._bounded(part, at, text, spans, overrides):
                produced = True
                yield sentence
            at += len(part)
        if not produced:
            raise TextError(f"text has no speakable characters: {text[:40]!r}")

    def _bounded(self, part: str, at: int, original: str, spans: Spans, lexicon: Lexicon) -> Iterator[Sentence]:
        """``part`` (at offset ``at`` of the normalized text, whose characters were written at ``spans``
        of ``original``) as sentences within the phoneme bound."""
        words = part.split()
        spoken, starts, overridden = self._spoken_text(words, lexicon)
        raw = self.phonemize_aligned(spoken, phoneme_input=any(e.phonemes for e in overridden.values()))
        aligned: list[tuple[str, int]] = []
        for p, pos in raw:
            index = max(0, bisect.bisect_right(starts, pos) - 1) if pos >= 0 else -1
            entry = overridden.get(index)
            if p not in self.ids:
                if entry is not None and entry.phonemes is not None and not p.startswith("_"):
                    raise LexiconError(
                        f"lexicon entry {entry.grapheme!r}: phoneme {p!r} is not in this voice's inventory "
                        f"(it has: {' '.join(self.config.phonemes)})"
                    )
                continue
            aligned.append((p, -1 if p.startswith("_") else index))
        if not aligned:
            return
        if len(aligned) > self.config.max_sentence_phonemes and len(words) > 1:
            first = " ".join(words[: len(words) // 2])
            yield from self._bounded(first, at, original, spans, lexicon)
            yield from self._bounded(part[len(first) + 1 :], at + len(first) + 1, original, spans, lexicon)
            return
        placed, found = [], 0
        for word in words:
            found = part.find(word, found)
            lead, core, _ = split_edges(word)  # "apples," is the word "apples"
            begin = at + found + len(lead)
            a, b = spans[begin][0], spans[begin + len(core) - 1][1]
            placed.append(Word(original[a:b], a, b))
            found += len(word)
        phoneme_words = tuple(w for _, w in aligned)
        ids = np.asarray([self.ids[p] for p, _ in aligned], dtype=np.int64)
        pauses = []
        for i, word in enumerate(words):
            ms = pause_ms(word)
            if ms is not None:  # after the last phoneme of the words before it
                before = [k for k, w in enumerate(phoneme_words) if 0 <= w < i]
                pauses.append((before[-1] if before else -1, ms))
        yield Sentence(
            part, tuple(p for p, _ in aligned), ids, tuple(placed), phoneme_words, spans[at][0], tuple(pauses)
        )

    @staticmethod
    def _spoken_text(words: list[str], lexicon: Lexicon) -> tuple[str, list[int], dict[int, LexiconEntry]]:
        """The text espeak-ng reads for ``words``: lexicon entries applied (an alias read instead,
        phonemes as ``[[...]]``), where each word starts in it, and which words were overridden."""
        cut = [split_edges(w) for w in words]
        entries = [lexicon.find(core) if lexicon.entries else None for _, core, _ in cut]
        phoneme_input = any(e is not None and e.phonemes is not None for e in entries)
        pieces: list[str] = []
        starts: list[int] = []
        overridden: dict[int, LexiconEntry] = {}
        at = 0
        for i, (written, (before, core, after), entry) in enumerate(zip(words, cut, entries, strict=True)):
            if pause_ms(written) is not None:
                piece = ""  # a pause says nothing; the decoder stage adds its silence
            elif entry is not None:
                piece = before + _said(entry, before) + after
                overridden[i] = entry
            elif lexicon.normalize:
                piece = _normalized(written, core, len(before), cut[i - 1][1] if i else None)
            else:
                piece = written
            if phoneme_input and (entry is None or entry.alias is not None):
                piece = piece.replace("[[", "[ [")  # text and aliases stay text
            pieces.append(piece)
            starts.append(at)
            at += len(piece) + 1
        return " ".join(pieces), starts, overridden


def _said(entry: LexiconEntry, before: str) -> str:
    """What espeak-ng reads for a word a lexicon entry overrides, after the punctuation ``before`` it.

    espeak-ng takes ``[[`` as phoneme input only where a word may start: after a quote or bracket
    (``“[[k'i:v]]``) it reads the brackets as text and says nothing, so a space comes between
    (it reads ``“ [[k'i:v]]`` as it reads ``“keev``); after a hyphen it does already.
    """
    if entry.alias is not None:
        return entry.alias
    return f"{' ' if before and not before.endswith('-') else ''}[[{entry.phonemes}]]"
