"""Train the attention model (Tacotron-style) on the teacher corpus and export ``chorus-taco``.

    python -m addons.recipes.taco --corpus data/corpus --minutes 30 --out runs/taco [--resume] [--seed 0] [--threads 2]

Teacher forcing drives :class:`~addons.models.DecoderStep` in a Python loop over ``ceil(F / r)``
steps: step ``k`` gets the last frame of target group ``k - 1`` (zeros at first, as at inference)
and ``attention_prev``/``attention_cum`` exactly as the AttentionDecoder block feeds them. Training
attends over the whole text; the export's ``--window`` (default 128 tokens, above the corpus's
99th percentile of about 107) and its front-end's ``max_sentence_phonemes`` (set to the window)
keep inference in the same regime: every sentence fits the window, so the window never slides.

Losses: mel L1 over real frames; stop-token BCE over the utterance's own steps, positive from the
last real frame on, weighted by ``--stop-weight``; guided attention (Tachibana et al., 2017), the
attention mass per step weighted by ``1 - exp(-((n - c) / N)^2 / (2 g^2))`` around the diagonal
``c = s / S * N`` (``--guide diagonal``) or around the teacher's token (``--guide teacher``).

Prenet dropout is on in training (``--prenet-dropout``, 0.5 as in Tacotron 2). Tacotron keeps it on
at inference too, but the export runs in eval mode, so an exported voice decodes without it. Each
validation therefore decodes a few held-out texts freely both ways (``stopped``/``sharpness``/
``stop_error_frames`` as exported, ``*_dropout`` with the prenet's dropout on) to show what that costs.
Dropout rates and loss weights may change on ``--resume`` (only the sizes must match), so a run can
end with a short stretch at a lower ``--prenet-dropout`` if decoding without it proves worse.

``--init-from ADDON`` starts a new run from an exported chorus-taco's weights (read with the same
checked loader as any addon) instead of random ones: a voice can be trained further, or retrained
with another reduction factor. For another ``--reduction`` the frame and stop heads are rebuilt:
frame ``j`` of the new step starts as frame ``min(j, r_old - 1)`` of the old one, so the first
steps of training speak (too fast) rather than babble.

``--reexport --init-from ADDON --export DIR`` trains nothing: it writes ADDON again in this
version's export format (the attention keys computed once per sentence by a network of their own,
the step's other weights unchanged, the same audio to the bit); that is how the bundled
chorus-taco was brought to this format.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from addons.formats.export import export_network
from addons.formats.manifest import MANIFEST_NAME, AddonError, read_manifest
from addons.models import AttentionEncoder, DecoderStep
from addons.recipes.builders import attention_addon, attention_step_networks
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

__all__ = [
    "FreeRun",
    "TacoBatch",
    "TacoModel",
    "TacoRecipe",
    "collate",
    "free_run",
    "free_run_metrics",
    "main",
    "reexport",
    "teacher_forced",
]

NAME = "chorus-taco"
#: Length guard of the AttentionDecoder block (its default), used for free-running validation too.
MAX_FRAMES_PER_TOKEN = 12.0


class TacoModel(nn.Module):
    """The two exported networks, trained together."""

    def __init__(
        self,
        n_symbols: int,
        n_mels: int,
        config: dict[str, Any],
        dropout: float,
        prenet_dropout: float,
        padding_idx: int | None = 0,
    ) -> None:
        super().__init__()
        self.encoder = AttentionEncoder(n_symbols, config["dim"], dropout=dropout, padding_idx=padding_idx)
        self.step = DecoderStep(
            n_mels,
            config["dim"],
            config["reduction"],
            config["prenet"],
            config["rnn"],
            config["attention"],
            prenet_dropout=prenet_dropout,
        )


@dataclass(frozen=True)
class TacoBatch:
    """Padded batch for ``S`` decoder steps of ``r`` frames.

    ``ids``/``token_mask`` ``[B, T]``; ``mel`` ``[B, S*r, n_mels]`` (padding = silence);
    ``frame_mask`` ``[B, S*r]`` (real frames); ``stop_target``/``stop_mask`` ``[B, S*r]`` (1 from
    the last real frame on / frames of the utterance's own steps); ``step_mask`` ``[B, S]``;
    ``guide_centre`` ``[B, S]`` the token each step should attend to (for the guided-attention loss).
    """

    ids: torch.Tensor
    token_mask: torch.Tensor
    mel: torch.Tensor
    frame_mask: torch.Tensor
    stop_target: torch.Tensor
    stop_mask: torch.Tensor
    step_mask: torch.Tensor
    guide_centre: torch.Tensor


def _centres(u: Utterance, steps: int, r: int, teacher: bool) -> np.ndarray:
    """Token position per step ``[steps]``: on the diagonal, or the teacher's token at the step's middle frame."""
    if not teacher:
        return np.arange(steps) / steps * len(u.ids)
    token_of_frame = np.repeat(np.arange(len(u.ids)), u.durations)
    return token_of_frame[np.minimum(np.arange(steps) * r + r // 2, u.frames - 1)].astype(np.float64)


def collate(utterances: Sequence[Utterance], r: int, teacher_guide: bool = False) -> TacoBatch:
    """Pad ``utterances`` into one :class:`TacoBatch` (frames rounded up to whole steps of ``r``)."""
    b, t = len(utterances), max(len(u.ids) for u in utterances)
    s = max(math.ceil(u.frames / r) for u in utterances)
    n_mels = utterances[0].mel.shape[1]
    ids, token_mask = np.zeros((b, t), np.int64), np.zeros((b, t), np.float32)
    mel = np.full((b, s * r, n_mels), SILENCE, np.float32)
    frame_mask, stop_target, stop_mask = (np.zeros((b, s * r), np.float32) for _ in range(3))
    step_mask, centre = np.zeros((b, s), np.float32), np.zeros((b, s), np.float32)
    for i, u in enumerate(utterances):
        steps = math.ceil(u.frames / r)
        ids[i, : len(u.ids)], token_mask[i, : len(u.ids)] = u.ids, 1.0
        mel[i, : u.frames], frame_mask[i, : u.frames] = u.mel, 1.0
        stop_target[i, u.frames - 1 :], stop_mask[i, : steps * r] = 1.0, 1.0
        step_mask[i, :steps], centre[i, :steps] = 1.0, _centres(u, steps, r, teacher_guide)
    arrays = (ids, token_mask, mel, frame_mask, stop_target, stop_mask, step_mask, centre)
    return TacoBatch(*(torch.from_numpy(x) for x in arrays))


def _zero_states(step: DecoderStep, batch: int) -> list[torch.Tensor]:
    return [torch.zeros(batch, size) for size in step.state_shapes().values()]


def teacher_forced(model: TacoModel, batch: TacoBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode ``batch`` with teacher forcing: mel ``[B, S*r, n_mels]``, stop logits ``[B, S*r]``, attention ``[B, S, T]``."""
    memory = model.encoder(batch.ids, batch.token_mask)
    b, t = batch.ids.shape
    r = model.step.reduction
    prev = torch.cat([torch.zeros(b, 1, batch.mel.shape[-1]), batch.mel[:, r - 1 : -1 : r]], dim=1)
    att_prev, att_cum, states = torch.zeros(b, t), torch.zeros(b, t), _zero_states(model.step, b)
    frames, stops, attention = [], [], []
    for k in range(prev.shape[1]):
        out, stop, att, *states = model.step(prev[:, k], memory, batch.token_mask, att_prev, att_cum, *states)
        att_prev, att_cum = att, att_cum + att
        frames.append(out)
        stops.append(stop)
        attention.append(att)
    return torch.cat(frames, dim=1), torch.cat(stops, dim=1), torch.stack(attention, dim=1)


def guide_weights(batch: TacoBatch, sigma: float) -> torch.Tensor:
    """Penalty ``[B, S, T]`` for attending to token ``n`` at step ``s``: 0 at the guide centre, towards 1 away."""
    n = torch.arange(batch.ids.shape[1], dtype=torch.float32)
    tokens = batch.token_mask.sum(dim=1)[:, None, None]
    distance = (n[None, None, :] - batch.guide_centre[:, :, None]) / tokens
    return 1.0 - torch.exp(-distance.pow(2) / (2 * sigma**2))


def losses(model: TacoModel, batch: TacoBatch, sigma: float, stop_weight: float) -> dict[str, torch.Tensor]:
    """Mel L1 per real frame and band, stop BCE per frame of own steps, guided attention per step."""
    mel, stop, attention = teacher_forced(model, batch)
    cells = batch.frame_mask.sum() * mel.shape[-1]
    l1 = ((mel - batch.mel).abs() * batch.frame_mask.unsqueeze(-1)).sum() / cells
    bce = (
        F.binary_cross_entropy_with_logits(
            stop, batch.stop_target, weight=batch.stop_mask, pos_weight=torch.tensor(stop_weight), reduction="sum"
        )
        / batch.stop_mask.sum()
    )
    guide = (attention * guide_weights(batch, sigma) * batch.step_mask.unsqueeze(-1)).sum() / batch.step_mask.sum()
    return {"mel_l1": l1, "stop": bce, "guide": guide}


@dataclass(frozen=True)
class FreeRun:
    """Free-running decode of one text: ``mel`` ``[F, n_mels]``, whether the stop token ended it
    (else the length guard), and ``attention`` ``[steps, T]``."""

    mel: torch.Tensor
    ended_by_stop: bool
    attention: torch.Tensor

    @property
    def sharpness(self) -> float:
        """Mean over decoder steps of the largest attention weight (1 = one token per step)."""
        return float(self.attention.max(dim=1).values.mean())


def free_run(model: TacoModel, ids: np.ndarray, threshold: float = 0.5, prenet_dropout: bool = False) -> FreeRun:
    """Decode ``ids`` ``[T]`` as the AttentionDecoder block does (window = whole text), no gradients.

    The model runs in eval mode, as exported; ``prenet_dropout`` keeps the prenet's dropout on, as
    Tacotron does at inference (drawn from a fixed seed, so the result is repeatable).
    """
    model.eval()
    model.step.prenet.train(prenet_dropout)
    try:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            return _decode(model, torch.from_numpy(np.asarray(ids, dtype=np.int64))[None], threshold)
    finally:
        model.step.prenet.eval()


def _decode(model: TacoModel, tokens: torch.Tensor, threshold: float) -> FreeRun:
    mask = torch.ones(tokens.shape, dtype=torch.float32)
    guard = math.ceil(MAX_FRAMES_PER_TOKEN * tokens.shape[1])
    memory = model.encoder(tokens, mask)
    att_prev, att_cum, states = torch.zeros(mask.shape), torch.zeros(mask.shape), _zero_states(model.step, 1)
    prev, frames, attention, produced = torch.zeros(1, model.step.n_mels), [], [], 0
    while produced < guard:
        out, stop, att, *states = model.step(prev, memory, mask, att_prev, att_cum, *states)
        att_prev, att_cum = att, att_cum + att
        attention.append(att[0])
        stops = torch.sigmoid(stop[0]) > threshold
        if bool(stops.any()):
            frames.append(out[0, : int(torch.nonzero(stops)[0]) + 1])
            return FreeRun(torch.cat(frames)[:guard], True, torch.stack(attention))
        frames.append(out[0])
        produced += out.shape[1]
        prev = out[:, -1]
    return FreeRun(torch.cat(frames)[:guard], False, torch.stack(attention))


def free_run_metrics(model: TacoModel, utterances: Sequence[Utterance], prenet_dropout: bool) -> dict[str, float]:
    """Mean absolute length error (frames), fraction ended by the stop token, and sharpness, decoding freely."""
    runs = [(u, free_run(model, u.ids, prenet_dropout=prenet_dropout)) for u in utterances]
    return {
        "stop_error_frames": float(np.mean([abs(run.mel.shape[0] - u.frames) for u, run in runs])),
        "stopped": float(np.mean([run.ended_by_stop for _, run in runs])),
        "sharpness": float(np.mean([run.sharpness for _, run in runs])),
    }


class TacoRecipe:
    """Hyperparameters and the training-side hooks (see :class:`addons.recipes.training.Recipe`)."""

    name = NAME

    def __init__(self, args: argparse.Namespace) -> None:
        _check(args)
        self.config: dict[str, Any] = {k: getattr(args, k) for k in ("dim", "rnn", "prenet", "attention", "reduction")}
        self.dropout, self.prenet_dropout = args.dropout, args.prenet_dropout
        self.sigma, self.guide_weight, self.stop_weight = args.guide_sigma, args.guide_weight, args.stop_weight
        self.teacher_guide, self.window, self.free_runs = args.guide == "teacher", args.window, args.free_runs
        self.init_from: Path | None = args.init_from
        self.export_name: str | None = args.name
        self.vocoder = vocoder_section(args.vocoder)

    def build(self, corpus: Corpus) -> TacoModel:
        teacher = "teacher" in corpus.meta
        if teacher and self.init_from is not None:
            raise UsageError("--init-from carries embeddings over by espeak-ng phoneme: not for a teacher corpus")
        own_zero = isinstance(corpus.frontend, PiperFrontendConfig)  # id 0 is Piper's "_", not padding
        model = TacoModel(
            corpus.symbols, corpus.mel.n_mels, self.config, self.dropout, self.prenet_dropout, None if own_zero else 0
        )
        with torch.no_grad():  # start from the average frame and a low stop probability
            model.step.frames.bias.copy_(torch.from_numpy(np.tile(corpus.mean_mel(), self.config["reduction"])))
            model.step.stop.bias.fill_(-4.0)
        if self.init_from is not None:
            initialise_from(model, self.init_from, corpus.phonemes)
        return model

    def loss(self, model: nn.Module, batch: list[Utterance]) -> tuple[torch.Tensor, dict[str, float]]:
        assert isinstance(model, TacoModel)
        parts = losses(model, collate(batch, model.step.reduction, self.teacher_guide), self.sigma, self.stop_weight)
        total = parts["mel_l1"] + parts["stop"] + self.guide_weight * parts["guide"]
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def validate(self, model: nn.Module, utterances: list[Utterance]) -> dict[str, float]:
        """Teacher-forced losses, then free-running length error (frames), stop rate and sharpness on a few
        texts, without and with prenet dropout (``*_dropout``)."""
        assert isinstance(model, TacoModel)
        sums: dict[str, float] = {}
        for start in range(0, len(utterances), 16):
            chunk = utterances[start : start + 16]
            parts = losses(
                model, collate(chunk, model.step.reduction, self.teacher_guide), self.sigma, self.stop_weight
            )
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(chunk)
        metrics = {k: v / len(utterances) for k, v in sums.items()}
        texts = utterances[: self.free_runs]
        if texts:  # as exported (no prenet dropout), then as Tacotron decodes (with it)
            metrics |= free_run_metrics(model, texts, prenet_dropout=False)
            metrics |= {f"{k}_dropout": v for k, v in free_run_metrics(model, texts, prenet_dropout=True).items()}
        return metrics

    def export(self, model: nn.Module, corpus: Corpus, directory: Path | None) -> Path:
        """An addon directory: ``directory``, else the bundled voice's (espeak-ng corpus) or
        ``build/addons/chorus-taco-TEACHER`` (a teacher's corpus, read with the teacher's front end)."""
        assert isinstance(model, TacoModel)
        teacher = corpus.meta.get("teacher")
        if isinstance(teacher, dict):  # a teacher's student reads text with the teacher's front end
            name = self.export_name or f"{NAME}-{teacher['name']}"[:64]
            source, language = f"{teacher['name']} {teacher['version']}", str(teacher["language"])
            frontend = corpus.frontend.model_copy(update={"max_sentence_phonemes": self.window})
            described = (
                f"Attention-based voice (Tacotron-style) distilled from {source}, noise off",
                f"{source} with its noise off",
            )
            default_dir = Path(f"build/addons/{name}")
        else:  # the espeak-ng corpus: the bundled reference voice
            name, language = self.export_name or NAME, "en-us"
            frontend = FrontendConfig(phonemes=corpus.phonemes, max_sentence_phonemes=self.window)
            described = (
                "Reference attention-based voice (Tacotron-style), distilled from espeak-ng en-us",
                "espeak-ng en-us",
            )
            default_dir = Path(f"addons/bundled/{NAME}")
        return attention_addon(
            directory or default_dir,
            model.encoder,
            model.step,
            mel=corpus.mel,
            window=self.window,
            max_frames_per_token=MAX_FRAMES_PER_TOKEN,
            name=name,
            language=language,
            description=described[0],
            frontend=frontend,
            voices={"default": {"description": f"{described[1]}, as learned by an attention decoder"}},
            vocoder=self.vocoder,
        )


def initialise_from(model: TacoModel, directory: Path, phonemes: Sequence[str]) -> None:
    """Copy an exported chorus-taco's weights into ``model`` (see the module doc); the sizes other
    than the reduction factor must match. Phoneme embeddings are carried over by phoneme (a corpus
    rebuilt since may list a few more or fewer); new phonemes keep their fresh rows. Raises
    :class:`UsageError` naming what differs."""
    try:
        manifest = read_manifest(directory)
    except AddonError as exc:
        raise UsageError(f"--init-from: {exc}") from None
    encoder = addon_weights(directory, "encoder", "encoder")
    step = addon_weights(directory, "decoder_step")
    step = addon_weights(directory, "encoder", "attention_keys") | step  # keys exported apart (or not)
    n_mels, r = model.step.n_mels, model.step.reduction
    if manifest.mel.n_mels != n_mels:
        raise UsageError(f"--init-from {directory}: {manifest.mel.n_mels} mel bands, the corpus has {n_mels}")
    old_ids = {p: i + 1 for i, p in enumerate(manifest.frontend.phonemes)}
    embed = model.encoder.embed.weight.detach().clone()
    for i, p in enumerate(phonemes):
        if p in old_ids:
            embed[i + 1] = encoder["embed.weight"][old_ids[p]]
    encoder["embed.weight"] = embed
    old_r = int(step["stop.bias"].shape[0])
    frames = [min(j, old_r - 1) for j in range(r)]
    rows = torch.tensor([f * n_mels + b for f in frames for b in range(n_mels)])
    step["frames.weight"], step["frames.bias"] = step["frames.weight"][rows], step["frames.bias"][rows]
    step["stop.weight"], step["stop.bias"] = step["stop.weight"][frames], step["stop.bias"][frames]
    for part, weights in ((model.encoder, encoder), (model.step, step)):
        own = part.state_dict()
        wrong = [k for k in own if k not in weights or weights[k].shape != own[k].shape]
        if wrong:
            raise UsageError(f"--init-from {directory}: sizes differ from this run's ({', '.join(wrong[:4])})")
        part.load_state_dict({k: weights[k] for k in own})


def reexport(directory: Path, out: Path) -> Path:
    """Write the exported chorus-taco at ``directory`` to ``out`` in this version's export format
    (attention keys once per sentence, see :func:`addons.recipes.builders.attention_addon`): the step
    network is rebuilt from its weights (unchanged) and exported again beside its keys network;
    every other file, and every other manifest field, is copied as it is."""
    try:
        manifest = read_manifest(directory)
    except AddonError as exc:
        raise UsageError(f"--reexport: {exc}") from None
    weights = addon_weights(directory, "encoder", "attention_keys") | addon_weights(directory, "decoder_step")
    filters, _, kernel = weights["location_conv.weight"].shape
    step = DecoderStep(
        n_mels=int(weights["prenet.0.weight"].shape[1]),
        dim=int(weights["keys.weight"].shape[1]),
        reduction=int(weights["stop.bias"].shape[0]),
        prenet=int(weights["prenet.0.weight"].shape[0]),
        rnn=int(weights["att_rnn.weight_hh"].shape[1]),
        attention=int(weights["keys.weight"].shape[0]),
        location_filters=int(filters),
        location_kernel=int(kernel),
    )
    step.load_state_dict(weights)
    encoder = manifest.networks["encoder"]
    static_tokens = (encoder.static_length or 0) - 2 * (encoder.receptive_field or 0)
    window = manifest.networks["decoder_step"].static_length
    if window is None:
        raise UsageError(f"--reexport {directory}: its decoder_step declares no static_length")
    made = attention_step_networks(step.eval(), manifest.mel, window, static_tokens)
    data = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    networks: dict[str, Any] = {}
    for name, spec in data["networks"].items():
        if name == "decoder_step":
            continue
        networks[name] = spec
        if name == "encoder":
            networks |= {k: net.spec(f"{k}.pt2").model_dump(mode="json") for k, net in made.items()}
    data["networks"] = networks
    shutil.copytree(directory, out, ignore=shutil.ignore_patterns("decoder_step.pt2", "attention_keys.pt2"))
    for name, net in made.items():
        export_network(net, net.spec(f"{name}.pt2"), out / f"{name}.pt2")
    (out / MANIFEST_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    read_manifest(out)  # checked as any addon
    return out


def _check(args: argparse.Namespace) -> None:
    sizes = {"--dim": args.dim, "--rnn": args.rnn, "--prenet": args.prenet, "--attention": args.attention}
    for name, value in sizes.items():
        if value < 4:
            raise UsageError(f"{name} must be >= 4, got {value}")
    if not 1 <= args.reduction <= 8:
        raise UsageError(f"--reduction must be 1-8, got {args.reduction}")
    if not (0 <= args.dropout < 1 and 0 <= args.prenet_dropout < 1):
        raise UsageError("--dropout and --prenet-dropout must be in [0, 1)")
    if args.guide_sigma <= 0 or args.guide_weight < 0 or args.stop_weight <= 0:
        raise UsageError("need --guide-sigma > 0, --guide-weight >= 0 and --stop-weight > 0")
    if args.window < 8 or args.free_runs < 0:
        raise UsageError("need --window >= 8 and --free-runs >= 0")


def parser() -> argparse.ArgumentParser:
    p = recipe_parser(
        "python -m addons.recipes.taco",
        "Train and export the attention model (chorus-taco).",
        out="runs/taco",
        export=f"addons/bundled/{NAME}",
        batch_frames=8000,
        lr=1e-3,
    )
    p.set_defaults(export=None)  # the bundled voice's directory, or build/addons/NAME for a teacher's student
    p.add_argument("--name", default=None, help=f"The exported addon's name (default {NAME}, or {NAME}-TEACHER).")
    add_vocoder_option(p)
    p.add_argument("--dim", type=int, default=128, help="Encoder channels (the attention memory).")
    p.add_argument("--rnn", type=int, default=256, help="Units of both decoder LSTMs.")
    p.add_argument("--prenet", type=int, default=128, help="Prenet width.")
    p.add_argument("--attention", type=int, default=128, help="Attention (query/key) width.")
    p.add_argument("--reduction", type=int, default=3, help="Frames per decoder step (r).")
    p.add_argument("--dropout", type=float, default=0.1, help="Encoder dropout.")
    p.add_argument("--prenet-dropout", type=float, default=0.5, help="Prenet dropout (training only; see module doc).")
    p.add_argument(
        "--guide", choices=("diagonal", "teacher"), default="diagonal", help="Centre of the attention guide."
    )
    p.add_argument("--guide-sigma", type=float, default=0.2, help="Width g of the guide, as a fraction of the text.")
    p.add_argument("--guide-weight", type=float, default=1.0, help="Weight of the guided-attention loss.")
    p.add_argument("--stop-weight", type=float, default=10.0, help="pos_weight of the stop-token BCE.")
    p.add_argument("--window", type=int, default=128, help="Export: tokens attended per step at inference.")
    p.add_argument("--free-runs", type=int, default=8, help="Held-out texts decoded free-running at each validation.")
    p.add_argument(
        "--init-from", type=Path, default=None, help="Start from this exported chorus-taco's weights (see module doc)."
    )
    p.add_argument(
        "--reexport",
        action="store_true",
        help="No training: write the --init-from voice to --export in this version's format (see reexport).",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    try:
        args = p.parse_args(argv)
        if not args.reexport:
            return main_with(TacoRecipe, p, argv)
        if args.init_from is None:
            raise UsageError("--reexport needs --init-from ADDON")
        if args.export is None:
            raise UsageError("--reexport needs --export DIR")
        if args.export.exists():
            raise UsageError(f"--reexport writes a new directory; {args.export} exists")
        print(f"{NAME}: re-exported to {reexport(args.init_from, args.export)}", file=sys.stderr)
        return 0
    except UsageError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
