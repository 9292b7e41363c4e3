"""The Ray Serve deployments an addon becomes: encoders, decoder and vocoder.

Each replica loads its addon through :mod:`addons` and exchanges only plain data (numpy arrays,
dicts of them, strings, and the vocoder's carry state) with the ingress. Blocking work runs in
a worker thread so a replica keeps serving its other streams, and cancellation from a client
that hung up reaches the replica at its next ``await``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve

import addons
from addons.voice import AudioStage
from blocks import Request

__all__ = ["DecoderDeployment", "EncodersDeployment", "VocoderDeployment"]

# Small chunks cost a handle round trip each; coalesce mel to at least this many frames.
MIN_MEL_CHUNK = 24
BATCH_SIZE = 8


class _Replica:
    def pid(self) -> int:
        """This replica's process id (fault-injection tests, diagnostics)."""
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this replica runs on (placement checks, diagnostics)."""
        return ray.get_runtime_context().get_node_id()

    def ready(self) -> bool:
        return True


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=2 * BATCH_SIZE)
class EncodersDeployment(_Replica):
    """The SequenceBlock side of one addon: a sentence's text -> its phoneme ids -> features.

    Concurrent requests are batched into one padded pass (``@serve.batch``).
    """

    def __init__(self, addon_dir: str, context: str = "dynamic", device: str = "auto") -> None:
        self.voice = addons.load(Path(addon_dir), context=context, device=device)

    async def encode(self, sentence: str) -> list[dict[str, np.ndarray]]:
        """Features for each speakable part of ``sentence`` ([] if nothing in it is speakable)."""
        try:
            parts = await asyncio.to_thread(lambda: [s.ids for s in self.voice.sentences(sentence)])
        except addons.TextError:
            return []
        results: list[dict[str, np.ndarray]] = await asyncio.gather(*(self._encode_batched(ids) for ids in parts))
        return results

    @serve.batch(max_batch_size=BATCH_SIZE, batch_wait_timeout_s=0.003)
    async def _encode_batched(self, batch: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return await asyncio.to_thread(self.voice.encode_batch, batch)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=8)
class DecoderDeployment(_Replica):
    """The StreamableBlock side of one addon: features -> a stream of mel chunks [F, n_mels]."""

    def __init__(self, addon_dir: str, context: str = "dynamic", device: str = "auto") -> None:
        self.voice = addons.load(Path(addon_dir), context=context, device=device)
        self.active = 0  # streams in progress
        self.frames = 0  # mel frames produced since start

    def stats(self) -> dict[str, int]:
        """This replica's streams in progress and frames produced (cancelled streams stop working)."""
        return {"active": self.active, "frames": self.frames, "pid": os.getpid()}

    async def decode(self, features: dict[str, np.ndarray], options: dict[str, Any]) -> AsyncIterator[np.ndarray]:
        """``options`` are resolved already (see ``addons.voice.resolve_options``)."""
        chunks = self.voice.decode(features, Request(options=options))
        pending: list[np.ndarray] = []
        held = 0
        self.active += 1
        try:
            while True:
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    break
                self.frames += len(chunk)
                pending.append(chunk)
                held += len(chunk)
                if held >= MIN_MEL_CHUNK:
                    yield np.concatenate(pending)
                    pending, held = [], 0
            if pending:
                yield np.concatenate(pending)
        finally:  # also on cancellation, when the client has gone
            self.active -= 1


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16)
class VocoderDeployment(_Replica):
    """Mel -> audio for the addons it serves (the shared universal vocoder, or one addon's own).

    Stateless between calls: the caller carries each stream's vocoder state from one
    ``process`` call to the next, so any replica can take any chunk.
    """

    def __init__(self, addon_dirs: dict[str, str], device: str = "auto") -> None:
        self.stages: dict[str, AudioStage] = {}
        for name, directory in addon_dirs.items():
            manifest = addons.read_manifest(Path(directory))
            self.stages[name] = AudioStage.load(Path(directory), manifest, addons.loader.resolve_device(device))

    def _stage(self, model: str) -> AudioStage:
        if model not in self.stages:
            raise KeyError(f"this vocoder does not serve {model!r}")
        return self.stages[model]

    async def start(self, model: str) -> dict[str, Any]:
        """A new stream's state, as plain data (dicts of numpy arrays) the caller carries."""
        stage = self._stage(model)
        return stage.pack(stage.start())  # type: ignore[no-any-return]

    async def process(
        self, model: str, state: dict[str, Any], mel: np.ndarray, options: dict[str, Any]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        stage = self._stage(model)
        live = stage.unpack(state)
        audio = await asyncio.to_thread(stage.process, live, mel, Request(options=options))
        return audio, stage.pack(live)

    async def finish(self, model: str, state: dict[str, Any], options: dict[str, Any]) -> np.ndarray:
        stage = self._stage(model)
        return await asyncio.to_thread(stage.finish, stage.unpack(state), Request(options=options))
