"""A teacher corpus spoken by any addon Chorus serves (a Piper voice, a bundled voice), resumably.

    python -m addons.recipes.corpus --teacher ADDON --out data/corpus-joe \\
        [--train 4000] [--held-out 100] [--seed 0] [--minutes M] [--threads 1]

The sentences and their seeded order are those of the espeak-ng corpus (:mod:`addons.recipes.corpus`):
the first ``--held-out`` texts the teacher can say are held out (never trained on), the next
``--train`` are for training. Each text is said through Chorus itself (the addon's front end,
encoders, decoder and waveform stage, as ``addons.load`` builds them) with the teacher's noise off:
every stack block with a ``noise_scale`` or ``noise_w`` setting (a VITS front part's) gets 0 in the
loaded manifest, so the corpus holds the teacher's noise-free output (the files on disk stay as they
are). Texts the teacher's front end reads as more than one sentence are skipped (a student is trained
on one sentence at a time, as it is served).

Per utterance: the text, the teacher's phoneme ids (its own front end: a student trained on them uses
the same front end), its durations in frames per id, the audio (int16 at the teacher's rate) and the
log-mel of that audio (the teacher's ``mel`` settings; ``F = len(audio) // hop`` frames). Durations
are the encoders' own ``durations`` output where they are whole frames that sum to ``F`` (a Piper
front part's are), checked against the frames the decoder aligned to each id; else that alignment;
a teacher whose stack aligns nothing gives none.

Resumable: utterances are appended in shards (``shards/shard-NNNNN.npz``, each written atomically
with the position in the sentence order it reached), so a rerun with the same options continues
where the last shard ended, never saying a text twice or dropping one. ``--minutes`` bounds this
session's time; Ctrl-C or SIGTERM writes what is said so far first. ``meta.json`` records the
teacher, its front end, the mel settings and the counts, and is rewritten after every shard.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from addons.engine.catalog import find_addon
from addons.engine.voice import Voice
from addons.formats.manifest import AddonManifest, check_manifest, read_manifest
from addons.text.frontend import TextError
from blocks import Block, MelSettings
from blocks.audio import log_mel
from blocks.registry import REGISTRY

__all__ = [
    "NOISE_FIELDS",
    "SHARDS",
    "Spoken",
    "Teacher",
    "TeacherError",
    "build_teacher_corpus",
    "noise_free",
    "read_shards",
    "stored_audio",
    "stored_int16",
]

SHARDS = "shards"
META_FILE = "meta.json"
#: Block settings that scale noise a model draws; 0 makes its output repeat exactly.
NOISE_FIELDS = ("noise_scale", "noise_w")
#: Utterances per shard: at most this much work is lost to a kill -9.
SHARD_SIZE = 50


class TeacherError(RuntimeError):
    """The teacher cannot give what a corpus needs (an addon whose durations do not cover its frames)."""


# -- the teacher ---------------------------------------------------------------------------------
def noise_free(manifest: AddonManifest) -> tuple[AddonManifest, list[str]]:
    """``manifest`` with every stack block's :data:`NOISE_FIELDS` set to 0, and the settings changed
    (``stack[0].sequence_block.noise_scale``, ...). Blocks are recognised by their config's fields,
    not by name, so any registered block with such a setting is quietened."""
    changed: list[str] = []

    def walk(spec: Any, path: str) -> Any:
        if isinstance(spec, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(spec)]
        if not isinstance(spec, dict):
            return spec
        out = {k: walk(v, f"{path}.{k}") for k, v in spec.items()}
        kind = spec.get("type")
        if isinstance(kind, str):
            fields = REGISTRY.resolve(kind, Block, path).Config.model_fields
            for name in NOISE_FIELDS:
                if name in fields:
                    out[name] = 0.0
                    changed.append(f"{path}.{name}")
        return out

    stack = [walk(block, f"stack[{i}]") for i, block in enumerate(manifest.stack)]
    quiet = AddonManifest.model_validate({**manifest.model_dump(mode="json"), "stack": stack})
    check_manifest(quiet)
    return quiet.model_copy(update={"frontend": manifest.frontend}), changed  # lexicon files already read


@dataclass(frozen=True)
class Spoken:
    """One text as the teacher said it: ``ids`` ``[T]`` int64, ``durations`` ``[T]`` int64 frames
    summing to ``F`` (None: the teacher gives none), ``mel`` ``[F, n_mels]`` float32 log-mel,
    ``audio`` ``[F * hop]`` float32."""

    text: str
    ids: np.ndarray
    durations: np.ndarray | None
    mel: np.ndarray
    audio: np.ndarray


class Teacher:
    """An addon loaded with its noise off, saying one sentence at a time (see the module doc)."""

    def __init__(self, name_or_path: str | os.PathLike[str]) -> None:
        self.directory = find_addon(name_or_path)
        original = read_manifest(self.directory)
        manifest, self.quietened = noise_free(original)
        self.voice = Voice(manifest, self.directory)
        self.manifest = manifest

    @property
    def mel(self) -> MelSettings:
        return self.manifest.mel

    def speak(self, text: str) -> Spoken | None:
        """The teacher's one sentence for ``text``; None where its front end finds none or several."""
        try:
            sentences = list(self.voice.sentences(text))
        except TextError:
            return None
        if len(sentences) != 1:
            return None
        ids = np.asarray(sentences[0].ids, dtype=np.int64)
        request = self.voice.request()
        features = self.voice.encode(ids, request)
        state = self.voice.audio_start()
        audio, tokens, frames = [], [], 0
        for mel, aligned in self.voice.decoder.decode_aligned(features, request):
            audio.append(self.voice.audio_process(state, mel, request))
            tokens.append(aligned)
            frames += len(mel)
        audio.append(self.voice.audio_finish(state, request))
        samples = np.concatenate(audio).astype(np.float32)
        if len(samples) != frames * self.mel.hop_length:
            raise TeacherError(f"{self.manifest.name}: {len(samples)} samples for {frames} frames of {text!r}")
        mel = log_mel(torch.from_numpy(samples), self.mel).numpy()
        return Spoken(text, ids, self._durations(features, tokens, len(ids), frames, text), mel, samples)

    def _durations(
        self, features: dict[str, np.ndarray], tokens: list[np.ndarray | None], count: int, frames: int, text: str
    ) -> np.ndarray | None:
        aligned = None
        if tokens and all(t is not None for t in tokens):
            joined = np.concatenate([t for t in tokens if t is not None])
            aligned = np.bincount(joined[joined >= 0], minlength=count)[:count].astype(np.int64)
        given = features.get("durations")
        if given is not None and len(given) == count and np.array_equal(given, np.rint(given)):
            own = np.rint(given).astype(np.int64)
            if int(own.sum()) == frames:
                if aligned is not None and not np.array_equal(own, aligned):
                    raise TeacherError(f"{self.manifest.name}: its durations and its frames disagree on {text!r}")
                return own
        if aligned is not None and int(aligned.sum()) == frames:
            return aligned
        return None


# -- shards ------------------------------------------------------------------------------------------
def _shard_paths(out: Path) -> list[Path]:
    return sorted((out / SHARDS).glob("shard-*.npz"))


def read_shards(out: Path, audio: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """The arrays of each shard of ``out`` in order (``audio`` and ``sample_offsets`` only if asked)."""
    for path in _shard_paths(out):
        with np.load(path, allow_pickle=False) as z:
            yield {k: z[k] for k in z.files if audio or k not in ("audio", "sample_offsets")}


def stored_audio(out: Path, texts: Sequence[str]) -> list[np.ndarray]:
    """The teacher's audio (float32) for each of ``texts``, as the shards of ``out`` hold it."""
    return [a.astype(np.float32) / 32767 for a in stored_int16(out, texts)]


def stored_int16(out: Path, texts: Sequence[str]) -> list[np.ndarray]:
    """The teacher's audio for each of ``texts`` as stored (int16); KeyError for a text not in ``out``."""
    found: dict[str, np.ndarray] = {}
    wanted = set(texts)
    for arrays in read_shards(out, audio=True):
        offsets = arrays["sample_offsets"]
        for i, text in enumerate(arrays["text"].tolist()):
            if text in wanted:
                found[text] = arrays["audio"][offsets[i] : offsets[i + 1]]
    missing = [t for t in texts if t not in found]
    if missing:
        raise KeyError(f"{out} holds no audio for {missing[0]!r}")
    return [found[t] for t in texts]


def _write_shard(out: Path, spoken: list[tuple[int, bool, Spoken]], end: int) -> Path:
    """Append one shard: ``spoken`` as ``(position in the order, held out, utterance)``; ``end`` is
    the position of the first text not yet considered."""
    utts = [s for _, _, s in spoken]
    for u in utts:
        if u.ids.max(initial=0) > np.iinfo(np.int16).max:
            raise TeacherError(f"phoneme id {int(u.ids.max())} does not fit the corpus's int16 ids")
    durations = [u.durations if u.durations is not None else np.zeros(0, np.int64) for u in utts]
    arrays = {
        "text": np.asarray([u.text for u in utts], dtype=np.str_),
        "position": np.asarray([p for p, _, _ in spoken], dtype=np.int64),
        "held_out": np.asarray([h for _, h, _ in spoken], dtype=bool),
        "ids": np.concatenate([u.ids for u in utts]).astype(np.int16),
        "token_offsets": np.cumsum([0] + [len(u.ids) for u in utts]).astype(np.int64),
        "durations": np.concatenate(durations).astype(np.int16),
        "mel": np.concatenate([u.mel for u in utts]).astype(np.float16),
        "frame_offsets": np.cumsum([0] + [len(u.mel) for u in utts]).astype(np.int64),
        "audio": np.concatenate([np.rint(np.clip(u.audio, -1, 1) * 32767) for u in utts]).astype(np.int16),
        "sample_offsets": np.cumsum([0] + [len(u.audio) for u in utts]).astype(np.int64),
        "end": np.asarray(end, dtype=np.int64),
    }
    folder = out / SHARDS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"shard-{len(_shard_paths(out)):05d}.npz"
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)
    return path


@dataclass
class _Done:
    """What the shards already hold."""

    end: int = 0
    held_out: int = 0
    train: int = 0
    frames: int = 0
    durations: bool = True


def _done(out: Path) -> _Done:
    done = _Done()
    for path in _shard_paths(out):
        with np.load(path, allow_pickle=False) as z:  # only the small arrays
            held = z["held_out"]
            done.end = max(done.end, int(z["end"]))
            done.held_out += int(held.sum())
            done.train += int((~held).sum())
            done.frames += int(z["frame_offsets"][-1])
            done.durations &= len(z["durations"]) == len(z["ids"])
    return done


# -- building ------------------------------------------------------------------------------------------
def order_of(sentences: Sequence[str], seed: int) -> list[str]:
    """The seeded order the espeak-ng corpus uses too (held-out texts first, then training)."""
    return [sentences[i] for i in np.random.default_rng(seed).permutation(len(sentences))]


def _fingerprint(order: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(order).encode("utf-8")).hexdigest()[:16]


def _meta(teacher: Teacher, order: Sequence[str], args: argparse.Namespace, source: str) -> dict[str, Any]:
    """What identifies the corpus (a resumed build must match it) and what students need."""
    manifest = teacher.manifest
    frontend = manifest.frontend.model_copy(update={"lexicon_files": []}).model_dump(mode="json")
    return {
        "source": source,
        "seed": args.seed,
        "order": {"sentences": len(order), "sha256_16": _fingerprint(order)},
        "teacher": {
            "name": manifest.name,
            "version": manifest.version,
            "language": manifest.language,
            "description": manifest.description,
            "directory": str(teacher.directory.resolve()),
            "noise_off": teacher.quietened,
        },
        "frontend": frontend,
        "phonemes": list(manifest.frontend.phonemes),
        "mel": manifest.mel.model_dump(),
        "audio": f"int16, {manifest.mel.sample_rate} Hz",
        "normalize": True,  # texts read as the addon serves them by default
        "wanted": {"held_out": args.held_out},
    }


def _identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What a resumed build must share with the one it continues (the teacher may have moved)."""
    teacher = {k: v for k, v in meta.get("teacher", {}).items() if k != "directory"}
    keys = ("source", "seed", "order", "frontend", "mel", "wanted")
    return {"teacher": teacher, **{k: meta.get(k) for k in keys}}


class _Stop:
    """Set by SIGTERM: finish the utterance in hand, write the shard, return."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def _progress(total: int, initial: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return _Line(total, initial)
    return tqdm(total=total, initial=initial, unit="utt", desc="teacher corpus", dynamic_ncols=True)


class _Line:
    """A one-line progress report on stderr, for where tqdm is not installed."""

    def __init__(self, total: int, initial: int) -> None:
        self.total, self.n, self.start = total, initial, time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n % 10 == 0 or self.n == self.total:
            rate = (time.monotonic() - self.start) or 1e-9
            print(f"\rteacher corpus: {self.n}/{self.total} ({rate:.0f} s)", end="", file=sys.stderr, flush=True)

    def set_postfix(self, values: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        print(file=sys.stderr)


def build_teacher_corpus(
    teacher: Teacher, sentences: Sequence[str], out: Path, args: argparse.Namespace, source: str
) -> dict[str, Any]:
    """Say texts of the seeded order through ``teacher`` into shards under ``out`` until there are
    ``args.held_out`` held-out and ``args.train`` training utterances, the order runs out, or
    ``args.minutes`` pass. Resumes from what ``out`` holds. Returns ``meta.json``'s contents."""
    order = order_of(sentences, args.seed)
    meta = _meta(teacher, order, args, source)
    if (out / META_FILE).is_file():
        old = json.loads((out / META_FILE).read_text(encoding="utf-8"))
        mine, theirs = _identity(meta), _identity(old)
        clash = [k for k in mine if mine[k] != theirs[k]]
        if clash:
            raise TeacherError(f"{out} holds another corpus ({', '.join(clash)} differ): resume it, or use a new --out")
        meta["build_seconds"] = old.get("build_seconds", 0.0)
    out.mkdir(parents=True, exist_ok=True)
    build = _Build(out, meta, _done(out), len(order), (args.held_out, args.train))
    if build.done.held_out < args.held_out and build.done.train:
        raise TeacherError(f"{out} has training utterances but only {build.done.held_out} held out")
    stop = _Stop()
    previous = signal.signal(signal.SIGTERM, stop)
    deadline = time.monotonic() + args.minutes * 60.0
    bar = _progress(args.held_out + args.train, build.done.held_out + min(build.done.train, args.train))
    try:
        while build.done.end < len(order) and not build.complete:
            if stop.requested or time.monotonic() >= deadline:
                break
            if build.add(teacher.speak(order[build.done.end])):
                bar.update(1)
    except KeyboardInterrupt:
        print("teacher corpus: interrupted; writing what is said", file=sys.stderr)
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous)
        build.flush()
    return build.meta


class _Build:
    """A corpus being said: the shards written, the utterances pending, the meta to write."""

    def __init__(self, out: Path, meta: dict[str, Any], done: _Done, texts: int, wanted: tuple[int, int]) -> None:
        self.out, self.meta, self.done, self.texts, self.wanted = out, meta, done, texts, wanted
        self.pending: list[tuple[int, bool, Spoken]] = []
        self.started, self.base = time.monotonic(), float(meta.get("build_seconds", 0.0))
        self.written = done.end  # the order position the shards reach

    @property
    def complete(self) -> bool:
        return self.done.held_out >= self.wanted[0] and self.done.train >= self.wanted[1]

    def add(self, spoken: Spoken | None) -> bool:
        """Count the text at ``done.end`` as said (``spoken``) or skipped (None); write a shard when one is full."""
        done = self.done
        done.end += 1
        if spoken is None:
            return False
        held = done.held_out < self.wanted[0]
        self.pending.append((done.end - 1, held, spoken))
        done.held_out += held
        done.train += not held
        done.frames += len(spoken.mel)
        done.durations &= spoken.durations is not None
        if len(self.pending) >= SHARD_SIZE:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the pending utterances as a shard (if any) and ``meta.json``."""
        if self.pending:
            _write_shard(self.out, self.pending, self.done.end)
            self.pending, self.written = [], self.done.end
        mel, done = MelSettings(**self.meta["mel"]), self.done
        said = done.held_out + done.train
        self.meta.update(
            train=done.train,
            held_out=done.held_out,
            # texts passed over after the last shard are considered again on resume: not counted
            skipped=self.written - said,
            frames=done.frames,
            hours=done.frames * mel.hop_length / mel.sample_rate / 3600,
            durations=done.durations and said > 0,
            shards=len(_shard_paths(self.out)),
            complete=self.complete or done.end >= self.texts,
            build_seconds=round(self.base + time.monotonic() - self.started, 1),
        )
        (self.out / META_FILE).write_text(json.dumps(self.meta, indent=1) + "\n", encoding="utf-8")
