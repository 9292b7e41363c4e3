"""Voice families: many addons of one shape, served from one shared set of replicas.

A family is a set of addons whose stacks, networks (their input and output shapes), mel settings
and waveform stages agree: Piper voices of one quality, say. Their replicas can then hold any of
them, so a server multiplexes the family over one pool instead of a deployment graph per voice.

This module knows nothing of Ray: it reads a folder of voices (:func:`scan_folder`), groups them
(:func:`signature`), imports Piper ``.onnx`` + ``.onnx.json`` pairs on the way in (once per
distinct content: copies of one voice under other names share the import's network files), and
sizes how many voices a replica may hold from the memory each needs (:func:`voices_per_replica`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from addons.formats.manifest import MANIFEST_NAME, AddonError, AddonManifest, read_manifest
from addons.formats.netfile import NetworkFileError
from addons.formats.runtimes import check_network

__all__ = [
    "CACHE_ENV",
    "RESIDENT_FACTOR",
    "Family",
    "FolderScan",
    "Refusal",
    "VoiceUnavailable",
    "import_cache",
    "scan_folder",
    "signature",
    "stage_bytes",
    "voices_per_replica",
]

logger = logging.getLogger("chorus.families")

CACHE_ENV = "CHORUS_IMPORT_CACHE"
#: Resident memory of a loaded network per byte of its file: ONNX Runtime's session (weights,
#: arenas, prepacked kernels) measured 144 MB for joe's 56 MB front part on CPU (docs/deploy.md).
RESIDENT_FACTOR = 2.6
#: Per loaded voice beyond its networks (the front end, espeak's voice, Python objects).
VOICE_OVERHEAD_BYTES = 4 << 20
STAGES = ("encoders", "decoder", "vocoder")
# The network roles each stage loads (see addons.engine.stages): the rest go to the other stages.
_ROLES = {"encoders": ("encoder",), "decoder": ("decoder", "decoder_step"), "vocoder": ("vocoder",)}
# Manifest fields that may differ between voices of one family: who they are, not their shape.
_PERSONAL = {"name", "description", "version", "voices", "deployment", "defaults", "frontend"}


class VoiceUnavailable(AddonError):
    """A family's voice that cannot be loaded now (its files went missing or bad); says which and why."""


@dataclass(frozen=True)
class Refusal:
    """A voice left out of its family, and why (one line)."""

    name: str
    reason: str


@dataclass(frozen=True)
class Family:
    """Voices served from one pool: ``members`` maps each voice's model name to its addon directory."""

    name: str
    members: dict[str, Path]
    signature: str


@dataclass
class FolderScan:
    """What a folder of voices holds: its families (one per shape found) and the voices refused."""

    families: list[Family] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)


def signature(manifest: AddonManifest) -> str:
    """The shape of an addon: its stack, its networks' formats, roles and tensor specs, mel settings
    and waveform stage, without its name, voices or files. Addons with equal signatures form a family."""
    data = manifest.model_dump(mode="json", exclude=_PERSONAL)
    for spec in data["networks"].values():
        spec.pop("file", None)
    data["frontend_type"] = manifest.frontend.type
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_bytes(manifest: AddonManifest, directory: Path) -> dict[str, int]:
    """Bytes of network files each stage of this addon loads (``encoders``, ``decoder``, ``vocoder``);
    networks of other roles count toward the encoders."""
    sizes = dict.fromkeys(STAGES, 0)
    for spec in manifest.networks.values():
        stage = next((s for s, roles in _ROLES.items() if spec.role in roles), "encoders")
        sizes[stage] += (directory / spec.file).stat().st_size
    return sizes


def voices_per_replica(network_bytes: int, budget_bytes: int, members: int) -> int:
    """How many voices a replica may hold within ``budget_bytes`` of memory when each loads
    ``network_bytes`` of network files: at least 1, at most the family's size."""
    need = network_bytes * RESIDENT_FACTOR + VOICE_OVERHEAD_BYTES
    return max(1, min(members, int(budget_bytes // need)))


def import_cache() -> Path:
    """Where Piper voices found in a folder are imported: ``$CHORUS_IMPORT_CACHE``, else the user's cache."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chorus" / "imported"


def scan_folder(folder: Path, cache: Path | None = None, family: str | None = None) -> FolderScan:
    """Every voice in ``folder``: addon directories, and Piper ``X.onnx`` + ``X.onnx.json`` pairs
    (imported into ``cache`` on the way in, once per distinct content). Each voice is checked as a
    replica would load it (manifest, then every network file, running nothing); one that fails is
    refused by name and the others are kept. Voices of one shape form a family named ``family``
    (default: the folder's name); further shapes get ``<family>-2``, ``<family>-3``, ...
    """
    if not folder.is_dir():
        raise AddonError(f"{folder}: not a folder of voices")
    base = family or _family_name(folder)
    scan = FolderScan()
    found: dict[str, tuple[Path, AddonManifest]] = {}
    for directory, name, problem in _voices_in(folder, cache or import_cache()):
        if problem is None and name in found:
            problem = f"its name is taken by the voice in {found[name][0]}"
        if problem is None:
            try:
                manifest = _checked(directory)
            except AddonError as exc:
                problem = str(exc)
            else:
                if manifest.name in found:
                    problem = f"its model name {manifest.name!r} is taken by the voice in {found[manifest.name][0]}"
                else:
                    found[manifest.name] = (directory, manifest)
                    continue
        logger.warning("voice %s refused: %s", name, problem)
        scan.refused.append(Refusal(name, problem or ""))
    groups: dict[str, dict[str, Path]] = {}
    for name, (directory, manifest) in sorted(found.items()):
        groups.setdefault(signature(manifest), {})[name] = directory
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), min(kv[1])))
    for index, (sig, members) in enumerate(ordered):
        scan.families.append(Family(base if index == 0 else f"{base}-{index + 1}", members, sig))
    return scan


def _family_name(folder: Path) -> str:
    name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in folder.resolve().name.lower()).strip("-._")
    return name or "voices"


def _checked(directory: Path) -> AddonManifest:
    """The addon's manifest, after checking its network files as a replica's loader would (a file
    checked already against the same spec, unchanged since, is not read again: copies of one voice
    linked under other names cost one check)."""
    manifest = read_manifest(directory)
    for net, spec in manifest.networks.items():
        path = directory / spec.file
        stat = path.stat()
        key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, spec.model_dump_json())
        if key in _CHECKED:
            continue
        try:
            check_network(path, spec, directory)
        except NetworkFileError as exc:
            raise AddonError(f"networks.{net} ({spec.file}): {exc}") from None
        _CHECKED.add(key)
    return manifest


_CHECKED: set[tuple[int, int, int, int, str]] = set()


def _voices_in(folder: Path, cache: Path) -> Iterable[tuple[Path, str, str | None]]:
    """``(addon directory, name for messages, problem or None)`` for each voice in ``folder``."""
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir() and (child / MANIFEST_NAME).is_file():
            yield child, child.name, None
        elif child.is_file() and child.suffix == ".onnx":
            config = child.with_name(child.name + ".json")
            if not config.is_file():
                yield child, child.stem, f"{child.name} has no Piper config beside it ({config.name})"
                continue
            try:
                yield _imported(child, config, cache), child.stem, None
            except AddonError as exc:  # PiperImportError is one
                yield child, child.stem, str(exc)


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:20]


def _imported(model: Path, config: Path, cache: Path) -> Path:
    """The addon directory of the Piper pair ``model`` + ``config``, imported into ``cache`` unless an
    import of the same content is there; another name for content already imported shares its files
    (hard links, else copies) and gets its own manifest."""
    from addons.formats.piper import addon_name, import_piper

    name = addon_name(model)
    content = _digest(model, config)
    target = cache / f"{name}-{content}"
    if (target / MANIFEST_NAME).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    source = next((d for d in sorted(cache.glob(f"*-{content}")) if (d / MANIFEST_NAME).is_file()), None)
    staging = cache / f".{name}-{content}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if source is None:
            import_piper(model, staging, config, name)
        else:
            _rename_copy(source, staging, name)
        os.replace(staging, target)
    except OSError:
        if not (target / MANIFEST_NAME).is_file():  # not another process's import winning the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _rename_copy(source: Path, target: Path, name: str) -> None:
    """``source``'s addon under the model name ``name``: its files linked, its manifest rewritten."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(
        source, target, copy_function=link, ignore=lambda d, _: [MANIFEST_NAME] if Path(d) == source else []
    )
    manifest = json.loads((source / MANIFEST_NAME).read_text(encoding="utf-8"))
    manifest["name"] = name
    (target / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
