"""Non-autoregressive decoding of frames into mel, chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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
    StreamableBlock,
    StreamKind,
)

__all__ = ["Decoder"]


class DecoderConfig(BlockConfig):
    network: str = Field("decoder", description="The decoder network: frames [1, T, D] -> mel [1, T, n_mels].")
    chunk_frames: int = Field(
        64, ge=1, le=MAX_FRAMES, description="Mel frames per output chunk in the dynamic context."
    )


class Decoder(StreamableBlock[DecoderConfig]):
    """Consumes a ``frames`` stream and produces a ``mel`` stream of the same length.

    The network must declare a finite ``receptive_field`` R: each output chunk is decoded from
    its frames plus R frames of context on each side (waiting for the right context to arrive),
    so the chunked mel equals the whole-sequence mel to float rounding. Chunks hold
    ``chunk_frames`` frames (dynamic) or ``static_length - 2R`` frames (static); the last may be
    shorter.
    """

    type_name = "Decoder"
    Config = DecoderConfig

    @classmethod
    def plan(cls, config: DecoderConfig, env: PlanEnv, children: Sequence[BlockNode] = ()) -> PlanEnv:
        if env.kind is not StreamKind.FRAMES:
            got = env.kind.value if env.kind else "nothing"
            raise env.error(
                f'{cls.type_name} consumes a "frames" stream (e.g. from an Upsampler), upstream gives {got}'
            )
        spec = env.require_network(config.network, "decoder", cls.type_name)
        if spec.receptive_field is None:
            raise env.error(
                f'network "{config.network}" declares no receptive_field, so it cannot be decoded in chunks'
            )
        seq_inputs = [t.name for t in spec.inputs if t.time_scale is not None and t.name != "mask"]
        if len(seq_inputs) != 1:
            raise env.error(f'network "{config.network}" must take exactly one sequence input, has {seq_inputs}')
        env.require_keys([k for k in spec.feature_inputs if k not in seq_inputs], cls.type_name)
        return PlanEnv(env.keys, StreamKind.MEL, env.networks, env.path)

    def __init__(self, config: DecoderConfig, env: BuildEnv, children: Sequence[Block] = ()) -> None:
        super().__init__(config, env, children)
        self.runner = env.networks(config.network)
        spec = self.runner.spec
        self.frames_input = next(t.name for t in spec.inputs if t.time_scale is not None and t.name != "mask")
        self.extra_inputs = [k for k in spec.feature_inputs if k != self.frames_input]
        self.output = next(t.name for t in spec.outputs if t.time_scale is not None)

    def stream(
        self, source: Iterator[torch.Tensor] | None, features: Features, request: Request
    ) -> Iterator[torch.Tensor]:
        assert source is not None
        window = self.runner.windowed(self.config.chunk_frames)
        extras = {k: features[k] for k in self.extra_inputs}
        for chunk in source:
            for out in window.push({self.frames_input: chunk, **extras}):
                yield out[self.output]
        for out in window.finish():
            yield out[self.output]
