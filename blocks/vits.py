"""Blocks for end-to-end models whose front part makes latent frames itself (VITS, as Piper exports it).

Such a model's front part takes phoneme ids and a few conditioning inputs (its scales, noise, a
speaker) and gives latent frames ``[1, F, D]`` with the per-token durations ``[1, T]`` that made
them; its back part (a HiFi-GAN) turns frames into audio. In a stack:

- :class:`VitsInputs` wraps the encoders that run the front part and gives them the inputs that
  are not features: the scales (``length_scale`` divided by the request's ``speed``), the noise
  (drawn from a seed the request controls, so the same request gives the same audio) and the
  speaker (the voice's).
- :class:`FrameSource` streams the front part's frames, aligned to the tokens they came from.
- The back part is the addon's waveform stage (``NeuralVocoder`` on frames); a graph that could
  not be split gives audio in frames of ``hop_length`` samples, which :class:`FramedAudio` flattens.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from blocks.base import (
    MAX_FRAMES,
    Block,
    BlockConfig,
    BlockNode,
    BuildEnv,
    Features,
    PlanEnv,
    Request,
    SequenceBlock,
    StreamableBlock,
    StreamKind,
)
from blocks.vocoders import Vocoder

__all__ = ["FrameSource", "FramedAudio", "VitsInputs", "noise_for"]


class NoiseInput(BlockConfig):
    """One noise input of the front part (what the exported graph drew itself, Chorus now draws)."""

    input: str = Field(min_length=1, description="The network input that takes it: [B, L, channels] float32.")
    channels: int = Field(ge=1, le=4096, description="Values per position.")
    per: Literal["token", "frame"] = Field(
        description="token: L is the phoneme count; frame: L is a bound on the frames (the graph takes what it needs)."
    )


class VitsInputsConfig(BlockConfig):
    noise_scale: float = Field(0.667, ge=0, le=10, description="Scale of the prior's noise (0: none).")
    length_scale: float = Field(1.0, gt=0, le=20, description="Duration multiplier (> 1: slower); divided by speed.")
    noise_w: float = Field(0.8, ge=0, le=10, description="Scale of the duration predictor's noise (0: none).")
    scales_input: str = Field("scales", min_length=1, description="Input taking [noise_scale, length_scale, noise_w].")
    noise: tuple[NoiseInput, ...] = Field((), max_length=8, description="The noise inputs, in the graph's order.")
    speaker_input: str | None = Field(None, description="Input taking the speaker id [B] int64 (multi-speaker).")
    frames_per_token: int = Field(
        8,
        ge=1,
        le=1000,
        description="Frames of noise drawn per token and unit of length_scale / speed (VITS voices average 2-3 "
        "frames a token; a longer sentence reuses the draw from its start rather than failing).",
    )


def noise_for(ids: np.ndarray, seed: int, index: int, length: int, channels: int) -> np.ndarray:
    """``[length, channels]`` float32 standard normal noise for one sentence's ``ids``.

    Drawn position-major from ``(seed, index, the ids)``: a sentence gets the same noise in any
    batch, on any replica, and position ``i`` gets the same values whatever ``length`` is.
    """
    key = zlib.crc32(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    gen = np.random.default_rng([seed & 0xFFFFFFFF, index, key])
    return gen.standard_normal((length, channels), dtype=np.float32)


class VitsInputs(SequenceBlock[VitsInputsConfig]):
    """Runs its ``encoders`` with the inputs of a VITS front part that are not features.

    Request options read: ``speed`` (``length_scale / speed``), ``seed`` (the noise; default 0)
    and ``speaker`` (the voice's speaker id; default 0). Adds only what its encoders add.
    """

    type_name = "VitsInputs"
    Config: ClassVar[type[BlockConfig]] = VitsInputsConfig
    child_fields: ClassVar[dict[str, tuple[type[Block], bool]]] = {"encoders": (SequenceBlock, False)}
    honours = ("speed",)

    @classmethod
    def plan(cls, config: VitsInputsConfig, env: PlanEnv, children: Sequence[BlockNode] = ()) -> PlanEnv:
        given = cls._given(config)
        clash = sorted(given & env.keys)
        if clash:
            raise env.error(f"{cls.type_name} gives {', '.join(map(repr, clash))}, which a block before it made")
        (encoders,) = children
        inner = encoders.plan(PlanEnv(env.keys | given, env.kind, env.networks, env.path)).at(env.path)
        return PlanEnv(inner.keys - given, inner.kind, inner.networks, env.path)

    @staticmethod
    def _given(config: VitsInputsConfig) -> frozenset[str]:
        names = {config.scales_input, *(n.input for n in config.noise)}
        if config.speaker_input is not None:
            names.add(config.speaker_input)
        return frozenset(names)

    def __init__(self, config: VitsInputsConfig, env: BuildEnv, children: Sequence[Block] = ()) -> None:
        super().__init__(config, env, children)
        (self.encoders,) = self.children_as(SequenceBlock, "encoders")
        self.settings = config

    def __call__(self, features: Features, request: Request) -> Features:
        return self.encoders({**features, **self.inputs(features, request)}, request)

    def inputs(self, features: Features, request: Request) -> Features:
        """The conditioning inputs for a batch of ``phoneme_ids`` [B, T] (``mask`` [B, T] marks padding)."""
        cfg = self.settings
        speed = float(request.options.get("speed", 1.0))
        seed = int(request.options.get("seed", 0))
        ids = features["phoneme_ids"].cpu().numpy()
        batch, tokens = ids.shape
        lengths = features["mask"].sum(dim=1).to(torch.int64).tolist() if "mask" in features else [tokens] * batch
        length_scale = cfg.length_scale / speed
        out: Features = {
            cfg.scales_input: torch.tensor([cfg.noise_scale, length_scale, cfg.noise_w], dtype=torch.float32)
        }
        frames = tokens * cfg.frames_per_token * max(1, math.ceil(length_scale))
        for index, noise in enumerate(cfg.noise):
            length = tokens if noise.per == "token" else frames
            buffer = np.zeros((batch, length, noise.channels), dtype=np.float32)
            for b in range(batch):
                buffer[b] = noise_for(ids[b, : lengths[b]], seed, index, length, noise.channels)
            out[noise.input] = torch.from_numpy(buffer)
        if cfg.speaker_input is not None:
            out[cfg.speaker_input] = torch.full((batch,), int(request.options.get("speaker", 0)), dtype=torch.int64)
        return out


class FrameSourceConfig(BlockConfig):
    frames: str = Field("frames", description="Feature holding the frames [1, F, D].")
    durations: str | None = Field("durations", description="Feature holding each token's frames [1, T]; null: none.")
    chunk_frames: int = Field(32, ge=1, le=MAX_FRAMES, description="Frames handed on per chunk.")


class FrameSource(StreamableBlock[FrameSourceConfig]):
    """Starts a ``frames`` stream from frames a SequenceBlock made whole (a VITS front part's latent
    frames), in chunks of ``chunk_frames``, each frame aligned to the token whose duration covers it.

    The durations already include the speaking rate (the front part applied ``length_scale``), so
    this block stretches nothing.
    """

    type_name = "FrameSource"
    Config = FrameSourceConfig
    aligns = True

    @classmethod
    def plan(cls, config: FrameSourceConfig, env: PlanEnv, children: Sequence[BlockNode] = ()) -> PlanEnv:
        if env.kind is not None:
            raise env.error(
                f'{cls.type_name} starts a stream; it cannot follow a block that produces "{env.kind.value}"'
            )
        env.require_keys([config.frames] + ([config.durations] if config.durations else []), cls.type_name)
        return PlanEnv(env.keys, StreamKind.FRAMES, env.networks, env.path)

    def stream(
        self, source: Iterator[torch.Tensor] | None, features: Features, request: Request
    ) -> Iterator[torch.Tensor]:
        cfg = self.config
        frames = features[cfg.frames]
        total = int(frames.shape[1])
        tokens = self._tokens(features[cfg.durations], total) if cfg.durations else None
        for start in range(0, total, cfg.chunk_frames):
            if tokens is not None:
                request.align(tokens[start : start + cfg.chunk_frames])
            yield frames[:, start : start + cfg.chunk_frames]

    @staticmethod
    def _tokens(durations: torch.Tensor, total: int) -> torch.Tensor:
        """The token of each of ``total`` frames; durations that do not add up to ``total`` (a
        graph's rounding) give the last token the difference."""
        counts = torch.round(durations.reshape(-1).to(torch.float32)).clamp(min=0).to(torch.int64)
        tokens = torch.repeat_interleave(torch.arange(counts.numel()), counts)[:total]
        if tokens.numel() < total:
            last = int(tokens[-1]) if tokens.numel() else 0
            tokens = torch.cat([tokens, torch.full((total - tokens.numel(),), last, dtype=torch.int64)])
        return tokens


@dataclass
class FramedAudioState:
    frames: int = 0  # frames passed so far


class FramedAudio(Vocoder[BlockConfig, FramedAudioState]):
    """The waveform stage of a model whose network already made audio: ``frames`` of ``hop_length``
    samples each (``[1, F, hop]``) in, the same samples as ``[1, F * hop]`` out."""

    type_name = "FramedAudio"
    consumes: ClassVar[tuple[StreamKind, ...]] = (StreamKind.FRAMES,)

    def start(self) -> FramedAudioState:
        return FramedAudioState()

    def process(self, state: FramedAudioState, mel: torch.Tensor) -> torch.Tensor:
        if mel.shape[-1] != self.mel.hop_length:
            raise ValueError(f"{self.type_name} takes frames of {self.mel.hop_length} samples, got {mel.shape[-1]}")
        state.frames += int(mel.shape[1])
        return mel.reshape(1, -1).to(torch.float32)

    def finish(self, state: FramedAudioState) -> torch.Tensor:
        return torch.zeros(1, 0)
