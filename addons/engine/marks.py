"""Speech marks: when each sentence, word and phoneme is heard in the output audio.

They come from the decoder's own alignment, not from a guess: a duration model's upsampler says
which phoneme each frame repeats (after ``speed``), an attention decoder which phoneme each
frame attended to (``blocks.base.Request.align``). One mel frame is exactly ``hop_length`` samples,
so a mark's time is the sample offset of its first frame, exactly, across sentences and chunks.

A mark names what was spoken (``value``: the word as written, the phoneme symbol, the sentence)
and where it was written (``text_start``/``text_end``: character offsets in the original input;
a phoneme carries its word's). Pauses are phonemes too (``_``, ``_:``), in no word. An SSML
document's ``<mark name>`` is an ``ssml`` mark, heard where the next word starts (or where the
stream is, before a break or at the end), with the element's offset in the document.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from addons.formats.manifest import AddonManifest
from addons.text.frontend import Frontend, Sentence, Word, pause_ms
from blocks import parse_stack
from blocks.stages import provides_alignment

__all__ = [
    "MARK_TYPES",
    "TEXT_PREFIX",
    "MarkTracker",
    "SpeechMark",
    "provides_marks",
    "sentence_arrays",
    "split_text_features",
]

MARK_TYPES = ("sentence", "ssml", "word", "phoneme")
#: Features whose key starts with this describe the text (for marks), not the model's input.
TEXT_PREFIX = "text."


def provides_marks(manifest: AddonManifest) -> bool:
    """Whether an addon's stack aligns frames to phonemes (checked without building anything)."""
    return provides_alignment(parse_stack(manifest.stack))


def sentence_arrays(sentence: Sentence) -> dict[str, np.ndarray]:
    """What marks need of a sentence, as plain arrays to travel beside its features (offsets
    relative to the sentence's own text)."""
    base = sentence.start
    spans = [(w.start - base, w.end - base) for w in sentence.words]
    return {
        f"{TEXT_PREFIX}sentence": np.asarray(sentence.text, dtype=np.str_),
        f"{TEXT_PREFIX}phonemes": np.asarray(sentence.phonemes, dtype=np.str_),
        f"{TEXT_PREFIX}phoneme_words": np.asarray(sentence.phoneme_words, dtype=np.int64),
        f"{TEXT_PREFIX}word_spans": np.asarray(spans, dtype=np.int64).reshape(-1, 2),
    }


def split_text_features(features: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the model's features, the text description from :func:`sentence_arrays`)."""
    model = {k: v for k, v in features.items() if not k.startswith(TEXT_PREFIX)}
    text = {k[len(TEXT_PREFIX) :]: v for k, v in features.items() if k.startswith(TEXT_PREFIX)}
    return model, text


@dataclass(frozen=True)
class SpeechMark:
    type: str  # one of MARK_TYPES
    value: str
    start_ms: float
    end_ms: float
    start_sample: int  # offsets in the stream's audio
    end_sample: int
    text_start: int  # character offsets in the original input
    text_end: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MarkTracker:
    """One stream's marks: fed each sentence and the alignment of each of its mel chunks, in order.

    ``sentence(s)`` starts a sentence; ``frames(tokens, n)`` adds a chunk of ``n`` frames (its
    per-frame phoneme indices, or None: no alignment); ``end()`` returns the sentence's marks.
    ``offset`` shifts text offsets (a sentence taken from a longer input).
    """

    def __init__(self, hop_length: int, sample_rate: int, kinds: Iterable[str] = MARK_TYPES) -> None:
        self.hop, self.rate = hop_length, sample_rate
        self.kinds = frozenset(kinds)
        unknown = sorted(self.kinds - set(MARK_TYPES))
        if unknown:
            raise ValueError(f"unknown mark type {unknown[0]!r} (known: {', '.join(MARK_TYPES)})")
        self.frame = 0  # frames of the stream before the current sentence
        self._sentence: Sentence | None = None
        self._offset = 0
        self._tokens: list[np.ndarray] = []
        self._frames = 0
        self._aligned = True
        self.part(None)

    def part(
        self,
        text: str | None,
        spans: Sequence[tuple[int, int]] | None = None,
        written: Iterable[tuple[str, str]] = (),
        bookmarks: Iterable[tuple[str, int, int]] = (),
    ) -> None:
        """The sentences that follow are read from ``text`` (an SSML part, or the whole input).

        ``spans``: where each character of ``text`` was written in the document (None: ``text``
        is the document); ``written``: placeholder characters and the text they stand for;
        ``bookmarks``: ``<mark>`` names with their offsets in ``text`` and in the document.
        """
        self.original = text
        self._normalized, self._spans_in_part = Frontend.normalize_with_offsets(text) if text is not None else ("", [])
        self._cursor = 0
        self._spans = spans
        self._written = dict(written)
        self._bookmarks = sorted(bookmarks, key=lambda b: b[1])

    def part_end(self) -> list[SpeechMark]:
        """The marks of the part not yet heard (after its last word): heard where the stream is."""
        names, self._bookmarks = [(name, at) for name, _, at in self._bookmarks], []
        return self._ssml(names, self.frame)

    def pause(self, frames: int, bookmarks: Iterable[tuple[str, int]] = ()) -> list[SpeechMark]:
        """A silence of ``frames`` in the stream; ``bookmarks`` (name, offset in the document) are
        heard at its start."""
        marks = self._ssml(list(bookmarks), self.frame)
        self.frame += frames
        return marks

    def _ssml(self, bookmarks: list[tuple[str, int]], frame: int) -> list[SpeechMark]:
        if "ssml" not in self.kinds:
            return []
        return [self._mark("ssml", name, frame, frame, at, at) for name, at in bookmarks]

    def _doc(self, a: int, b: int) -> tuple[int, int]:
        """Offsets ``a``..``b`` of the current part's text as offsets in the document."""
        spans = self._spans
        if spans is None or not spans:
            return a, b
        a, b = min(max(a, 0), len(spans) - 1), min(max(b, a + 1), len(spans))
        return min(s for s, _ in spans[a:b]), max(e for _, e in spans[a:b])

    def _said(self, text: str) -> str:
        """``text`` with its placeholders as written."""
        return "".join(self._written.get(ch, ch) for ch in text) if self._written else text

    def sentence(self, sentence: Sentence, offset: int = 0) -> None:
        self._sentence, self._offset = sentence, offset
        self._tokens, self._frames, self._aligned = [], 0, True

    def restart(self) -> None:
        """Forget the current sentence's frames (it is being decoded again from its start)."""
        self._tokens, self._frames, self._aligned = [], 0, True

    def sentence_text(self, arrays: dict[str, np.ndarray]) -> None:
        """Start a sentence known as its text and :func:`sentence_arrays` (from another process).

        With a part's text given (:meth:`part`), offsets are mapped into it (the sentence is looked
        up in the normalized part from where the previous one ended); without, they stay relative
        to the sentence's own text.
        """
        text = str(arrays.get("sentence", np.asarray("")))
        spans = arrays.get("word_spans", np.zeros((0, 2), np.int64)).tolist()
        at, source = 0, text
        if self.original is not None:
            found = self._normalized.find(text, self._cursor)
            if found >= 0:
                self._cursor = found + len(text)
                part, source = self._spans_in_part, self.original
                spans = [(part[found + a][0], part[found + b - 1][1]) for a, b in spans]
                at = part[found][0] if found < len(part) else 0
        words = tuple(Word(source[a:b], a, b) for a, b in spans)
        phonemes = tuple(str(p) for p in arrays.get("phonemes", np.zeros(0, np.str_)).tolist())
        phoneme_words = tuple(int(w) for w in arrays.get("phoneme_words", np.zeros(0, np.int64)).tolist())
        self.sentence(Sentence(text, phonemes, np.zeros(len(phonemes), np.int64), words, phoneme_words, at))

    def frames(self, tokens: np.ndarray | None, n: int) -> None:
        if tokens is None or len(tokens) != n:
            self._aligned = False
        else:
            self._tokens.append(np.asarray(tokens, dtype=np.int64))
        self._frames += n

    def end(self) -> list[SpeechMark]:
        """The finished sentence's marks, in time order (sentence, then its words and phonemes)."""
        sentence, begin = self._sentence, self.frame
        self.frame += self._frames
        if sentence is None or not self._aligned or not self._tokens or not self.kinds:
            return []
        tokens = tokens_all = np.concatenate(self._tokens)
        count = len(sentence.phonemes)
        valid = (tokens >= 0) & (tokens < count)
        frames = np.arange(len(tokens))[valid]
        tokens = tokens[valid]
        first = np.full(count, -1)
        last = np.full(count, -1)
        # first and last frame of each phoneme (an attention focus may come back to one)
        first[tokens[::-1]] = frames[::-1]
        last[tokens] = frames
        off = self._offset
        index = np.asarray(sentence.phoneme_words[:count], dtype=np.int64)
        words: list[tuple[Word, int, int]] = []  # each heard word, its first frame and the frame after it
        for w, word in enumerate(sentence.words):
            mine = (index == w) & (first >= 0)
            if mine.any():
                words.append((word, int(first[mine].min()), int(last[mine].max()) + 1))
        marks: list[SpeechMark] = []
        if "sentence" in self.kinds and self._frames:
            start = sentence.words[0].start if sentence.words else sentence.start
            end = sentence.words[-1].end if sentence.words else sentence.start + len(sentence.text)
            marks.append(
                self._text_mark("sentence", sentence.text, begin, begin + self._frames, start + off, end + off)
            )
        if "word" in self.kinds:
            for word, a, b in words:
                marks.append(self._text_mark("word", word.text, begin + a, begin + b, word.start + off, word.end + off))
        if "phoneme" in self.kinds:
            for t in np.argsort(first, kind="stable"):
                if first[t] < 0:
                    continue
                w = sentence.phoneme_words[t] if t < len(sentence.phoneme_words) else -1
                span = (sentence.words[w].start, sentence.words[w].end) if w >= 0 else (sentence.start, sentence.start)
                a, b = int(first[t]), int(last[t]) + 1
                marks.append(
                    self._text_mark("phoneme", sentence.phonemes[t], begin + a, begin + b, span[0] + off, span[1] + off)
                )
        marks += self._bookmarks_before(sorted(words + self._pauses(sentence, tokens_all), key=lambda w: w[1]), begin)
        marks.sort(key=lambda m: (m.start_sample, MARK_TYPES.index(m.type)))
        return marks

    @staticmethod
    def _pauses(sentence: Sentence, tokens: np.ndarray) -> list[tuple[Word, int, int]]:
        """The sentence's pause words (SSML breaks inside it) with their silence's frames: the runs
        of frames aligned to no phoneme (-1), in order."""
        pauses = [w for w in sentence.words if pause_ms(w.text) is not None]
        if not pauses:
            return []
        silent = np.concatenate([[False], tokens == -1, [False]])
        edges = np.flatnonzero(silent[1:] != silent[:-1])
        runs = list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
        return [(word, a, b) for word, (a, b) in zip(pauses, runs, strict=False)]

    def _bookmarks_before(self, words: list[tuple[Word, int, int]], begin: int) -> list[SpeechMark]:
        """The part's ``<mark>``s that come before one of these heard words: heard as it starts."""
        marks: list[SpeechMark] = []
        while self._bookmarks and words:
            name, at, doc = self._bookmarks[0]
            following = next((a for word, a, _ in words if word.start + self._offset >= at), None)
            if following is None:
                break
            self._bookmarks.pop(0)
            marks += self._ssml([(name, doc)], begin + following)
        return marks

    def _text_mark(self, kind: str, value: str, a: int, b: int, text_start: int, text_end: int) -> SpeechMark:
        """A mark of text of the current part: its value as written, its offsets in the document."""
        doc_start, doc_end = self._doc(text_start, text_end)
        return self._mark(kind, self._said(value), a, b, doc_start, doc_end)

    def _mark(self, kind: str, value: str, a: int, b: int, text_start: int, text_end: int) -> SpeechMark:
        sa, sb = a * self.hop, b * self.hop
        return SpeechMark(kind, value, 1000.0 * sa / self.rate, 1000.0 * sb / self.rate, sa, sb, text_start, text_end)
