"""The text front-end: normalization, sentence splitting, espeak-ng G2P and phoneme ids.

The phoneme sequence comes from espeak-ng's phoneme events (the same path the teacher corpus
is labelled with), so a voice sees at run time exactly the symbols it was trained on.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from addons.manifest import FrontendConfig

__all__ = ["Frontend", "Sentence", "TextError"]

_SENTENCE_END = re.compile(r"[.!?;:…][\"')\]]*(\s+)")  # the whitespace group is where one ends
# A full stop after these does not end a sentence ("Dr. Smith", "e.g. this", "J. R. R. Tolkien").
_ABBREVIATION = re.compile(
    r"(?:^|\s)(?:mr|mrs|ms|dr|prof|sr|jr|st|mt|vs|etc|e\.g|i\.e|cf|no|fig|approx|inc|ltd|co|[a-z])\.$", re.IGNORECASE
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class TextError(ValueError):
    """Text that cannot be synthesized (empty, nothing speakable)."""


@dataclass(frozen=True)
class Sentence:
    text: str
    phonemes: tuple[str, ...]
    ids: np.ndarray  # int64 [T]; 0 is padding and never appears here


class Frontend:
    def __init__(self, config: FrontendConfig) -> None:
        self.config = config
        self.ids = {p: i + 1 for i, p in enumerate(config.phonemes)}

    @staticmethod
    def normalize(text: str) -> str:
        """NFKC, control characters to spaces, runs of whitespace collapsed."""
        text = _CONTROL.sub(" ", unicodedata.normalize("NFKC", text))
        return " ".join(text.split())

    @staticmethod
    def split_sentences(text: str) -> list[str]:
        """Sentences of normalized ``text``, not split after common abbreviations or initials."""
        cuts = [m.start(1) for m in _SENTENCE_END.finditer(text)]
        pieces = [text[a:b].strip() for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        sentences: list[str] = []
        for piece in pieces:
            if not piece:
                continue
            if sentences and _ABBREVIATION.search(sentences[-1]):
                sentences[-1] = f"{sentences[-1]} {piece}"
            else:
                sentences.append(piece)
        return sentences

    def phonemize(self, text: str) -> list[str]:
        """espeak-ng phoneme names for ``text`` ([] if nothing in it is speakable)."""
        from addons.espeak import get_espeak

        try:
            return get_espeak(self.config.voice).phonemize(text)
        except ValueError:
            return []

    def sentences(self, text: str) -> Iterator[Sentence]:
        """Speakable sentences of ``text``, prepared lazily (a long text costs nothing up front).

        Raises :class:`TextError` on the first pull if ``text`` is empty or nothing in it is
        speakable, so a caller fails before producing any output.
        """
        normalized = self.normalize(text)
        if not normalized:
            raise TextError("text is empty")
        produced = False
        for part in self.split_sentences(normalized):
            for sentence in self._bounded(part):
                produced = True
                yield sentence
        if not produced:
            raise TextError(f"text has no speakable characters: {text[:40]!r}")

    def _bounded(self, text: str) -> Iterator[Sentence]:
        phonemes = [p for p in self.phonemize(text) if p in self.ids]
        if not phonemes:
            return
        words = text.split()
        if len(phonemes) > self.config.max_sentence_phonemes and len(words) > 1:
            half = len(words) // 2
            yield from self._bounded(" ".join(words[:half]))
            yield from self._bounded(" ".join(words[half:]))
            return
        ids = np.asarray([self.ids[p] for p in phonemes], dtype=np.int64)
        yield Sentence(text, tuple(phonemes), ids)
