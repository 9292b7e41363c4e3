"""Score exported voices against the corpus's teacher (espeak-ng, or an addon) on held-out sentences.

    python -m addons.recipes.evaluate --corpus data/corpus \\
        --addons addons/bundled/chorus-fast addons/bundled/chorus-taco --n 20 --out docs/voices

With a teacher corpus (``addons.recipes.corpus --teacher``) the teacher's audio is the one stored in
the corpus (its noise-free output), and voices read the text as the corpus did (normalized).

For each of the first ``--n`` held-out sentences (never trained on), each voice synthesizes the
text end to end (front-end, networks, its vocoder) and is compared with the teacher:

- MCD (dB): mel cepstra are a DCT-II of the natural-log mel of the audio (``log_mel``), scaled as
  SPTK's mel-cepstra (see :func:`mel_cepstra`), coefficients 1..``--cepstra``-1 (c0, the energy,
  excluded); frames of voice and teacher audio are aligned by DTW on the
  cepstral distance and MCD is ``10 * sqrt(2) / ln(10) * ||c - c'||`` averaged along the path. The
  same figure for Griffin-Lim run on the teacher's own mel is the floor set by the vocoder.
- mel L1: the voice's mel against the teacher's, per frame and band, along a DTW path; for a
  duration model also with the teacher's durations driving its upsampler (frame for frame).
- F0: YIN pitch (:func:`f0_yin`) of voice and teacher audio compared along the same DTW path, over
  frame pairs voiced in both: the RMS difference in cents of those within 20 % of each other, and
  the share that are not (gross errors: octave jumps, tracker slips); and the share of all pairs
  whose voicing disagrees (percent).
- length error: frames of the voice minus the teacher's, and as a percentage of the teacher's.
- duration MAE (frames per phoneme, predictions rounded as the Upsampler does) for a duration model.
- for an attention model: how many sentences ended by
  the stop token (rather than the length guard), and alignment sharpness (mean over decoder steps
  of the largest attention weight), read off the step network's outputs during synthesis.

Writes ``evaluation.md`` (the table), ``evaluation.json`` (per-sentence numbers) and mel plots of
teacher and voices for two sentences (``mel_1.png``, ``mel_2.png``) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import addons
from addons.formats.netfile import load_program
from addons.recipes.corpus import META_FILE, Corpus, Utterance
from addons.recipes.teacher import stored_audio
from addons.text.espeak import get_espeak
from blocks import AttentionDecoder, Block, BuildEnv, GriffinLim, MelSettings, Request, log_mel
from blocks.network import NetworkRunner
from blocks.upsampler import regulate_durations

__all__ = ["GROSS_CENTS", "MCD_CONSTANT", "dtw_path", "f0_errors", "f0_yin", "main", "mcd", "mel_cepstra"]

MCD_CONSTANT = 10.0 * math.sqrt(2.0) / math.log(10.0)


# -- measures ------------------------------------------------------------------------------------------
def mel_cepstra(mel: np.ndarray, n: int) -> np.ndarray:
    """Cepstra ``c1..c(n-1)`` ``[F, n - 1]`` of a natural-log mel ``[F, N]`` (c0, the energy, dropped).

    A DCT-II over the bands, scaled as the cosine series ``log X = c0 + 2 * sum(c_m * cos(m * w))``
    (``c_m = 1/N * sum_k log X_k * cos(pi * m * (k + 1/2) / N)``): the convention of SPTK's mel-cepstra,
    which the MCD constant assumes. (An orthonormal DCT would give values ``sqrt(2N)`` times larger.)
    """
    bands = mel.shape[1]
    m, k = np.arange(1, n)[:, None], np.arange(bands)[None, :]
    basis = np.cos(np.pi * m * (k + 0.5) / bands) / bands
    return mel.astype(np.float64) @ basis.T


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost monotonic alignment of a cost matrix ``[N, M]``: row and column indices along the path."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for k in range(2, n + m + 1):  # anti-diagonals i + j = k (1-based), each depends on the two before
        i = np.arange(max(1, k - m), min(n, k - 1) + 1)
        j = k - i
        best = np.minimum(np.minimum(acc[i - 1, j], acc[i, j - 1]), acc[i - 1, j - 1])
        acc[i, j] = cost[i - 1, j - 1] + best
    rows, cols = [n - 1], [m - 1]
    i, j = n, m
    while (i, j) != (1, 1):
        moves = [(i - 1, j - 1), (i - 1, j), (i, j - 1)]
        i, j = min((p for p in moves if p[0] >= 1 and p[1] >= 1), key=lambda p: acc[p])
        rows.append(i - 1)
        cols.append(j - 1)
    return np.asarray(rows[::-1]), np.asarray(cols[::-1])


def _pairwise(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """Distances ``[N, M]`` between the rows of ``a`` and ``b``: Euclidean (p=2) or mean absolute (p=1)."""
    d = torch.cdist(torch.from_numpy(a).double()[None], torch.from_numpy(b).double()[None], p=float(p))[0].numpy()
    return d if p == 2 else d / a.shape[1]


def _cepstral_path(
    audio: np.ndarray, reference: np.ndarray, settings: MelSettings, n_cepstra: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cepstral distances ``[N, M]`` between the frames of two waveforms and their DTW path."""
    a, b = (mel_cepstra(log_mel(torch.from_numpy(x), settings).numpy(), n_cepstra) for x in (audio, reference))
    cost = _pairwise(a, b, 2)
    rows, cols = dtw_path(cost)
    return cost, rows, cols


def mcd(audio: np.ndarray, reference: np.ndarray, settings: MelSettings, n_cepstra: int) -> float:
    """DTW-aligned mel-cepstral distortion in dB between two waveforms (see the module docstring)."""
    cost, rows, cols = _cepstral_path(audio, reference, settings, n_cepstra)
    return float(MCD_CONSTANT * cost[rows, cols].mean())


def f0_yin(
    audio: np.ndarray,
    sample_rate: int,
    hop_length: int,
    fmin: float = 60.0,
    fmax: float = 500.0,
    threshold: float = 0.15,
    silence_db: float = -45.0,
) -> np.ndarray:
    """F0 in Hz per frame (``len(audio) // hop_length`` frames, centred as :func:`log_mel`'s); 0 where unvoiced.

    YIN (de Cheveigne and Kawahara, 2002): the cumulative-mean-normalised difference function over
    lags ``sample_rate / fmax .. sample_rate / fmin``, its first dip below ``threshold`` followed down
    to its local minimum and refined by a parabola. Frames more than ``-silence_db`` dB below the
    loudest frame, or with no dip, are unvoiced.
    """
    x = np.asarray(audio, np.float64)
    n = len(x) // hop_length
    lag_min, lag_max = int(sample_rate // fmax), math.ceil(sample_rate / fmin)
    width = lag_max  # integration window: one period of the lowest pitch
    if n == 0:
        return np.zeros(0)
    half = (width + lag_max) // 2
    padded = np.pad(x, (half, half + width + lag_max))
    frames = np.lib.stride_tricks.sliding_window_view(padded, width + lag_max)[::hop_length][:n]
    size = 1 << math.ceil(math.log2(2 * (width + lag_max)))
    head = np.fft.rfft(frames[:, :width], size)
    r = np.fft.irfft(np.conj(head) * np.fft.rfft(frames, size), size)[:, : lag_max + 1]
    squares = np.concatenate([np.zeros((n, 1)), np.cumsum(frames**2, axis=1)], axis=1)
    energy = squares[:, width : width + lag_max + 1] - squares[:, : lag_max + 1]  # sum of x[t+lag : t+lag+width]^2
    d = np.maximum(energy[:, :1] + energy - 2.0 * r, 0.0)
    cmnd = np.ones_like(d)
    lags = np.arange(1, lag_max + 1)
    cmnd[:, 1:] = d[:, 1:] * lags / np.maximum(np.cumsum(d[:, 1:], axis=1), 1e-12)
    search = cmnd[:, lag_min:lag_max]
    below = search < threshold
    voiced = below.any(axis=1)
    lag = np.argmax(below, axis=1)
    for _ in range(lag_max):  # follow each dip down to its local minimum
        step = (lag + 1 < search.shape[1]) & (
            search[np.arange(n), np.minimum(lag + 1, search.shape[1] - 1)] < search[np.arange(n), lag]
        )
        if not step.any():
            break
        lag = lag + step
    lag = lag + lag_min
    rows = np.arange(n)
    left, mid, right = cmnd[rows, lag - 1], cmnd[rows, lag], cmnd[rows, np.minimum(lag + 1, lag_max)]
    curve = left - 2.0 * mid + right
    shift = np.where(curve > 1e-12, 0.5 * (left - right) / np.where(curve > 1e-12, curve, 1.0), 0.0)
    period = lag + np.clip(shift, -1.0, 1.0)
    level = 10.0 * np.log10(energy[:, 0] / width + 1e-12)
    voiced &= level > level.max() + silence_db
    return np.where(voiced, sample_rate / period, 0.0)


#: F0 differences beyond this (20 %, about 316 cents) count as gross errors (octave jumps, tracker slips).
GROSS_CENTS = 1200.0 * math.log2(1.2)


def f0_errors(
    audio: np.ndarray, reference: np.ndarray, settings: MelSettings, n_cepstra: int
) -> tuple[float, float, float]:
    """F0 error of ``audio`` against ``reference`` along the cepstral DTW path, over frame pairs voiced
    in both: the RMS difference in cents of those within 20 % of each other, the share (percent) that
    are not (gross errors); and the share (percent) of all pairs whose voicing disagrees."""
    _, rows, cols = _cepstral_path(audio, reference, settings, n_cepstra)
    f, g = (f0_yin(x, settings.sample_rate, settings.hop_length) for x in (audio, reference))
    a, b = f[rows], g[cols]
    both = (a > 0) & (b > 0)
    cents = 1200.0 * np.log2(a[both] / b[both]) if both.any() else np.zeros(0)
    fine = np.abs(cents) <= GROSS_CENTS
    rms = float(np.sqrt(np.mean(cents[fine] ** 2))) if fine.any() else 0.0
    gross = float(100.0 * np.mean(~fine)) if cents.size else 0.0
    return rms, gross, float(100.0 * np.mean((a > 0) != (b > 0)))


def dtw_mel_l1(mel: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute log-mel difference per frame and band along the DTW path between two mels."""
    cost = _pairwise(mel.astype(np.float64), reference.astype(np.float64), 1)
    rows, cols = dtw_path(cost)
    return float(cost[rows, cols].mean())


# -- running voices --------------------------------------------------------------------------------------
class _AttentionTap:
    """Stands in for an AttentionDecoder's step runner and keeps the largest attention weight of each step."""

    def __init__(self, runner: NetworkRunner) -> None:
        self.runner, self.spec = runner, runner.spec
        self.peaks: list[float] = []

    def call(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.runner.call(inputs)
        width = int(inputs["mask"].sum())
        self.peaks.append(float(out["attention"][0, :width].max()))
        return out


def _blocks(block: Block) -> Iterator[Block]:
    yield block
    for child in block.children:
        yield from _blocks(child)


def _tap(voice: addons.Voice) -> _AttentionTap | None:
    """Install a tap on the voice's attention decoder, if it has one."""
    for block in _blocks(voice.decoder.block):
        if isinstance(block, AttentionDecoder):
            tap = _AttentionTap(block.runner)
            block.runner = tap  # type: ignore[assignment]
            return tap
    return None


@dataclass
class _Spoken:
    audio: np.ndarray
    mel: np.ndarray
    report: dict[str, Any]
    peaks: list[float] = field(default_factory=list)


def _speak(voice: addons.Voice, tap: _AttentionTap | None, text: str, normalize: bool = False) -> _Spoken:
    """Synthesize ``text`` as ``Voice.synthesize`` does, keeping the request's report and attention peaks."""
    if tap is not None:
        tap.peaks = []
    # Read the text as the teacher did: compare like with like (espeak-ng: no normalization).
    request = Request(options=voice.options(normalize=normalize)[1])
    state, mels, audio = voice.audio_start(), [], []
    for chunk in voice.stream_mel(text, request):
        mels.append(chunk.frames)
        audio.append(voice.audio_process(state, chunk.frames, request))
    audio.append(voice.audio_finish(state, request))
    return _Spoken(np.concatenate(audio), np.concatenate(mels), request.report, tap.peaks if tap else [])


def _vocode(mel: np.ndarray, settings: MelSettings) -> np.ndarray:
    """Griffin-Lim (the default block config) on a mel ``[F, n_mels]``: the vocoder floor."""
    env = BuildEnv(loader=_no_networks, specs={}, mel=settings)
    vocoder = GriffinLim(GriffinLim.Config(), env)
    state = vocoder.start()
    parts = [vocoder.process(state, torch.from_numpy(mel.astype(np.float32))[None]), vocoder.finish(state)]
    return torch.cat(parts, dim=1)[0].numpy()


def _no_networks(name: str, device: torch.device) -> NetworkRunner:
    raise KeyError(name)


class _DurationNetworks:
    """A duration model's exported networks, run with the teacher's durations (found by tensor names)."""

    def __init__(self, voice: addons.Voice) -> None:
        specs = voice.manifest.networks
        pick = {
            role: next((n for n, s in specs.items() if test(s)), None)
            for role, test in {
                "encoder": lambda s: "encoding" in s.output_names,
                "durations": lambda s: "durations" in s.output_names,
                "decoder": lambda s: "frames" in s.feature_inputs,
            }.items()
        }
        found = {role: n for role, n in pick.items() if n is not None}
        # a chorus-fast's three torch networks; not an imported graph's (ONNX) parts
        self.available = len(found) == len(pick) and all(specs[n].file.endswith(".pt2") for n in found.values())
        self.modules = (
            {
                role: load_program(voice.directory / specs[n].file, specs[n], voice.directory).module()
                for role, n in found.items()
            }
            if self.available
            else {}
        )
        self.names = {role: [t.name for t in specs[n].inputs] for role, n in found.items()}

    def _call(self, role: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return self.modules[role](*(tensors[name] for name in self.names[role]))

    def run(self, utt: Utterance) -> tuple[np.ndarray, np.ndarray]:
        """Mel ``[F, n_mels]`` decoded with the teacher's durations, and the predicted durations ``[T]`` (frames)."""
        ids = torch.from_numpy(utt.ids)[None]
        mask = torch.ones(ids.shape)
        encoding = self._call("encoder", {"phoneme_ids": ids, "mask": mask})
        durations = self._call("durations", {"encoding": encoding, "mask": mask})
        token_of_frame = torch.from_numpy(np.repeat(np.arange(len(utt.ids)), utt.durations))
        frames = encoding[:, token_of_frame]
        mel = self._call("decoder", {"frames": frames, "mask": torch.ones(frames.shape[:2])})
        return mel[0].numpy(), regulate_durations(durations, 1.0, 64).numpy()


# -- evaluation ---------------------------------------------------------------------------------------------
def _audio_scores(audio: np.ndarray, teacher: np.ndarray, settings: MelSettings, n_cepstra: int) -> dict[str, float]:
    """MCD and F0 error of ``audio`` against the teacher's."""
    rms_cents, gross, voicing = f0_errors(audio, teacher, settings, n_cepstra)
    return {
        "mcd_db": mcd(audio, teacher, settings, n_cepstra),
        "f0_rmse_cents": rms_cents,
        "f0_gross_error": gross,
        "voicing_error": voicing,
    }


def _score(
    voice: addons.Voice,
    utt: Utterance,
    teacher: np.ndarray,
    args: argparse.Namespace,
    tap: _AttentionTap | None,
    networks: _DurationNetworks | None,
    normalize: bool = False,
) -> tuple[dict[str, float], np.ndarray]:
    """Per-sentence numbers for one voice, and its mel (for plots); ``normalize`` as the corpus read the text."""
    spoken = _speak(voice, tap, utt.text, normalize)
    settings = voice.manifest.mel
    mel = spoken.mel
    if mel.shape[1] != utt.mel.shape[1]:  # a model's own latent frames (a Piper voice): the mel of its audio
        mel = log_mel(torch.from_numpy(spoken.audio), settings).numpy()
    row = _audio_scores(spoken.audio, teacher, settings, args.cepstra) | {
        "mel_l1_dtw": dtw_mel_l1(mel, utt.mel),
        "length_error_frames": float(mel.shape[0] - utt.frames),
        "length_error_percent": 100.0 * (mel.shape[0] - utt.frames) / utt.frames,
    }
    if networks is not None:
        mel, durations = networks.run(utt)
        row["mel_l1_teacher_durations"] = float(np.abs(mel - utt.mel.astype(np.float32)).mean())
        row["duration_mae_frames"] = float(np.abs(durations - utt.durations).mean())
    decoder_runs = spoken.report.get("AttentionDecoder", [])
    if decoder_runs:
        row["ended_by_stop"] = float(all(r["stop"] == "stop_token" for r in decoder_runs))
        row["sharpness"] = float(np.mean(spoken.peaks))
    return row, mel


def _evaluate_voice(
    path: Path, corpus: Corpus, utts: list[Utterance], teachers: list[np.ndarray], args: argparse.Namespace
) -> tuple[str, list[dict[str, float]], list[np.ndarray]]:
    voice = addons.load(path)
    tap = _tap(voice)
    same_ids = tuple(voice.manifest.frontend.phonemes) == corpus.phonemes
    networks = _DurationNetworks(voice) if same_ids else None
    if networks is not None and not networks.available:
        networks = None
    rows, mels = [], []
    for utt, teacher in zip(utts, teachers, strict=True):
        if not _reads_as_corpus(voice, corpus, utt):
            print(f"evaluate: {voice.name}'s front-end reads {utt.text!r} differently from the corpus", file=sys.stderr)
        row, mel = _score(voice, utt, teacher, args, tap, networks, "teacher" in corpus.meta)
        rows.append(row)
        mels.append(mel)
    return voice.name, rows, mels


def _reads_as_corpus(voice: addons.Voice, corpus: Corpus, utt: Utterance) -> bool:
    """Whether ``voice``'s front end gives the corpus's ids for ``utt`` (else the scores compare other texts)."""
    if "teacher" in corpus.meta:
        return [i for s in voice.sentences(utt.text) for i in s.ids.tolist()] == utt.ids.tolist()
    heard = [p for sentence in voice.sentences(utt.text, normalize=False) for p in sentence.phonemes]
    return heard == [corpus.phonemes[i - 1] for i in utt.ids]


def _teacher_name(corpus: Corpus) -> str:
    teacher = corpus.meta.get("teacher")
    return f"{teacher['name']}, noise off" if isinstance(teacher, dict) else "espeak-ng"


def _teacher(utt: Utterance, settings: MelSettings) -> np.ndarray:
    """The teacher's audio for ``utt`` (espeak-ng is deterministic); checked against the cached mel length."""
    audio = get_espeak().synthesize(utt.text).audio
    if len(audio) // settings.hop_length != utt.frames:
        raise RuntimeError(f"espeak-ng no longer reproduces the corpus for {utt.text!r}: rebuild the corpus")
    return audio


def _summary(rows: list[dict[str, float]]) -> dict[str, tuple[float, float, float]]:
    """mean, standard deviation and sum of every column."""
    keys = sorted({k for r in rows for k in r})
    return {
        k: (float(np.mean(v)), float(np.std(v)), float(np.sum(v)))
        for k in keys
        if (v := [r[k] for r in rows if k in r])
    }


_COLUMNS = [
    ("MCD (dB)", "mcd_db", "{0:.2f} ± {1:.2f}"),
    ("mel L1, DTW", "mel_l1_dtw", "{0:.3f}"),
    ("mel L1, teacher durations", "mel_l1_teacher_durations", "{0:.3f}"),
    ("F0 RMSE (cents)", "f0_rmse_cents", "{0:.0f} ± {1:.0f}"),
    ("gross F0 errors (%)", "f0_gross_error", "{0:.1f}"),
    ("voicing error (%)", "voicing_error", "{0:.1f}"),
    ("duration MAE (frames)", "duration_mae_frames", "{0:.2f}"),
    ("length error (frames)", "length_error_frames", "{0:+.1f} ± {1:.1f}"),
    ("length error (%)", "length_error_percent", "{0:+.1f} ± {1:.1f}"),
    ("ended by stop token", "ended_by_stop", "{2:.0f} / {n}"),
    ("attention sharpness", "sharpness", "{0:.3f}"),
]


def _table(results: dict[str, list[dict[str, float]]], n: int) -> str:
    lines = ["| voice | " + " | ".join(c[0] for c in _COLUMNS) + " |", "|---" * (len(_COLUMNS) + 1) + "|"]
    for name, rows in results.items():
        s = _summary(rows)
        cells = [fmt.format(*s[key], n=n) if key in s else "—" for _, key, fmt in _COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(path: Path, text: str, mels: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(mels), 1, figsize=(10, 2.2 * len(mels)), sharex=True, squeeze=False)
    lo = min(float(m.min()) for m in mels.values())
    for ax, (name, mel) in zip(axes[:, 0], mels.items(), strict=True):
        ax.imshow(mel.T.astype(np.float32), origin="lower", aspect="auto", vmin=max(lo, -11.6), vmax=3.0, cmap="magma")
        ax.set_ylabel("mel band")
        ax.set_title(f"{name} ({mel.shape[0]} frames)", fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("frame")
    fig.suptitle(text, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _report(
    out: Path, corpus: Corpus, utts: list[Utterance], results: dict[str, list[dict[str, float]]], seconds: float
) -> None:
    n = len(utts)
    text = [
        f"# Voices against their teacher ({_teacher_name(corpus)})",
        "",
        f"{n} held-out sentences (never trained on) from {corpus.meta.get('source', 'the corpus')}; "
        f"made by `python -m addons.recipes.evaluate` in {seconds:.0f} s. "
        "See the module docstring for how each number is measured. Mel L1 is in natural-log mel units.",
        "",
        _table(results, n),
        "",
        "Mel spectrograms (teacher, then each voice): `mel_1.png`, `mel_2.png`.",
        "",
    ]
    (out / "evaluation.md").write_text("\n".join(text), encoding="utf-8")
    per_sentence = {
        name: [{"text": u.text, **r} for u, r in zip(utts, rows, strict=True)] for name, rows in results.items()
    }
    (out / "evaluation.json").write_text(json.dumps(per_sentence, indent=1) + "\n", encoding="utf-8")


def evaluate(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    """Run the evaluation described in the module docstring; returns per-sentence rows by voice name."""
    start = time.perf_counter()
    corpus = Corpus.load(args.corpus)
    utts = corpus.held_out[args.offset : args.offset + args.n]
    if "teacher" in corpus.meta:
        teachers = stored_audio(args.corpus, [u.text for u in utts])
    else:
        teachers = [_teacher(u, corpus.mel) for u in utts]
    floor = "teacher mel + Griffin-Lim (vocoder floor)"
    results = {
        floor: [
            _audio_scores(_vocode(u.mel.astype(np.float32), corpus.mel), a, corpus.mel, args.cepstra)
            for u, a in zip(utts, teachers, strict=True)
        ]
    }
    mels: dict[str, list[np.ndarray]] = {f"teacher ({_teacher_name(corpus)})": [u.mel for u in utts]}
    for path in args.addons:
        name, rows, voice_mels = _evaluate_voice(path, corpus, utts, teachers, args)
        results[name], mels[name] = rows, voice_mels
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(min(args.plots, len(utts))):
        _plot(args.out / f"mel_{i + 1}.png", utts[i].text, {name: m[i] for name, m in mels.items()})
    _report(args.out, corpus, utts, results, time.perf_counter() - start)
    return results


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m addons.recipes.evaluate", description="Score voices against the teacher.")
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    p.add_argument("--addons", type=Path, nargs="+", required=True, help="Addon directories to score.")
    p.add_argument("--n", type=int, default=20, help="Held-out sentences to use.")
    p.add_argument("--offset", type=int, default=0, help="Skip this many held-out sentences first.")
    p.add_argument("--out", type=Path, default=Path("docs/voices"))
    p.add_argument("--cepstra", type=int, default=25, help="Cepstral coefficients c0..c(n-1); c0 is left out.")
    p.add_argument("--plots", type=int, default=2, help="Sentences to plot.")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads.")
    args = p.parse_args(argv)
    if args.n < 1 or args.threads < 1 or args.plots < 0 or not 2 <= args.cepstra <= 80:
        raise ValueError("need --n >= 1, --threads >= 1, --plots >= 0 and 2 <= --cepstra <= 80")
    if not (args.corpus / META_FILE).is_file():
        raise ValueError(f"--corpus {args.corpus}: not a corpus (no {META_FILE})")
    for path in args.addons:
        if not (path / "addon.json").is_file():
            raise ValueError(f"--addons {path}: not an addon directory (no addon.json)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except ValueError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    results = evaluate(args)
    print(_table(results, min(args.n, len(results[next(iter(results))]))))
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
