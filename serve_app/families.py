"""A voice family's deployments: one pool of replicas for many voices of one shape.

Each replica holds up to ``cap`` of the family's voices, loaded on first use and evicted least
recently used (Ray Serve's model multiplexing: the ingress sets ``multiplexed_model_id`` to the
voice's model name and Serve routes each request to a replica that already holds that voice
where one does). The methods are those of a single addon's deployments (:mod:`serve_app.deployments`),
so the ingress drives a family member exactly as it drives a single addon.

A voice is loaded in a worker thread, so a replica keeps serving its other voices meanwhile. An
evicted voice's networks stay alive until the streams still using it end; nothing is closed
under a stream. Before the next load the replica collects what eviction freed (Python's cyclic
garbage and the C heap's free pages), so a replica's memory follows the voices it holds, not the
voices it ever held. The voices of a replica share one batching probe per network (they have one
shape, so the answer is the same: a load reads weights and runs nothing) and one ONNX Runtime
arena (each session's own would keep the high-water mark of its largest batch). A voice whose files fail to load is refused with :class:`VoiceUnavailable`
naming it and the reason; the replica serves the others on, and a later request tries again.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ray import serve

import addons
from addons.engine.families import VoiceUnavailable
from addons.engine.stages import AudioStage, DecoderStage, EncoderStage
from serve_app.deployments import DEFAULT_BATCHING, DEFAULTS, Decoding, Encoding, Vocoding

__all__ = ["FamilyDecoder", "FamilyEncoders", "FamilyVocoder", "VoicePool"]

T = TypeVar("T")


def _trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc only; elsewhere nothing to do)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


class _Held(Generic[T]):
    """One loaded voice in a replica's pool; the multiplexer calls ``__del__`` when it evicts it."""

    def __init__(self, pool: VoicePool[T], name: str, stage: T) -> None:
        self.pool, self.name, self.stage = pool, name, stage

    def __del__(self) -> None:  # eviction (and garbage collection): bookkeeping only, nothing closed
        if self.pool.held.get(self.name) == id(self):  # not a later load of the same voice
            del self.pool.held[self.name]
            self.pool.evicted = True


class VoicePool(Generic[T]):
    """The family's voices this replica holds: at most ``cap``, loaded by ``load(name, directory)``."""

    def __init__(self, members: dict[str, str], cap: int, load: Callable[[str, Path], T]) -> None:
        self.members = members
        self.held: dict[str, int] = {}  # voice -> id of its entry in the multiplexer's cache
        self.loads = 0
        self.evicted = False  # a voice was let go since the last load
        self.alive: weakref.WeakSet[Any] = weakref.WeakSet()  # what loads returned, while still in memory
        self._load = load

        async def voice(name: str) -> _Held[T]:
            return await self._open(name)

        self._voice: Callable[[str], Coroutine[Any, Any, _Held[T]]] = serve.multiplexed(max_num_models_per_replica=cap)(
            voice
        )

    async def get(self, name: str) -> T:
        """The voice ``name``, loading it (and evicting the least recently used) if not held."""
        if name not in self.members:
            raise KeyError(f"this family does not serve {name!r}")
        return (await self._voice(name)).stage

    def warm_up(self, exercise: Callable[[T], object] | None = None) -> str | None:
        """Load one of the family's voices and let it go again, before the first request: what
        every load after it shares is then done (the batching probe, the runtimes' first
        initialization, espeak's), so a cold voice costs only its own load. Returns the voice
        used (None if none could be loaded: each request then reports its own error).
        ``exercise(stage)``: run it once too (first calls initialize what loading does not)."""
        for name in sorted(self.members):
            try:
                stage = self._load(name, Path(self.members[name]))
                if exercise is not None:
                    exercise(stage)
            except (addons.AddonError, addons.TextError, OSError):
                continue
            del stage
            gc.collect()
            _trim_heap()
            return name
        return None

    def _load_clean(self, name: str) -> T:
        if self.evicted:  # its networks sit in reference cycles until collected
            self.evicted = False
            gc.collect()
            _trim_heap()
        return self._load(name, Path(self.members[name]))

    async def _open(self, name: str) -> _Held[T]:
        try:
            stage = await asyncio.to_thread(self._load_clean, name)
        except addons.AddonError as exc:
            raise VoiceUnavailable(f"voice {name!r} cannot be loaded: {exc}") from None
        except OSError as exc:
            raise VoiceUnavailable(f"voice {name!r} cannot be loaded: {exc}") from None
        self.loads += 1
        self.alive.add(stage)
        held = _Held(self, name, stage)
        self.held[name] = id(held)
        return held


class _FamilyReplica:
    pool: VoicePool[Any]

    def voices(self) -> dict[str, Any]:
        """The voices this replica holds now, how many loads it has done and how many loaded voices
        are still in memory (held, or in use by a stream; diagnostics, tests)."""
        return {"held": sorted(self.pool.held), "loads": self.pool.loads, "alive": len(self.pool.alive)}


@serve.deployment(**DEFAULTS["encoders"])
class FamilyEncoders(_FamilyReplica, Encoding):
    """The encoders of a family's voices, ``cap`` per replica."""

    def __init__(
        self, members: dict[str, str], cap: int, context: str = "dynamic", device: str = "auto", nice: int = 0
    ) -> None:
        self._lower_priority(nice)
        addons.share_cpu_arena()

        def load(name: str, directory: Path) -> EncoderStage:
            stage = addons.load(directory, context=context, device=device, stages=["encoders"]).encoders
            stage.load()
            return stage

        self.pool = VoicePool(members, cap, load)
        self.pool.warm_up(lambda stage: [stage.encode(s.ids) for s in stage.sentences("Hello.")])

    async def _encoders(self) -> EncoderStage:
        return await self.pool.get(serve.get_multiplexed_model_id())  # type: ignore[no-any-return]


@dataclass(eq=False)  # held in a WeakSet: hashed by identity
class _DecoderVoice:
    decoder: DecoderStage
    frame_s: float  # seconds per decoder frame
    audio: AudioStage | None  # its waveform stage, where the decoder replica vocodes too


@serve.deployment(**DEFAULTS["decoder"])
class FamilyDecoder(_FamilyReplica, Decoding):
    """The decoders of a family's voices (and, with ``vocoder``, their waveform stages), ``cap`` per replica."""

    def __init__(
        self,
        members: dict[str, str],
        cap: int,
        context: str = "dynamic",
        device: str = "auto",
        batching: int = DEFAULT_BATCHING,
        nice: int = 0,
        vocoder: bool = False,
    ) -> None:
        self._lower_priority(nice)
        addons.share_cpu_arena()
        self.stages = {}
        self.active = 0
        self.frames = 0
        probes: dict[str, bool] = {}

        def load(name: str, directory: Path) -> _DecoderVoice:
            parts = ["decoder", "audio"] if vocoder else ["decoder"]
            voice = addons.load(
                directory, context=context, device=device, batching=batching, stages=parts, probes=probes
            )
            voice.decoder.load()
            if vocoder:
                voice.audio.load()
            return _DecoderVoice(voice.decoder, voice.hop_length / voice.sample_rate, voice.audio if vocoder else None)

        self.pool = VoicePool(members, cap, load)
        self.pool.warm_up()

    async def _decoder(self) -> tuple[DecoderStage, float]:
        held: _DecoderVoice = await self.pool.get(serve.get_multiplexed_model_id())
        return held.decoder, held.frame_s

    async def _audio_stage(self, model: str) -> AudioStage:
        held: _DecoderVoice = await self.pool.get(model)
        if held.audio is None:
            raise KeyError(f"this decoder does not vocode {model!r}")
        return held.audio


@serve.deployment(**DEFAULTS["vocoder"])
class FamilyVocoder(_FamilyReplica, Vocoding):
    """The waveform stages of a family's voices (their own vocoders), ``cap`` per replica."""

    def __init__(
        self, members: dict[str, str], cap: int, device: str = "auto", batching: int = DEFAULT_BATCHING, nice: int = 0
    ) -> None:
        self._lower_priority(nice)
        addons.share_cpu_arena()
        self.stages = {}
        probes: dict[str, bool] = {}

        def load(name: str, directory: Path) -> AudioStage:
            manifest = addons.read_manifest(directory)
            stage = AudioStage.load_from(directory, manifest, addons.resolve_device(device), batching, probes)
            stage.load()
            return stage

        self.pool = VoicePool(members, cap, load)
        self.pool.warm_up()

    async def _audio_stage(self, model: str) -> AudioStage:
        return await self.pool.get(model)  # type: ignore[no-any-return]
