"""Small helpers shared by test modules."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``chorus ARGS`` as a user runs it, in a process of its own, from the repository root. Where
    the process is not the point, :func:`chorus` gives the same result without a new interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "serve_app.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def chorus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``chorus ARGS`` run in this process (``serve_app.cli.main``): the same exit code, standard
    output and error as :func:`run_cli` without a new interpreter's seconds of imports. What a
    command changes for its process (torch's threads, ``env``) is put back after it."""
    import torch

    from serve_app.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env = {k: os.environ.get(k) for k in [*(env or {}), "CHORUS_DEBUG"]}
    threads = torch.get_num_threads()
    os.environ.pop("CHORUS_DEBUG", None)  # as a user runs it: one line, never a traceback
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        torch.set_num_threads(threads)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return subprocess.CompletedProcess(["chorus", *args], code, out.getvalue(), err.getvalue())


class Clock:
    """A settable stand-in for ``time.monotonic``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
