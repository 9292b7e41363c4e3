"""The split rule: which blocks of a parsed stack form which stage.

A server runs an addon as separate processes (stages) that exchange plain data. Planning splits
the parsed stack, before anything is built, so each process builds only its own blocks:

- **encoders**: when the stack's first block is a :class:`~blocks.containers.StreamablePipeline`,
  its SequenceBlock (``phoneme_ids`` -> the features it adds, whole sentences).
- **decoder**: everything streamable that follows, as one :class:`~blocks.containers.StreamableStack`:
  that pipeline's StreamableBlock, then the stack's other blocks (features -> mel chunks).

A stack that does not start with a pipeline has no encoders stage: its decoder sees
``phoneme_ids`` alone. The audio stage (vocoder, effects) is not part of the stack; see
:class:`addons.engine.stages.AudioStage`.
"""

from __future__ import annotations

from dataclasses import dataclass

from blocks.base import BlockNode, StackError
from blocks.containers import StreamablePipeline, StreamableStack

__all__ = ["StagePlan", "provides_alignment", "split_stack"]


@dataclass(frozen=True)
class StagePlan:
    """A parsed stack split into stages; each node is built on its own (``BuildEnv.build``)."""

    encoders: BlockNode | None  # a SequenceBlock, or None when the stack starts streaming at once
    decoder: BlockNode  # a StreamableStack


def split_stack(stack: BlockNode) -> StagePlan:
    """Split a stack from :func:`blocks.registry.parse_stack` by the rule in this module's doc."""
    if not issubclass(stack.cls, StreamableStack) or not stack.children:
        raise StackError(stack.path, "a stage plan needs a parsed StreamableStack with at least one block")
    first, rest = stack.children[0], stack.children[1:]
    if not issubclass(first.cls, StreamablePipeline):
        return StagePlan(None, stack)
    sequence, streamable = first.children
    decoder = BlockNode(StreamableStack, StreamableStack.Config(), stack.path, (streamable, *rest))
    return StagePlan(sequence, decoder)


def provides_alignment(node: BlockNode) -> bool:
    """Whether a parsed stack has a block that tells which input token each frame came from
    (``Block.aligns``), so that speech marks can be derived from it."""
    return node.cls.aligns or any(provides_alignment(c) for c in node.children)
