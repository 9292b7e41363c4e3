"""The abstractions every Chorus block implements.

Data model
----------
- **Features**: a mapping from names to tensors with a leading batch axis of 1 (``phoneme_ids``
  ``[1, T]``, ``encoding`` ``[1, T, D]``, ``durations`` ``[1, T]`` in frames, ...). SequenceBlocks
  read some keys and add others.
- **Streams**: iterators of chunks of one *kind* (:class:`StreamKind`): ``frames`` (upsampled
  encodings ``[1, F, D]``), ``mel`` (``[1, F, n_mels]`` log-mel frames) or ``audio``
  (``[1, S]`` float32 samples). Chunk sizes vary; a block may buffer, but every frame that
  enters a block leaves it exactly once, in order, and a stream's total length is the same
  whatever the chunking.

Blocks are built from pydantic configs (:attr:`Block.Config`) and checked by :meth:`Block.plan`
before any network is loaded, so a broken stack fails fast with the path of the bad block.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic

import torch
from pydantic import BaseModel, ConfigDict
from typing_extensions import TypeVar

from blocks.audio import MelSettings
from blocks.network import MAX_FRAMES, ExecutionContext, NetworkRunner, NetworkSpec

__all__ = [
    "ALIGNMENT",
    "MAX_FRAMES",
    "Block",
    "BlockConfig",
    "BlockNode",
    "BuildEnv",
    "ConfigT",
    "Features",
    "PlanEnv",
    "Request",
    "SequenceBlock",
    "StackError",
    "StreamKind",
    "StreamableBlock",
]

Features = dict[str, torch.Tensor]


class StreamKind(str, enum.Enum):
    """What a stream's chunks hold (see the module docstring for shapes)."""

    FRAMES = "frames"
    MEL = "mel"
    AUDIO = "audio"


class StackError(ValueError):
    """A stack that cannot be built; ``path`` names the block, e.g. ``stack[0].streamable_block``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.detail = message


class BlockConfig(BaseModel):
    """Base of every block's config: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: ``Request.report`` key of the per-frame token alignment (see :meth:`Request.align`).
ALIGNMENT = "alignment"


@dataclass
class Request:
    """Per-synthesis options and a place for blocks to report what they observed.

    ``options`` are request-level knobs (``speed``, ...) already validated by the voice;
    ``report`` collects diagnostics (stop reasons, per-chunk timings) keyed by block name.
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def log(self, key: str, value: Any) -> None:
        self.report.setdefault(key, []).append(value)

    def align(self, tokens: torch.Tensor) -> None:
        """For a block that knows where its output frames come from: the input token index of each
        frame it emits next (int64 ``[F]``), in emission order. Speech marks are built from it."""
        self.log(ALIGNMENT, tokens.reshape(-1).to(torch.int64))


@dataclass(frozen=True)
class PlanEnv:
    """What is known while a stack is checked: feature keys available and the upstream stream."""

    keys: frozenset[str]
    kind: StreamKind | None
    networks: Mapping[str, Any]  # network name -> addon NetworkSpec (duck-typed: blocks stays Ray-free)
    path: str = ""

    def at(self, path: str) -> PlanEnv:
        return PlanEnv(self.keys, self.kind, self.networks, path)

    def error(self, message: str) -> StackError:
        return StackError(self.path, message)

    def require_keys(self, needed: tuple[str, ...] | list[str], what: str) -> None:
        missing = [k for k in needed if k not in self.keys]
        if missing:
            raise self.error(
                f"{what} needs {', '.join(repr(k) for k in missing)}, which nothing upstream produces "
                f"(available: {', '.join(sorted(self.keys)) or 'none'})"
            )

    def require_network(self, name: str, role: str | None = None, user: str = "this block") -> Any:
        """The named network's spec; with ``role``, refused unless the network declares that role."""
        if name not in self.networks:
            known = ", ".join(sorted(self.networks)) or "none"
            raise self.error(f'unknown network "{name}" (the addon has: {known})')
        spec = self.networks[name]
        if role is not None and getattr(spec, "role", role) != role:
            raise self.error(f'network "{name}" has role "{spec.role}", but {user} runs a network with role "{role}"')
        return spec


BlockT = TypeVar("BlockT", bound="Block[Any]")

#: A block's config type: ``class Upsampler(StreamableBlock[UpsamplerConfig])`` types ``self.config``
#: and the ``config`` that ``plan`` receives, so no block casts or asserts its own config.
ConfigT = TypeVar("ConfigT", bound=BlockConfig, default=BlockConfig)


class Block(ABC, Generic[ConfigT]):
    """Common base: a named, typed config and a static check of its place in a stack.

    ``Config`` is the pydantic class the registry validates the JSON spec with; it must be the
    class the block is parametrized with (``ConfigT``), which :meth:`__init__` checks once.
    """

    type_name: ClassVar[str]
    Config: ClassVar[type[BlockConfig]] = BlockConfig

    #: Fields of the JSON spec that hold nested blocks: name -> (role of the child, many?).
    child_fields: ClassVar[dict[str, tuple[type[Block], bool]]] = {}
    #: Whether the block reports which input token each frame it emits came from
    #: (:meth:`Request.align`); speech marks need one such block in a stack.
    aligns: ClassVar[bool] = False
    #: Request options the block reads itself (``"speed"``: it sets the speaking rate; where no
    #: block of a decoder does, the decoder stage stretches the mel in time, see blocks.tempo).
    honours: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ConfigT, env: BuildEnv, children: Sequence[Block] = ()) -> None:
        if not isinstance(config, type(self).Config):
            raise TypeError(
                f"{type(self).__name__} takes a {type(self).Config.__name__}, not a {type(config).__name__}"
            )
        self.config: ConfigT = config
        self.children = tuple(children)

    def children_as(self, kind: type[BlockT], field: str = "children") -> list[BlockT]:
        """The nested blocks, each checked to be a ``kind``: a container refuses what it cannot hold
        (``TypeError`` naming the block and the field), never drops it."""
        return [self.child_as(i, kind, field) for i in range(len(self.children))]

    def child_as(self, index: int, kind: type[BlockT], field: str) -> BlockT:
        """Nested block ``index``, checked to be a ``kind`` (``TypeError`` naming the field if not)."""
        child = self.children[index]
        if not isinstance(child, kind):
            raise TypeError(f"{type(self).__name__}.{field} holds a {kind.__name__}, not a {type(child).__name__}")
        return child

    @classmethod
    def plan(cls, config: ConfigT, env: PlanEnv, children: Sequence[BlockNode] = ()) -> PlanEnv:
        """Check this block can run given ``env``; return the env downstream of it.

        Runs before weights load. Raise ``env.error(...)`` naming what is wrong.
        """
        return env


@dataclass(frozen=True)
class BlockNode:
    """A parsed, not yet built, block: its class, validated config and nested blocks."""

    cls: type[Block[Any]]
    config: BlockConfig
    path: str
    children: tuple[BlockNode, ...] = ()

    def plan(self, env: PlanEnv) -> PlanEnv:
        return self.cls.plan(self.config, env.at(self.path), self.children)


@dataclass
class BuildEnv:
    """What building a block may use: the addon's networks (loaded lazily), mel settings, device."""

    loader: Callable[[str, torch.device], NetworkRunner]
    specs: Mapping[str, NetworkSpec]
    mel: MelSettings
    context: ExecutionContext = ExecutionContext.DYNAMIC
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: Finds a universal vocoder by name: its runner and the mel settings it was trained for.
    vocoders: Callable[[str, torch.device], tuple[NetworkRunner, MelSettings]] | None = None

    def networks(self, name: str, device: torch.device | None = None) -> NetworkRunner:
        return self.loader(name, device or self.device)

    def universal_vocoder(self, name: str) -> tuple[NetworkRunner, MelSettings]:
        if self.vocoders is None:
            raise StackError("vocoder", f'no universal vocoders are installed here, so "{name}" cannot be used')
        return self.vocoders(name, self.device)

    def encoder_names(self) -> list[str]:
        return [name for name, spec in self.specs.items() if spec.role == "encoder"]

    def build(self, node: BlockNode) -> Block[Any]:
        children = [self.build(child) for child in node.children]
        return node.cls(node.config, self, children)

    def build_as(self, node: BlockNode, kind: type[BlockT]) -> BlockT:
        """:meth:`build`, checked to give a ``kind`` (a ``StackError`` at the node's path if not)."""
        block = self.build(node)
        if not isinstance(block, kind):
            raise StackError(node.path, f"{type(block).__name__} is not a {kind.__name__}")
        return block


class SequenceBlock(Block[ConfigT]):
    """Maps features to features in one call (whole sequences, no streaming).

    ``__call__`` receives every feature produced upstream and returns only the keys it adds.
    Batch axis is 1; the sequence axis ``T`` is axis 1 of every per-token tensor.
    """

    @abstractmethod
    def __call__(self, features: Features, request: Request) -> Features:
        """The features this block adds (new keys only), from every feature produced upstream."""


class StreamableBlock(Block[ConfigT]):
    """Produces chunks on demand.

    ``stream(source, features, request)`` returns an iterator. ``source`` is the upstream
    block's stream (``None`` for a block that starts a stream from ``features``). Pulling one
    chunk does only the work needed for it: the first chunk of a long utterance costs about as
    much as the first chunk of a short one.
    """

    @abstractmethod
    def stream(
        self, source: Iterator[torch.Tensor] | None, features: Features, request: Request
    ) -> Iterator[torch.Tensor]:
        """Chunks of this block's output kind, pulled one at a time (see the class docstring)."""
