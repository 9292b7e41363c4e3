"""The synthesis loop in process: an utterance's text or SSML, sentence by sentence, through an
addon's stages (:mod:`addons.engine.stages`): encode, decode chunk by chunk, vocode each chunk,
with SSML breaks, changes of volume, speech marks and look-ahead in a worker thread."""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from addons.engine.marks import MarkTracker, SpeechMark
from addons.engine.stages import AudioStage, DecoderStage, EncoderStage, silent_mel, with_pauses
from addons.text.frontend import LexiconError, Sentence, TextError
from addons.text.ssml import Part, Pause, script_of
from blocks import (
    Request,
)

__all__ = ["StageOutput", "prefetched", "run_stages"]


@dataclasses.dataclass(frozen=True)
class StageOutput:
    """One step of :func:`run_stages`: the mel just decoded and the audio now final (may be empty).

    The last step (``mel`` None) carries the audio the vocoder held back at the end. With marks
    asked for, a step with ``mel`` None and empty audio after each sentence carries its ``marks``.
    """

    sentence: int
    mel: np.ndarray | None
    audio: np.ndarray
    marks: tuple[SpeechMark, ...] = ()


def run_stages(
    encoders: EncoderStage,
    decoder: DecoderStage,
    audio: AudioStage | None,
    text: str,
    request: Request,
    marks: MarkTracker | None = None,
    ahead: int = 0,
) -> Iterator[StageOutput]:
    """The synthesis loop: sentence by sentence, encode, decode chunk by chunk, vocode each chunk.

    Work is done as steps are pulled. Without ``audio`` only mel is produced (every ``audio``
    empty). ``marks`` follows the decoder's alignment and adds each sentence's speech marks.
    An SSML document is said part by part (:mod:`addons.text.ssml`): a break is silent mel and exact
    zeros, with the vocoder's stream finished before it and started after it, as at a change of
    volume. Raises ``TextError`` when ``text`` has nothing speakable.

    ``ahead`` > 0: the encoders and decoder run in a worker thread, up to ``ahead`` mel chunks
    ahead of the vocoder, so the two share a machine's cores (an autoregressive decoder cannot
    use a second core itself). The steps are the same, in the same order, to the bit.
    """
    events = _mel_events(encoders, decoder, text, request, marks)
    if ahead > 0 and audio is not None:
        events = prefetched(events, ahead)
    return _vocoded(events, audio, encoders.env.mel.hop_length)


@dataclasses.dataclass(frozen=True)
class _Event:
    """What the mel side of :func:`run_stages` hands the audio side: a ``part`` starts (said with
    ``request``), a sentence's ``mel`` chunk, ``silence`` (a break's mel) or speech ``marks``."""

    kind: str
    index: int = -1
    mel: np.ndarray | None = None
    request: Request | None = None
    marks: tuple[SpeechMark, ...] = ()


def _mel_events(
    encoders: EncoderStage, decoder: DecoderStage, text: str, request: Request, marks: MarkTracker | None
) -> Iterator[_Event]:
    script = script_of(text, str(request.options.get("input_format", "text")))
    # each part with its options, resolved before anything is said (a rate out of range is refused here)
    planned = [(item, item.options(dict(request.options)) if isinstance(item, Part) else {}) for item in script]
    index = 0
    for item, options in planned:
        if isinstance(item, Pause):
            silence = silent_mel(item.ms, encoders.env.mel)
            if marks is not None and (heard := marks.pause(len(silence), item.marks)):
                yield _Event("marks", marks=tuple(heard))
            if len(silence):
                yield _Event("silence", mel=silence)
            continue
        said = request if options == request.options else Request(options=options, report=request.report)
        yield _Event("part", request=said)
        if marks is not None:
            marks.part(item.text, item.spans, item.written, item.marks)
        for sentence in _sentences(encoders, item, options, len(script) > 1):
            if marks is not None:
                marks.sentence(sentence)
            features = with_pauses(encoders.encode(sentence.ids, said), sentence)
            for mel, tokens in decoder.decode_aligned(features, said):
                if marks is not None:
                    marks.frames(tokens, len(mel))
                yield _Event("mel", index, mel, said)
            if marks is not None:
                yield _Event("marks", index, marks=tuple(marks.end()))
            index += 1
        if marks is not None and (heard := marks.part_end()):
            yield _Event("marks", marks=tuple(heard))
    if index == 0:
        raise TextError("the document has no speakable text")


def _vocoded(events: Iterator[_Event], audio: AudioStage | None, hop_length: int) -> Iterator[StageOutput]:
    empty = np.zeros(0, dtype=np.float32)
    state = audio.start() if audio is not None else None
    fresh = True  # nothing has gone through the vocoder's stream yet
    segment: Request | None = None  # the request the vocoder's stream is said with (its gain)
    for event in events:
        if event.kind == "marks":
            yield StageOutput(event.index, None, empty, event.marks)
        elif event.kind == "silence":
            assert event.mel is not None
            if audio is not None and not fresh:
                yield StageOutput(-1, None, audio.finish(state, segment))  # type: ignore[arg-type]
                state, fresh = audio.start(), True
            samples = np.zeros(len(event.mel) * hop_length if audio is not None else 0, dtype=np.float32)
            yield StageOutput(-1, event.mel, samples)
        elif event.kind == "part":
            assert event.request is not None
            gain = event.request.options.get("gain_db")
            if audio is not None and not fresh and segment is not None and gain != segment.options.get("gain_db"):
                yield StageOutput(-1, None, audio.finish(state, segment))
                state, fresh = audio.start(), True
            if fresh:
                segment = event.request
        else:
            assert event.mel is not None and event.request is not None
            out = audio.process(state, event.mel, event.request) if audio is not None else empty
            fresh = False
            yield StageOutput(event.index, event.mel, out)
    if audio is not None and segment is not None:
        yield StageOutput(-1, None, audio.finish(state, segment))


_DONE = object()


def prefetched(items: Iterator[Any], ahead: int) -> Iterator[Any]:
    """``items``, pulled by a worker thread up to ``ahead`` items before they are asked for.

    An exception in the worker is raised here, in order, after the items before it. Closing this
    iterator early stops the worker at its next item and waits for it, so no work outlives the
    stream; the worker closes ``items`` itself (a generator must be closed by the thread running it).
    """
    slots: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((_DONE, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name="chorus-stages-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join()


def _sentences(encoders: EncoderStage, part: Part, options: Mapping[str, Any], skip_empty: bool) -> Iterator[Sentence]:
    """The sentences of one part; with ``skip_empty`` (one part of several), a part with nothing
    speakable in it is passed over rather than refused."""
    lexicon, normalize = options.get("lexicon", ()), bool(options.get("normalize", True))
    try:
        yield from encoders.sentences(part.text, lexicon, normalize)
    except TextError as exc:
        if not skip_empty or isinstance(exc, LexiconError):
            raise
