"""Ray's own floor for Chorus's hop structure: the real ingress over deployments that do no work.

``chorus bench capacity`` serves this beside the real graph. The ingress, its stream driver
(:mod:`serve_app.streams`), admission and HTTP edge are the real ones; the encoders, decoder
and vocoder deployments answer the same calls with zero-filled arrays of the sizes the real
addon produces for the same text (recorded in process by :func:`profile_addon`): the same
number of hops, carrying the same bytes, in the same growing mel-chunk schedule. What a stream
costs here is what the serving structure costs before any synthesis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from serve_app.deployments import MAX_MEL_CHUNK, MIN_MEL_CHUNK, _Replica

__all__ = ["FloorProfile", "build_floor_app", "profile_addon"]

Shapes = dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype)
_FRAMES_KEY = "__floor_frames__"


@dataclass
class FloorProfile:
    """The array sizes one addon's stages exchange for a text, recorded from the real addon."""

    n_mels: int
    hop_length: int
    first_chunk: int = MIN_MEL_CHUNK  # the decoder's first mel chunk, as DecoderDeployment sizes it
    features: dict[str, list[Shapes]] = field(default_factory=dict)  # sentence -> shapes per part
    frames: dict[str, list[int]] = field(default_factory=dict)  # sentence -> mel frames per part
    state: Any = None  # the vocoder's packed state after a chunk, zero-filled, as the ingress carries it


def _shapes(arrays: dict[str, np.ndarray]) -> Shapes:
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in arrays.items()}


def _zeros(shapes: Shapes) -> dict[str, np.ndarray]:
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in shapes.items()}


def _zero_like(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return np.zeros_like(value)
    if isinstance(value, dict):
        return {k: _zero_like(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_zero_like(v) for v in value)
    return value


def profile_addon(directory: Path, text: str) -> FloorProfile:
    """Run the addon in process on ``text`` once and record what each hop carries."""
    import addons
    from addons.engine.options import resolve_options
    from addons.engine.stages import AudioStage
    from addons.text.frontend import Frontend
    from blocks import Request

    voice = addons.load(directory)
    manifest = addons.read_manifest(directory)
    _, options = resolve_options(manifest)
    profile = FloorProfile(manifest.mel.n_mels, manifest.mel.hop_length, max(MIN_MEL_CHUNK, voice.vocoder.first_frames))
    for sentence in Frontend.split_sentences(Frontend.normalize(text)):
        parts = [s.ids for s in voice.sentences(sentence)]
        features = voice.encode_batch(parts) if parts else []
        profile.features[sentence] = [_shapes(f) for f in features]
        profile.frames[sentence] = [sum(len(c) for c in voice.decode(f, Request(options=options))) for f in features]
    stage = AudioStage.load_from(directory, manifest, "cpu")
    live = stage.start()
    stage.process(live, np.zeros((profile.first_chunk, manifest.mel.n_mels), np.float32), Request(options=options))
    profile.state = _zero_like(stage.pack(live))
    return profile


@serve.deployment
class FloorEncoders(_Replica):
    def __init__(self, profile: FloorProfile) -> None:
        self.profile = profile
        self.fallback = next(iter(profile.features))

    async def encode(self, sentence: str, options: Mapping[str, Any] | None = None) -> list[dict[str, np.ndarray]]:
        known = sentence if sentence in self.profile.features else self.fallback
        out = []
        for shapes, frames in zip(self.profile.features[known], self.profile.frames[known], strict=True):
            arrays = _zeros(shapes)
            arrays[_FRAMES_KEY] = np.array(frames)
            out.append(arrays)
        return out


class _NoOpVocoding(_Replica):
    """The vocoder's calls, answered with silence of the real sizes and the recorded state."""

    def __init__(self, profile: FloorProfile) -> None:
        self.hop, self.state, self.first_frames = profile.hop_length, profile.state, profile.first_chunk

    async def start(self, model: str) -> Any:
        return {"state": self.state, "first_frames": self.first_frames}

    async def process(
        self, model: str, state: Any, mel: np.ndarray, options: Mapping[str, Any], deadline: float | None = None
    ) -> tuple[np.ndarray, Any]:
        return np.zeros(len(mel) * self.hop, np.float32), state

    async def finish(self, model: str, state: Any, options: Mapping[str, Any]) -> np.ndarray:
        return np.zeros(0, np.float32)


@serve.deployment
class FloorDecoder(_NoOpVocoding):
    def __init__(self, profile: FloorProfile) -> None:
        super().__init__(profile)
        self.n_mels = profile.n_mels

    def _sizes(self, features: dict[str, np.ndarray], first_frames: int) -> list[int]:
        """The real decoder's chunk sizes for this sentence (see DecoderDeployment.decode)."""
        left, size, sizes = int(features[_FRAMES_KEY]), max(MIN_MEL_CHUNK, first_frames), []
        while left > 0:
            sizes.append(min(size, left))
            left, size = left - sizes[-1], min(2 * size, MAX_MEL_CHUNK)
        return sizes

    async def decode(
        self,
        features: dict[str, np.ndarray],
        options: Mapping[str, Any],
        deadline: float | None = None,
        first_frames: int = 0,
        aligned: bool = False,
    ) -> AsyncIterator[Any]:
        for n in self._sizes(features, first_frames):
            await asyncio.sleep(0)
            mel = np.zeros((n, self.n_mels), np.float32)
            yield {"mel": mel, "tokens": None} if aligned else mel

    async def speak(
        self,
        model: str,
        state: Any,
        features: dict[str, np.ndarray],
        options: Mapping[str, Any],
        deadline: float | None = None,
        first_frames: int = 0,
    ) -> AsyncIterator[dict[str, Any]]:
        for n in self._sizes(features, first_frames):
            await asyncio.sleep(0)
            yield {"audio": np.zeros(n * self.hop, np.float32), "frames": n, "tokens": None}
        yield {"state": state}

    def stats(self) -> dict[str, int]:
        return {"active": 0, "frames": 0, "pid": self.pid()}


@serve.deployment
class FloorVocoder(_NoOpVocoding):
    pass


def build_floor_app(
    directory: Path, profile: FloorProfile, options: dict[str, dict[str, Any]], fused: bool = False
) -> Any:
    """The real ingress for the addon in ``directory`` over no-op stages; ``options`` per stage
    ("encoders", "decoder", "vocoder", "ingress") as the real graph would get them. ``fused``: the
    structure of ``AppArgs.fused_vocoder`` (the decoder speaks; no vocoder deployment)."""
    import addons
    from serve_app.http import HttpPolicy
    from serve_app.ingress import Ingress, ModelInfo

    manifest = addons.read_manifest(directory)
    stages: Any = (FloorEncoders, FloorDecoder) if fused else (FloorEncoders, FloorDecoder, FloorVocoder)
    handles = tuple(
        d.options(name=f"floor-{stage}", **options[stage]).bind(profile)
        for d, stage in zip(stages, ("encoders", "decoder", "vocoder"), strict=False)
    )
    if fused:
        handles = (*handles, handles[1])  # the decoder is the vocoder too
    info = replace(ModelInfo.of(manifest), fused_vocoder=fused)
    ingress: Any = Ingress
    return ingress.options(name="floor-ingress", **options["ingress"]).bind(
        {manifest.name: info}, {manifest.name: handles}, HttpPolicy(admission=False)
    )
