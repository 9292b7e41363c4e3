"""Text in as it is written: speech over one WebSocket, ``/v1/audio/speech/stream``.

A client (typically feeding a language model's tokens) opens one or more *contexts* on a
connection, sends text pieces of any size, and hears each sentence as soon as it is complete.
Every message is a JSON text frame with a ``type`` and (default ``"default"``) a ``context_id``.

Client -> server:

- ``{"type": "open", "context_id", "model", "voice", "speed", "audio", "timestamps", "idle_flush_ms", "interrupt"}``
  opens a context (``audio``: ``"base64"`` JSON events, default, or ``"binary"`` frames;
  ``interrupt: true`` cancels every other context on the connection first; an open context of the
  same id is replaced, its work cancelled).
- ``{"type": "text", "context_id", "text"}``: more text. A sentence starts as soon as it is complete
  (its end punctuation is followed by more text, or ends the text so far and is no abbreviation
  and no number such as "3."), or after ``idle_flush_ms`` without new text. A run of end
  punctuation split across pieces ("early." then "..") is taken as two sentences.
- ``{"type": "flush", "context_id"}``: speak everything buffered now, to its last sample; answered
  by ``flushed`` once that audio is sent.
- ``{"type": "close", "context_id"}``: flush, then ``done``; the context ends.
- ``{"type": "cancel", "context_id"}``: stop now (its work stops at once); answered by ``cancelled``.

Server -> client:

- ``{"type": "opened", "context_id", "model", "voice", "sample_rate", "format": "pcm_s16le"}``
- ``{"type": "audio", "context_id", "audio": "<base64 pcm>"}``, or a binary frame
  ``[n: 1 byte][context_id: n bytes UTF-8][pcm]`` when the context asked for ``"binary"``.
  Audio is 16-bit little-endian mono PCM at ``sample_rate``.
- ``{"type": "flushed", "context_id", "reason": "flush" | "idle"}`` (``idle``: nothing came for
  ``idle_flush_ms`` after the last sentence, so its last audio was sent too),
  ``{"type": "done", "context_id", "samples"}``,
  ``{"type": "cancelled", "context_id"}``.
- ``{"type": "error", "context_id", "error": {"message", "type", "param", "code"}}`` (OpenAI's error
  object). A bad message gets one and the connection stays usable; text of a context that could not
  be spoken (model at capacity) is named in the error, never dropped silently.

Limits (per connection): ``MAX_CONTEXTS`` contexts, ``MAX_BUFFERED_CHARS`` characters accepted
but not yet spoken per context, ``MAX_MESSAGE_CHARS`` per message, closed after ``IDLE_CLOSE_S``
without a message. Backpressure: a context's audio is sent at most ``MAX_LEAD_S`` seconds ahead of
real-time playback (counted from its first audio), so a client that reads slowly makes the
server wait, never buffer without bound. The audio of a context equals what
``POST /v1/audio/speech`` gives for the same text, as long as no flush or idle flush falls
inside a sentence (a flush ends the vocoder stream: the next text starts a new one).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from addons.engine.marks import MarkTracker, SpeechMark
from addons.engine.options import Speed, option
from addons.text.frontend import Frontend
from addons.text.pls import LexiconInput
from addons.text.ssml import is_ssml
from serve_app.audio_format import make_encoder
from serve_app.schemas import ErrorDetail, field_error_message

__all__ = ["MAX_CONTEXTS", "SpeechSocket"]

logger = logging.getLogger("ray.serve")

MAX_CONTEXTS = 8
MAX_BUFFERED_CHARS = 20_000
MAX_MESSAGE_CHARS = 16_384
IDLE_CLOSE_S = 300.0
MAX_LEAD_S = 30.0
DEFAULT_IDLE_FLUSH_MS = 1000
# Ends a sentence without waiting for the next text: terminal punctuation (and closing quotes) at
# the very end. A full stop right after a digit waits ("3." may become "3.5").
_ENDS_NOW = re.compile(r"(?:[!?…]|(?<![0-9])\.)[\"')\]]*\s*$")


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    context_id: str = Field("default", min_length=1, max_length=64, description="Which context of the connection.")


class OpenMessage(_Message):
    type: Literal["open"]
    model: str = Field(min_length=1, description="A served model, or an OpenAI name mapped to one.")
    voice: str = Field("default", min_length=1, description="A voice of the model (OpenAI names are mapped).")
    speed: Speed | None = option("speed")
    audio: Literal["base64", "binary"] = Field("base64", description="Audio as base64 JSON events or binary frames.")
    timestamps: list[Literal["word", "phoneme", "sentence"]] = Field(
        default_factory=list, description="Speech marks to send beside the audio (where the model has them)."
    )
    idle_flush_ms: int = Field(
        DEFAULT_IDLE_FLUSH_MS,
        ge=0,
        le=60_000,
        description="Speak unfinished text after this long without more; 0: never.",
    )
    interrupt: bool = Field(False, description="Cancel every other context of the connection first (a new turn).")
    lexicon: LexiconInput = option("lexicon")
    normalize: bool = option("normalize")


class TextMessage(_Message):
    type: Literal["text"]
    text: str = Field(max_length=MAX_MESSAGE_CHARS, description="More text, any size (may be part of a word).")


class FlushMessage(_Message):
    type: Literal["flush"]


class CloseMessage(_Message):
    type: Literal["close"]


class CancelMessage(_Message):
    type: Literal["cancel"]


ClientMessage = Annotated[
    OpenMessage | TextMessage | FlushMessage | CloseMessage | CancelMessage, Field(discriminator="type")
]
_MESSAGES: TypeAdapter[Any] = TypeAdapter(ClientMessage)
_TYPES = ("open", "text", "flush", "close", "cancel")


class ProtocolError(Exception):
    """A message the server refuses; the connection stays open."""

    def __init__(self, message: str, code: str, param: str | None = None, context_id: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param, self.context_id = message, code, param, context_id


@dataclass(frozen=True)
class Opened:
    """What the server made of an ``open``: the served model and voice, resolved options."""

    model: str
    voice: str
    options: Mapping[str, Any]
    sample_rate: int
    marks: MarkTracker | None = None  # speech marks asked for (one tracker for the context's audio)


class SpeechBackend(Protocol):
    """What a connection needs from the ingress."""

    def open_context(self, message: OpenMessage) -> Opened: ...

    def synthesize(
        self,
        model: str,
        sentences: AsyncIterator[str],
        options: Mapping[str, Any],
        marks: MarkTracker | None = None,
        on_marks: Callable[[list[SpeechMark]], None] | None = None,
    ) -> AsyncIterator[np.ndarray]: ...


@dataclass(frozen=True)
class _Mark:
    """Ends a segment of a context's sentences: ``flush``, ``idle`` or ``close``."""

    reason: str


def split_complete(buffer: str, final: bool) -> tuple[list[str], str]:
    """The sentences of ``buffer`` that are complete (all of them when ``final``), and the rest.

    The same sentences as splitting the whole text at once, whatever the pieces were.
    """
    text = Frontend.normalize(buffer)
    if not text:
        return [], ""
    sentences = Frontend.split_sentences(text)
    if final:
        return sentences, ""
    last = sentences[-1]
    if _ENDS_NOW.search(last) and len(Frontend.split_sentences(f"{text} X")) > len(sentences):
        return sentences, ""  # the last one ended (not an abbreviation): no need to wait
    rest = last + (" " if buffer[-1:].isspace() else "")
    return sentences[:-1], rest


class _Context:
    """One context: text buffered, sentences queued, one task speaking them segment by segment."""

    def __init__(self, socket: SpeechSocket, message: OpenMessage, opened: Opened) -> None:
        self.socket, self.id, self.opened = socket, message.context_id, opened
        self.binary = message.audio == "binary"
        self.idle_s = message.idle_flush_ms / 1000.0
        self.buffer = ""
        self.queued = 0  # characters queued but not yet taken by synthesis
        self.queue: asyncio.Queue[str | _Mark] = asyncio.Queue()
        self.closing = False
        self.idle: asyncio.TimerHandle | None = None
        self.samples = 0
        self.first_audio: float | None = None
        self.task = asyncio.create_task(self._run())

    # -- from the client ---------------------------------------------------------------------
    def text(self, piece: str) -> None:
        if self.closing:
            raise ProtocolError(
                f"context '{self.id}' is closing; open a new one", "context_closing", "context_id", self.id
            )
        if len(self.buffer) + len(piece) + self.queued > MAX_BUFFERED_CHARS:
            raise ProtocolError(
                f"context '{self.id}' holds {len(self.buffer) + self.queued} characters not yet spoken; "
                f"at most {MAX_BUFFERED_CHARS}: wait for audio before sending more (this text was not taken)",
                "buffer_full",
                "text",
                self.id,
            )
        if not self.buffer.strip() and is_ssml(piece):
            raise ProtocolError(
                "SSML is read by POST /v1/audio/speech (input_format 'ssml'), not on the text stream: send plain "
                "text here (markup is never read aloud; this text was not taken)",
                "ssml_unsupported",
                "text",
                self.id,
            )
        self.buffer += piece
        sentences, self.buffer = split_complete(self.buffer, final=False)
        self._queue(sentences)
        self._arm_idle()

    def flush(self, reason: str = "flush") -> None:
        sentences, self.buffer = split_complete(self.buffer, final=True)
        self._queue(sentences)
        self.queue.put_nowait(_Mark(reason))
        if self.idle is not None:
            self.idle.cancel()

    def close(self) -> None:
        self.flush("close")
        self.closing = True

    def cancel(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.task.cancel()

    def _queue(self, sentences: list[str]) -> None:
        for sentence in sentences:
            self.queued += len(sentence)
            self.queue.put_nowait(sentence)

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if self.idle_s > 0 and self.buffer.strip():
            self.idle = asyncio.get_running_loop().call_later(self.idle_s, self._idle_release)

    def _idle_release(self) -> None:
        """Unfinished text after a pause is spoken as a sentence (the vocoder stream goes on)."""
        sentences, self.buffer = split_complete(self.buffer, final=True)
        self._queue(sentences)

    # -- speaking ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            item = await self.queue.get()
            mark = item if isinstance(item, _Mark) else await self._segment(item)
            if mark.reason == "close":
                await self.socket.send_json({"type": "done", "context_id": self.id, "samples": self.samples})
                self.socket.forget(self)
                return
            await self.socket.send_json({"type": "flushed", "context_id": self.id, "reason": mark.reason})

    async def _segment(self, first: str) -> _Mark:
        """Speak sentences from ``first`` until a mark (one vocoder stream); return the mark."""
        ended: list[_Mark] = []

        async def sentences() -> AsyncIterator[str]:
            item: str | _Mark = first
            while isinstance(item, str):
                self.queued -= len(item)
                yield item
                item = await self._next_or_idle()
            ended.append(item)

        pcm = make_encoder("pcm", self.opened.sample_rate)
        marks: list[SpeechMark] = []
        try:
            stream = self.socket.backend.synthesize(
                self.opened.model, sentences(), self.opened.options, self.opened.marks, marks.extend
            )
            async for audio in stream:
                await self._send_marks(marks)
                await self._pace()
                self.samples += audio.size
                if self.first_audio is None:
                    self.first_audio = time.monotonic()
                await self.socket.send_audio(self, pcm.encode(audio))
            await self._send_marks(marks)
        except ProtocolError as exc:  # e.g. at capacity: the text is named, not dropped silently
            exc.context_id = self.id
            await self.socket.send_error(exc)
        except Exception:  # a failure mid-segment: said, never a short stream that looks complete
            logger.exception("speech context %r failed mid-stream", self.id)
            message = "synthesis failed mid-stream; the audio of this segment is incomplete, send its text again"
            await self.socket.send_error(ProtocolError(message, "synthesis_failed", None, self.id))
        while not ended:  # the rest of a segment that could not be spoken
            item = await self.queue.get()
            if isinstance(item, _Mark):
                ended.append(item)
            else:
                self.queued -= len(item)
        return ended[0]

    async def _next_or_idle(self) -> str | _Mark:
        """The next queued item; when nothing is queued or buffered ``idle_flush_ms`` after the
        listener has heard all the audio sent, an idle mark: the segment ends, so the vocoder gives
        out the audio it held back for lookahead."""
        if self.idle_s <= 0:
            return await self.queue.get()
        while True:
            # Counted from when the listener would have heard everything sent so far: a slow writer
            # whose next sentence comes before then keeps one seamless vocoder stream.
            try:
                return await asyncio.wait_for(self.queue.get(), max(self._lead(), 0.0) + self.idle_s)
            except TimeoutError:
                if not self.buffer.strip():
                    return _Mark("idle")

    async def _send_marks(self, marks: list[SpeechMark]) -> None:
        if marks:
            data = [m.as_dict() for m in marks]
            marks.clear()
            await self.socket.send_json({"type": "marks", "context_id": self.id, "marks": data})

    async def _pace(self) -> None:
        """Backpressure: stay at most MAX_LEAD_S of audio ahead of real-time playback."""
        ahead = self._lead()
        if ahead > MAX_LEAD_S:
            await asyncio.sleep(ahead - MAX_LEAD_S)

    def _lead(self) -> float:
        """Seconds of audio sent beyond what real-time playback has used since the first audio."""
        if self.first_audio is None:
            return 0.0
        return self.samples / self.opened.sample_rate - (time.monotonic() - self.first_audio)


class SpeechSocket:
    """One WebSocket connection: its contexts, and the one writer every context sends through."""

    def __init__(self, ws: WebSocket, backend: SpeechBackend) -> None:
        self.ws, self.backend = ws, backend
        self.contexts: dict[str, _Context] = {}
        self._send = asyncio.Lock()

    async def run(self) -> None:
        await self.ws.accept()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.receive(), IDLE_CLOSE_S)
                except TimeoutError:
                    await self.ws.close(1001, f"no message for {IDLE_CLOSE_S:.0f} s")
                    return
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    await self._handle(message)
                except ProtocolError as exc:
                    await self.send_error(exc)
        except WebSocketDisconnect:
            return
        finally:
            for context in list(self.contexts.values()):
                context.cancel()

    def forget(self, context: _Context) -> None:
        if self.contexts.get(context.id) is context:
            del self.contexts[context.id]

    # -- messages ------------------------------------------------------------------------------
    async def _handle(self, raw: Mapping[str, Any]) -> None:
        if raw.get("text") is None:
            raise ProtocolError("send JSON text messages (binary frames are not read)", "invalid_message")
        message = self._parse(raw["text"])
        if isinstance(message, OpenMessage):
            await self._open(message)
            return
        context = self.contexts.get(message.context_id)
        if context is None:
            raise ProtocolError(
                f"context '{message.context_id}' is not open (open: {', '.join(self.contexts) or 'none'}); "
                'send {"type": "open", ...} first',
                "context_not_found",
                "context_id",
                message.context_id,
            )
        if isinstance(message, TextMessage):
            context.text(message.text)
        elif isinstance(message, FlushMessage):
            context.flush()
        elif isinstance(message, CloseMessage):
            context.close()
        else:
            context.cancel()
            self.forget(context)
            await self.send_json({"type": "cancelled", "context_id": context.id})

    def _parse(self, text: str) -> Any:
        if len(text) > MAX_MESSAGE_CHARS + 1024:
            raise ProtocolError(
                f"message too long ({len(text)} characters; at most {MAX_MESSAGE_CHARS} of text)", "message_too_long"
            )
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ProtocolError(f"message is not valid JSON ({exc})", "invalid_json") from None
        if not isinstance(raw, dict) or raw.get("type") not in _TYPES:
            got = raw.get("type") if isinstance(raw, dict) else type(raw).__name__
            raise ProtocolError(f'"type" must be one of {", ".join(_TYPES)}, got {got!r}', "invalid_type", "type")
        try:
            return _MESSAGES.validate_python(raw)
        except ValidationError as exc:
            error: dict[str, Any] = dict(exc.errors()[0])
            loc = tuple(error.get("loc", ()))
            loc = loc[1:] if loc[:1] == (raw["type"],) else loc  # the union's tag comes first
            schema = _MESSAGES.json_schema()
            kind = raw["type"]
            model_schema = schema.get("$defs", {}).get(f"{kind.capitalize()}Message", {})
            message = field_error_message({**error, "loc": ("body", *loc)}, model_schema)
            param = str(loc[0]) if loc else None
            context_id = raw.get("context_id") if isinstance(raw.get("context_id"), str) else None
            raise ProtocolError(message, str(error.get("type")), param, context_id) from None

    async def _open(self, message: OpenMessage) -> None:
        if message.interrupt:
            for other in list(self.contexts.values()):
                other.cancel()
                self.forget(other)
        old = self.contexts.get(message.context_id)
        if old is None and len(self.contexts) >= MAX_CONTEXTS:
            raise ProtocolError(
                f"at most {MAX_CONTEXTS} contexts per connection; close one first",
                "too_many_contexts",
                "context_id",
                message.context_id,
            )
        opened = self.backend.open_context(message)  # may raise ProtocolError (unknown model, voice)
        if old is not None:
            old.cancel()
        await self.send_json(
            {
                "type": "opened",
                "context_id": message.context_id,
                "model": opened.model,
                "voice": opened.voice,
                "sample_rate": opened.sample_rate,
                "format": "pcm_s16le",
            }
        )
        self.contexts[message.context_id] = _Context(self, message, opened)

    # -- the writer ----------------------------------------------------------------------------
    async def send_json(self, data: dict[str, Any]) -> None:
        await self._locked(lambda: self.ws.send_text(json.dumps(data)))

    async def send_audio(self, context: _Context, pcm: bytes) -> None:
        if not pcm:
            return
        if context.binary:
            cid = context.id.encode("utf-8")
            await self._locked(lambda: self.ws.send_bytes(bytes([len(cid)]) + cid + pcm))
        else:
            audio = base64.b64encode(pcm).decode("ascii")
            await self.send_json({"type": "audio", "context_id": context.id, "audio": audio})

    async def send_error(self, exc: ProtocolError) -> None:
        kind = (
            "server_error" if exc.code in ("at_capacity", "overloaded", "synthesis_failed") else "invalid_request_error"
        )
        detail = ErrorDetail(message=exc.message, type=kind, param=exc.param, code=exc.code)
        await self.send_json({"type": "error", "context_id": exc.context_id, "error": detail.model_dump()})

    async def _locked(self, send: Callable[[], Awaitable[None]]) -> None:
        # A client that has gone makes sends fail; run() then ends the contexts.
        async with self._send:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await send()
