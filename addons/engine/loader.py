"""Loading an addon (found by :mod:`addons.engine.catalog`) as a :class:`Voice`."""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from addons.engine.catalog import DEFAULT_ADDON, find_addon
from addons.engine.stages import STAGES
from addons.engine.voice import AHEAD, Voice
from addons.formats.manifest import AddonError, read_manifest
from blocks import ExecutionContext

__all__ = ["load", "resolve_device"]


def load(
    name_or_path: str | os.PathLike[str] | None = None,
    context: str = "dynamic",
    device: str | torch.device = "cpu",
    batching: int = 0,
    stages: Iterable[str] = STAGES,
    ahead: int = AHEAD,
    probes: dict[str, bool] | None = None,
) -> Voice:
    """Load an addon as a :class:`Voice`; ``context`` is ``"dynamic"`` or ``"static"``, ``device`` may be ``"auto"``;
    ``batching`` > 0 lets that many concurrent streams share each forward pass; ``stages``: which
    of ``encoders``, ``decoder``, ``audio`` to build (a server process builds only its own); ``ahead``:
    mel chunks the decoder may run ahead of the vocoder in a worker thread (0: none); ``probes``:
    batching probes' answers shared with addons of the same shape (a voice family's members)."""
    try:
        ctx = ExecutionContext(context)
    except ValueError:
        raise AddonError(f'unknown context "{context}" (known: dynamic, static)') from None
    directory = find_addon(name_or_path if name_or_path is not None else DEFAULT_ADDON)
    return Voice(read_manifest(directory), directory, ctx, resolve_device(device), batching, stages, ahead, probes)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is CUDA when this process sees a GPU, else CPU; anything else as torch reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
