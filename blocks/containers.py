"""Blocks that hold other blocks: how stacks nest."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

import torch

from blocks.base import (
    Block,
    BlockConfig,
    BlockNode,
    BuildEnv,
    Features,
    PlanEnv,
    Request,
    SequenceBlock,
    StreamableBlock,
)

__all__ = ["SequenceBlockContainer", "StreamablePipeline", "StreamableStack"]


class SequenceBlockContainer(SequenceBlock):
    """Runs nested SequenceBlocks in order; each sees every feature produced before it.

    Returns the union of the features its children add.
    """

    type_name = "SequenceBlockContainer"
    child_fields: ClassVar[dict[str, tuple[type[Block], bool]]] = {"blocks": (SequenceBlock, True)}

    @classmethod
    def plan(cls, config: BlockConfig, env: PlanEnv, children: Sequence[BlockNode] = ()) -> PlanEnv:
        for child in children:
            env = child.plan(env).at(env.path)
        return env

    def __init__(self, config: BlockConfig, env: BuildEnv, children: Sequence[Block] = ()) -> None:
        super().__init__(config, env, children)
        self.blocks: list[SequenceBlock] = self.children_as(SequenceBlock, "blocks")

    def __call__(self, features: Features, request: Request) -> Features:
        seen = dict(features)
        added: Features = {}
        for block in self.blocks:
            new = block(seen, request)
            seen.update(new)
            added.update(new)
        return added


class StreamableStack(StreamableBlock):
    """Chains StreamableBlocks: each one's stream is the next one's source.

    Chunk boundaries are whatever the last block yields; the total is unaffected by them.
    """

    type_name = "StreamableStack"
    child_fields: ClassVar[dict[str, tuple[type[Block], bool]]] = {"stack": (StreamableBlock, True)}

    @classmethod
    def plan(cls, config: BlockConfig, env: PlanEnv, children: Sequence[BlockNode] = ()) -> PlanEnv:
        path = env.path
        for child in children:
            env = child.plan(env)
        return env.at(path)

    def __init__(self, config: BlockConfig, env: BuildEnv, children: Sequence[Block] = ()) -> None:
        super().__init__(config, env, children)
        self.stack: list[StreamableBlock] = self.children_as(StreamableBlock, "stack")

    def stream(
        self, source: Iterator[torch.Tensor] | None, features: Features, request: Request
    ) -> Iterator[torch.Tensor]:
        current = source
        for block in self.stack:
            current = block.stream(current, features, request)
        assert current is not None
        return current


class StreamablePipeline(StreamableBlock):
    """Exactly one SequenceBlock feeding one StreamableBlock; itself streamable, so pipelines nest.

    The sequence block runs once, when the first chunk is pulled; the streamable block then sees
    the incoming features plus the ones the sequence block added.
    """

    type_name = "StreamablePipeline"
    child_fields: ClassVar[dict[str, tuple[type[Block], bool]]] = {
        "sequence_block": (SequenceBlock, False),
        "streamable_block": (StreamableBlock, False),
    }

    @classmethod
    def plan(cls, config: BlockConfig, env: PlanEnv, children: Sequence[BlockNode] = ()) -> PlanEnv:
        seq, streamable = children
        after_seq = seq.plan(env)
        inner = PlanEnv(after_seq.keys, env.kind, env.networks, env.path)
        return streamable.plan(inner).at(env.path)

    def __init__(self, config: BlockConfig, env: BuildEnv, children: Sequence[Block] = ()) -> None:
        super().__init__(config, env, children)
        if len(self.children) != 2:
            raise TypeError(f"{type(self).__name__} holds one sequence_block and one streamable_block")
        self.sequence_block: SequenceBlock = self.child_as(0, SequenceBlock, "sequence_block")
        self.streamable_block: StreamableBlock = self.child_as(1, StreamableBlock, "streamable_block")

    def encode(self, features: Features, request: Request) -> Features:
        """The SequenceBlock side alone: ``features`` plus what it adds."""
        return {**features, **self.sequence_block(features, request)}

    def stream(
        self, source: Iterator[torch.Tensor] | None, features: Features, request: Request
    ) -> Iterator[torch.Tensor]:
        yield from self.streamable_block.stream(source, self.encode(features, request), request)
