"""Where addons are found: by name in the search path (``$CHORUS_ADDON_PATH``, then the bundled
voices) or by path, and which are installed."""

from __future__ import annotations

import os
from pathlib import Path

from addons.formats.manifest import MANIFEST_NAME, AddonError, AddonManifest, read_manifest

__all__ = ["BUNDLED_DIR", "DEFAULT_ADDON", "PATH_ENV", "addon_dirs", "find_addon", "list_addons"]

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "bundled"
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
