"""Train the duration model (FastSpeech-style) on the teacher corpus and export ``chorus-fast``.

    python -m addons.recipes.fast --corpus data/corpus --minutes 30 --out runs/fast [--resume] [--seed 0] [--threads 2]

From a teacher corpus (``addons.recipes.corpus --teacher ADDON``) the student keeps the teacher's
front end as it is (its ``frontend`` config, so the ids are the teacher's; a Piper voice's ``_``,
id 0, is a phoneme with an embedding of its own) and learns the teacher's durations; it is named
``chorus-fast-TEACHER`` and exported to ``build/addons/chorus-fast-TEACHER`` unless ``--name`` and
``--export`` say otherwise.

Teacher durations drive the upsampling during training (each token's encoding repeated for its
frames), so the decoder always sees the true alignment; the duration predictor learns
``log(1 + frames)`` on a detached encoding. Losses: mel L1 (+ ``--l2`` times mel MSE) over real
frames, plus ``--duration-weight`` times the duration MSE in the log domain over real tokens, plus
``--length-weight`` times the utterance length's absolute error in the log domain (a log-domain
duration loss alone predicts geometric means and speaks short). At export the duration predictor's
bias is shifted so that its rounded predictions add up to the teacher's frames over the first
training utterances (:func:`calibrate_durations`; ``--no-calibrate`` leaves it as trained).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from addons.formats.manifest import AddonError, read_manifest
from addons.models import DurationPredictor, MelDecoder, TextEncoder
from addons.recipes.builders import duration_addon
from addons.recipes.corpus import SILENCE, Corpus, Utterance
from addons.recipes.training import (
    UsageError,
    add_vocoder_option,
    addon_weights,
    main_with,
    recipe_parser,
    vocoder_section,
)
from addons.text.config import FrontendConfig, PiperFrontendConfig

__all__ = ["FastBatch", "FastModel", "FastRecipe", "calibrate_durations", "collate", "main"]

NAME = "chorus-fast"
#: Training utterances the export's duration calibration adds up (see :func:`calibrate_durations`).
CALIBRATION_UTTERANCES = 1000


class FastModel(nn.Module):
    """The three exported networks, trained together."""

    def __init__(self, n_symbols: int, n_mels: int, dim: int, dropout: float, padding_idx: int | None = 0) -> None:
        super().__init__()
        self.encoder = TextEncoder(n_symbols, dim, dropout=dropout, padding_idx=padding_idx)
        self.durations = DurationPredictor(dim, dropout=dropout)
        self.decoder = MelDecoder(dim, n_mels)


@dataclass(frozen=True)
class FastBatch:
    """Padded batch. ``ids``/``token_mask``/``durations`` ``[B, T]`` (durations in frames);
    ``mel`` ``[B, F, n_mels]`` (padding = silence), ``frame_mask`` ``[B, F]``, ``token_of_frame``
    ``[B, F]`` (index of the token each frame belongs to; 0 on padding)."""

    ids: torch.Tensor
    token_mask: torch.Tensor
    durations: torch.Tensor
    mel: torch.Tensor
    frame_mask: torch.Tensor
    token_of_frame: torch.Tensor


def collate(utterances: Sequence[Utterance]) -> FastBatch:
    """Pad ``utterances`` into one :class:`FastBatch`."""
    b, t, f = len(utterances), max(len(u.ids) for u in utterances), max(u.frames for u in utterances)
    n_mels = utterances[0].mel.shape[1]
    ids, durations, token_of_frame = (
        np.zeros((b, t), np.int64),
        np.zeros((b, t), np.float32),
        np.zeros((b, f), np.int64),
    )
    token_mask, frame_mask = np.zeros((b, t), np.float32), np.zeros((b, f), np.float32)
    mel = np.full((b, f, n_mels), SILENCE, np.float32)
    for i, u in enumerate(utterances):
        ids[i, : len(u.ids)], durations[i, : len(u.ids)], token_mask[i, : len(u.ids)] = u.ids, u.durations, 1.0
        mel[i, : u.frames], frame_mask[i, : u.frames] = u.mel, 1.0
        token_of_frame[i, : u.frames] = np.repeat(np.arange(len(u.ids)), u.durations)
    return FastBatch(*(torch.from_numpy(x) for x in (ids, token_mask, durations, mel, frame_mask, token_of_frame)))


def _rounded_durations(model: FastModel, batch: FastBatch) -> torch.Tensor:
    """Predicted frames per token ``[B, T]``, rounded as at synthesis (speed 1)."""
    return torch.round(model.durations(model.encoder(batch.ids, batch.token_mask), batch.token_mask))


def calibrate_durations(model: FastModel, utterances: Sequence[Utterance], tolerance: float = 0.002) -> float:
    """Shift the duration predictor's output bias (log domain) until the rounded predictions add up to the
    teacher's frames over ``utterances`` (training data); returns the shift.

    A log-domain loss predicts a geometric mean, which lies below the mean, so a student trained on it
    alone speaks short; the length loss narrows that, this closes what is left. Bisection: the total
    grows with the bias.
    """
    model.eval()
    batches = [collate(utterances[i : i + 32]) for i in range(0, len(utterances), 32)]
    with torch.no_grad():
        encodings = [(model.encoder(b.ids, b.token_mask), b) for b in batches]
        target = sum(float(b.durations.sum()) for b in batches)
        bias = model.durations.proj.bias

        def total(shift: float) -> float:
            bias.add_(shift)
            try:
                return sum(float(torch.round(model.durations(e, b.token_mask)).sum()) for e, b in encodings)
            finally:
                bias.sub_(shift)

        lo, hi = -3.0, 3.0
        if not total(lo) <= target <= total(hi):
            return 0.0  # far off: leave the model as trained rather than guess
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            said = total(mid)
            if abs(said / target - 1.0) <= tolerance:
                lo = hi = mid
                break
            lo, hi = (mid, hi) if said < target else (lo, mid)
        shift = 0.5 * (lo + hi)
        bias.add_(shift)
    return shift


def upsample(encoding: torch.Tensor, token_of_frame: torch.Tensor) -> torch.Tensor:
    """``encoding`` ``[B, T, D]`` -> ``[B, F, D]``: each frame takes its token's encoding."""
    return torch.gather(encoding, 1, token_of_frame.unsqueeze(-1).expand(-1, -1, encoding.shape[-1]))


def losses(model: FastModel, batch: FastBatch) -> dict[str, torch.Tensor]:
    """Mel L1 and MSE per real frame and band (log-mel), duration MSE per real token (log(1 + frames))."""
    encoding = model.encoder(batch.ids, batch.token_mask)
    log_d = model.durations.log_durations(encoding, batch.token_mask)
    target = torch.log1p(batch.durations) * batch.token_mask
    mel = model.decoder(upsample(encoding, batch.token_of_frame), batch.frame_mask)
    err = (mel - batch.mel) * batch.frame_mask.unsqueeze(-1)
    cells = batch.frame_mask.sum() * mel.shape[-1]
    frames = (torch.expm1(log_d) * batch.token_mask).sum(1)  # the utterance's predicted length, unrounded
    return {
        "mel_l1": err.abs().sum() / cells,
        "mel_l2": err.pow(2).sum() / cells,
        "duration": (log_d - target).pow(2).sum() / batch.token_mask.sum(),
        "length": (torch.log1p(frames.clamp(min=0.0)) - torch.log1p(batch.durations.sum(1))).abs().mean(),
    }


#: The exported networks' names (see :func:`addons.recipes.builders.duration_addon`) and the parts they are.
_EXPORTED = {"text_encoder": "encoder", "duration_predictor": "durations", "decoder": "decoder"}


def initialise_from(model: FastModel, directory: Path, corpus: Corpus) -> None:
    """Copy an exported chorus-fast's weights into ``model``: the same sizes, read with the same front
    end (ids) as ``corpus``. Raises :class:`UsageError` naming what differs."""
    try:
        manifest = read_manifest(directory)
    except AddonError as exc:
        raise UsageError(f"--init-from: {exc}") from None
    same = (
        manifest.frontend == corpus.frontend
        if "teacher" in corpus.meta
        else tuple(manifest.frontend.phonemes) == corpus.phonemes
    )
    if not same:
        raise UsageError(f"--init-from {directory}: it reads text into other ids than the corpus")
    for name, part in _EXPORTED.items():
        role = manifest.networks[name].role if name in manifest.networks else None
        weights = addon_weights(directory, role, name) if role else {}
        own = getattr(model, part).state_dict()
        if set(weights) != set(own) or any(weights[k].shape != own[k].shape for k in own):
            raise UsageError(f"--init-from {directory}: its {name} is not this run's (sizes or names differ)")
        getattr(model, part).load_state_dict(weights)
    print(f"{NAME}: starting from {directory} ({manifest.name} {manifest.version})", file=sys.stderr)


class FastRecipe:
    """Hyperparameters and the training-side hooks (see :class:`addons.recipes.training.Recipe`)."""

    name = NAME

    def __init__(self, args: argparse.Namespace) -> None:
        if args.dim < 8 or args.dim % 2:
            raise UsageError(f"--dim must be an even number >= 8, got {args.dim}")
        if not 0.0 <= args.dropout < 1.0 or args.l2 < 0 or args.duration_weight <= 0:
            raise UsageError("need 0 <= --dropout < 1, --l2 >= 0 and --duration-weight > 0")
        self.config: dict[str, Any] = {"dim": args.dim}
        if args.length_weight < 0:
            raise UsageError(f"--length-weight must be >= 0, got {args.length_weight}")
        self.dropout, self.l2, self.duration_weight = args.dropout, args.l2, args.duration_weight
        self.length_weight, self.calibrate = args.length_weight, not args.no_calibrate
        self.vocoder = vocoder_section(args.vocoder)
        self.export_name: str | None = args.name
        self.init_from: Path | None = args.init_from

    def build(self, corpus: Corpus) -> FastModel:
        if not corpus.has_durations:
            raise UsageError("the corpus has no durations (its teacher aligns nothing); train chorus-taco on it")
        own_zero = isinstance(corpus.frontend, PiperFrontendConfig)  # id 0 is Piper's "_", not padding
        model = FastModel(corpus.symbols, corpus.mel.n_mels, self.config["dim"], self.dropout, None if own_zero else 0)
        with torch.no_grad():  # start from the average frame and duration (log-mel silence is about -11.5)
            model.decoder.proj.bias.copy_(torch.from_numpy(corpus.mean_mel()))
            log_durations = np.log1p(np.concatenate([u.durations for u in corpus.train]))
            model.durations.proj.bias.fill_(float(log_durations.mean()))
        if self.init_from is not None:
            initialise_from(model, self.init_from, corpus)
        return model

    def loss(self, model: nn.Module, batch: list[Utterance]) -> tuple[torch.Tensor, dict[str, float]]:
        assert isinstance(model, FastModel)
        parts = losses(model, collate(batch))
        total = (
            parts["mel_l1"]
            + self.l2 * parts["mel_l2"]
            + self.duration_weight * parts["duration"]
            + self.length_weight * parts["length"]
        )
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def validate(self, model: nn.Module, utterances: list[Utterance]) -> dict[str, float]:
        """Losses with teacher durations, the duration error in frames and the length error in percent
        (predictions rounded as the Upsampler rounds them)."""
        assert isinstance(model, FastModel)
        sums: dict[str, float] = {}
        abs_err, tokens, said, heard = 0.0, 0.0, 0.0, 0.0
        for start in range(0, len(utterances), 16):
            batch = collate(utterances[start : start + 16])
            for k, v in losses(model, batch).items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(batch.ids)
            predicted = _rounded_durations(model, batch)
            abs_err += float(((predicted - batch.durations).abs() * batch.token_mask).sum())
            tokens += float(batch.token_mask.sum())
            said, heard = said + float(predicted.sum()), heard + float(batch.durations.sum())
        return {k: v / len(utterances) for k, v in sums.items()} | {
            "duration_mae_frames": abs_err / tokens,
            "length_error_percent": 100.0 * (said / heard - 1.0),
        }

    def export(self, model: nn.Module, corpus: Corpus, directory: Path | None) -> Path:
        """An addon directory (``directory``, else the default for this corpus; see the module doc)."""
        assert isinstance(model, FastModel)
        if self.calibrate:
            shift = calibrate_durations(model, corpus.train[:CALIBRATION_UTTERANCES])
            print(
                f"{NAME}: durations calibrated on training utterances (log-domain shift {shift:+.4f})", file=sys.stderr
            )
        teacher = corpus.meta.get("teacher")
        if not isinstance(teacher, dict):  # the espeak-ng corpus: the bundled reference voice
            return duration_addon(
                directory or Path(f"addons/bundled/{NAME}"),
                model.encoder,
                model.durations,
                model.decoder,
                mel=corpus.mel,
                name=self.export_name or NAME,
                language="en-us",
                description="Reference duration-based voice (FastSpeech-style), distilled from espeak-ng en-us",
                frontend=FrontendConfig(phonemes=corpus.phonemes),
                voices={"default": {"description": "espeak-ng en-us, as learned by a parallel conv decoder"}},
                vocoder=self.vocoder,
            )
        name = self.export_name or f"{NAME}-{teacher['name']}"[:64]
        source = f"{teacher['name']} {teacher['version']}"
        return duration_addon(
            directory or Path(f"build/addons/{name}"),
            model.encoder,
            model.durations,
            model.decoder,
            mel=corpus.mel,
            name=name,
            language=str(teacher["language"]),
            description=f"Duration-based voice (FastSpeech-style) distilled from {source}, noise off",
            frontend=corpus.frontend,
            voices={"default": {"description": f"{source} with its noise off, as learned by a parallel conv decoder"}},
            vocoder=self.vocoder,
        )


def parser() -> argparse.ArgumentParser:
    p = recipe_parser(
        "python -m addons.recipes.fast",
        "Train and export the duration model (chorus-fast).",
        out="runs/fast",
        export=f"addons/bundled/{NAME}",
        batch_frames=6000,
        lr=1e-3,
    )
    p.set_defaults(export=None)  # the bundled voice's directory, or build/addons/NAME for a teacher's student
    p.add_argument("--name", default=None, help=f"The exported addon's name (default {NAME}, or {NAME}-TEACHER).")
    add_vocoder_option(p)
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="Start from an exported chorus-fast's weights (the same sizes and ids), e.g. to train a shipped voice on.",
    )
    p.add_argument("--dim", type=int, default=192, help="Channels of the encoder, duration predictor and decoder.")
    p.add_argument("--dropout", type=float, default=0.1, help="Dropout in the encoder and duration predictor.")
    p.add_argument("--l2", type=float, default=0.0, help="Weight of the mel MSE added to the mel L1.")
    p.add_argument("--duration-weight", type=float, default=1.0, help="Weight of the log-duration MSE.")
    p.add_argument(
        "--length-weight", type=float, default=1.0, help="Weight of the utterance length's error (log domain, L1)."
    )
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="Export the duration predictor as trained, without matching its total to the training frames.",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return main_with(FastRecipe, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
