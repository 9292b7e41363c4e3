"""Train the universal neural vocoder (Vocos-style, :class:`addons.models.vocos.VocosVocoder`) on
the teacher corpus audio, export it, and compare it with Griffin-Lim.

    python -m addons.recipes.vocoder --corpus data/corpus --minutes 95 --out runs/vocoder --threads 1 [--resume]
    python -m addons.recipes.vocoder --evaluate [--export addons/bundled/chorus-vocoder] [--n 20]
    python -m addons.recipes.vocoder --reexport --init-from addons/bundled/chorus-vocoder --export DIR
    python -m addons.recipes.vocoder --corpus data/corpus-joe --init-from addons/bundled/chorus-vocoder \
        --name chorus-vocoder-joe --export build/addons/chorus-vocoder-joe --out runs/vocoder-joe --minutes 40

The espeak-ng corpus keeps mels, not audio; espeak-ng is deterministic, so each utterance's audio is
spoken again when the run starts (a few ms each, checked against the stored mel length) and kept as
int16. A teacher corpus (``addons.recipes.corpus --teacher``) stores its audio, which is read instead:
a vocoder for that voice's audio (new weights, or with ``--init-from`` the universal one's,
fine-tuned).
Each step takes ``--batch-size`` random segments of ``--segment`` frames from the length batch the
shared loop hands out (cycling through it), with ``--context`` extra mel frames on each side so the
scored samples see their neighbours as at run time; the network's input is the corpus mel.
Losses: multi-resolution STFT (spectral convergence + log-magnitude L1 at (512, 128), (1024, 256),
(2048, 512)) plus ``--mel-weight`` times the L1 between the log-mels of output and target audio.

The export directory (``--export``) holds ``vocoder.pt2`` (``mel [B, T, n_mels]``, ``mask [B, T]``
-> ``audio [B, T*hop]``) and ``vocoder.json``: ``{"name", "mel": MelSettings, "network": NetworkSpec,
"trained": {"minutes", "steps", "threads", "machine"}}``.

``--evaluate`` scores the exported vocoder and Griffin-Lim (the default block config) on the teacher's
mels of the first ``--n`` held-out sentences, as :mod:`addons.recipes.evaluate` does: MCD against the
teacher audio and the real-time factor at one thread (the neural vocoder whole and streamed in chunks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from addons.engine.vocoders import VocoderPackage
from addons.formats.export import NetworkExport, export_network
from addons.formats.netfile import executable, load_program
from addons.models.vocos import VocosVocoder
from addons.recipes.corpus import META_FILE, SILENCE, Corpus, Utterance
from addons.recipes.evaluate import mcd
from addons.recipes.teacher import stored_int16
from addons.recipes.training import CHECKPOINT, UsageError, main_with, recipe_parser
from addons.text.espeak import get_espeak
from blocks import GriffinLim, MelSettings
from blocks.audio import LOG_FLOOR, mel_filterbank
from blocks.base import BuildEnv
from blocks.network import NetworkRunner, TensorSpec

__all__ = [
    "NAME",
    "VocoderRecipe",
    "batch_log_mel",
    "evaluate_vocoders",
    "load_vocoder",
    "main",
    "reexport",
    "stft_losses",
    "teacher_audio",
]

NAME = "chorus-vocoder"
NETWORK_FILE = "vocoder.pt2"
CONFIG_FILE = "vocoder.json"
RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))
VALIDATION_UTTERANCES = 20


# -- data ----------------------------------------------------------------------------------------------
def teacher_audio(
    utterances: Sequence[Utterance], settings: MelSettings, stored_in: Path | None = None
) -> dict[str, np.ndarray]:
    """int16 teacher audio by text: as the teacher corpus ``stored_in`` holds it, else spoken again by
    espeak-ng; checked against each stored mel length."""
    if stored_in is not None:
        stored = stored_int16(stored_in, [u.text for u in utterances])
        for u, a in zip(utterances, stored, strict=True):
            if len(a) // settings.hop_length != u.frames:
                raise RuntimeError(f"{stored_in}: the audio of {u.text!r} does not match its mel")
        return {u.text: a for u, a in zip(utterances, stored, strict=True)}
    out: dict[str, np.ndarray] = {}
    for u in utterances:
        audio = get_espeak().synthesize(u.text).audio
        if len(audio) // settings.hop_length != u.frames:
            raise RuntimeError(f"espeak-ng no longer reproduces the corpus for {u.text!r}: rebuild the corpus")
        out[u.text] = np.round(audio * 32768.0).astype(np.int16)
    return out


@dataclass(frozen=True)
class Segments:
    """``mel`` ``[B, L + 2C, n_mels]`` with ``mask`` ``[B, L + 2C]`` in, ``audio`` ``[B, L * hop]`` to match
    (the centre ``L`` frames; ``C`` frames of context on each side, masked beyond the utterance)."""

    mel: torch.Tensor
    mask: torch.Tensor
    audio: torch.Tensor
    context: int


def draw_segments(
    utterances: Sequence[Utterance], audio: dict[str, np.ndarray], count: int, frames: int, context: int, hop: int
) -> Segments:
    """``count`` random segments, cycling through ``utterances``; offsets come from torch's RNG (resumable)."""
    n_mels = utterances[0].mel.shape[1]
    width = frames + 2 * context
    mel = np.full((count, width, n_mels), SILENCE, np.float32)
    mask = np.zeros((count, width), np.float32)
    wave = np.zeros((count, frames * hop), np.float32)
    for i in range(count):
        u = utterances[i % len(utterances)]
        start = int(torch.randint(0, max(u.frames - frames, 0) + 1, ()))
        lo, hi = max(start - context, 0), min(start + frames + context, u.frames)
        mel[i, lo - start + context : hi - start + context] = u.mel[lo:hi]
        mask[i, lo - start + context : hi - start + context] = 1.0
        samples = audio[u.text][start * hop : (start + frames) * hop].astype(np.float32) / 32768.0
        wave[i, : len(samples)] = samples
    return Segments(torch.from_numpy(mel), torch.from_numpy(mask), torch.from_numpy(wave), context)


# -- losses --------------------------------------------------------------------------------------------
def _magnitude(audio: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """STFT magnitude ``[B, n_fft // 2 + 1, frames]`` (Hann, centred) with a gradient that stays finite at 0."""
    window = torch.hann_window(n_fft, dtype=audio.dtype, device=audio.device)
    spec = torch.stft(audio, n_fft, hop, window=window, center=True, return_complex=True)
    return torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-10)


def batch_log_mel(audio: torch.Tensor, settings: MelSettings) -> torch.Tensor:
    """:func:`blocks.audio.log_mel` of a batch ``[B, N]`` -> ``[B, N // hop, n_mels]``, differentiable."""
    spec = _magnitude(audio, settings.n_fft, settings.hop_length)
    frames = audio.shape[-1] // settings.hop_length
    mel = mel_filterbank(settings).to(audio.device) @ spec[..., :frames]
    return torch.log(torch.clamp(mel, min=LOG_FLOOR)).transpose(1, 2)


def stft_losses(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral convergence and log-magnitude L1, each averaged over :data:`RESOLUTIONS`."""
    sc, mag = pred.new_zeros(()), pred.new_zeros(())
    for n_fft, hop in RESOLUTIONS:
        p, t = _magnitude(pred, n_fft, hop), _magnitude(target, n_fft, hop)
        sc = sc + torch.linalg.vector_norm(t - p) / torch.linalg.vector_norm(t).clamp(min=1e-5)
        mag = mag + (torch.log(t.clamp(min=1e-5)) - torch.log(p.clamp(min=1e-5))).abs().mean()
    return sc / len(RESOLUTIONS), mag / len(RESOLUTIONS)


def losses(model: VocosVocoder, seg: Segments, settings: MelSettings) -> dict[str, torch.Tensor]:
    hop = settings.hop_length
    audio = model(seg.mel, seg.mask)
    centre = audio[:, seg.context * hop : audio.shape[1] - seg.context * hop]
    sc, mag = stft_losses(centre, seg.audio)
    mel_l1 = (batch_log_mel(centre, settings) - batch_log_mel(seg.audio, settings)).abs().mean()
    return {"sc": sc, "log_mag": mag, "mel_l1": mel_l1}


# -- recipe ----------------------------------------------------------------------------------------------
class VocoderRecipe:
    """Hyperparameters and the training-side hooks (see :class:`addons.recipes.training.Recipe`)."""

    name = NAME

    def __init__(self, args: argparse.Namespace) -> None:
        if args.dim < 8 or args.hidden < 8 or args.layers < 1 or args.kernel < 1 or args.kernel % 2 == 0:
            raise UsageError("need --dim >= 8, --hidden >= 8, --layers >= 1 and an odd --kernel")
        if args.segment < 1 or args.batch_size < 1 or args.context < 0 or args.mel_weight < 0:
            raise UsageError("need --segment >= 1, --batch-size >= 1, --context >= 0 and --mel-weight >= 0")
        self.config: dict[str, Any] = {
            "dim": args.dim,
            "hidden": args.hidden,
            "layers": args.layers,
            "kernel": args.kernel,
        }
        self.args = args
        self.audio: dict[str, np.ndarray] = {}
        self.settings = MelSettings()

    def build(self, corpus: Corpus) -> VocosVocoder:
        self.settings = corpus.mel
        if corpus.mel.win_length != corpus.mel.n_fft:
            raise UsageError("the corpus's mel settings use win_length != n_fft; the vocoder needs them equal")
        started = time.perf_counter()
        stored = self.args.corpus if "teacher" in corpus.meta else None
        self.audio = teacher_audio(corpus.train + corpus.held_out[:VALIDATION_UTTERANCES], corpus.mel, stored)
        seconds = sum(len(a) for a in self.audio.values()) / corpus.mel.sample_rate
        print(
            f"{NAME}: {seconds / 3600:.2f} h of teacher audio read in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        if self.args.init_from is None:
            return build_model(self.config, corpus.mel)
        model, package, _ = read_vocoder(self.args.init_from)
        if package.mel != corpus.mel:
            raise UsageError(f"--init-from {self.args.init_from}: its mel settings are not the corpus's")
        weights = model.state_dict()
        self.config = {
            "dim": int(weights["embed.weight"].shape[0]),
            "hidden": int(weights["blocks.0.up.weight"].shape[0]),
            "layers": len(model.blocks),
            "kernel": int(weights["embed.weight"].shape[-1]),
        }
        print(f"{NAME}: starting from {self.args.init_from} ({package.name})", file=sys.stderr)
        return model

    def loss(self, model: nn.Module, batch: list[Utterance]) -> tuple[torch.Tensor, dict[str, float]]:
        assert isinstance(model, VocosVocoder)
        a = self.args
        seg = draw_segments(batch, self.audio, a.batch_size, a.segment, a.context, self.settings.hop_length)
        parts = losses(model, seg, self.settings)
        total = parts["sc"] + parts["log_mag"] + a.mel_weight * parts["mel_l1"]
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def validate(self, model: nn.Module, utterances: list[Utterance]) -> dict[str, float]:
        """Whole held-out utterances (the first 20, the evaluation's): losses against the teacher audio."""
        assert isinstance(model, VocosVocoder)
        sums: dict[str, float] = {}
        chosen = [u for u in utterances[:VALIDATION_UTTERANCES] if u.text in self.audio]
        for u in chosen:
            wave = torch.from_numpy(self.audio[u.text][: u.frames * self.settings.hop_length].astype(np.float32))
            seg = Segments(
                torch.from_numpy(u.mel.astype(np.float32))[None], torch.ones(1, u.frames), wave[None] / 32768.0, 0
            )
            for k, v in losses(model, seg, self.settings).items():
                sums[k] = sums.get(k, 0.0) + float(v)
        return {k: v / max(len(chosen), 1) for k, v in sums.items()}

    def export(self, model: nn.Module, corpus: Corpus, directory: Path) -> Path:
        assert isinstance(model, VocosVocoder)
        progress = _progress(self.args.out / CHECKPOINT)
        trained = {
            "minutes": round(progress.get("elapsed", 0.0) / 60, 2),
            "steps": progress.get("step", 0),
            "threads": self.args.threads,
            "machine": _machine(),
        }
        if self.args.init_from is not None:
            trained["init_from"] = str(self.args.init_from)
        return export_vocoder(model, corpus.mel, Path(directory), trained, self.args.name or NAME)


def build_model(config: dict[str, Any], settings: MelSettings) -> VocosVocoder:
    return VocosVocoder(
        n_mels=settings.n_mels,
        n_fft=settings.n_fft,
        hop=settings.hop_length,
        dim=config["dim"],
        hidden=config["hidden"],
        layers=config["layers"],
        kernel_size=config["kernel"],
    )


def _progress(checkpoint: Path) -> dict[str, Any]:
    if not checkpoint.is_file():
        return {}
    progress: dict[str, Any] = torch.load(checkpoint, map_location="cpu", weights_only=True)["progress"]
    return progress


def _machine() -> str:
    return f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} cores, torch {torch.__version__}"


def vocoder_spec(model: VocosVocoder, settings: MelSettings) -> NetworkExport:
    return NetworkExport(
        module=model,
        role="vocoder",
        inputs=[
            TensorSpec(name="mel", shape=("B", "T", settings.n_mels)),
            TensorSpec(name="mask", shape=("B", "T")),
        ],
        outputs=[TensorSpec(name="audio", shape=("B", f"T*{settings.hop_length}"))],
        receptive_field=model.receptive_field,
    )


def export_vocoder(
    model: VocosVocoder, settings: MelSettings, directory: Path, trained: dict[str, Any], name: str = NAME
) -> Path:
    """Write ``vocoder.pt2`` (checked against eager within 1e-4) and ``vocoder.json`` into ``directory``."""
    net = vocoder_spec(model.eval(), settings)
    spec = net.spec(NETWORK_FILE)
    directory.mkdir(parents=True, exist_ok=True)
    export_network(net, spec, directory / NETWORK_FILE, tolerance=1e-4)
    doc = {
        "name": name,
        "mel": settings.model_dump(mode="json"),
        "network": spec.model_dump(mode="json"),
        "trained": trained,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return directory


def read_vocoder(directory: Path, flag: str = "--init-from") -> tuple[VocosVocoder, VocoderPackage, dict[str, Any]]:
    """The exported vocoder at ``directory`` rebuilt as a module from its weights (its sizes read
    from them), its package and its ``vocoder.json``. Raises :class:`UsageError` naming ``flag``."""
    try:
        doc = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        package = VocoderPackage.model_validate(doc)
        weights = load_program(directory / package.network.file, package.network, directory).state_dict
    except (OSError, ValueError) as exc:  # AddonError and pydantic's errors are ValueErrors
        raise UsageError(f"{flag} {directory}: {exc}") from None
    try:
        model = VocosVocoder(
            n_mels=package.mel.n_mels,
            n_fft=package.mel.n_fft,
            hop=package.mel.hop_length,
            dim=int(weights["embed.weight"].shape[0]),
            hidden=int(weights["blocks.0.up.weight"].shape[0]),
            layers=len({k.split(".")[1] for k in weights if k.startswith("blocks.")}),
            kernel_size=int(weights["embed.weight"].shape[-1]),
        )
        model.load_state_dict(dict(weights))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UsageError(f"{flag} {directory}: not a {VocosVocoder.__name__} ({exc})") from None
    return model, package, doc


def reexport(directory: Path, out: Path) -> Path:
    """Write the exported vocoder at ``directory`` to ``out`` with this version's graph: the network
    is rebuilt from its weights (unchanged) and exported again, its ``trained`` record kept. Since
    2026-12-04 the graph computes no size from its input, so Chorus runs it as a TorchScript trace
    (:func:`addons.formats.netfile.traced`); the audio is the same to the bit."""
    model, package, doc = read_vocoder(directory, "--reexport")
    return export_vocoder(model, package.mel, out, doc.get("trained", {}), package.name)


def load_vocoder(directory: Path) -> tuple[NetworkRunner, MelSettings]:
    """The exported vocoder in ``directory`` as a dynamic-context runner, run as Chorus runs it
    (:func:`addons.formats.netfile.executable`), and the mel settings it expects."""
    package = VocoderPackage.model_validate(json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8")))
    program = load_program(directory / package.network.file, package.network, directory)  # runs nothing from the file
    return NetworkRunner(package.name, package.network, executable(program, "cpu")), package.mel


# -- evaluation ------------------------------------------------------------------------------------------
def _griffin_lim(mel: torch.Tensor, settings: MelSettings) -> torch.Tensor:
    """Griffin-Lim (the default block config) over a whole mel ``[F, n_mels]``, streamed as in a voice."""
    env = BuildEnv(loader=_no_networks, specs={}, mel=settings)
    vocoder = GriffinLim(GriffinLim.Config(), env)
    state = vocoder.start()
    return torch.cat([vocoder.process(state, mel[None]), vocoder.finish(state)], dim=1)[0]


def _no_networks(name: str, device: torch.device) -> NetworkRunner:
    raise KeyError(name)


def _streamed(runner: NetworkRunner, mel: torch.Tensor, chunk: int) -> torch.Tensor:
    stream = runner.windowed(chunk)
    parts = stream.push({"mel": mel[None]}) + stream.finish()
    return torch.cat([p["audio"] for p in parts], dim=1)[0]


def evaluate_vocoders(
    corpus_dir: Path, vocoder_dir: Path, n: int, cepstra: int, chunk: int, offset: int = 0
) -> dict[str, dict[str, float]]:
    """MCD (mean, dB) against the teacher and RTF at the current thread count, by vocoder name."""
    corpus = Corpus.load(corpus_dir)
    runner, settings = load_vocoder(vocoder_dir)
    if settings != corpus.mel:
        raise UsageError(f"{vocoder_dir} was trained for other mel settings than the corpus's")
    utts = corpus.held_out[offset : offset + n]
    if not utts:
        raise UsageError(f"no held-out sentences from --offset {offset} (there are {len(corpus.held_out)})")
    teachers = teacher_audio(utts, settings, corpus_dir if "teacher" in corpus.meta else None)
    vocoders = {
        "Griffin-Lim (32 iterations)": lambda mel: _griffin_lim(mel, settings),
        f"{NAME}, whole utterance": lambda mel: runner.run({"mel": mel[None]})["audio"][0],
        f"{NAME}, chunks of {chunk} frames": lambda mel: _streamed(runner, mel, chunk),
    }
    results = {}
    audio_seconds = sum(u.frames for u in utts) * settings.hop_length / settings.sample_rate
    for name, vocode in vocoders.items():
        vocode(torch.from_numpy(utts[0].mel.astype(np.float32)))  # warm up
        scores, busy = [], 0.0
        for u in utts:
            mel = torch.from_numpy(u.mel.astype(np.float32))
            start = time.perf_counter()
            audio = vocode(mel)
            busy += time.perf_counter() - start
            teacher = teachers[u.text].astype(np.float32) / 32768.0  # whole, as addons.recipes.evaluate scores it
            scores.append(mcd(audio.numpy(), teacher, settings, cepstra))
        results[name] = {
            "mcd_db": float(np.mean(scores)),
            "mcd_std": float(np.std(scores)),
            "rtf": busy / audio_seconds,
        }
    return results


def _table(results: dict[str, dict[str, float]], n: int, threads: int) -> str:
    lines = [
        f"| vocoder (teacher mel, {n} held-out sentences) | MCD vs teacher (dB) | RTF at {threads} thread(s) |",
        "|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['mcd_db']:.2f} ± {r['mcd_std']:.2f} | {r['rtf']:.4f} |")
    return "\n".join(lines)


def _reexport_main(argv: Sequence[str]) -> int:
    p = _Parser(
        prog="python -m addons.recipes.vocoder --reexport",
        description="Write an exported vocoder again in this version's format (weights unchanged).",
    )
    p.add_argument("--reexport", action="store_true")
    p.add_argument("--init-from", type=Path, required=True, help="The exported vocoder directory to read.")
    p.add_argument("--export", type=Path, required=True, help="The new directory to write.")
    try:
        args = p.parse_args(argv)
        if args.export.exists():
            raise UsageError(f"--reexport writes a new directory; {args.export} exists")
        print(f"{NAME}: re-exported to {reexport(args.init_from, args.export)}", file=sys.stderr)
    except UsageError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _evaluate_main(argv: Sequence[str]) -> int:
    p = _Parser(prog="python -m addons.recipes.vocoder --evaluate", description="Score the vocoder and Griffin-Lim.")
    p.add_argument("--evaluate", action="store_true")
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    p.add_argument("--export", type=Path, default=Path(f"addons/bundled/{NAME}"), help="Exported vocoder directory.")
    p.add_argument("--n", type=int, default=20, help="Held-out sentences to use.")
    p.add_argument("--offset", type=int, default=0, help="Skip this many held-out sentences first.")
    p.add_argument("--cepstra", type=int, default=25, help="Cepstral coefficients c0..c(n-1); c0 is left out.")
    p.add_argument("--chunk", type=int, default=32, help="Frames per call when streamed.")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (RTF is measured at this count).")
    try:
        args = p.parse_args(argv)
        if args.n < 1 or args.threads < 1 or args.chunk < 1 or not 2 <= args.cepstra <= 80:
            raise UsageError("need --n >= 1, --threads >= 1, --chunk >= 1 and 2 <= --cepstra <= 80")
        if not (args.corpus / META_FILE).is_file():
            raise UsageError(f"--corpus {args.corpus}: not a corpus (no {META_FILE})")
        if not (args.export / CONFIG_FILE).is_file():
            raise UsageError(f"--export {args.export}: no {CONFIG_FILE} (train and export first)")
        torch.set_num_threads(args.threads)
        results = evaluate_vocoders(args.corpus, args.export, args.n, args.cepstra, args.chunk, args.offset)
    except UsageError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(_table(results, args.n, args.threads))
    return 0


# -- command line ------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = recipe_parser(
        "python -m addons.recipes.vocoder",
        "Train and export the universal neural vocoder (chorus-vocoder).",
        out="runs/vocoder",
        export=f"addons/bundled/{NAME}",
        batch_frames=4800,
        lr=1e-3,
    )
    p.add_argument("--evaluate", action="store_true", help="Score the exported vocoder instead of training.")
    p.add_argument(
        "--reexport",
        action="store_true",
        help="No training: write the --init-from vocoder to --export in this version's format (see reexport).",
    )
    p.add_argument("--dim", type=int, default=192, help="Backbone channels.")
    p.add_argument("--hidden", type=int, default=512, help="Channels inside each ConvNeXt block's MLP.")
    p.add_argument("--layers", type=int, default=6, help="ConvNeXt blocks.")
    p.add_argument("--kernel", type=int, default=7, help="Depthwise (and input) convolution width, odd.")
    p.add_argument("--segment", type=int, default=40, help="Frames scored per training segment.")
    p.add_argument("--context", type=int, default=4, help="Extra mel frames fed on each side of a segment.")
    p.add_argument("--batch-size", type=int, default=16, help="Segments per step.")
    p.add_argument("--mel-weight", type=float, default=1.0, help="Weight of the log-mel L1.")
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="Start from this exported vocoder's weights (fine-tuning, e.g. on a teacher's audio); sizes come from it.",
    )
    p.add_argument("--name", default=None, help=f"The exported vocoder's name (default {NAME}).")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--evaluate" in argv:
        return _evaluate_main(argv)
    if "--reexport" in argv:
        return _reexport_main(argv)
    return main_with(VocoderRecipe, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
