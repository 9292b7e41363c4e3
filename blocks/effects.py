"""Diagnostic and DSP-effect blocks: chunk-wise transforms added to a voice by config alone."""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence

import torch
from pydantic import Field

from blocks.base import BlockConfig, BlockNode, ConfigT, Features, PlanEnv, Request, StreamableBlock, StreamKind

__all__ = ["ChunkStats", "ChunkwiseBlock", "Gain"]


class ChunkwiseBlock(StreamableBlock[ConfigT]):
    """A block that maps each chunk on its own (no state across chunks), same kind in and out.

    ``apply`` is also what a server calls per chunk, so such blocks need no stream plumbing.
    """

    accepts: tuple[StreamKind, ...] = (StreamKind.FRAMES, StreamKind.MEL, StreamKind.AUDIO)

    @classmethod
    def plan(cls, config: BlockConfig, env: PlanEnv, children: Sequence[BlockNode] = ()) -> PlanEnv:
        if env.kind not in cls.accepts:
            got = env.kind.value if env.kind else "nothing"
            wanted = " or ".join(f'"{k.value}"' for k in cls.accepts)
            raise env.error(f"{cls.type_name} consumes a {wanted} stream, upstream gives {got}")
        return env

    @abstractmethod
    def apply(self, chunk: torch.Tensor, request: Request) -> torch.Tensor:
        """One chunk, mapped on its own: same kind and length out as in."""

    def stream(
        self, source: Iterator[torch.Tensor] | None, features: Features, request: Request
    ) -> Iterator[torch.Tensor]:
        assert source is not None
        for chunk in source:
            yield self.apply(chunk, request)


class GainConfig(BlockConfig):
    db: float = Field(description="Gain in decibels (negative attenuates).", ge=-60, le=24)
    limit: bool = Field(True, description="Clip the result to [-1, 1] so loud gains cannot wrap.")


class Gain(ChunkwiseBlock[GainConfig]):
    """Scales audio by ``db`` decibels. Audio in, audio out, same length."""

    type_name = "Gain"
    Config = GainConfig
    accepts = (StreamKind.AUDIO,)

    def apply(self, chunk: torch.Tensor, request: Request) -> torch.Tensor:
        out = chunk * (10.0 ** (self.config.db / 20.0))
        return torch.clamp(out, -1.0, 1.0) if self.config.limit else out


class ChunkStatsConfig(BlockConfig):
    label: str = Field("ChunkStats", description="Key under which the stats are reported.")


class ChunkStats(ChunkwiseBlock[ChunkStatsConfig]):
    """Passes chunks through unchanged and reports, per chunk: its size along axis 1 (frames or
    samples), seconds since the stream's first pull, its mean and its RMS (for audio, the level;
    for log-mel, the mean is the loudness in log units).
    """

    type_name = "ChunkStats"
    Config = ChunkStatsConfig

    def stream(
        self, source: Iterator[torch.Tensor] | None, features: Features, request: Request
    ) -> Iterator[torch.Tensor]:
        assert source is not None
        t0 = time.perf_counter()
        for index, chunk in enumerate(source):
            request.log(self.config.label, _stats(index, chunk, time.perf_counter() - t0))
            yield chunk

    def apply(self, chunk: torch.Tensor, request: Request) -> torch.Tensor:
        index = len(request.report.get(self.config.label, []))
        request.log(self.config.label, _stats(index, chunk, None))
        return chunk


def _stats(index: int, chunk: torch.Tensor, elapsed: float | None) -> dict[str, float | int | None]:
    values = chunk.to(torch.float32)
    return {
        "index": index,
        "size": int(chunk.shape[1]),
        "elapsed_s": elapsed,
        "mean": float(values.mean()),
        "rms": float(values.pow(2).mean().sqrt()),
    }
