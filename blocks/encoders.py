"""SequenceBlocks that run an addon's encoder networks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import torch
from pydantic import Field
from typing_extensions import TypeVar

from blocks.base import Block, BlockConfig, BlockNode, BuildEnv, Features, PlanEnv, Request, SequenceBlock
from blocks.network import NetworkRunner

__all__ = ["CustomizedEncoders", "Encoders"]


class EncodersConfig(BlockConfig):
    networks: tuple[str, ...] | None = Field(
        None, description="Encoder networks to run, in order; default: every network with role 'encoder'."
    )


def _encoder_names(config: EncodersConfig, networks: dict[str, object] | object) -> list[str]:
    if config.networks is not None:
        return list(config.networks)
    return [name for name, spec in networks.items() if getattr(spec, "role", None) == "encoder"]  # type: ignore[union-attr]


def _inputs(runner: NetworkRunner, seen: Features) -> Features:
    """The network's inputs; a batch's ``mask`` feature (padded items) goes to networks that take one."""
    inputs = {k: seen[k] for k in runner.spec.feature_inputs}
    if "mask" in seen and runner.spec.takes_mask:
        inputs["mask"] = seen["mask"]
    return inputs


EncodersConfigT = TypeVar("EncodersConfigT", bound=EncodersConfig, default=EncodersConfig)


class Encoders(SequenceBlock[EncodersConfigT]):
    """One component per encoder network, run in order on the features.

    Each network reads its declared inputs from the features (``phoneme_ids`` ``[1, T]``, then
    whatever earlier encoders added, e.g. ``encoding`` ``[1, T, D]``) and adds its outputs
    (e.g. ``durations`` ``[1, T]`` in frames). Whole sequences in; in the static context every
    network is run in fixed-size windows (see :mod:`blocks.network`).
    """

    type_name = "Encoders"
    Config: ClassVar[type[BlockConfig]] = EncodersConfig

    @classmethod
    def plan(cls, config: EncodersConfigT, env: PlanEnv, children: Sequence[BlockNode] = ()) -> PlanEnv:
        names = _encoder_names(config, env.networks)
        if not names:
            raise env.error(f"{cls.type_name} found no network with role 'encoder' in the addon")
        keys = set(env.keys)
        for name in names:
            spec = env.require_network(name, "encoder", cls.type_name)
            missing = [k for k in spec.feature_inputs if k not in keys]
            if missing:
                raise env.error(
                    f'network "{name}" needs {", ".join(map(repr, missing))}, which nothing before it produces '
                    f"(available: {', '.join(sorted(keys))})"
                )
            keys |= set(spec.output_names)
        return PlanEnv(frozenset(keys), env.kind, env.networks, env.path)

    def __init__(self, config: EncodersConfigT, env: BuildEnv, children: Sequence[Block] = ()) -> None:
        super().__init__(config, env, children)
        self.device = self._device(env)
        names = config.networks
        if names is None:
            names = tuple(env.encoder_names())
        self.runners: list[NetworkRunner] = [env.networks(name, self.device) for name in names]

    def _device(self, env: BuildEnv) -> torch.device:
        return env.device

    def __call__(self, features: Features, request: Request) -> Features:
        seen = dict(features)
        added: Features = {}
        for runner in self.runners:
            out = runner.run(_inputs(runner, seen))
            seen.update(out)
            added.update(out)
        return added


class CustomizedEncodersConfig(EncodersConfig):
    device: str = Field("auto", description='Where the encoders run: "auto" (CUDA if present), "cpu", "cuda:0", ...')
    max_workers: int = Field(4, ge=1, le=64, description="Networks run at once, at most.")


class CustomizedEncoders(Encoders[CustomizedEncodersConfig]):
    """The same networks as :class:`Encoders`, run concurrently on a configured device.

    Networks whose inputs are all available run at the same time (one dependency level at a
    time); outputs are identical to :class:`Encoders`, so the two swap by name in the config.
    """

    type_name = "CustomizedEncoders"
    Config = CustomizedEncodersConfig

    def __init__(self, config: CustomizedEncodersConfig, env: BuildEnv, children: Sequence[Block] = ()) -> None:
        super().__init__(config, env, children)
        workers = min(config.max_workers, len(self.runners), os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="chorus-encoders")

    def _device(self, env: BuildEnv) -> torch.device:
        if self.config.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.config.device)

    def __call__(self, features: Features, request: Request) -> Features:
        seen = dict(features)
        added: Features = {}
        pending = list(self.runners)
        while pending:
            ready = [r for r in pending if all(k in seen for k in r.spec.feature_inputs)]
            if not ready:  # plan() rules this out; guard against a hand-built block
                raise RuntimeError(f"encoders {[r.name for r in pending]} wait on inputs nothing produces")
            futures = [self._pool.submit(r.run, _inputs(r, seen)) for r in ready]
            for fut in futures:
                out = fut.result()
                seen.update(out)
                added.update(out)
            pending = [r for r in pending if r not in ready]
        return added
