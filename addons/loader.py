"""Finding and loading addons by name or path."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch

from addons.manifest import MANIFEST_NAME, AddonError, AddonManifest, read_manifest
from addons.stages import STAGES
from addons.voice import AHEAD, Voice
from blocks import ExecutionContext

__all__ = ["BUNDLED_DIR", "DEFAULT_ADDON", "addon_dirs", "find_addon", "list_addons", "load", "resolve_device"]

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
DEFAULT_ADDON = "chorus-fast"
PATH_ENV = "CHORUS_ADDON_PATH"


def addon_dirs() -> list[Path]:
    """Where addons are looked up by name: ``$CHORUS_ADDON_PATH`` entries, then the bundled ones."""
    extra = [Path(p) for p in os.environ.get(PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, BUNDLED_DIR]


def find_addon(name_or_path: str | os.PathLike[str]) -> Path:
    """The addon directory for a name (searched in :func:`addon_dirs`) or a path."""
    path = Path(name_or_path)
    if (path / MANIFEST_NAME).is_file():
        return path
    if os.sep not in str(name_or_path):
        for root in addon_dirs():
            if (root / str(name_or_path) / MANIFEST_NAME).is_file():
                return root / str(name_or_path)
    known = ", ".join(m.name for _, m in list_addons()) or "none installed"
    raise AddonError(f'addon "{name_or_path}" not found (known: {known})')


def list_addons() -> list[tuple[Path, AddonManifest]]:
    """Every valid addon in :func:`addon_dirs`, first occurrence of a name wins."""
    found: dict[str, tuple[Path, AddonManifest]] = {}
    for root in addon_dirs():
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if (child / MANIFEST_NAME).is_file():
                try:
                    manifest = read_manifest(child)
                except AddonError:
                    continue
                found.setdefault(manifest.name, (child, manifest))
    return list(found.values())


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
