"""Block types by name and role, and turning a stack's JSON into checked, buildable nodes.

Built-in blocks register explicitly (see ``blocks/__init__.py``). Third-party blocks register with
:func:`register_block`, through a ``"module:Class"`` type path in the JSON, or through the
``chorus.blocks`` entry-point group; each is resolved once and checked against the role its slot
requires.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any, TypeVar

from pydantic import ValidationError

from blocks.base import Block, BlockNode, PlanEnv, StackError, StreamableBlock, StreamKind

__all__ = ["REGISTRY", "BlockRegistry", "parse_stack", "plan_stack", "register_block"]

B = TypeVar("B", bound=type[Block[Any]])
ENTRY_POINT_GROUP = "chorus.blocks"


class BlockRegistry:
    def __init__(self) -> None:
        self._types: dict[str, type[Block[Any]]] = {}
        self._entry_points_loaded = False

    def register(self, cls: type[Block[Any]], name: str | None = None) -> type[Block[Any]]:
        key = name or cls.type_name
        if not (isinstance(cls, type) and issubclass(cls, Block)):
            raise TypeError(f"{cls!r} is not a Block subclass")
        existing = self._types.get(key)
        if existing is not None and existing is not cls:
            raise ValueError(f'block type "{key}" is already registered as {existing.__qualname__}')
        self._types[key] = cls
        return cls

    def names(self, role: type[Block[Any]] = Block) -> list[str]:
        self._load_entry_points()
        return sorted(k for k, v in self._types.items() if issubclass(v, role))

    def resolve(self, name: str, role: type[Block[Any]], path: str) -> type[Block[Any]]:
        self._load_entry_points()
        cls = self._types.get(name)
        if cls is None and ":" in name:
            cls = self._import(name, path)
        if cls is None:
            raise StackError(path, f'unknown block type "{name}" (known: {", ".join(self.names(role))})')
        if not issubclass(cls, role):
            raise StackError(
                path,
                f'block type "{name}" is a {_role_name(cls)}, but this slot needs a {role.__name__} '
                f"(known: {', '.join(self.names(role))})",
            )
        return cls

    def _import(self, dotted: str, path: str) -> type[Block[Any]]:
        module_name, _, attr = dotted.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise StackError(path, f'cannot import block type "{dotted}": {exc}') from None
        if not (isinstance(cls, type) and issubclass(cls, Block)):
            raise StackError(path, f'"{dotted}" is not a Block subclass')
        self._types[dotted] = cls
        return cls

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            self.register(ep.load(), ep.name)


def _role_name(cls: type[Block[Any]]) -> str:
    from blocks.base import SequenceBlock

    for role in (StreamableBlock, SequenceBlock):
        if issubclass(cls, role):
            return role.__name__
    return "Block"


REGISTRY = BlockRegistry()


def register_block(cls: B) -> B:
    """Class decorator: make ``cls`` available under ``cls.type_name``."""
    REGISTRY.register(cls)
    return cls


def parse_block(spec: Any, role: type[Block[Any]], path: str, registry: BlockRegistry = REGISTRY) -> BlockNode:
    """Validate one block spec (``{"type": ..., **params}``) and its nested blocks."""
    if not isinstance(spec, Mapping):
        raise StackError(path, f'a block spec must be an object with a "type", got {type(spec).__name__}')
    if "type" not in spec or not isinstance(spec["type"], str):
        raise StackError(path, f'missing "type" (known: {", ".join(registry.names(role))})')
    cls = registry.resolve(spec["type"], role, path)
    params = {k: v for k, v in spec.items() if k != "type"}
    children: list[BlockNode] = []
    for field_name, (child_role, many) in cls.child_fields.items():
        if field_name not in params:
            raise StackError(path, f'{cls.type_name} needs "{field_name}"')
        value = params.pop(field_name)
        if many:
            if not isinstance(value, list) or not value:
                raise StackError(f"{path}.{field_name}", "must be a non-empty list of blocks")
            children += [parse_block(v, child_role, f"{path}.{field_name}[{i}]", registry) for i, v in enumerate(value)]
        else:
            children.append(parse_block(value, child_role, f"{path}.{field_name}", registry))
    try:
        config = cls.Config.model_validate(params)
    except ValidationError as exc:
        raise StackError(path, f"{cls.type_name}: {_first_error(exc)}") from None
    return BlockNode(cls, config, path, tuple(children))


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def parse_stack(stack: Sequence[Any], path: str = "stack", registry: BlockRegistry = REGISTRY) -> BlockNode:
    """Parse an addon's top-level ``stack`` list: streamable blocks chained in order."""
    from blocks.containers import StreamableStack

    if not isinstance(stack, Sequence) or isinstance(stack, (str, bytes)) or not stack:
        raise StackError(path, "must be a non-empty list of blocks")
    children = tuple(parse_block(s, StreamableBlock, f"{path}[{i}]", registry) for i, s in enumerate(stack))
    return BlockNode(StreamableStack, StreamableStack.Config(), path, children)


def plan_stack(node: BlockNode, env: PlanEnv, produces: StreamKind | tuple[StreamKind, ...]) -> PlanEnv:
    """Check a parsed stack end to end before weights load; it must end in ``produces`` (one of them)."""
    kinds = produces if isinstance(produces, tuple) else (produces,)
    out = node.plan(env)
    if out.kind not in kinds:
        got = out.kind.value if out.kind else "nothing"
        wanted = " or ".join(f'"{k.value}"' for k in kinds)
        raise StackError(node.path, f"must produce a {wanted} stream, but its last block produces {got}")
    return out
