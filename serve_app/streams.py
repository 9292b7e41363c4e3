"""How the ingress pulls one utterance through an addon's stage deployments, surviving a lost replica.

Synthesis is deterministic: the same features, options and vocoder state give the same audio on
any replica. So when a replica dies under a stream (its process killed, its node gone), the
stream does not have to die with it. Stateless calls (encode, one vocoder step) are simply
repeated, and Ray routes them to a live replica. The decoder's mel stream for a sentence is
restarted from that sentence's features, with the vocoder state as it was when the sentence
began, and the samples this sentence already sent are skipped: the listener hears one complete,
seamless utterance, exactly the audio an undisturbed run gives. After ``MAX_RESUMES`` losses in
one stream, or on any other error, the stream fails as before (visibly broken, never short).

Only plain data is held here: numpy features, the vocoder's packed state, sample counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import ReplicaUnavailableError

from addons.marks import MarkTracker, SpeechMark, split_text_features

__all__ = ["LOST_REPLICA", "MAX_RESUMES", "NoSpeakableText", "StageHandles", "synthesize"]

logger = logging.getLogger("ray.serve")

#: What a handle call raises when the replica serving it is gone.
LOST_REPLICA = (RayActorError, ActorDiedError, ActorUnavailableError, ReplicaUnavailableError)
MAX_RESUMES = 3
RETRY_DELAY_S = 0.05

T = TypeVar("T")


class NoSpeakableText(ValueError):
    """Every sentence of the input was empty after the front-end (nothing to say)."""


@dataclass(frozen=True)
class StageHandles:
    """The three deployment handles of one model."""

    encoders: Any
    decoder: Any
    vocoder: Any


@dataclass
class _Resumes:
    """Replica losses one stream has survived; ``on_resume`` reports each (metrics, logs)."""

    used: int = 0
    on_resume: Callable[[str], None] | None = None

    def spend(self, stage: str, exc: BaseException) -> None:
        self.used += 1
        if self.used > MAX_RESUMES:
            raise exc
        logger.warning(
            "chorus: %s replica lost (%s); resuming the stream (%d/%d)",
            stage,
            type(exc).__name__,
            self.used,
            MAX_RESUMES,
        )
        if self.on_resume is not None:
            self.on_resume(stage)


async def _call(resumes: _Resumes, stage: str, make: Callable[[], Awaitable[T]]) -> T:
    """Await ``make()``; on a lost replica, make the same call again (another replica takes it)."""
    while True:
        try:
            return await make()
        except LOST_REPLICA as exc:
            resumes.spend(stage, exc)
            await asyncio.sleep(RETRY_DELAY_S)


async def synthesize(
    handles: StageHandles,
    model: str,
    sentences: Iterable[str] | AsyncIterable[str],
    options: dict[str, Any],
    sample_rate: int,
    on_resume: Callable[[str], None] | None = None,
    marks: MarkTracker | None = None,
    on_marks: Callable[[list[SpeechMark]], None] | None = None,
) -> AsyncIterator[np.ndarray]:
    """Audio chunks for ``sentences``, one vocoder stream across them; the next sentence is encoded
    while this one is decoded. ``sentences`` may arrive over time (an async iterable: text a client
    is still writing); the stream ends when they do. With ``marks``, each sentence's speech marks
    go to ``on_marks`` once its mel is complete (before the audio that follows it)."""
    source = _async_iter(sentences)
    stream = _Stream(handles, model, options, _Resumes(on_resume=on_resume), sample_rate, marks, on_marks)
    first = await anext(source, None)
    if first is None:
        raise NoSpeakableText("input has no speakable characters")
    pending: asyncio.Future[list[dict[str, np.ndarray]] | None] | None = asyncio.ensure_future(_encoded(stream, first))
    await stream.start()
    spoken = False
    try:
        while pending is not None:
            features_list = await pending
            if features_list is None:  # the sentences have ended
                break
            # The next sentence is read (it may still be on its way) and encoded meanwhile.
            pending = asyncio.ensure_future(_next_encoded(stream, source))
            for features in features_list:
                spoken = True
                async for audio in stream.sentence(features):
                    yield audio
    finally:
        if pending is not None:
            pending.cancel()
    if not spoken:
        raise NoSpeakableText("input has no speakable characters")
    tail = await stream.finish()
    if tail.size:
        yield stream.sent(tail)


async def _async_iter(sentences: Iterable[str] | AsyncIterable[str]) -> AsyncIterator[str]:
    if isinstance(sentences, AsyncIterable):
        async for sentence in sentences:
            yield sentence
    else:
        for sentence in sentences:
            yield sentence


async def _encoded(stream: _Stream, sentence: str) -> list[dict[str, np.ndarray]] | None:
    return await stream.encoding(sentence)


async def _next_encoded(stream: _Stream, source: AsyncIterator[str]) -> list[dict[str, np.ndarray]] | None:
    sentence = await anext(source, None)
    return None if sentence is None else await stream.encoding(sentence)


class _Stream:
    """One utterance's position: the vocoder state it carries between calls, and its playback clock."""

    def __init__(
        self,
        handles: StageHandles,
        model: str,
        options: dict[str, Any],
        resumes: _Resumes,
        sample_rate: int,
        marks: MarkTracker | None = None,
        on_marks: Callable[[list[SpeechMark]], None] | None = None,
    ) -> None:
        self.handles, self.model, self.options, self.resumes = handles, model, options, resumes
        self.sample_rate = sample_rate
        self.marks, self.on_marks = marks, on_marks
        self.state: Any = None
        self.first_frames = 0  # mel the vocoder needs for its first audio: the decoder's first chunk
        self.first_audio: float | None = None  # Unix time the listener got the first samples
        self.samples = 0  # samples sent so far

    def deadline(self) -> float | None:
        """When the listener's buffer runs dry (Unix seconds); None before any audio: now."""
        return None if self.first_audio is None else self.first_audio + self.samples / self.sample_rate

    def sent(self, audio: np.ndarray) -> np.ndarray:
        if self.first_audio is None:
            self.first_audio = time.time()
        self.samples += audio.size
        return audio

    def encoding(self, sentence: str) -> asyncio.Future[list[dict[str, np.ndarray]]]:
        encode, options = self.handles.encoders.encode, self.options
        return asyncio.ensure_future(_call(self.resumes, "encoders", lambda: encode.remote(sentence, options)))

    async def start(self) -> None:
        vocoder = self.handles.vocoder
        started = await _call(self.resumes, "vocoder", lambda: vocoder.start.remote(self.model))
        self.state, self.first_frames = started["state"], int(started["first_frames"])

    async def finish(self) -> np.ndarray:
        vocoder, state = self.handles.vocoder, self.state
        tail: np.ndarray = await _call(
            self.resumes, "vocoder", lambda: vocoder.finish.remote(self.model, state, self.options)
        )
        return tail

    async def sentence(self, features: dict[str, np.ndarray]) -> AsyncIterator[np.ndarray]:
        """One sentence's audio. A lost decoder replica restarts the sentence from the vocoder state
        it began with; the samples already sent are skipped, so the output is exactly the same."""
        features, text = split_text_features(features)
        aligned = self.marks is not None
        if self.marks is not None:
            self.marks.sentence_text(text)
        begin = self.state  # packed plain data: process() returns a new state, never mutates this one
        sent = 0
        while True:
            self.state, produced = begin, 0
            if self.marks is not None:
                self.marks.restart()
            try:
                decode = self.handles.decoder.decode.options(stream=True)
                async for item in decode.remote(features, self.options, self.deadline(), self.first_frames, aligned):
                    mel = item["mel"] if aligned else item
                    if self.marks is not None:
                        self.marks.frames(item["tokens"], len(mel))
                    audio = await self._vocode(mel)
                    skip = min(max(sent - produced, 0), audio.size)
                    produced += audio.size
                    if audio.size > skip:
                        sent += audio.size - skip
                        yield self.sent(audio[skip:])
                break
            except LOST_REPLICA as exc:
                self.resumes.spend("decoder", exc)
                await asyncio.sleep(RETRY_DELAY_S)
        if self.marks is not None and self.on_marks is not None:
            self.on_marks(self.marks.end())

    async def _vocode(self, mel: np.ndarray) -> np.ndarray:
        vocoder, state, deadline = self.handles.vocoder, self.state, self.deadline()
        audio, self.state = await _call(
            self.resumes, "vocoder", lambda: vocoder.process.remote(self.model, state, mel, self.options, deadline)
        )
        return audio  # type: ignore[no-any-return]
