"""The training loop both recipes share: time budget, length-bucketed batches, checkpoints, resume.

A recipe supplies the model, its losses, its validation and its export (:class:`Recipe`); this
module does the rest. Training is seeded: the initial weights come from ``--seed``, the batches of
epoch ``e`` from ``(seed, e)``, and a checkpoint stores the model, optimizer, scheduler, position
in the epoch and torch's RNG (dropout), so a resumed run continues the same sequence of batches.
``--minutes`` is the total training time of the run directory, earlier sessions included.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from addons.engine.vocoders import find_vocoder
from addons.formats.manifest import AddonError, read_manifest
from addons.formats.netfile import load_program
from addons.recipes.corpus import Corpus, Utterance, corpus_exists, length_batches

__all__ = [
    "GRIFFIN_LIM",
    "Progress",
    "Recipe",
    "UsageError",
    "add_vocoder_option",
    "addon_weights",
    "load_model",
    "main_with",
    "parse_args",
    "recipe_parser",
    "run",
    "vocoder_section",
]

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.jsonl"


class UsageError(ValueError):
    """A bad command line; ``main`` prints it on one line and returns 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


class Recipe(Protocol):
    """What a recipe provides.

    ``config`` holds the hyperparameters that shape the model: a resumed run must match them, while
    dropout rates and loss weights may change between sessions (the learning rate comes from the checkpoint).
    """

    name: str
    config: dict[str, Any]

    def build(self, corpus: Corpus) -> nn.Module:
        """A freshly initialised model (called after seeding)."""
        ...

    def loss(self, model: nn.Module, batch: list[Utterance]) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise on ``batch`` and its named parts (for logging)."""
        ...

    def validate(self, model: nn.Module, utterances: list[Utterance]) -> dict[str, float]:
        """Held-out metrics (model in eval mode, no gradients)."""
        ...

    def export(self, model: nn.Module, corpus: Corpus, directory: Path) -> Path:
        """Write the trained model as an addon directory."""
        ...


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint. ``elapsed`` is in seconds."""

    step: int = 0
    epoch: int = 0
    position: int = 0
    elapsed: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


# -- command line ----------------------------------------------------------------------------------
def recipe_parser(prog: str, description: str, out: str, export: str, batch_frames: int, lr: float) -> _Parser:
    """The options every recipe takes; a recipe adds its model options."""
    p = _Parser(prog=prog, description=description)
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="Directory made by addons.recipes.corpus.")
    p.add_argument("--minutes", type=float, default=30.0, help="Total training time of the run, in minutes.")
    p.add_argument("--out", type=Path, default=Path(out), help="Run directory (checkpoint, history, config).")
    p.add_argument("--resume", action="store_true", help="Continue from --out/checkpoint.pt.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the initial weights, batch order and dropout.")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads.")
    p.add_argument("--steps", type=int, default=None, help="Also stop after this many optimizer steps in total.")
    p.add_argument("--batch-frames", type=int, default=batch_frames, help="Padded mel frames per batch, at most.")
    p.add_argument("--lr", type=float, default=lr, help="Peak learning rate (after warmup).")
    p.add_argument("--warmup", type=int, default=300, help="Linear warmup steps; then lr decays as 1/sqrt(step).")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="Validate and checkpoint this often.")
    p.add_argument("--export", type=Path, default=Path(export), help="Addon directory written at the end.")
    p.add_argument("--no-export", action="store_true", help="Train and checkpoint only.")
    return p


#: ``--vocoder`` value for the weightless Griffin-Lim block instead of a universal vocoder package.
GRIFFIN_LIM = "griffin-lim"


def add_vocoder_option(parser: argparse.ArgumentParser) -> None:
    """``--vocoder``, for the recipes that export a voice: what its addon names as its vocoder."""
    parser.add_argument(
        "--vocoder",
        default="chorus-vocoder",
        help=f"The exported voice's vocoder: a universal vocoder package's name, or {GRIFFIN_LIM}.",
    )


def vocoder_section(name: str) -> dict[str, str]:
    """The manifest's ``vocoder`` for ``--vocoder NAME``; :class:`UsageError` where no installed
    universal vocoder has that name (found before training, not when the voice is first loaded)."""
    if name == GRIFFIN_LIM:
        return {"type": "GriffinLim"}
    try:
        find_vocoder(name)
    except AddonError as exc:
        raise UsageError(f"--vocoder: {exc}") from None
    return {"type": "UniversalVocoder", "name": name}


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check the shared options; raise :class:`UsageError` with a one-line message."""
    args = parser.parse_args(argv)
    positive = {
        "--minutes": args.minutes,
        "--threads": args.threads,
        "--batch-frames": args.batch_frames,
        "--lr": args.lr,
        "--warmup": args.warmup,
        "--checkpoint-minutes": args.checkpoint_minutes,
    }
    for name, value in positive.items():
        if not value > 0 or not math.isfinite(value):
            raise UsageError(f"{name} must be positive, got {value}")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if not corpus_exists(args.corpus):
        raise UsageError(f"--corpus {args.corpus}: no corpus there (build it with python -m addons.recipes.corpus)")
    if args.resume and not (args.out / CHECKPOINT).is_file():
        raise UsageError(f"--resume: no {args.out / CHECKPOINT}")
    return args


def warmup_inverse_sqrt(step: int, warmup: int) -> float:
    """LR multiplier at ``step``: linear up to 1 over ``warmup`` steps, then ``sqrt(warmup / step)``.

    Needs no horizon, so a run can be extended with ``--resume`` and a longer ``--minutes``.
    """
    s = step + 1
    return min(s / warmup, math.sqrt(warmup / s))


# -- the loop --------------------------------------------------------------------------------------
@dataclass
class _Run:
    recipe: Recipe
    args: argparse.Namespace
    corpus: Corpus
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    progress: Progress


def run(recipe: Recipe, args: argparse.Namespace) -> int:
    """Train (or resume), validate and checkpoint as configured, then export. Returns an exit code."""
    torch.set_num_threads(args.threads)
    corpus = Corpus.load(args.corpus)
    torch.manual_seed(args.seed)
    model = recipe.build(corpus)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_inverse_sqrt(s, args.warmup))
    state = _Run(recipe, args, corpus, model, optimizer, scheduler, Progress())
    if args.resume:
        _load(state)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(_describe(state), indent=1, default=str) + "\n")
    params = sum(p.numel() for p in model.parameters())
    print(f"{recipe.name}: {params / 1e6:.2f} M parameters, {len(corpus.train)} training utterances", file=sys.stderr)
    _train(state)
    _checkpoint(state)
    if not args.no_export:
        path = recipe.export(model.eval(), corpus, args.export)
        print(f"{recipe.name}: exported to {path}", file=sys.stderr)
    return 0


def _describe(state: _Run) -> dict[str, Any]:
    return {
        "recipe": state.recipe.name,
        "model": state.recipe.config,
        "args": vars(state.args),
        "parameters": sum(p.numel() for p in state.model.parameters()),
        "corpus": state.corpus.meta.get("source"),
    }


def _train(state: _Run) -> None:
    """Step through length-bucketed batches, epoch after epoch, until the time or step budget is spent."""
    args, progress, train = state.args, state.progress, state.corpus.train
    lengths = [u.frames for u in train]
    started, base = time.monotonic(), progress.elapsed
    last_save, count, sums = base, 0, dict[str, float]()
    bar = tqdm(initial=progress.step, unit="step", desc=state.recipe.name, dynamic_ncols=True)
    while True:
        batches = length_batches(lengths, args.batch_frames, np.random.default_rng([args.seed, progress.epoch]))
        for batch in batches[progress.position :]:
            progress.elapsed = base + time.monotonic() - started
            if _spent(args, progress):
                bar.close()
                _log(state, sums, count)
                return
            parts = _step(state, [train[i] for i in batch])
            progress.position += 1
            count += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()} | {"ep": progress.epoch})
            if progress.elapsed - last_save >= args.checkpoint_minutes * 60.0:
                _log(state, sums, count)
                _checkpoint(state)
                last_save, count, sums = progress.elapsed, 0, {}
        progress.epoch += 1
        progress.position = 0


def _spent(args: argparse.Namespace, progress: Progress) -> bool:
    """Whether the run's time (``--minutes``, all sessions together) or step budget is used up."""
    return progress.elapsed >= args.minutes * 60.0 or (args.steps is not None and progress.step >= args.steps)


def _step(state: _Run, batch: list[Utterance]) -> dict[str, float]:
    state.model.train()
    loss, parts = state.recipe.loss(state.model, batch)
    state.optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):  # skip the update, keep the count honest in the log
        return {"skipped": 1.0}
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), 1.0)
    state.optimizer.step()
    state.scheduler.step()
    state.progress.step += 1
    return {"loss": float(loss.detach()), **parts}


def _log(state: _Run, sums: dict[str, float], count: int) -> None:
    """Validate on the held-out split and append one history entry (train = mean since the last one)."""
    if count == 0 and state.progress.history:
        return
    p = state.progress
    state.model.eval()
    with torch.no_grad():
        val = state.recipe.validate(state.model, state.corpus.held_out) if state.corpus.held_out else {}
    entry = {
        "step": p.step,
        "epoch": p.epoch,
        "minutes": round(p.elapsed / 60, 2),
        "lr": state.scheduler.get_last_lr()[0],
        "train": {k: v / max(count, 1) for k, v in sums.items()},
        "val": val,
    }
    p.history.append(entry)
    with open(state.args.out / HISTORY, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    shown = ", ".join(f"{k} {v:.3f}" for k, v in val.items())
    tqdm.write(f"{state.recipe.name}: step {p.step}, {entry['minutes']} min, held-out: {shown}", file=sys.stderr)


def _checkpoint(state: _Run) -> None:
    """Write ``checkpoint.pt`` atomically."""
    blob = {
        "recipe": state.recipe.name,
        "config": state.recipe.config,
        "phonemes": list(state.corpus.phonemes),
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "progress": asdict(state.progress),
        "torch_rng": torch.get_rng_state(),
    }
    tmp = state.args.out / (CHECKPOINT + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(state.args.out / CHECKPOINT)


def _load(state: _Run) -> None:
    blob = torch.load(state.args.out / CHECKPOINT, map_location="cpu", weights_only=True)
    if blob["recipe"] != state.recipe.name or blob["config"] != state.recipe.config:
        raise UsageError(
            f"--resume: the checkpoint was made by {blob['recipe']} with {blob['config']}; "
            f"these options give {state.recipe.config}"
        )
    if tuple(blob["phonemes"]) != state.corpus.phonemes:
        raise UsageError("--resume: the checkpoint was trained on a corpus with another phoneme inventory")
    state.model.load_state_dict(blob["model"])
    state.optimizer.load_state_dict(blob["optimizer"])
    state.scheduler.load_state_dict(blob["scheduler"])
    state.progress = Progress(**blob["progress"])
    torch.set_rng_state(blob["torch_rng"])


def addon_weights(directory: Path, role: str, name: str | None = None) -> dict[str, torch.Tensor]:
    """The weights of the addon's one network with ``role`` (of the one called ``name``, if
    given); ``{}`` where ``name`` is given but the addon has no such network."""
    manifest = read_manifest(directory)
    names = [n for n, spec in manifest.networks.items() if spec.role == role and name in (None, n)]
    if name is not None and not names:
        return {}
    if len(names) != 1:
        raise UsageError(f"--init-from {directory}: needs one {role!r} network, has {len(names)}")
    spec = manifest.networks[names[0]]
    try:
        program = load_program(directory / spec.file, spec, directory)
    except AddonError as exc:
        raise UsageError(f"--init-from {directory}: network {names[0]!r}: {exc}") from None
    return {k: v.detach().clone() for k, v in program.state_dict.items()}


def load_model(recipe: Recipe, corpus: Corpus, checkpoint: Path) -> nn.Module:
    """The trained model in ``checkpoint`` (eval mode), for inspection outside training."""
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = recipe.build(corpus)
    model.load_state_dict(blob["model"])
    return model.eval()


def main_with(recipe_factory: Any, parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv``, build the recipe with ``recipe_factory(args)`` and run it; 2 on bad arguments."""
    try:
        args = parse_args(parser, argv)
        recipe = recipe_factory(args)
        return run(recipe, args)
    except UsageError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
