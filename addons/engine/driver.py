"""The one synthesis loop: an utterance's plan said through three ports (encode, decode, waveform).

Every path runs it: ``Voice.stream`` in process (a synchronous adapter, :func:`run_sync`), ``chorus
synth``, the HTTP ingress and the WebSocket (``serve_app.streams``). What differs between them is
only where the stages sit, and that is the ports':

========== ======================================================== =================================
port       call                                                     in process / on a server
========== ======================================================== =================================
encode     ``encode(sentence, options)`` -> features per sentence    the encoders stage / its replica
decode     ``decode(features, options, ...)`` -> mel chunks          the decoder stage / its replica
waveform   ``start()``, ``process(state, mel)``, ``finish(state)``   the audio stage / the vocoder
========== ======================================================== =================================

(:func:`local_ports` builds them over an addon's stages; ``serve_app.streams`` over Ray handles.
A decoder replica that also vocodes offers :class:`FusedPort` instead of decode plus waveform.)

The rules exist here once:

- **Plan.** :class:`UtterancePlan` is built once from text or SSML: sentences, each with the
  options of its part (rate, volume, lexicon), the parts' mark anchors, and pauses.
- **Pauses and gain.** A pause is exact silence of whole mel frames; the waveform's stream is
  finished before it and started after it, as at a change of gain, so the audio after a break is
  exactly that text's audio said alone and a gain applies to exactly its part.
- **Look-ahead.** The next sentence is encoded while this one is said. With ``ahead`` > 0 the mel
  side (encode, decode) runs as its own task up to ``ahead`` chunks before the waveform, so the two
  share a machine's cores; the output is the same, to the bit.
- **Resume.** A port that loses its stage mid-sentence raises :class:`StageLost`. Synthesis is
  deterministic, so the sentence is decoded again from its features and the frames already said
  are skipped (a fused port: the waveform state it began with is restored and the samples already
  sent are skipped). The listener hears exactly the undisturbed audio. :class:`Resumes` bounds how
  many losses one stream survives.
- **Marks.** Sentences travel as text features (:func:`addons.engine.marks.sentence_arrays`), so
  speech marks are found the same way wherever the encoders ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol, TypeVar

import numpy as np

from addons.engine.marks import MarkTracker, SpeechMark, sentence_arrays, split_text_features
from addons.engine.stages import AudioStage, DecoderStage, EncoderStage, PlainFeatures, silent_mel, with_pauses
from addons.text.frontend import Frontend, LexiconError, TextError
from addons.text.ssml import Part, Pause, pause_frames, script_of
from blocks import MelSettings, Request

__all__ = [
    "MAX_RESUMES",
    "DecodePort",
    "EncodePort",
    "FusedPort",
    "Item",
    "NoSpeakableText",
    "Ports",
    "Resumes",
    "Say",
    "Spoken",
    "StageLost",
    "UtterancePlan",
    "WaveformPort",
    "local_ports",
    "run_sync",
    "speak",
]

logger = logging.getLogger("chorus")

#: Stage losses one stream survives (retried calls and resumed sentences together).
MAX_RESUMES = 3
RETRY_DELAY_S = 0.05

T = TypeVar("T")
Options = Mapping[str, Any]


class NoSpeakableText(TextError):
    """Every sentence of the input was empty after the front end (nothing to say)."""


class StageLost(Exception):
    """A port's stage went away in the middle of a call (its process killed, its node gone);
    ``cause`` is what the port saw. The driver resumes (see the module's notes)."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage} lost: {type(cause).__name__}")
        self.stage, self.cause = stage, cause


@dataclasses.dataclass
class Resumes:
    """Stage losses one stream has survived; ``on_resume`` reports each (metrics, logs). Past
    :data:`MAX_RESUMES`, the loss's own error is raised and the stream fails visibly."""

    used: int = 0
    on_resume: Callable[[str], None] | None = None
    limit: int = MAX_RESUMES

    def spend(self, stage: str, exc: BaseException) -> None:
        self.used += 1
        if self.used > self.limit:
            raise exc
        logger.warning(
            "chorus: %s lost (%s); resuming the stream (%d/%d)", stage, type(exc).__name__, self.used, self.limit
        )
        if self.on_resume is not None:
            self.on_resume(stage)

    async def retry(self, stage: str, lost: tuple[type[BaseException], ...], make: Callable[[], Awaitable[T]]) -> T:
        """Await ``make()``; when it raises one of ``lost``, make the same call again (another
        replica takes it): for calls that hold no state between them."""
        while True:
            try:
                return await make()
            except lost as exc:
                self.spend(stage, exc)
                await asyncio.sleep(RETRY_DELAY_S)


# -- the plan ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Say:
    """One sentence to say; ``options``: the resolved options it is said with (None: the
    stream's); ``part``: the SSML part (see ``addons.text.ssml``) it is the first sentence of, and
    ``ends_part``: whether it is that part's last (speech marks follow parts)."""

    text: str
    options: Options | None = None
    part: Part | None = None
    ends_part: bool = False


Item = str | Say | Pause


@dataclasses.dataclass(frozen=True)
class UtterancePlan:
    """What one utterance says, decided once: sentences (each with its part's options and mark
    anchors) and pauses, in order. Iterating it gives the items :func:`speak` takes."""

    items: tuple[Say | Pause, ...]

    @classmethod
    def of(cls, text: str, options: Options) -> UtterancePlan:
        """The plan of ``text`` (SSML when ``options["input_format"]`` says so or its root is
        ``<speak>``). Raises ``TextError`` for empty text, ``SSMLError`` on bad markup or a part's
        rate out of range."""
        if not Frontend.normalize(text):
            raise TextError("text is empty")
        return cls.of_script(script_of(text, str(options.get("input_format", "text"))), options)

    @classmethod
    def of_script(cls, script: Iterable[Part | Pause], options: Options) -> UtterancePlan:
        items: list[Say | Pause] = []
        for item in script:
            if isinstance(item, Pause):
                items.append(item)
                continue
            said = item.options(options)
            sentences = Frontend.split_sentences(Frontend.normalize(item.text))
            for i, sentence in enumerate(sentences):
                items.append(Say(sentence, said, item if i == 0 else None, i == len(sentences) - 1))
        return cls(tuple(items))

    def __iter__(self) -> Iterator[Say | Pause]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


# -- the ports ----------------------------------------------------------------------------------------------
class EncodePort(Protocol):
    async def encode(self, sentence: str, options: Options) -> list[PlainFeatures]:
        """Features for each speakable sentence the front end finds in ``sentence`` ([] if none),
        each with its text description (``text.*`` keys, :func:`addons.engine.marks.sentence_arrays`).
        Raises ``LexiconError`` for the request's own bad pronunciations."""
        ...


class DecodePort(Protocol):
    def decode(
        self, features: PlainFeatures, options: Options, deadline: float | None, first_frames: int, aligned: bool
    ) -> AsyncIterator[tuple[np.ndarray, np.ndarray | None]]:
        """One sentence's mel chunks ``[F, n_mels]``, each with its frames' phoneme indices (or
        None); ``deadline``: when the listener's buffer runs dry (Unix seconds; None: now);
        ``first_frames``: what the waveform needs for its first audio."""
        ...


class WaveformPort(Protocol):
    async def start(self) -> tuple[Any, int]:
        """A new stream: its state, and the mel frames the first ``process`` needs to give audio."""
        ...

    async def process(
        self, state: Any, mel: np.ndarray, options: Options, deadline: float | None
    ) -> tuple[np.ndarray, Any]:
        """The audio of ``mel`` that is now final, and the state after it (a port that may lose its
        stage returns a new state and leaves ``state`` as it was)."""
        ...

    async def finish(self, state: Any, options: Options) -> np.ndarray:
        """The audio held back at the end of the stream."""
        ...


class FusedPort(Protocol):
    def speak(
        self, state: Any, features: PlainFeatures, options: Options, deadline: float | None, first_frames: int
    ) -> AsyncIterator[tuple[np.ndarray | None, int, np.ndarray] | dict[str, Any]]:
        """One sentence decoded and vocoded in one call: ``(tokens, frames, audio)`` per chunk,
        last ``{"state": ...}``, the waveform state after the sentence."""
        ...


@dataclasses.dataclass(frozen=True)
class Ports:
    """Where one addon's stages are. ``fused``: the decoder also vocodes (``waveform`` still starts
    and finishes the stream); ``waveform`` None: mel only. ``mel``: the addon's mel settings."""

    encode: EncodePort
    decode: DecodePort
    waveform: WaveformPort | None
    mel: MelSettings
    fused: FusedPort | None = None
    worker: int = 0


# -- what the driver yields -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Spoken:
    """One step of :func:`speak`: ``audio`` now final (may be empty); with ``with_mel``, the
    ``mel`` just decoded (a break's silent mel included) and its ``sentence``; ``marks`` that
    became known (they come before the audio that follows them)."""

    audio: np.ndarray
    mel: np.ndarray | None = None
    sentence: int = -1
    marks: tuple[SpeechMark, ...] = ()


_EMPTY = np.zeros(0, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class _Event:
    """What the mel side hands the waveform side: ``say`` (a sentence of the plan starts),
    ``sentence`` (one the front end found in it starts; its text features, and its features when the
    port is fused), ``mel``, ``end`` (of that sentence), ``said`` (the plan's sentence is over) or
    ``pause``."""

    kind: str
    say: Say | None = None
    options: Options | None = None
    index: int = -1
    mel: np.ndarray | None = None
    tokens: np.ndarray | None = None
    features: PlainFeatures | None = None
    text: dict[str, np.ndarray] | None = None
    pause: Pause | None = None


_DONE = object()


async def speak(
    plan: Iterable[Item] | AsyncIterable[Item],
    ports: Ports,
    options: Options,
    *,
    marks: MarkTracker | None = None,
    resumes: Resumes | None = None,
    ahead: int = 0,
    with_mel: bool = False,
) -> AsyncIterator[Spoken]:
    """Say ``plan`` (an :class:`UtterancePlan`, or items still arriving: text a client is still
    writing) through ``ports`` with resolved ``options``, as one waveform stream.

    ``marks``: the tracker speech marks are found with (they come as :class:`Spoken` ``marks``).
    ``resumes``: the stream's budget of stage losses (the remote ports' retries spend from the
    same). ``ahead``: mel chunks the decoder may run before the waveform. Raises
    :class:`NoSpeakableText` when nothing in the plan can be said, ``LexiconError`` for bad
    pronunciations, ``SSMLError`` for a part's rate out of range.
    """
    stream = _Stream(ports, options, resumes or Resumes(), marks, with_mel)
    started = False
    if ports.worker > 0 and not isinstance(plan, AsyncIterable):
        # Ports in this process: the whole mel side (encode, decode) runs on in one worker thread, on a
        # loop of its own, up to ``ports.worker`` events ahead of the waveform in this thread.
        await stream.start()
        started = True
        events = _worker_stream(run_sync(stream.mel_side(_async_iter(plan))), ports.worker)
    else:
        events = stream.mel_side(_async_iter(plan))
        if ahead > 0:
            events = _ahead(events, ahead)
    try:
        async for spoken in stream.waveform_side(events, started):
            yield spoken
    finally:
        await _aclose(events)


class _Stream:
    """One utterance: the waveform state carried between calls and the listener's clock."""

    def __init__(self, ports: Ports, options: Options, resumes: Resumes, marks: MarkTracker | None, with_mel: bool):
        self.ports, self.options, self.resumes, self.marks, self.with_mel = ports, options, resumes, marks, with_mel
        self.mel = ports.mel
        self.state: Any = None
        self.first_frames = 0  # mel the waveform needs for its first audio: the decoder's first chunk
        self.starting: asyncio.Future[None] | None = None  # the waveform's first start
        self.fresh = True  # nothing has gone through the waveform's stream since it started
        self.segment: Options = options  # the options the waveform's stream is said with (its gain)
        self.spoken = 0  # sentences said
        self.first_audio: float | None = None  # Unix time the listener got the first samples
        self.samples = 0  # samples sent so far

    # -- the listener's clock ----------------------------------------------------------------------
    def deadline(self) -> float | None:
        """When the listener's buffer runs dry (Unix seconds); None before any audio: now."""
        return None if self.first_audio is None else self.first_audio + self.samples / self.mel.sample_rate

    def sent(self, audio: np.ndarray, **fields: Any) -> Spoken:
        if audio.size:
            if self.first_audio is None:
                self.first_audio = time.time()
            self.samples += audio.size
        return Spoken(audio, **fields)

    # -- the mel side: encode (a sentence ahead), decode ----------------------------------------------
    async def mel_side(self, items: AsyncIterator[Item]) -> AsyncIterator[_Event]:
        first = await anext(items, None)
        if first is None:
            raise NoSpeakableText("input has no speakable characters")
        pending: asyncio.Future[tuple[Say | Pause, list[PlainFeatures]] | None] | None
        pending = asyncio.ensure_future(self._prepared(first))
        try:
            if self.starting is not None:  # the decoder's first chunk is sized by what the waveform needs
                await asyncio.shield(self.starting)
            while pending is not None:
                prepared = await pending
                if prepared is None:  # the items have ended
                    break
                # The next item is read (it may still be on its way) and encoded meanwhile.
                pending = asyncio.ensure_future(self._next_prepared(items))
                item, features_list = prepared
                if isinstance(item, Pause):
                    yield _Event("pause", pause=item)
                    continue
                options = self._options(item)
                yield _Event("say", say=item, options=options)
                for features in features_list:
                    model, text = split_text_features(features)
                    index, self.spoken = self.spoken, self.spoken + 1
                    if self.ports.fused is not None:
                        yield _Event("sentence", index=index, text=text, features=model, options=options)
                        continue
                    yield _Event("sentence", index=index, text=text, options=options)
                    async for mel, tokens in self._decoded(model, options):
                        yield _Event("mel", index=index, mel=mel, tokens=tokens, options=options)
                    yield _Event("end", index=index)
                yield _Event("said", say=item)
        finally:
            if pending is not None:
                pending.cancel()
        if not self.spoken:
            raise NoSpeakableText("input has no speakable characters")

    def _options(self, say: Say) -> Options:
        return say.options if say.options is not None else self.options

    async def _prepared(self, item: Item) -> tuple[Say | Pause, list[PlainFeatures]] | None:
        if isinstance(item, Pause):
            return item, []
        say = item if isinstance(item, Say) else Say(item)
        return say, await self.ports.encode.encode(say.text, self._options(say))

    async def _next_prepared(self, items: AsyncIterator[Item]) -> tuple[Say | Pause, list[PlainFeatures]] | None:
        item = await anext(items, None)
        return None if item is None else await self._prepared(item)

    async def _decoded(
        self, features: PlainFeatures, options: Options
    ) -> AsyncIterator[tuple[np.ndarray, np.ndarray | None]]:
        """One sentence's mel; a lost decoder restarts it and the frames already given are skipped
        (the decoder is deterministic: the same features give the same frames)."""
        given = 0
        while True:
            produced = 0
            try:
                decode = self.ports.decode.decode(
                    features, options, self.deadline(), self.first_frames, self.marks is not None
                )
                async for mel, tokens in decode:
                    skip = min(max(given - produced, 0), len(mel))
                    produced += len(mel)
                    if len(mel) > skip:
                        given += len(mel) - skip
                        yield (mel[skip:], None if tokens is None else tokens[skip:]) if skip else (mel, tokens)
                return
            except StageLost as exc:
                self.resumes.spend(exc.stage, exc.cause)
                await asyncio.sleep(RETRY_DELAY_S)

    # -- the waveform side: boundaries, marks, audio ------------------------------------------------
    async def waveform_side(self, events: AsyncIterator[_Event], started: bool = False) -> AsyncIterator[Spoken]:
        # The stream starts while the first sentence is encoded (the mel side waits for it to decode).
        starting: asyncio.Future[None] | None = None if started else asyncio.ensure_future(self.start())
        self.starting = starting
        try:
            async for spoken in self._said(events):
                if starting is not None:
                    await starting
                    starting = None
                yield spoken
            if starting is not None:
                await starting
        finally:
            if starting is not None:
                starting.cancel()
        tail = await self.finish()
        if tail.size:
            yield self.sent(tail)

    async def _said(self, events: AsyncIterator[_Event]) -> AsyncIterator[Spoken]:
        async for event in events:
            if event.kind == "mel":
                assert event.mel is not None and event.options is not None
                if self.marks is not None:
                    self.marks.frames(event.tokens, len(event.mel))
                audio = await self._vocode(event.mel, event.options)
                self.fresh = False
                if audio.size or self.with_mel:
                    yield self.sent(audio, mel=event.mel if self.with_mel else None, sentence=event.index)
            elif event.kind == "sentence":
                assert event.options is not None
                if self.marks is not None:
                    self.marks.sentence_text(event.text or {})
                if event.features is not None:
                    async for spoken in self._fused(event.features, event.options):
                        yield spoken
                    if (heard := self._sentence_marks()) is not None:
                        yield heard
            elif event.kind == "end":
                if (heard := self._sentence_marks()) is not None:
                    yield heard
            elif event.kind == "say":
                async for spoken in self._say(event):
                    yield spoken
            elif event.kind == "said":
                assert event.say is not None
                if self.marks is not None and event.say.ends_part and (heard_all := self.marks.part_end()):
                    yield Spoken(_EMPTY, marks=tuple(heard_all))
            else:
                assert event.pause is not None
                async for spoken in self._pause(event.pause):
                    yield spoken

    def _sentence_marks(self) -> Spoken | None:
        if self.marks is None:
            return None
        return Spoken(_EMPTY, marks=tuple(self.marks.end()))

    async def _say(self, event: _Event) -> AsyncIterator[Spoken]:
        """A sentence of the plan begins: its part's text for marks, a new waveform stream where
        its gain differs from the stream's."""
        say, options = event.say, event.options
        assert say is not None and options is not None
        if self.marks is not None and say.part is not None:
            part = say.part
            self.marks.part(part.text, part.spans, part.written, part.marks)
        if not self.fresh and options.get("gain_db") != self.segment.get("gain_db"):
            async for spoken in self._boundary():
                yield spoken
        if self.fresh:
            self.segment = options

    async def _pause(self, pause: Pause) -> AsyncIterator[Spoken]:
        """Exact silence, a whole number of frames; the marks at its start reported first."""
        frames = pause_frames(pause.ms, self.mel.sample_rate, self.mel.hop_length)
        if self.marks is not None and (heard := self.marks.pause(frames, pause.marks)):
            yield Spoken(_EMPTY, marks=tuple(heard))
        if frames:
            async for spoken in self._boundary():
                yield spoken
            samples = frames * self.mel.hop_length if self.ports.waveform is not None else 0
            mel = silent_mel(pause.ms, self.mel) if self.with_mel else None
            yield self.sent(np.zeros(samples, dtype=np.float32), mel=mel)

    async def _boundary(self) -> AsyncIterator[Spoken]:
        """End the waveform's stream here (its held-back audio) and start a new one."""
        if self.fresh or self.ports.waveform is None:
            return
        tail = await self.finish()
        if tail.size:
            yield self.sent(tail)
        await self.start()

    async def start(self) -> None:
        if self.ports.waveform is not None:
            self.state, self.first_frames = await self.ports.waveform.start()
        self.fresh = True

    async def finish(self) -> np.ndarray:
        if self.ports.waveform is None:
            return _EMPTY
        return await self.ports.waveform.finish(self.state, self.segment)

    async def _vocode(self, mel: np.ndarray, options: Options) -> np.ndarray:
        if self.ports.waveform is None:
            return _EMPTY
        audio, self.state = await self.ports.waveform.process(self.state, mel, options, self.deadline())
        return audio

    async def _fused(self, features: PlainFeatures, options: Options) -> AsyncIterator[Spoken]:
        """One sentence's audio from a decoder that also vocodes. A lost replica restarts the
        sentence from the waveform state it began with; the samples already sent are skipped."""
        assert self.ports.fused is not None
        begin = self.state  # plain data: the fused port returns a new state, never changes this one
        sent = 0
        while True:
            self.state, produced = begin, 0
            if self.marks is not None:
                self.marks.restart()
            try:
                speak = self.ports.fused.speak(self.state, features, options, self.deadline(), self.first_frames)
                async for item in speak:
                    if isinstance(item, dict):
                        self.state = item["state"]
                        continue
                    tokens, frames, audio = item
                    if self.marks is not None:
                        self.marks.frames(tokens, frames)
                    self.fresh = False
                    skip = min(max(sent - produced, 0), audio.size)
                    produced += audio.size
                    if audio.size > skip:
                        sent += audio.size - skip
                        yield self.sent(audio[skip:])
                return
            except StageLost as exc:
                self.resumes.spend(exc.stage, exc.cause)
                await asyncio.sleep(RETRY_DELAY_S)


async def _async_iter(items: Iterable[Item] | AsyncIterable[Item]) -> AsyncIterator[Item]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def _ahead(events: AsyncIterator[T], ahead: int) -> AsyncIterator[T]:
    """``events``, pulled by a task up to ``ahead`` items before they are asked for. An error is
    raised here, in order, after the items before it; closing this stops the task."""
    slots: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue(maxsize=ahead)

    async def work() -> None:
        try:
            async for event in events:
                await slots.put((event, None))
            await slots.put((_DONE, None))
        except Exception as exc:  # handed to the consumer, raised there
            await slots.put((_DONE, exc))
        finally:
            await _aclose(events)

    task = asyncio.ensure_future(work())
    try:
        while True:
            item, error = await slots.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _aclose(items: AsyncIterator[Any]) -> None:
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()


# -- ports over an addon's stages, in this process ----------------------------------------------------------
def local_ports(
    encoders: EncoderStage,
    decoder: DecoderStage,
    audio: AudioStage | None,
    report: dict[str, Any] | None = None,
    ahead: int = 0,
) -> Ports:
    """Ports over stages in this process. ``report``: the caller's ``Request.report``, which every
    stage's request shares. ``ahead`` > 0: :func:`speak` runs the mel side (encoding, then decoding,
    sentence after sentence) in one worker thread up to that many events before the waveform takes
    them, which runs meanwhile in the thread driving the loop (a plan still arriving comes from that
    loop, so its mel side runs there as a task, ``speak``'s ``ahead``); 0: every call runs in the thread
    driving the loop.

    One worker for the whole mel side rather than a thread per call: each hop between threads costs
    a turn at the interpreter lock, which the decoder's many small steps feel (docs/performance.md)."""
    shared = report if report is not None else {}
    return Ports(
        _LocalEncode(encoders, shared, _inline),
        _LocalDecode(decoder, shared),
        _LocalWaveform(audio, shared) if audio is not None else None,
        encoders.env.mel,
        worker=ahead,
    )


async def _inline(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


Runner = Callable[..., Awaitable[Any]]


@dataclasses.dataclass
class _LocalEncode:
    stage: EncoderStage
    report: dict[str, Any]
    run: Runner

    async def encode(self, sentence: str, options: Options) -> list[PlainFeatures]:
        result: list[PlainFeatures] = await self.run(self._encode, sentence, options)
        return result

    def _encode(self, sentence: str, options: Options) -> list[PlainFeatures]:
        lexicon, normalize = options.get("lexicon", ()), bool(options.get("normalize", True))
        try:
            found = list(self.stage.sentences(sentence, lexicon, normalize))
        except LexiconError:
            raise
        except TextError:
            return []
        request = Request(options=options, report=self.report)
        return [{**with_pauses(self.stage.encode(s.ids, request), s), **sentence_arrays(s)} for s in found]


@dataclasses.dataclass
class _LocalDecode:
    stage: DecoderStage
    report: dict[str, Any]

    def decode(
        self, features: PlainFeatures, options: Options, deadline: float | None, first_frames: int, aligned: bool
    ) -> AsyncIterator[tuple[np.ndarray, np.ndarray | None]]:
        return _inline_stream(self.stage.decode_aligned(features, Request(options=options, report=self.report)))


async def _inline_stream(chunks: Iterator[T]) -> AsyncIterator[T]:
    try:
        for chunk in chunks:
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


_MEL_WORKER = "chorus-mel-side"


async def _worker_stream(chunks: Iterator[T], ahead: int) -> AsyncIterator[T]:
    """``chunks`` pulled by a worker thread up to ``ahead`` before they are taken, so the pulling
    goes on while the loop's thread is busy (vocoding). An error comes in order; closing this stops
    the worker at its next chunk and waits for it."""
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
    room, stop = threading.Semaphore(ahead), threading.Event()

    def hand(entry: tuple[Any, BaseException | None]) -> None:
        loop.call_soon_threadsafe(arrived.put_nowait, entry)

    def work() -> None:
        try:
            for chunk in chunks:
                while not room.acquire(timeout=0.05):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                hand((chunk, None))
            hand((_DONE, None))
        except BaseException as exc:  # handed to the consumer, raised there
            hand((_DONE, exc))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name=_MEL_WORKER, daemon=True)
    worker.start()
    try:
        while True:
            item, error = await arrived.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            room.release()
            yield item
    finally:
        stop.set()
        worker.join()


@dataclasses.dataclass
class _LocalWaveform:
    stage: AudioStage
    report: dict[str, Any]

    async def start(self) -> tuple[Any, int]:
        return self.stage.start(), self.stage.first_frames

    async def process(
        self, state: Any, mel: np.ndarray, options: Options, deadline: float | None
    ) -> tuple[np.ndarray, Any]:
        return self.stage.process(state, mel, Request(options=options, report=self.report)), state

    async def finish(self, state: Any, options: Options) -> np.ndarray:
        return self.stage.finish(state, Request(options=options, report=self.report))


# -- the synchronous adapter --------------------------------------------------------------------------------
def run_sync(stream: AsyncIterator[T]) -> Iterator[T]:
    """Drive an async stream from synchronous code, item by item as they are pulled, on a private
    event loop: in this thread, or in a helper thread where this thread already runs a loop.
    Closing the iterator early closes the stream (its work stops)."""
    try:
        asyncio.get_running_loop()
        running = True
    except RuntimeError:
        running = False
    loop = asyncio.new_event_loop()
    helper: threading.Thread | None = None
    if running:
        helper = threading.Thread(target=loop.run_forever, name="chorus-driver", daemon=True)
        helper.start()

    def run(awaitable: Awaitable[Any]) -> Any:
        if helper is None:
            return loop.run_until_complete(awaitable)
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), loop).result()

    try:
        while True:
            try:
                item: T = run(anext(stream))
            except StopAsyncIteration:
                return
            yield item
    finally:
        try:
            run(_aclose(stream))
            run(loop.shutdown_asyncgens())
            run(loop.shutdown_default_executor())
        finally:
            if helper is not None:
                loop.call_soon_threadsafe(loop.stop)
                helper.join()
            loop.close()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
