"""How close each voice's word marks are to the words in the audio it produced.

    python -m addons.recipes.marks_check [--addons chorus-fast chorus-taco] [--texts FILE] [--out FILE.json]

For each one-sentence text (``--texts``: one per line; default: :data:`TEXTS`, written for this
check and in no training set), the voice speaks it (``normalize`` off: the teacher reads the text
as written) with word marks. espeak-ng, the teacher the voices were distilled from, speaks it too;
its phoneme events say exactly where each of its words starts and ends. A DTW path between the
voice's log-mel and the teacher's (mean absolute difference per band) maps each teacher word
boundary onto the voice's own time axis: where that word starts and ends in the voice's audio.
A mark's error is its distance to that place, in ms, at both ends of each word.

Also checked per text: the words marked are every spoken word, once each, in order, and the
sentence mark ends at the audio's last sample. Prints a table; ``--out`` writes per-text numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import addons
from addons.recipes.corpus import teacher_utterance
from addons.recipes.evaluate import _pairwise, dtw_path

__all__ = ["TEXTS", "check", "main"]

TEXTS = (
    "The library opens at nine and closes after the evening lecture.",
    "Please remember to water the tomatoes before you leave for the weekend.",
    "A quiet river runs behind the old mill on the edge of town.",
    "She painted the kitchen yellow because the morning light was so weak.",
    "Our train was delayed by snow, so we missed the first concert.",
    "He keeps a small notebook for ideas that arrive during long walks.",
    "The children built a castle of sand that the tide washed away.",
    "Every answer raised two new questions for the research team.",
    "I would rather read the letter myself than hear a summary.",
    "The market sells fresh bread, honey and cheese every Saturday.",
    "Nobody expected the small company to win such a large contract.",
    "After dinner they played cards until the candles burned low.",
    "The pilot announced that we would land twenty minutes early.",
    "Bright colors on the map show where the forests used to grow.",
    "Would you mind closing the window while the storm passes?",
    "My grandfather repaired clocks in a shop near the harbor.",
    "The new bridge will carry trains, cars and bicycles across the bay.",
    "Several students asked for more time to finish the project.",
    "When the music stopped, the dancers froze in their places.",
    "The recipe calls for butter, flour, sugar and a pinch of salt.",
)


def _teacher_words(voice: addons.Voice, text: str) -> tuple[list[str], list[tuple[int, int]], np.ndarray] | None:
    """The teacher's words, their frame spans in its audio and its log-mel; None when the
    front-end and the teacher do not read the same phonemes (no common ground to compare)."""
    sentences = list(voice.sentences(text, normalize=False))
    if len(sentences) != 1:
        return None
    sentence = sentences[0]
    phonemes, durations, mel = teacher_utterance(text, voice.manifest.mel)
    kept = [(p, int(d)) for p, d in zip(phonemes, durations, strict=True)]
    starts = np.concatenate([[0], np.cumsum([d for _, d in kept])])
    inventory = set(voice.manifest.frontend.phonemes)
    index = [i for i, (p, _) in enumerate(kept) if p in inventory]
    if [kept[i][0] for i in index] != list(sentence.phonemes):
        return None
    words, spans = [], []
    for w, word in enumerate(sentence.words):
        mine = [index[k] for k, pw in enumerate(sentence.phoneme_words) if pw == w]
        if mine:
            words.append(word.text)
            spans.append((int(starts[min(mine)]), int(starts[max(mine) + 1])))
    return words, spans, mel


def _on_voice_axis(path: tuple[np.ndarray, np.ndarray], frame: int) -> float:
    """The voice frame where teacher frame ``frame`` begins along the DTW path (rows: voice)."""
    rows, cols = path
    at = np.nonzero(cols >= frame)[0]
    return float(rows[at[0]]) if at.size else float(rows[-1] + 1)


def check(voice: addons.Voice, text: str) -> dict[str, Any] | None:
    teacher = _teacher_words(voice, text)
    if teacher is None:
        return None
    words, spans, teacher_mel = teacher
    chunks = list(voice.stream(text, with_mel=True, marks=["sentence", "word"], normalize=False))
    mel = np.concatenate([c.mel for c in chunks if c.mel is not None])
    samples = sum(c.samples.size for c in chunks)
    marks = [m for c in chunks for m in c.marks]
    said = [m for m in marks if m.type == "word"]
    path = dtw_path(_pairwise(mel.astype(np.float64), teacher_mel.astype(np.float64), 1))
    frame_ms = 1000.0 * voice.hop_length / voice.sample_rate
    errors = []
    for mark, (a, b) in zip(said, spans, strict=False):
        errors.append(abs(mark.start_sample / voice.hop_length - _on_voice_axis(path, a)) * frame_ms)
        errors.append(abs(mark.end_sample / voice.hop_length - _on_voice_axis(path, b)) * frame_ms)
    sentence_end = max((m.end_sample for m in marks if m.type == "sentence"), default=-1)
    return {
        "text": text,
        "words_in_order_once": [m.value for m in said] == words,
        "ends_at_audio_end": sentence_end == samples,
        "errors_ms": errors,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m addons.recipes.marks_check", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--addons", nargs="+", default=["chorus-fast", "chorus-taco"], help="addon names or directories"
    )
    parser.add_argument("--texts", type=Path, help="one sentence per line (default: the built-in held-out set)")
    parser.add_argument("--out", type=Path, help="write per-text results as JSON here")
    args = parser.parse_args(argv)
    try:
        texts = [t.strip() for t in args.texts.read_text("utf-8").splitlines() if t.strip()] if args.texts else TEXTS
    except OSError as exc:
        parser.error(f"--texts: {exc.strerror or exc}")
    results: dict[str, list[dict[str, Any]]] = {}
    print(
        "| voice | texts compared | words in order, once | sentence mark ends at audio end | median error | p90 | within 25 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.addons:
        try:
            voice = addons.load(name)
        except addons.AddonError as exc:
            print(f"chorus: error: {exc}", file=sys.stderr)
            return 2
        rows = [r for r in (check(voice, t) for t in texts) if r is not None]
        results[voice.name] = rows
        errors = np.asarray([e for r in rows for e in r["errors_ms"]])
        print(
            f"| {voice.name} | {len(rows)}/{len(texts)} | {sum(r['words_in_order_once'] for r in rows)} "
            f"| {sum(r['ends_at_audio_end'] for r in rows)} | {np.median(errors):.1f} ms "
            f"| {np.percentile(errors, 90):.1f} ms | {100 * np.mean(errors <= 25):.0f}% |"
        )
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
