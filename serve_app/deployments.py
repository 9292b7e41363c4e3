"""The Ray Serve deployments an addon becomes: encoders, decoder and vocoder.

Each replica loads its addon through :mod:`addons` and exchanges only plain data (numpy arrays,
dicts of them, strings, and the vocoder's carry state) with the ingress. Blocking work runs in
a worker thread so a replica keeps serving its other streams, and cancellation from a client
that hung up reaches the replica at its next ``await``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import ray
from ray import serve

import addons
from addons.engine.marks import sentence_arrays
from addons.engine.stages import AudioStage, DecoderStage, EncoderStage, with_pauses
from addons.text.frontend import LexiconError
from blocks import Request
from blocks.batching import DEADLINE
from serve_app import placement
from serve_app.autoscaling import BusyMeter

T = TypeVar("T")


@dataclass(eq=False)
class _Sentence:
    """A part waiting in the encoders' batch: its voice's stage (let go once encoded: Serve's
    batch loop keeps its last batch until the next one comes, which would keep an evicted voice
    of a family in memory), its ids and the options its encoders read."""

    stage: EncoderStage | None
    ids: np.ndarray
    said: dict[str, Any]


__all__ = ["DecoderDeployment", "Decoding", "EncodersDeployment", "Encoding", "VocoderDeployment", "Vocoding"]

# Each mel chunk costs a handle round trip to the vocoder. The first chunk is small, for a quick
# first audio; later ones grow (x2 each) up to MAX_MEL_CHUNK: a stream of n frames makes about
# log2(MAX/MIN) + n / MAX hops instead of n / MIN.
MIN_MEL_CHUNK = 24
MAX_MEL_CHUNK = 192
BATCH_SIZE = 8
# Streams a replica steps at once (each waits in a worker thread while its batch runs).
STREAM_THREADS = 64
DEFAULT_BATCHING = 32  # streams sharing one forward pass, at most; 0 turns continuous batching off
# The first layer of every deployment's options (then the addon's hints, then AppArgs.deployments:
# see serve_app.app), so that a hint naming only ``resources`` keeps these CPUs (Ray replaces
# ray_actor_options whole); also the decorators' own, for a deployment bound directly.
STAGE_CPUS = placement.STAGE_CPUS
# Stage replicas run this much nicer than the ingress and proxy (see AppArgs.stage_nice): by
# default not at all, since 5 measured no faster refusals and slower first audio (docs/performance.md).
STAGE_NICE = 0
# CPU replicas (serve_app.placement); the addons' hints and the Serve config move stages onto accelerators.
DEFAULTS: dict[str, dict[str, Any]] = {
    "encoders": {"ray_actor_options": placement.cpu(STAGE_CPUS), "max_ongoing_requests": 2 * BATCH_SIZE},
    "decoder": {"ray_actor_options": placement.cpu(STAGE_CPUS), "max_ongoing_requests": 32},
    "vocoder": {"ray_actor_options": placement.cpu(STAGE_CPUS), "max_ongoing_requests": 64},
    "ingress": {"ray_actor_options": placement.cpu(STAGE_CPUS), "max_ongoing_requests": 64},
}


class _Replica:
    _pool: ThreadPoolExecutor | None = None
    _meter: BusyMeter | None = None
    active = 0  # streams in progress (decoders count them)

    async def _in_thread(self, fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
        """``fn(*args)`` in this replica's stream threads, its network calls carrying ``deadline``."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(STREAM_THREADS, thread_name_prefix=f"chorus-{type(self).__name__}")
        context = contextvars.copy_context()
        context.run(DEADLINE.set, deadline)
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, partial(context.run, self._timed, fn, *args)
        )

    def _timed(self, fn: Callable[..., T], *args: Any) -> T:
        meter = self._busy_meter()
        meter.enter()
        try:
            return fn(*args)
        finally:
            meter.leave()

    def _busy_meter(self) -> BusyMeter:
        if self._meter is None:
            self._meter = BusyMeter()
        return self._meter

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics (see :mod:`serve_app.autoscaling`)."""
        return {"busy": self._busy_meter().report(), "streams": float(self.active)}

    def pid(self) -> int:
        """This replica's process id (fault-injection tests, diagnostics)."""
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this replica runs on (placement checks, diagnostics)."""
        return ray.get_runtime_context().get_node_id()

    def ready(self) -> bool:
        return True

    @staticmethod
    def _lower_priority(nice: int) -> None:
        """Yield the CPU to the ingress and proxy on this node (a replica is its own process)."""
        if nice > 0:
            with contextlib.suppress(OSError):  # not allowed here: run as is
                os.nice(nice)

    def niceness(self) -> int:
        """This replica's CPU niceness (diagnostics, tests)."""
        return os.nice(0)


class Vocoding(_Replica):
    """The vocoder's calls (``start``, ``process``, ``finish``) over ``self.stages``: the audio
    stage of each model served. Stateless between calls: the caller carries each stream's vocoder
    state from one call to the next, so any replica can take any chunk."""

    stages: dict[str, AudioStage]

    def _load_audio(self, addon_dirs: dict[str, str], device: str, batching: int) -> None:
        self.stages = {}
        for name, directory in addon_dirs.items():
            manifest = addons.read_manifest(Path(directory))
            self.stages[name] = AudioStage.load_from(Path(directory), manifest, addons.resolve_device(device), batching)
            self.stages[name].load()  # its weights, read before the first request

    async def _audio_stage(self, model: str) -> AudioStage:
        """``model``'s audio stage (a family replica loads it on first use)."""
        if model not in self.stages:
            raise KeyError(f"this vocoder does not serve {model!r}")
        return self.stages[model]

    async def start(self, model: str) -> dict[str, Any]:
        """A new stream: ``state``, as plain data (dicts of numpy arrays) the caller carries, and
        ``first_frames``, the mel the first :meth:`process` call needs to return audio."""
        stage = await self._audio_stage(model)
        return {"state": stage.pack(stage.start()), "first_frames": stage.first_frames}

    async def process(
        self,
        model: str,
        state: dict[str, Any],
        mel: np.ndarray,
        options: Mapping[str, Any],
        deadline: float | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The audio of ``mel`` that is now final, and the new state; ``deadline`` ranks the work."""
        stage = await self._audio_stage(model)
        live = stage.unpack(state)
        audio = await self._in_thread(stage.process, live, mel, Request(options=options), deadline=deadline)
        return audio, stage.pack(live)

    async def finish(self, model: str, state: dict[str, Any], options: Mapping[str, Any]) -> np.ndarray:
        stage = await self._audio_stage(model)
        return await self._in_thread(stage.finish, stage.unpack(state), Request(options=options))


class Encoding(_Replica):
    """The SequenceBlock side of one addon: a sentence's text -> its phoneme ids -> features.

    Concurrent requests are batched into one padded pass (``@serve.batch``).
    """

    def __init__(self, addon_dir: str, context: str = "dynamic", device: str = "auto", nice: int = 0) -> None:
        self._lower_priority(nice)
        self.stage = addons.load(Path(addon_dir), context=context, device=device, stages=["encoders"]).encoders
        self.stage.load()  # its own weights (and only those), read before the first request

    async def _encoders(self) -> EncoderStage:
        """The stage this request is for (a family replica loads its voice on first use)."""
        return self.stage

    async def encode(self, sentence: str, options: Mapping[str, Any] | None = None) -> list[dict[str, np.ndarray]]:
        """Features for each speakable part of ``sentence`` ([] if nothing in it is speakable), with
        the part's text description (keys ``text.*``, for speech marks; not for the decoder)."""
        try:
            stage = await self._encoders()
            lexicon, normalize = (options or {}).get("lexicon", ()), bool((options or {}).get("normalize", True))
            parts = await asyncio.to_thread(lambda: list(stage.sentences(sentence, lexicon, normalize)))
        except LexiconError:
            raise  # the request's own mistake: the ingress answers 400
        except addons.TextError:
            return []
        said = {k: (options or {}).get(k) for k in stage.option_keys}
        results: list[dict[str, np.ndarray]] = await asyncio.gather(
            *(self._encode_batched(_Sentence(stage, p.ids, said)) for p in parts)
        )
        # Beside each part's features, what speech marks need of its text (see addons.engine.marks).
        return [
            {**with_pauses(features, part), **sentence_arrays(part)}
            for features, part in zip(results, parts, strict=True)
        ]

    @serve.batch(max_batch_size=BATCH_SIZE, batch_wait_timeout_s=0.003)
    async def _encode_batched(self, batch: list[_Sentence]) -> list[dict[str, np.ndarray]]:
        return await asyncio.to_thread(self._encode_groups, batch)

    def _encode_groups(self, batch: list[_Sentence]) -> list[dict[str, np.ndarray]]:
        """One padded pass per voice and set of the options its encoders read (one pass for most batches)."""
        groups: dict[tuple[int, str], list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault((id(item.stage), repr(sorted(item.said.items()))), []).append(i)
        out: list[dict[str, np.ndarray]] = [{} for _ in batch]
        try:
            for members in groups.values():
                stage, said = batch[members[0]].stage, batch[members[0]].said
                assert stage is not None
                options = {k: v for k, v in said.items() if v is not None}
                encoded = stage.encode_batch([batch[i].ids for i in members], Request(options=options))
                for i, features in zip(members, encoded, strict=True):
                    out[i] = features
        finally:
            for item in batch:
                item.stage = None
        return out


class Decoding(Vocoding):
    """The StreamableBlock side of one addon: features -> a stream of mel chunks [F, n_mels].

    With ``vocoder``, the replica also holds its model's vocoder (the vocoder's calls, and
    :meth:`speak`: one sentence's audio in one streamed call, rather than a vocoder call per mel
    chunk through the ingress); see ``AppArgs.fused_vocoder``.
    """

    def __init__(
        self,
        addon_dir: str,
        context: str = "dynamic",
        device: str = "auto",
        batching: int = DEFAULT_BATCHING,
        nice: int = 0,
        vocoder: bool = False,
    ) -> None:
        self._lower_priority(nice)
        voice = addons.load(Path(addon_dir), context=context, device=device, batching=batching, stages=["decoder"])
        self.stage = voice.decoder
        self.stage.load()
        self._load_audio({voice.name: addon_dir} if vocoder else {}, device, batching)
        self.frame_s = voice.hop_length / voice.sample_rate
        self.active = 0  # streams in progress
        self.frames = 0  # mel frames produced since start

    @staticmethod
    def _out(pending: list[np.ndarray], tokens: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray | None]:
        return np.concatenate(pending), np.concatenate(tokens) if tokens else None

    async def _decoder(self) -> tuple[DecoderStage, float]:
        """The decoder stage this request is for and its frame period, seconds (a family replica
        loads its voice on first use)."""
        return self.stage, self.frame_s

    def stats(self) -> dict[str, int]:
        """This replica's streams in progress and frames produced (cancelled streams stop working)."""
        return {"active": self.active, "frames": self.frames, "pid": os.getpid()}

    async def decode(
        self,
        features: dict[str, np.ndarray],
        options: Mapping[str, Any],
        deadline: float | None = None,
        first_frames: int = 0,
        aligned: bool = False,
    ) -> AsyncIterator[Any]:
        """Mel chunks of one sentence, growing from the first chunk (at least MIN_MEL_CHUNK frames, and
        ``first_frames``, what the vocoder needs for its first audio: one round trip, not two) to
        MAX_MEL_CHUNK frames.

        ``options`` are resolved already (see ``addons.engine.options.resolve_options``). ``deadline``
        (Unix seconds) is when the listener's buffer runs dry at the start of this sentence
        (now, if nothing was heard yet); each chunk's network calls are ranked by it, plus the
        audio already produced, so streams ahead of playback yield to newer ones. ``aligned``: each
        chunk comes as ``{"mel": [F, n_mels], "tokens": [F] or None}``, the phoneme of each frame.
        """
        decoder, frame_s = await self._decoder()
        async for mel, tokens in self._chunks(decoder, frame_s, features, options, deadline, first_frames):
            yield {"mel": mel, "tokens": tokens} if aligned else mel

    async def speak(
        self,
        model: str,
        state: dict[str, Any],
        features: dict[str, np.ndarray],
        options: Mapping[str, Any],
        deadline: float | None = None,
        first_frames: int = 0,
    ) -> AsyncIterator[dict[str, Any]]:
        """One sentence's audio from ``features``, the vocoder stream continuing from ``state``
        (as :meth:`process` takes it): ``{"audio", "frames", "tokens"}`` per mel chunk as
        :meth:`decode` makes them (``tokens``: the phoneme of each frame, or None), and last
        ``{"state": ...}``, the vocoder's state after the sentence."""
        stage = await self._audio_stage(model)
        decoder, frame_s = await self._decoder()
        live = stage.unpack(state)
        start = time.time() if deadline is None else deadline
        produced = 0
        async for mel, tokens in self._chunks(decoder, frame_s, features, options, deadline, first_frames):
            when = start + produced * frame_s
            produced += len(mel)
            audio = await self._in_thread(stage.process, live, mel, Request(options=options), deadline=when)
            yield {"audio": audio, "frames": len(mel), "tokens": tokens}
        yield {"state": stage.pack(live)}

    async def _chunks(
        self,
        decoder: DecoderStage,
        frame_s: float,
        features: dict[str, np.ndarray],
        options: Mapping[str, Any],
        deadline: float | None,
        first_frames: int,
    ) -> AsyncIterator[tuple[np.ndarray, np.ndarray | None]]:
        """One sentence's mel in chunks growing from the first (see :meth:`decode`), each with
        its frames' phonemes (or None)."""
        chunks = decoder.decode_aligned(features, Request(options=options))
        start = time.time() if deadline is None else deadline
        pending: list[np.ndarray] = []
        held, produced, target = 0, 0, max(MIN_MEL_CHUNK, first_frames)
        tokens: list[np.ndarray] | None = []
        self.active += 1
        try:
            while True:
                item = await self._in_thread(next, chunks, None, deadline=start + produced * frame_s)
                if item is None:
                    break
                chunk, chunk_tokens = item
                self.frames += len(chunk)
                produced += len(chunk)
                pending.append(chunk)
                if tokens is not None and chunk_tokens is not None:
                    tokens.append(chunk_tokens)
                else:
                    tokens = None
                held += len(chunk)
                if held >= target:
                    yield self._out(pending, tokens)
                    pending, held, target = [], 0, min(2 * target, MAX_MEL_CHUNK)
                    tokens = [] if tokens is not None else None
            if pending:
                yield self._out(pending, tokens)
        finally:  # also on cancellation, when the client has gone
            self.active -= 1


@serve.deployment(**DEFAULTS["encoders"])
class EncodersDeployment(Encoding):
    """One addon's encoders (see :class:`Encoding`)."""


@serve.deployment(**DEFAULTS["decoder"])
class DecoderDeployment(Decoding):
    """One addon's decoder (see :class:`Decoding`)."""


@serve.deployment(**DEFAULTS["vocoder"])
class VocoderDeployment(Vocoding):
    """Mel -> audio for the addons it serves (the shared universal vocoder, or one addon's own)."""

    def __init__(
        self, addon_dirs: dict[str, str], device: str = "auto", batching: int = DEFAULT_BATCHING, nice: int = 0
    ) -> None:
        self._lower_priority(nice)
        self._load_audio(addon_dirs, device, batching)
