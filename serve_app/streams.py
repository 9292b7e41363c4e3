"""The driver's ports over an addon's stage deployments, and the ingress's call of the driver.

The synthesis loop is :func:`addons.engine.driver.speak`, the same one ``Voice.stream`` runs in
process; here its three ports wrap Ray Serve handles. Synthesis is deterministic: the same
features, options and vocoder state give the same audio on any replica. So when a replica dies
under a stream (its process killed, its node gone), the stream does not have to die with it.
Stateless calls (encode, one vocoder step) are simply repeated, and Ray routes them to a live
replica; a lost decoder stream is reported to the driver as ``StageLost``, and the driver says the
sentence again from its features, skipping what the listener already has. After ``addons.engine.driver.MAX_RESUMES``
losses in one stream, or on any other error, the stream fails as before (visibly broken, never short).

Only plain data crosses: numpy features, the vocoder's packed state, sample counts.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import ReplicaUnavailableError

from addons.engine.driver import (
    Item,
    NoSpeakableText,
    Ports,
    Resumes,
    StageLost,
    UtterancePlan,
    speak,
)
from addons.engine.marks import MarkTracker, SpeechMark
from addons.engine.stages import PlainFeatures
from blocks import MelSettings

__all__ = [
    "LOST_REPLICA",
    "NoSpeakableText",
    "StageHandles",
    "UtterancePlan",
    "remote_ports",
    "synthesize",
]

#: What a handle call raises when the replica serving it is gone.
LOST_REPLICA = (RayActorError, ActorDiedError, ActorUnavailableError, ReplicaUnavailableError)

Options = Mapping[str, Any]


@dataclass(frozen=True)
class StageHandles:
    """The three deployment handles of one model. ``fused``: the decoder also vocodes (its
    ``speak`` streams a sentence's audio) and ``vocoder`` is the decoder's handle."""

    encoders: Any
    decoder: Any
    vocoder: Any
    fused: bool = False


@dataclass(frozen=True)
class _RemoteEncode:
    handle: Any
    resumes: Resumes

    async def encode(self, sentence: str, options: Options) -> list[PlainFeatures]:
        encode = self.handle.encode
        result: list[PlainFeatures] = await self.resumes.retry(
            "encoders", LOST_REPLICA, lambda: encode.remote(sentence, options)
        )
        return result


@dataclass(frozen=True)
class _RemoteDecode:
    handle: Any

    async def decode(
        self, features: PlainFeatures, options: Options, deadline: float | None, first_frames: int, aligned: bool
    ) -> AsyncIterator[tuple[np.ndarray, np.ndarray | None]]:
        decode = self.handle.decode.options(stream=True)
        try:
            async for item in decode.remote(features, options, deadline, first_frames, aligned):
                yield (item["mel"], item["tokens"]) if aligned else (item, None)
        except LOST_REPLICA as exc:
            raise StageLost("decoder", exc) from exc


@dataclass(frozen=True)
class _RemoteWaveform:
    handle: Any
    model: str
    resumes: Resumes

    async def start(self) -> tuple[Any, int]:
        vocoder = self.handle
        started = await self.resumes.retry("vocoder", LOST_REPLICA, lambda: vocoder.start.remote(self.model))
        return started["state"], int(started["first_frames"])

    async def process(
        self, state: Any, mel: np.ndarray, options: Options, deadline: float | None
    ) -> tuple[np.ndarray, Any]:
        vocoder = self.handle
        result: tuple[np.ndarray, Any] = await self.resumes.retry(
            "vocoder", LOST_REPLICA, lambda: vocoder.process.remote(self.model, state, mel, options, deadline)
        )
        return result

    async def finish(self, state: Any, options: Options) -> np.ndarray:
        vocoder = self.handle
        tail: np.ndarray = await self.resumes.retry(
            "vocoder", LOST_REPLICA, lambda: vocoder.finish.remote(self.model, state, options)
        )
        return tail


@dataclass(frozen=True)
class _RemoteFused:
    handle: Any
    model: str

    async def speak(
        self, state: Any, features: PlainFeatures, options: Options, deadline: float | None, first_frames: int
    ) -> AsyncIterator[tuple[np.ndarray | None, int, np.ndarray] | dict[str, Any]]:
        call = self.handle.speak.options(stream=True)
        try:
            async for item in call.remote(self.model, state, features, options, deadline, first_frames):
                yield item if "state" in item else (item["tokens"], int(item["frames"]), item["audio"])
        except LOST_REPLICA as exc:
            raise StageLost("decoder", exc) from exc


def remote_ports(handles: StageHandles, model: str, mel: MelSettings, resumes: Resumes) -> Ports:
    """The driver's ports over one model's deployments; stateless calls retry on a lost replica,
    spending from ``resumes``."""
    return Ports(
        _RemoteEncode(handles.encoders, resumes),
        _RemoteDecode(handles.decoder),
        _RemoteWaveform(handles.vocoder, model, resumes),
        mel,
        _RemoteFused(handles.decoder, model) if handles.fused else None,
    )


async def synthesize(
    handles: StageHandles,
    model: str,
    plan: Iterable[Item] | AsyncIterable[Item],
    options: Options,
    mel: MelSettings,
    on_resume: Callable[[str], None] | None = None,
    marks: MarkTracker | None = None,
    on_marks: Callable[[list[SpeechMark]], None] | None = None,
) -> AsyncIterator[np.ndarray]:
    """Audio chunks for ``plan`` (an :class:`UtterancePlan`, or sentences a client is still
    writing) through the driver over ``handles``. With ``marks``, each sentence's speech marks go to
    ``on_marks`` once its mel is complete (before the audio that follows it)."""
    resumes = Resumes(on_resume=on_resume)
    ports = remote_ports(handles, model, mel, resumes)
    async for spoken in speak(plan, ports, options, marks=marks, resumes=resumes):
        if spoken.marks and on_marks is not None:
            on_marks(list(spoken.marks))
        if spoken.audio.size:
            yield spoken.audio
