"""Universal vocoder packages: one neural vocoder that many addons share.

A package is a directory holding ``vocoder.json`` (:class:`VocoderPackage`: its name, the mel
settings it was trained for, the network's signature, how it was trained) and the network file.
Packages are found by name where addons are (``$CHORUS_ADDON_PATH``, then ``addons/bundled``)
and read with the same safe reader as addon networks. An addon uses one by naming the block
``{"type": "UniversalVocoder", "name": ...}`` as its vocoder; the block refuses an addon whose mel
settings differ from the vocoder's. One loaded copy per process and device serves every addon.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from addons.engine.catalog import addon_dirs
from addons.formats.manifest import AddonError
from addons.formats.netfile import NetworkFileError, executable, load_program
from addons.text.config import format_validation_error
from blocks import ExecutionContext, LazyModule, MelSettings, NetworkRunner, NetworkSpec

__all__ = ["PACKAGE_FILE", "VocoderPackage", "check_vocoder", "find_vocoder", "load_universal"]

PACKAGE_FILE = "vocoder.json"


class VocoderPackage(BaseModel):
    """``vocoder.json``: what a universal vocoder is and what it was trained for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Name addons use for it.")
    mel: MelSettings = Field(description="The mel settings it was trained for; addons must match them.")
    network: NetworkSpec = Field(description="The network: mel [B, T, n_mels] (+ mask) -> audio [B, T*hop].")
    trained: dict[str, JsonValue] = Field(default_factory=dict, description="How, how long and on what.")


def find_vocoder(name: str, near: Path | None = None) -> tuple[Path, VocoderPackage]:
    """The package directory and manifest of the universal vocoder ``name``: beside the addon
    directory ``near`` first (addons and their vocoder installed together), then where addons are found."""
    searched = ([near.parent] if near is not None else []) + addon_dirs()
    for root in searched:
        path = root / name / PACKAGE_FILE
        if path.is_file():
            try:
                package = VocoderPackage.model_validate(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise AddonError(f"{path}: not valid JSON ({exc})") from None
            except ValidationError as exc:
                raise AddonError(f"{path}: {format_validation_error(exc)}") from None
            if package.name != name:
                raise AddonError(f'{path}: names the vocoder "{package.name}", but its directory is "{name}"')
            return path.parent, package
    raise AddonError(f'universal vocoder "{name}" not found (searched {", ".join(map(str, searched))})')


_loaded: dict[tuple[str, str], tuple[NetworkRunner, MelSettings]] = {}
_lock = threading.Lock()


def load_universal(name: str, device: torch.device, near: Path | None = None) -> tuple[NetworkRunner, MelSettings]:
    """The runner of universal vocoder ``name`` on ``device`` (loaded once per process per package)
    and the mel settings it was trained for; ``near`` as for :func:`find_vocoder`."""
    directory, package = find_vocoder(name, near)
    key = (str(directory.resolve()), str(device))
    with _lock:
        if key not in _loaded:
            path = directory / package.network.file
            try:  # checked now; its weights are read again when it first runs (not at all elsewhere)
                load_program(path, package.network, directory)
            except NetworkFileError as exc:
                raise AddonError(f"{path}: {exc}") from None

            def build(path: Path = path, spec: NetworkSpec = package.network) -> Callable[..., Any]:
                try:
                    return executable(load_program(path, spec, directory), device)
                except NetworkFileError as exc:
                    raise AddonError(f"{path}: {exc}") from None

            runner = NetworkRunner(name, package.network, LazyModule(build), ExecutionContext.DYNAMIC, device)
            _loaded[key] = (runner, package.mel)
        return _loaded[key]


def check_vocoder(directory: Path) -> str:
    """Read the package in ``directory`` as a server would, run it on a few frames; say what it is.
    An :class:`AddonError` names what is wrong."""
    directory = directory.resolve()
    if not (directory / PACKAGE_FILE).is_file():
        raise AddonError(f"{directory}: not a universal vocoder (no {PACKAGE_FILE})")
    runner, mel = load_universal(directory.name, torch.device("cpu"), directory)  # found beside itself
    frames = 32
    try:
        audio = runner.run({runner.spec.inputs[0].name: torch.full((1, frames, mel.n_mels), -11.5)})
    except Exception as exc:  # a network that loads but does not run: still the package's fault
        raise AddonError(f"{directory}: the vocoder failed a test run: {exc}") from None
    samples = next(iter(audio.values())).shape[-1]
    return (
        f"universal vocoder {directory.name} ({mel.sample_rate} Hz, {mel.n_mels} mels, "
        f"{runner.spec.receptive_field} frames of context), {frames} frames -> {samples} samples"
    )
