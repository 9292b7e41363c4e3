"""Distil a voice Chorus serves into Chorus's own architectures: one command, resumed by running it again.

    python -m addons.recipes.distill --teacher build/addons/en_us-joe-medium --name joe \\
        [--work data/distill-joe] [--out build/addons] [--threads 1] [--taco-steps N]

Steps, each continued where an earlier run stopped (every recipe checkpoints; a training step's
``--*-minutes`` is the total time of its run directory, earlier sessions included):

1. **corpus** (:mod:`addons.recipes.corpus` ``--teacher``): the teacher says the corpus texts with
   its noise off, into ``WORK/corpus``. If ``--corpus-minutes`` ends before it is complete, the
   command stops with exit code 3: run it again.
2. **vocoder**: ``chorus-vocoder`` fine-tuned on the teacher's audio (:mod:`addons.recipes.vocoder`
   ``--init-from``), exported as ``OUT/chorus-vocoder-NAME``.
3. **fast**: chorus-fast trained on the teacher's durations and mel (:mod:`addons.recipes.fast`),
   speaking through that vocoder, exported as ``OUT/chorus-fast-NAME``.
4. **taco** (only with ``--taco-steps`` or ``--taco-minutes``): chorus-taco likewise, its attention
   guided by the teacher's durations, exported as ``OUT/chorus-taco-NAME``.
5. **evaluation** (:mod:`addons.recipes.evaluate`) of the students against the teacher on the
   held-out sentences, into ``WORK/evaluation``.

Training is seeded and stops at ``--*-steps`` steps, so the same command on the same torch build
gives the same voices (docs/voices.md names the steps of the shipped ones); ``--*-minutes`` caps a
session's wait. The vocoder must exist before the students are exported (a voice names its
vocoder), so ``OUT`` is put on the addon search path for the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from addons.engine.catalog import BUNDLED_DIR, PATH_ENV
from addons.recipes import corpus, evaluate, fast, taco, vocoder
from addons.recipes.corpus import corpus_exists
from addons.recipes.training import CHECKPOINT, HISTORY

__all__ = ["AGAIN", "main"]

#: Exit code when a time budget ended before the corpus was complete: run the same command again.
AGAIN = 3
#: chorus-taco's attention window for a Piper teacher's ids (``_`` between phonemes): joe's corpus
#: sentences have 121 ids at the median, 307 at the 99th percentile, 383 at most; Piper's front end
#: splits sentences above 400, so the window never slides.
TACO_WINDOW = 400


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def _parser() -> _Parser:
    p = _Parser(prog="python -m addons.recipes.distill", description="Distil a served voice (see the module doc).")
    p.add_argument("--teacher", required=True, help="The voice to distil: an addon name or directory.")
    p.add_argument("--name", required=True, help="Short name of the students: chorus-fast-NAME, chorus-vocoder-NAME.")
    p.add_argument("--work", type=Path, default=None, help="Corpus, runs and evaluation (default data/distill-NAME).")
    p.add_argument("--out", type=Path, default=Path("build/addons"), help="Where the voices are exported.")
    p.add_argument("--threads", type=int, default=1, help="torch (and ONNX Runtime) intra-op threads.")
    p.add_argument("--train", type=int, default=4000, help="Training utterances in the corpus.")
    p.add_argument("--held-out", type=int, default=100, help="Held-out utterances (evaluation only).")
    p.add_argument("--text", type=Path, default=None, help="Plain-text file of sentences instead of the fortunes.")
    p.add_argument("--corpus-minutes", type=float, default=None, help="Stop the corpus after this long (resume later).")
    # the shipped chorus-vocoder-joe and chorus-fast-joe trained these steps (docs/voices.md)
    for step, steps, minutes in (("vocoder", 5750, 90.0), ("fast", 2802, 240.0), ("taco", None, None)):
        p.add_argument(f"--{step}-steps", type=int, default=steps, help=f"Optimizer steps of the {step} run in all.")
        p.add_argument(f"--{step}-minutes", type=float, default=minutes, help=f"Time cap of the {step} run in all.")
    p.add_argument("--evaluate", type=int, default=20, help="Held-out sentences to score the students on (0: none).")
    return p


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    if args.threads < 1 or args.train < 1 or args.held_out < 1 or args.evaluate < 0:
        raise ValueError("need --threads, --train and --held-out >= 1 and --evaluate >= 0")
    if not args.name.replace("-", "").replace("_", "").isalnum() or len(args.name) > 40:
        raise ValueError(f"--name must be letters, digits, - and _ (at most 40), got {args.name!r}")
    for step in ("vocoder", "fast", "taco"):
        steps, minutes = getattr(args, f"{step}_steps"), getattr(args, f"{step}_minutes")
        if (steps is not None and steps < 1) or (minutes is not None and not minutes > 0):
            raise ValueError(f"--{step}-steps must be >= 1 and --{step}-minutes > 0")
    args.work = args.work or Path(f"data/distill-{args.name}")
    return args


def _budget(args: argparse.Namespace, step: str) -> list[str]:
    steps, minutes = getattr(args, f"{step}_steps"), getattr(args, f"{step}_minutes")
    return [*(["--steps", str(steps)] if steps else []), "--minutes", str(minutes or 10_000.0)]


def _resume(run: Path) -> list[str]:
    return ["--resume"] if (run / CHECKPOINT).is_file() else []


def _done(args: argparse.Namespace, step: str, run: Path, export: Path) -> bool:
    """Whether ``step`` has trained its ``--*-steps`` and its export is there (run again, it is skipped)."""
    steps, history = getattr(args, f"{step}_steps"), run / HISTORY
    if not steps or not history.is_file() or not any(export.glob("*.json")):
        return False
    lines = history.read_text(encoding="utf-8").splitlines()
    return bool(lines) and int(json.loads(lines[-1])["step"]) >= steps


def _say(message: str) -> None:
    print(f"distill: {message}", file=sys.stderr)


def distill(args: argparse.Namespace) -> int:
    """Run the steps of the module doc; an exit code (0 done, :data:`AGAIN`, or a recipe's error)."""
    work, out, threads = args.work, args.out, ["--threads", str(args.threads)]
    data = work / "corpus"
    _say(f"1. corpus of {args.teacher} in {data}")
    argv = ["--teacher", args.teacher, "--out", str(data), "--train", str(args.train), "--held-out", str(args.held_out)]
    argv += ["--minutes", str(args.corpus_minutes)] if args.corpus_minutes else []
    argv += ["--text", str(args.text)] if args.text else []
    if code := corpus.main([*argv, *threads]):
        return code
    if not corpus_exists(data):
        _say(f"the corpus is not complete yet: run the same command again ({data} is kept)")
        return AGAIN
    os.environ[PATH_ENV] = os.pathsep.join(p for p in (str(out), os.environ.get(PATH_ENV, "")) if p)
    voc, voc_name = work / "vocoder", f"chorus-vocoder-{args.name}"
    _say(f"2. {voc_name}: chorus-vocoder fine-tuned on the teacher's audio")
    argv = ["--corpus", str(data), "--out", str(voc), "--name", voc_name, "--export", str(out / voc_name)]
    argv += ["--init-from", str(BUNDLED_DIR / "chorus-vocoder"), *_resume(voc)]
    if _done(args, "vocoder", voc, out / voc_name):
        _say(f"{voc_name} has trained its {args.vocoder_steps} steps: kept as it is")
    elif code := vocoder.main([*argv, *threads, *_budget(args, "vocoder")]):
        return code
    students = [("fast", fast)] + ([("taco", taco)] if args.taco_steps or args.taco_minutes else [])
    for i, (kind, recipe) in enumerate(students, start=3):
        run, name = work / kind, f"chorus-{kind}-{args.name}"
        _say(f"{i}. {name}, speaking through {voc_name}")
        if _done(args, kind, run, out / name):
            _say(f"{name} has trained its {getattr(args, f'{kind}_steps')} steps: kept as it is")
            continue
        argv = ["--corpus", str(data), "--out", str(run), "--name", name, "--vocoder", voc_name]
        argv += ["--export", str(out / name), *_resume(run), *threads, *_budget(args, kind)]
        if kind == "taco":
            argv += ["--guide", "teacher", "--reduction", "5", "--window", str(TACO_WINDOW)]
        if code := recipe.main(argv):
            return code
    if args.evaluate:
        voices = [str(out / f"chorus-{kind}-{args.name}") for kind, _ in students]
        _say(f"{len(students) + 3}. evaluation on {args.evaluate} held-out sentences, into {work / 'evaluation'}")
        argv = [
            "--corpus",
            str(data),
            "--addons",
            *voices,
            "--n",
            str(args.evaluate),
            "--out",
            str(work / "evaluation"),
        ]
        if code := evaluate.main([*argv, *threads]):
            return code
    _say(f"done: {', '.join(str(out / f'chorus-{k}-{args.name}') for k, _ in students)} and {out / voc_name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except ValueError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    return distill(args)


if __name__ == "__main__":
    sys.exit(main())
