"""Piper's text front end (espeak-ng IPA, clause by clause, through a voice's ``phoneme_id_map``)
inside Chorus's own: its normalization, lexicon, SSML pauses, word offsets and lazy sentences.

Piper voices were trained on ids made this way: espeak-ng's IPA for each clause, language switch
flags such as ``(fr)`` removed, the clause's punctuation appended (and a space after ``,`` ``:``
``;``), the string split into codepoints by NFD, a sentence closed where espeak ends one, then
``^ _ p1 _ p2 _ ... pn _ $`` through the id map, skipping symbols the map lacks. This module does the
same with Chorus's own binding of libespeak-ng (``Espeak.clauses_ipa``); it never imports Piper,
which is GPL-3.0.

Each phoneme also keeps the written word it was read from, for speech marks. espeak's IPA words are
paired with the written words of their clause one to one where the counts agree; otherwise (a
number read as several words, words espeak joins) each written word is read alone and the
clause's IPA is lined up with those readings.
"""

from __future__ import annotations

import bisect
import difflib
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from addons.text.config import LexiconEntry, PiperFrontendConfig
from addons.text.espeak import IpaClause, get_espeak
from addons.text.frontend import (
    _EDGE_PUNCTUATION,
    Frontend,
    Lexicon,
    LexiconError,
    Sentence,
    Spans,
    TextError,
    Word,
    pause_ms,
    split_edges,
)

__all__ = ["PiperFrontend"]

_LANGUAGE_FLAG = re.compile(r"\([^)]+\)")  # "(fr)": espeak switched language for a word
_PAD, _BOS, _EOS = "_", "^", "$"
_SPACE_AFTER = (",", ":", ";")  # Piper keeps a space after these: the sentence goes on
#: Chorus sentences read per espeak call at first. The last sentence espeak finds in a window may
#: end only because the window does, so it is read again at the start of the next one.
_WINDOW = 4


class _AliasesOnly(Lexicon):
    """A lexicon as espeak should read the text: aliases are read instead of their word; a phoneme
    entry leaves its word as written, and its IPA later replaces whatever espeak said for it."""

    def find(self, word: str) -> LexiconEntry | None:
        entry = super().find(word)
        return entry if entry is not None and entry.alias is not None else None


@dataclass
class _Piece:
    """An IPA word with the punctuation and spaces after it: ``(symbol, written word or -1)`` pairs."""

    symbols: list[tuple[str, int]] = field(default_factory=list)
    clause_end: bool = False  # a clause ends with this piece (a good place to split a long sentence)


@dataclass
class _Group:
    """One sentence as espeak ended it: its pieces and the window's words it covers, ``[first, last)``."""

    pieces: list[_Piece]
    first: int
    last: int


@dataclass(frozen=True)
class _Window:
    """Written words ``words[first:last]`` of the normalized text and how espeak is to read them."""

    words: list[str]
    spoken: str  # what espeak reads: aliases applied, money and times as words, pause marks dropped
    starts: list[int]  # where each word starts in ``spoken``
    ipa: dict[int, str]  # words said with a lexicon entry's IPA (NFD)


class PiperFrontend(Frontend):
    """:class:`~addons.text.frontend.Frontend`'s interface over Piper's phoneme ids (see the module doc).

    ``sentences`` yields :class:`~addons.text.frontend.Sentence` whose ``ids`` are exactly Piper's for
    that sentence (given ``normalize=False`` and no lexicon entry in it), ``phonemes`` one symbol
    per id, and ``phoneme_words`` the written word each id was read from (-1 for ``^ _ $``, spaces
    and punctuation).
    """

    # Frontend's own methods read only .voice, .lexicon and .max_sentence_phonemes, which both configs have.
    config: PiperFrontendConfig  # type: ignore[assignment]

    def __init__(self, config: PiperFrontendConfig) -> None:
        self.config = config
        self.id_map = {p: tuple(ids) for p, ids in config.phoneme_id_map.items()}
        # Frontend's symbol -> id view, for callers that look a symbol up (symbols with one id only).
        self.ids = {p: ids[0] for p, ids in self.id_map.items() if len(ids) == 1}

    def sentences(
        self, text: str, lexicon: Sequence[LexiconEntry | Mapping[str, Any]] = (), normalize: bool = True
    ) -> Iterator[Sentence]:
        """Speakable sentences of ``text``, split where espeak-ng ends a sentence (as Piper splits
        them), prepared lazily: espeak reads a few sentences ahead, never the whole text.

        Words and ``start`` are offsets in ``text``. ``lexicon`` entries (then the addon's) override
        how words are said: an alias is read instead, an IPA entry is said as written. ``normalize``
        reads money, times, dates and units as words first (Piper does not). Sentences with more ids
        than ``max_sentence_phonemes`` are split at clause, else word, boundaries. Raises
        :class:`TextError` on the first pull if nothing in ``text`` is speakable, and
        :class:`LexiconError` for an entry the voice cannot say (a symbol its id map lacks, or an
        entry given only in espeak mnemonics).
        """
        overrides = Lexicon([*lexicon, *self.config.lexicon], normalize)
        normalized, spans = self.normalize_with_offsets(text)
        if not normalized:
            raise TextError("text is empty")
        produced = False
        for sentence in self._read(_Text(text, normalized, spans), overrides):
            produced = True
            yield sentence
        if not produced:
            raise TextError(f"text has no speakable characters: {text[:40]!r}")

    def _read(self, text: _Text, lexicon: Lexicon) -> Iterator[Sentence]:
        """Sentences of ``text``, read by espeak a window of Chorus sentences at a time."""
        said = _AliasesOnly([e for entries in lexicon.entries.values() for e in entries], lexicon.normalize)
        cuts = [*_sentence_starts(self.split_sentences(text.normalized), text.normalized), len(text.words)]
        first, size = 0, _WINDOW
        while first < len(text.words):
            last = cuts[min(bisect.bisect_right(cuts, first) + size - 1, len(cuts) - 1)]
            groups = self._groups(self._window(text.words[first:last], lexicon, said))
            final = last == len(text.words)
            if not final and len(groups) < 2:  # espeak ended no sentence inside the window
                size *= 2
                continue
            for group in groups if final else groups[:-1]:
                yield from self._within_bound(group, text, first)
            first = last if final else first + groups[-1].first
            size = _WINDOW

    def _window(self, words: list[str], lexicon: Lexicon, said: Lexicon) -> _Window:
        """How espeak reads ``words``: the text with aliases and normalization applied (``said``),
        and the words an IPA entry of ``lexicon`` overrides (checked here, before they are said)."""
        spoken, starts, _ = self._spoken_text(words, said)
        ipa: dict[int, str] = {}
        for i, word in enumerate(words):
            entry = lexicon.find(word) if lexicon.entries else None
            if entry is not None and entry.alias is None:
                ipa[i] = self._checked(entry)
        return _Window(words, spoken, starts, ipa)

    def _checked(self, entry: LexiconEntry) -> str:
        """The IPA of a phoneme entry, as codepoints the voice has (else LexiconError)."""
        if entry.ipa is None:
            raise LexiconError(
                f"lexicon entry {entry.grapheme!r} is written in espeak mnemonics; this voice reads IPA "
                "(give the entry with alphabet 'ipa')"
            )
        ipa = unicodedata.normalize("NFD", entry.ipa)
        for symbol in ipa:
            if symbol not in self.id_map:
                raise LexiconError(
                    f"lexicon entry {entry.grapheme!r}: symbol {symbol!r} is not in this voice's phoneme_id_map"
                )
        return ipa

    def _groups(self, window: _Window) -> list[_Group]:
        """The window's sentences as espeak ends them. A clause that covers no word (a closing quote
        read after the last word) joins a neighbouring sentence."""
        clauses = get_espeak(self.config.voice).clauses_ipa(window.spoken)
        owner = _owners(window, clauses)
        groups: list[_Group] = []
        pieces: list[_Piece] = []
        first = 0
        for c, clause in enumerate(clauses):
            pieces += self._clause_pieces(clause, [i for i, o in enumerate(owner) if o == c], window)
            if not clause.sentence_end and c < len(clauses) - 1:
                continue
            last = max((i + 1 for i, o in enumerate(owner) if o <= c), default=first)
            if last > first:
                groups.append(_Group(pieces, first, last))
                pieces, first = [], last
            elif groups:
                groups[-1].pieces += pieces
                pieces = []
        if not groups:
            groups.append(_Group(pieces, 0, len(window.words)))
        elif pieces:  # clauses after the last word (a closing quote) end the last sentence
            groups[-1].pieces += pieces
        groups[-1].last = len(window.words)  # words after the last clause (pause marks) close it
        return groups

    def _clause_pieces(self, clause: IpaClause, mine: list[int], window: _Window) -> list[_Piece]:
        """``clause`` as Piper spells it (IPA, terminator, space), in pieces owned by written words."""
        tokens = [unicodedata.normalize("NFD", t) for t in _LANGUAGE_FLAG.sub("", clause.ipa).split(" ")]
        speaking = [i for i in mine if i in window.ipa or any(ch.isalnum() for ch in _piece_of(window, i))]
        real = [t for t, token in enumerate(tokens) if token]
        if len(real) == len(speaking):
            owners = {t: [w] * len(tokens[t]) for t, w in zip(real, speaking, strict=True)}
        elif mine:
            shared = self._shared([tokens[t] for t in real], mine, window)
            owners = {real[k]: symbols for k, symbols in shared.items()}
        else:
            owners = {}
        pieces = _spelled(tokens, owners, window)
        tail = clause.terminator + (" " if clause.terminator in _SPACE_AFTER else "")
        if not pieces:
            pieces.append(_Piece())
        pieces[-1].symbols += [(s, -1) for s in tail]
        pieces[-1].clause_end = True
        return pieces

    def _shared(self, tokens: list[str], mine: list[int], window: _Window) -> dict[int, list[int]]:
        """Token index -> the written word of each of its symbols, when espeak's IPA words and the
        written words ``mine`` do not pair up ("1990" says two words, "of which" one).

        Each written word is read alone and the clause's symbols are matched against those
        readings in order (difflib); a token goes whole to the word most of its symbols match,
        unless it holds the only symbols of some word (words espeak joined), which keep theirs.
        """
        reference: list[int] = []  # per symbol of the words read alone, its word
        said: list[str] = []
        for i in mine:
            for symbol in self._alone(_piece_of(window, i)):
                said.append(symbol)
                reference.append(i)
        symbols = [s for t in tokens for s in t]
        if not reference:
            return {}
        labels = _matched(symbols, said, reference)
        spans, at = [], 0
        for t in tokens:
            spans.append(labels[at : at + len(t)])
            at += len(t)
        majority = [max(span, key=span.count) if span else -1 for span in spans]
        keeps = set(majority)
        return {k: span if set(span) - keeps else [majority[k]] * len(span) for k, span in enumerate(spans)}

    def _alone(self, piece: str) -> list[str]:
        """The symbols (NFD, spaces left out) espeak says for ``piece``, one written word, read on its own."""
        core = split_edges(piece)[1]
        if not core.strip(_EDGE_PUNCTUATION):
            return []
        clauses = get_espeak(self.config.voice).clauses_ipa(core)
        return [s for c in clauses for s in unicodedata.normalize("NFD", _LANGUAGE_FLAG.sub("", c.ipa)) if s != " "]

    def _within_bound(self, group: _Group, text: _Text, base: int) -> Iterator[Sentence]:
        """``group`` (words counted from ``base``) as sentences within ``max_sentence_phonemes`` ids,
        split after a clause where one fits, else between words."""
        budget = self.config.max_sentence_phonemes - self._cost([_BOS, _PAD, _EOS])
        chunks = _packed(group.pieces, self._cost, budget)
        bounds = [group.first]
        for chunk in chunks[1:]:
            owned = [w for piece in chunk for _, w in piece.symbols if w >= 0]
            bounds.append(max(bounds[-1], owned[0] if owned else bounds[-1]))
        bounds.append(group.last)
        for k, chunk in enumerate(chunks):
            symbols = [s for piece in chunk for s in piece.symbols]
            sentence = self._sentence(symbols, text, base + bounds[k], base + bounds[k + 1], base)
            if sentence is not None:
                yield sentence

    def _sentence(self, symbols: list[tuple[str, int]], text: _Text, a: int, b: int, base: int) -> Sentence | None:
        """The sentence of words ``[a, b)`` of ``text`` saying ``symbols`` (their words counted from
        ``base``); None if it says nothing but punctuation."""
        ids: list[int] = []
        phonemes: list[str] = []
        owners: list[int] = []
        for symbol, word in [(_BOS, -1), *_padded(symbols, self.id_map, a - base, b - base), (_EOS, -1)]:
            for i in self.id_map[symbol]:
                ids.append(i)
                phonemes.append(symbol)
                owners.append(word)
        if all(w < 0 for w in owners):
            return None
        words = text.words[a:b]
        pauses = []
        for i, written in enumerate(words):
            ms = pause_ms(written)
            if ms is not None:  # after the last phoneme of the words before it
                before = [k for k, w in enumerate(owners) if 0 <= w < i]
                pauses.append((before[-1] if before else -1, ms))
        placed = tuple(text.placed(i) for i in range(a, b))
        start = text.spans[text.offsets[a]][0]
        return Sentence(
            " ".join(words), tuple(phonemes), np.asarray(ids, np.int64), placed, tuple(owners), start, tuple(pauses)
        )

    def _cost(self, symbols: Sequence[str]) -> int:
        """Ids that ``symbols`` take, each followed by the pad (symbols the map lacks take none)."""
        return sum(len(self.id_map[s]) + len(self.id_map[_PAD]) for s in symbols if s in self.id_map)


@dataclass(frozen=True)
class _Text:
    """The text given to ``sentences``, normalized, and its words with their offsets in both."""

    original: str
    normalized: str
    spans: Spans  # per character of ``normalized``, where it was written in ``original``
    words: list[str] = field(init=False)
    offsets: list[int] = field(init=False)  # where each word starts in ``normalized``

    def __post_init__(self) -> None:
        words = self.normalized.split(" ")
        offsets = [0]
        for word in words[:-1]:
            offsets.append(offsets[-1] + len(word) + 1)
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "offsets", offsets)

    def placed(self, i: int) -> Word:
        """Word ``i`` without its edge punctuation ("apples," is "apples"), placed in ``original``."""
        before, core, _ = split_edges(self.words[i])
        begin = self.offsets[i] + len(before)
        a, b = self.spans[begin][0], self.spans[begin + len(core) - 1][1]
        return Word(self.original[a:b], a, b)


def _padded(
    symbols: list[tuple[str, int]], id_map: Mapping[str, tuple[int, ...]], a: int, b: int
) -> Iterator[tuple[str, int]]:
    """Piper's ``_ p1 _ p2 _ ... pn _`` with each symbol's word counted from ``a`` (-1 outside ``[a, b)``)."""
    yield _PAD, -1
    for symbol, word in symbols:
        if symbol in id_map:  # Piper skips what its map lacks
            yield symbol, word - a if a <= word < b else -1
            yield _PAD, -1


def _sentence_starts(pieces: list[str], normalized: str) -> list[int]:
    """Index of the first word of each of Chorus's sentences ``pieces`` of ``normalized``, the first excepted."""
    starts: list[int] = []
    at = words = 0
    for piece in pieces:
        found = normalized.find(piece, at)
        words += normalized.count(" ", at, found)
        if found > 0:
            starts.append(words)
        at = found
    return starts


def _piece_of(window: _Window, i: int) -> str:
    """What espeak reads for written word ``i`` of ``window``."""
    end = window.starts[i + 1] - 1 if i + 1 < len(window.starts) else len(window.spoken)
    return window.spoken[window.starts[i] : end]


def _owners(window: _Window, clauses: list[IpaClause]) -> list[int]:
    """For each written word, the clause it is read in: the one where its first letter is."""
    begins = [c.start for c in clauses]
    owner = []
    for i in range(len(window.words)):
        piece = _piece_of(window, i)
        letter = next((k for k, ch in enumerate(piece) if ch.isalnum()), 0)
        owner.append(max(0, bisect.bisect_right(begins, window.starts[i] + letter) - 1))
    return owner


def _spelled(tokens: list[str], owners: dict[int, list[int]], window: _Window) -> list[_Piece]:
    """A piece per token (IPA word of a clause, NFD, maybe empty): its symbols owned as ``owners``
    says (-1 where it says nothing), then the space after it. A word said with a lexicon entry's
    IPA gets that IPA in place of all its tokens."""
    pieces: list[_Piece] = []
    entry_said = -1
    for t, token in enumerate(tokens):
        words = owners.get(t, [-1] * len(token))
        if words and words[0] in window.ipa:
            if words[0] == entry_said:
                continue  # the entry's IPA stands for this token too
            entry_said = words[0]
            token, words = window.ipa[entry_said], [entry_said] * len(window.ipa[entry_said])
        if pieces:
            pieces[-1].symbols.append((" ", -1))
        pieces.append(_Piece(list(zip(token, words, strict=True))))
    return pieces


def _matched(symbols: list[str], said: list[str], reference: list[int]) -> list[int]:
    """For each of ``symbols``, the ``reference`` label of the symbol of ``said`` it lines up with
    (``difflib``), spread in proportion over a changed run; non-decreasing."""
    labels: list[int] = []
    matcher = difflib.SequenceMatcher(None, symbols, said, autojunk=False)
    for _, i1, i2, j1, j2 in matcher.get_opcodes():
        for k in range(i1, i2):
            if j2 > j1:
                labels.append(reference[j1 + (k - i1) * (j2 - j1) // (i2 - i1)])
            else:  # said in the clause only: with the word before (or after, at the start)
                labels.append(reference[max(0, j1 - 1)] if j1 > 0 else reference[0])
    for k in range(1, len(labels)):
        labels[k] = max(labels[k], labels[k - 1])
    return labels


def _packed(pieces: list[_Piece], cost: Callable[[Sequence[str]], int], budget: int) -> list[list[_Piece]]:
    """``pieces`` in runs costing at most ``budget`` ids each: a run that would overflow is cut after
    its last clause, else before the piece that overflows it (one piece alone may exceed it)."""
    chunks: list[list[_Piece]] = [[]]
    spent = 0
    for piece in pieces:
        price = cost([s for s, _ in piece.symbols])
        if chunks[-1] and spent + price > budget:
            current = chunks[-1]
            cut = max((k + 1 for k, p in enumerate(current) if p.clause_end), default=len(current))
            chunks[-1], rest = current[:cut], current[cut:]
            chunks.append(rest)
            spent = sum(cost([s for s, _ in p.symbols]) for p in rest)
        chunks[-1].append(piece)
        spent += price
    return [chunk for chunk in chunks if chunk]
