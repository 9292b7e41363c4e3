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

from addons.engine.marks import MarkTracker, SpeechMark, split_text_features
from addons.text.frontend import Frontend
from addons.text.ssml import Part, Pause, pause_frames

__all__ = ["LOST_REPLICA", "MAX_RESUMES", "NoSpeakableText", "Say", "StageHandles", "sayings", "synthesize"]

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
    """The three deployment handles of one model. ``fused``: the decoder also vocodes (its
    ``speak`` streams a sentence's audio) and ``vocoder`` is the decoder's handle."""

    encoders: Any
    decoder: Any
    vocoder: Any
    fused: bool = False


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


@dataclass(frozen=True)
class Say:
    """One sentence to say; ``options``: the resolved options it is said with (None: the
    stream's); ``part``: the SSML part (see ``addons.text.ssml``) it is the first sentence of, and
    ``ends_part``: whether it is that part's last (speech marks follow parts)."""

    text: str
    options: dict[str, Any] | None = None
    part: Part | None = None
    ends_part: bool = False


Item = str | Say | Pause


def sayings(script: Iterable[Part | Pause], options: dict[str, Any]) -> list[Say | Pause]:
    """A script (``addons.engine.stages.script_of``) as the sentences and pauses the ingress sends, each
    sentence with its part's options. Raises ``SSMLError`` when a part's rate is out of range."""
    items: list[Say | Pause] = []
    for item in script:
        if isinstance(item, Pause):
            items.append(item)
            continue
        said = item.options(options)
        sentences = Frontend.split_sentences(Frontend.normalize(item.text))
        for i, sentence in enumerate(sentences):
            items.append(Say(sentence, said, item if i == 0 else None, i == len(sentences) - 1))
    return items


async def synthesize(
    handles: StageHandles,
    model: str,
    sentences: Iterable[Item] | AsyncIterable[Item],
    options: dict[str, Any],
    sample_rate: int,
    on_resume: Callable[[str], None] | None = None,
    marks: MarkTracker | None = None,
    on_marks: Callable[[list[SpeechMark]], None] | None = None,
    hop_length: int = 256,
) -> AsyncIterator[np.ndarray]:
    """Audio chunks for ``sentences``, one vocoder stream across them; the next sentence is encoded
    while this one is decoded. ``sentences`` may arrive over time (an async iterable: text a client
    is still writing); the stream ends when they do. Each is a sentence's text, a :class:`Say`
    (a sentence with its own options), or a :class:`Pause` (exact silence; the vocoder's stream is
    finished before it and started after it, as at a change of gain). With ``marks``, each
    sentence's speech marks go to ``on_marks`` once its mel is complete (before the audio that
    follows it)."""
    source = _async_iter(sentences)
    resumes = _Resumes(on_resume=on_resume)
    stream = _Stream(handles, model, options, resumes, sample_rate, hop_length, marks, on_marks)
    first = await anext(source, None)
    if first is None:
        raise NoSpeakableText("input has no speakable characters")
    pending: asyncio.Future[tuple[Say | Pause, list[dict[str, np.ndarray]]] | None] | None
    pending = asyncio.ensure_future(_prepared(stream, first))
    await stream.start()
    try:
        while pending is not None:
            prepared = await pending
            if prepared is None:  # the sentences have ended
                break
            # The next sentence is read (it may still be on its way) and encoded meanwhile.
            pending = asyncio.ensure_future(_next_prepared(stream, source))
            item, features_list = prepared
            said = stream.pause(item) if isinstance(item, Pause) else stream.say(item, features_list)
            async for audio in said:
                yield audio
    finally:
        if pending is not None:
            pending.cancel()
    if not stream.spoken:
        raise NoSpeakableText("input has no speakable characters")
    tail = await stream.finish()
    if tail.size:
        yield stream.sent(tail)


async def _async_iter(sentences: Iterable[Item] | AsyncIterable[Item]) -> AsyncIterator[Item]:
    if isinstance(sentences, AsyncIterable):
        async for sentence in sentences:
            yield sentence
    else:
        for sentence in sentences:
            yield sentence


async def _prepared(stream: _Stream, item: Item) -> tuple[Say | Pause, list[dict[str, np.ndarray]]] | None:
    if isinstance(item, Pause):
        return item, []
    say = item if isinstance(item, Say) else Say(item)
    return say, await stream.encoding(say.text, stream.options_of(say))


async def _next_prepared(
    stream: _Stream, source: AsyncIterator[Item]
) -> tuple[Say | Pause, list[dict[str, np.ndarray]]] | None:
    item = await anext(source, None)
    return None if item is None else await _prepared(stream, item)


class _Stream:
    """One utterance's position: the vocoder state it carries between calls, and its playback clock."""

    def __init__(
        self,
        handles: StageHandles,
        model: str,
        options: dict[str, Any],
        resumes: _Resumes,
        sample_rate: int,
        hop_length: int,
        marks: MarkTracker | None = None,
        on_marks: Callable[[list[SpeechMark]], None] | None = None,
    ) -> None:
        self.handles, self.model, self.options, self.resumes = handles, model, options, resumes
        self.sample_rate, self.hop_length = sample_rate, hop_length
        self.marks, self.on_marks = marks, on_marks
        self.state: Any = None
        self.fresh = True  # nothing has gone through the vocoder's stream since it started
        self.segment = options  # the options the vocoder's stream is said with (its gain)
        self.spoken = False
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

    def options_of(self, say: Say) -> dict[str, Any]:
        return say.options if say.options is not None else self.options

    def encoding(self, sentence: str, options: dict[str, Any]) -> asyncio.Future[list[dict[str, np.ndarray]]]:
        encode = self.handles.encoders.encode
        return asyncio.ensure_future(_call(self.resumes, "encoders", lambda: encode.remote(sentence, options)))

    async def start(self) -> None:
        vocoder = self.handles.vocoder
        started = await _call(self.resumes, "vocoder", lambda: vocoder.start.remote(self.model))
        self.state, self.first_frames = started["state"], int(started["first_frames"])
        self.fresh = True

    async def finish(self) -> np.ndarray:
        vocoder, state, options = self.handles.vocoder, self.state, self.segment
        tail: np.ndarray = await _call(
            self.resumes, "vocoder", lambda: vocoder.finish.remote(self.model, state, options)
        )
        return tail

    async def boundary(self) -> AsyncIterator[np.ndarray]:
        """End the vocoder's stream here (its held-back audio) and start a new one."""
        if self.fresh:
            return
        tail = await self.finish()
        if tail.size:
            yield self.sent(tail)
        await self.start()

    async def pause(self, pause: Pause) -> AsyncIterator[np.ndarray]:
        """Exact silence, a whole number of frames; the marks at its start reported first."""
        frames = pause_frames(pause.ms, self.sample_rate, self.hop_length)
        if self.marks is not None and (heard := self.marks.pause(frames, pause.marks)) and self.on_marks is not None:
            self.on_marks(heard)
        if frames:
            async for audio in self.boundary():
                yield audio
            yield self.sent(np.zeros(frames * self.hop_length, dtype=np.float32))

    async def say(self, say: Say, features_list: list[dict[str, np.ndarray]]) -> AsyncIterator[np.ndarray]:
        """One sentence (as the encoders split it), said with its own options."""
        options = self.options_of(say)
        if self.marks is not None and say.part is not None:
            part = say.part
            self.marks.part(part.text, part.spans, part.written, part.marks)
        if not self.fresh and options.get("gain_db") != self.segment.get("gain_db"):
            async for audio in self.boundary():
                yield audio
        if self.fresh:
            self.segment = options
        for features in features_list:
            self.spoken = True
            async for audio in self.sentence(features, options):
                yield audio
        if self.marks is not None and say.ends_part and (heard := self.marks.part_end()) and self.on_marks is not None:
            self.on_marks(heard)

    async def sentence(self, features: dict[str, np.ndarray], options: dict[str, Any]) -> AsyncIterator[np.ndarray]:
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
                async for tokens, frames, audio in self._sentence_audio(features, options, aligned):
                    if self.marks is not None:
                        self.marks.frames(tokens, frames)
                    self.fresh = False
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

    async def _sentence_audio(
        self, features: dict[str, np.ndarray], options: dict[str, Any], aligned: bool
    ) -> AsyncIterator[tuple[np.ndarray | None, int, np.ndarray]]:
        """``(tokens, frames, audio)`` per mel chunk of one sentence, ``self.state`` carried on:
        mel streamed from the decoder and each chunk sent to the vocoder, or, fused, the audio
        streamed from the decoder in one call (its last item the vocoder's state)."""
        if self.handles.fused:
            speak = self.handles.decoder.speak.options(stream=True)
            async for item in speak.remote(
                self.model, self.state, features, options, self.deadline(), self.first_frames
            ):
                if "state" in item:
                    self.state = item["state"]
                else:
                    yield item["tokens"], int(item["frames"]), item["audio"]
            return
        decode = self.handles.decoder.decode.options(stream=True)
        async for item in decode.remote(features, options, self.deadline(), self.first_frames, aligned):
            mel = item["mel"] if aligned else item
            yield (item["tokens"] if aligned else None), len(mel), await self._vocode(mel, options)

    async def _vocode(self, mel: np.ndarray, options: dict[str, Any]) -> np.ndarray:
        vocoder, state, deadline = self.handles.vocoder, self.state, self.deadline()
        audio, self.state = await _call(
            self.resumes, "vocoder", lambda: vocoder.process.remote(self.model, state, mel, options, deadline)
        )
        return audio  # type: ignore[no-any-return]
