"""The length regulator: from one encoding per token to one frame per mel frame."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from pydantic import Field

from blocks.base import MAX_FRAMES, BlockConfig, BlockNode, Features, PlanEnv, Request, StreamableBlock, StreamKind

__all__ = ["Upsampler", "regulate_durations"]


class UpsamplerConfig(BlockConfig):
    encoding: str = Field("encoding", description="Feature holding per-token encodings [1, T, D].")
    durations: str = Field("durations", description="Feature holding per-token durations [1, T] in frames.")
    chunk_frames: int = Field(64, ge=1, le=MAX_FRAMES, description="Frames handed on per chunk.")
    max_frames_per_token: int = Field(64, ge=1, le=1000, description="Upper bound on one token's duration, in frames.")


def regulate_durations(durations: torch.Tensor, speed: float, max_frames: int) -> torch.Tensor:
    """Integer frame counts ``[T]`` from predicted durations ``[1, T]`` (frames) at ``speed``.

    ``speed`` > 1 speaks faster (fewer frames). At least one frame in total, so a sentence
    never vanishes silently.
    """
    frames = torch.round(durations[0].to(torch.float32) / speed).clamp(0, max_frames).to(torch.int64)
    if int(frames.sum()) == 0:
        frames[int(torch.argmax(durations[0]))] = 1
    return frames


class Upsampler(StreamableBlock[UpsamplerConfig]):
    """Repeats each token's encoding for its duration and hands frames on as they are pulled.

    Starts a ``frames`` stream of ``[1, n, D]`` chunks (``n <= chunk_frames``) whose total length
    is the sum of the regulated durations; the request option ``speed`` divides durations.
    """

    type_name = "Upsampler"
    aligns = True
    honours = ("speed",)
    Config = UpsamplerConfig

    @classmethod
    def plan(cls, config: UpsamplerConfig, env: PlanEnv, children: Sequence[BlockNode] = ()) -> PlanEnv:
        if env.kind is not None:
            raise env.error(
                f'{cls.type_name} starts a stream; it cannot follow a block that produces "{env.kind.value}"'
            )
        env.require_keys([config.encoding, config.durations], cls.type_name)
        return PlanEnv(env.keys, StreamKind.FRAMES, env.networks, env.path)

    def stream(
        self, source: Iterator[torch.Tensor] | None, features: Features, request: Request
    ) -> Iterator[torch.Tensor]:
        cfg = self.config
        encoding = features[cfg.encoding]
        frames = regulate_durations(
            features[cfg.durations], float(request.options.get("speed", 1.0)), cfg.max_frames_per_token
        )
        request.log(self.type_name, {"tokens": int(frames.numel()), "frames": int(frames.sum())})
        token_of_frame = torch.repeat_interleave(torch.arange(frames.numel()), frames)
        for start in range(0, token_of_frame.numel(), cfg.chunk_frames):
            idx = token_of_frame[start : start + cfg.chunk_frames]
            request.align(idx)
            yield encoding[:, idx]
