"""How an addon's stages get their networks: each loaded on first use, once per (network,
device), from files checked before anything runs; and the build environment its blocks are built
in (the networks, the mel settings, the context, the universal vocoders it may name)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from addons.engine.vocoders import load_universal
from addons.formats.manifest import AddonError, AddonManifest
from addons.formats.netfile import NetworkFileError
from addons.formats.runtimes import check_network, open_network
from addons.text.config import FrontendConfig, PiperFrontendConfig
from addons.text.frontend import Frontend
from blocks import (
    BuildEnv,
    ExecutionContext,
    LazyModule,
    MelSettings,
    NetworkRunner,
    NetworkSpec,
)

__all__ = ["NetworkLoader", "build_env", "make_frontend", "universal_vocoders"]


class NetworkLoader:
    """Loads an addon's exported networks on first use, once per (network, device).

    Files are read by :mod:`addons.formats.runtimes` (the format's checked reader: ``.pt2`` or ONNX), which
    runs nothing from them and checks each against its declared signature; a refused file is an
    :class:`AddonError`.
    """

    def __init__(
        self,
        manifest: AddonManifest,
        directory: Path,
        context: ExecutionContext,
        batching: int = 0,
        probes: dict[str, bool] | None = None,
    ) -> None:
        self.manifest, self.directory, self.context = manifest, directory, context
        self.batching = batching  # > 0: streams calling a network at once share a pass, at most this many
        self.probes = probes  # batching probes' answers shared with addons of the same shape
        self._programs: dict[tuple[str, str], NetworkRunner] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, device: torch.device) -> NetworkRunner:
        key = (name, str(device))
        with self._lock:
            if key not in self._programs:
                spec = self.manifest.networks[name]
                path = self.directory / spec.file
                try:  # checked now; its weights are read again when the network first runs
                    self._check_static(name, spec, check_network(path, spec, self.directory))
                except NetworkFileError as exc:
                    raise AddonError(f"{path}: {exc}") from None
                module = LazyModule(self._builder(path, spec, device))
                runner = NetworkRunner(name, spec, module, self.context, device, probes=self.probes)
                if self.batching:
                    runner.batch_when_used(self.batching)
                self._programs[key] = runner
            return self._programs[key]

    def _builder(self, path: Path, spec: NetworkSpec, device: torch.device) -> Callable[[], Callable[..., Any]]:
        def build() -> Callable[..., Any]:
            try:
                return open_network(path, spec, self.directory, device)
            except NetworkFileError as exc:  # changed on disk since it was checked
                raise AddonError(f"{path}: {exc}") from None

        return build

    def _check_static(self, name: str, spec: NetworkSpec, longest: int | None) -> None:
        length = spec.static_length if self.context is ExecutionContext.STATIC else None
        if length is not None and longest is not None and length > longest:
            raise NetworkFileError(
                f"networks.{name}.static_length {spec.static_length} exceeds the {longest} frames "
                "the network was exported for"
            )


def make_frontend(config: FrontendConfig | PiperFrontendConfig) -> Frontend:
    """The text front end an addon's config names: Chorus's espeak phoneme events, or Piper's IPA."""
    if isinstance(config, PiperFrontendConfig):
        from addons.text.piper import PiperFrontend

        return PiperFrontend(config)
    return Frontend(config)


def universal_vocoders(directory: Path) -> Callable[[str, torch.device], tuple[NetworkRunner, MelSettings]]:
    """How the addon in ``directory`` finds universal vocoders (beside it, then where addons are)."""

    def find(name: str, device: torch.device) -> tuple[NetworkRunner, MelSettings]:
        return load_universal(name, device, directory)

    return find


def build_env(
    manifest: AddonManifest,
    directory: Path,
    context: ExecutionContext,
    device: torch.device,
    loader: NetworkLoader | None = None,
) -> BuildEnv:
    """What an addon's blocks are built with (networks through ``loader``, shared by its stages)."""
    return BuildEnv(
        loader or NetworkLoader(manifest, directory, context),
        manifest.networks,
        manifest.mel,
        context,
        device,
        universal_vocoders(directory),
    )
