"""The WebSocket protocol for text written as it goes (serve_app.realtime), over a stand-in backend.

The backend speaks each sentence as a ramp whose length and values depend on the sentence, so a
test can tell which sentences were spoken, in which pieces, and in which order. The real graph is
tested end to end in tests/test_serve.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient

from addons.text.frontend import Frontend
from serve_app.audio_format import make_encoder
from serve_app.realtime import (
    MAX_BUFFERED_CHARS,
    MAX_CONTEXTS,
    Opened,
    OpenMessage,
    ProtocolError,
    SpeechSocket,
    split_complete,
)

RATE = 8000
PARAGRAPH = (
    "Dr. Smith arrived at 3.45 pm. She said: it costs $3.50, right? Yes! The meeting (on floor 2) "
    "ended early... Everyone went home; nobody complained. J. R. R. Tolkien wrote it. Done"
)


def _spoken(sentence: str) -> np.ndarray:
    """What the stand-in says for one sentence."""
    seed = sum(map(ord, sentence)) % 1000
    return (np.arange(40 * len(sentence), dtype=np.float32) % 97 + seed) / 2000.0


def _pcm(audio: np.ndarray) -> bytes:
    return make_encoder("pcm", RATE).encode(audio)


class Backend:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sentences: list[str] = []
        self.cancelled = 0
        self.full = False

    def open_context(self, message: OpenMessage) -> Opened:
        if message.model != "m":
            raise ProtocolError(f"model '{message.model}' not found (available: m)", "model_not_found", "model")
        if message.timestamps:
            raise ProtocolError("model 'm' gives no speech marks", "timestamps_unavailable", "timestamps")
        return Opened("m", message.voice, {"speed": message.speed or 1.0}, RATE)

    async def synthesize(
        self,
        model: str,
        sentences: AsyncIterator[str],
        options: dict[str, Any],
        marks: Any = None,
        on_marks: Any = None,
    ) -> AsyncIterator[np.ndarray]:
        if self.full:
            raise ProtocolError("model 'm' is at capacity; retry shortly", "at_capacity")
        try:
            async for sentence in sentences:
                self.sentences.append(sentence)
                audio = _spoken(sentence)
                for part in np.array_split(audio, 3):
                    await asyncio.sleep(self.delay)
                    yield part
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def _app(backend: Backend) -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await SpeechSocket(websocket, backend).run()

    return app


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def ws(backend: Backend) -> Iterator[Any]:
    with TestClient(_app(backend)) as client, client.websocket_connect("/ws") as socket:
        yield socket


def _until(ws: Any, kind: str, context: str = "default") -> tuple[list[dict[str, Any]], bytes]:
    """Messages up to and including the first ``kind`` for ``context``, and that context's audio."""
    seen, audio = [], b""
    while True:
        message = json.loads(ws.receive_text())
        seen.append(message)
        if message["type"] == "audio" and message["context_id"] == context:
            audio += base64.b64decode(message["audio"])
        if message["type"] == kind and message.get("context_id") == context:
            return seen, audio


def _expected(text: str) -> bytes:
    return b"".join(_pcm(_spoken(s)) for s in Frontend.split_sentences(Frontend.normalize(text)))


@pytest.mark.parametrize("seed", range(6))
def test_pieces_split_into_the_same_sentences_as_the_whole(seed: int) -> None:
    gen = random.Random(seed)
    text, pieces, i = PARAGRAPH, [], 0
    while i < len(text):
        n = gen.randint(1, 7)
        while i + n < len(text) and text[i + n - 1] in ".!?" and text[i + n] in ".!?":
            n += 1  # a run of end punctuation ("...", "?!") arrives whole (see the module notes)
        pieces.append(text[i : i + n])
        i += n
    released, buffer = [], ""
    for piece in pieces:
        done, buffer = split_complete(buffer + piece, final=False)
        released += done
    released += split_complete(buffer, final=True)[0]
    assert released == Frontend.split_sentences(Frontend.normalize(text))


def test_a_sentence_waits_where_the_next_text_decides() -> None:
    assert split_complete("It costs 3.", final=False) == ([], "It costs 3.")  # 3.5 may follow
    assert split_complete("Ask Dr.", final=False) == ([], "Ask Dr.")  # an abbreviation
    assert split_complete("Hello there. How", final=False) == (["Hello there."], "How")
    assert split_complete("Really?", final=False) == (["Really?"], "")  # complete: no need to wait
    assert split_complete("Half a sen", final=True) == (["Half a sen"], "")


def test_text_in_pieces_gives_the_audio_of_the_whole(ws: Any, backend: Backend) -> None:
    ws.send_text(json.dumps({"type": "open", "model": "m"}))
    opened = json.loads(ws.receive_text())
    assert opened == {
        "type": "opened",
        "context_id": "default",
        "model": "m",
        "voice": "default",
        "sample_rate": RATE,
        "format": "pcm_s16le",
    }
    text = PARAGRAPH.replace("...", ".")  # five-character pieces would cut the ellipsis (module notes)
    for i in range(0, len(text), 5):
        ws.send_text(json.dumps({"type": "text", "text": text[i : i + 5]}))
    ws.send_text(json.dumps({"type": "close"}))
    seen, audio = _until(ws, "done")
    assert audio == _expected(text)
    assert seen[-1]["samples"] == len(audio) // 2
    assert backend.sentences == Frontend.split_sentences(Frontend.normalize(text))


def test_first_sentence_is_spoken_before_the_text_ends(ws: Any) -> None:
    ws.send_text(json.dumps({"type": "open", "model": "m"}))
    json.loads(ws.receive_text())
    ws.send_text(json.dumps({"type": "text", "text": "The first sentence is complete. And the sec"}))
    message = json.loads(ws.receive_text())  # nothing else was sent: audio must come unasked
    assert message["type"] == "audio"


def test_flush_speaks_what_is_buffered_and_is_acknowledged(ws: Any, backend: Backend) -> None:
    ws.send_text(json.dumps({"type": "open", "model": "m", "idle_flush_ms": 0}))
    json.loads(ws.receive_text())
    ws.send_text(json.dumps({"type": "text", "text": "no punctuation at all"}))
    ws.send_text(json.dumps({"type": "flush"}))
    _, audio = _until(ws, "flushed")
    assert audio == _pcm(_spoken("no punctuation at all"))
    ws.send_text(json.dumps({"type": "text", "text": "More after the flush."}))
    ws.send_text(json.dumps({"type": "close"}))
    _, audio = _until(ws, "done")
    assert audio == _pcm(_spoken("More after the flush."))


def test_idle_text_is_spoken_after_the_idle_time(ws: Any) -> None:
    ws.send_text(json.dumps({"type": "open", "model": "m", "idle_flush_ms": 100}))
    json.loads(ws.receive_text())
    start = time.monotonic()
    ws.send_text(json.dumps({"type": "text", "text": "an unfinished thought"}))
    assert json.loads(ws.receive_text())["type"] == "audio"
    assert time.monotonic() - start >= 0.1


def test_bad_messages_get_errors_and_the_connection_stays_usable(ws: Any) -> None:
    bad = [
        ("{not json", "invalid_json", None),
        (json.dumps([1, 2]), "invalid_type", "type"),
        (json.dumps({"type": "speak"}), "invalid_type", "type"),
        (json.dumps({"type": "open"}), "missing", "model"),
        (json.dumps({"type": "open", "model": "m", "speed": 9}), "less_than_equal", "speed"),
        (json.dumps({"type": "open", "model": "m", "colour": "red"}), "extra_forbidden", "colour"),
        (json.dumps({"type": "open", "model": "nope"}), "model_not_found", "model"),
        (json.dumps({"type": "open", "model": "m", "timestamps": ["word"]}), "timestamps_unavailable", "timestamps"),
        (json.dumps({"type": "text", "context_id": "x", "text": "hi"}), "context_not_found", "context_id"),
        (json.dumps({"type": "text", "text": 5}), "string_type", "text"),
    ]
    for message, code, param in bad:
        ws.send_text(message)
        reply = json.loads(ws.receive_text())
        assert reply["type"] == "error", message
        assert (reply["error"]["code"], reply["error"]["param"]) == (code, param), (message, reply)
        assert reply["error"]["message"]
    ws.send_bytes(b"\x00\x01")
    assert json.loads(ws.receive_text())["error"]["code"] == "invalid_message"
    ws.send_text(json.dumps({"type": "open", "model": "m"}))  # still usable
    assert json.loads(ws.receive_text())["type"] == "opened"


def test_text_past_the_buffer_limit_is_refused_not_dropped(ws: Any) -> None:
    ws.send_text(json.dumps({"type": "open", "model": "m"}))
    json.loads(ws.receive_text())
    piece = "word " * 2000  # no sentence end: it all stays buffered
    sent = 0
    while True:
        ws.send_text(json.dumps({"type": "text", "text": piece}))
        sent += len(piece)
        if sent > MAX_BUFFERED_CHARS:
            break
    reply = json.loads(ws.receive_text())
    assert reply["type"] == "error" and reply["error"]["code"] == "buffer_full"
    assert "not taken" in reply["error"]["message"]


def test_cancel_stops_the_work_at_once() -> None:
    backend = Backend(delay=0.05)
    with TestClient(_app(backend)) as client, client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"type": "open", "model": "m"}))
        json.loads(ws.receive_text())
        ws.send_text(json.dumps({"type": "text", "text": "One. Two. Three. Four. Five. Six. Seven."}))
        assert json.loads(ws.receive_text())["type"] == "audio"
        ws.send_text(json.dumps({"type": "cancel"}))
        start = time.monotonic()
        while json.loads(ws.receive_text())["type"] != "cancelled":
            pass
        assert time.monotonic() - start < 1.0
        time.sleep(0.2)
        assert backend.cancelled == 1 and len(backend.sentences) < 7
        ws.send_text(json.dumps({"type": "text", "text": "more"}))  # the context is gone
        assert json.loads(ws.receive_text())["error"]["code"] == "context_not_found"


def test_contexts_share_a_connection_and_interrupt_cancels_the_others(backend: Backend) -> None:
    backend.delay = 0.02
    with TestClient(_app(backend)) as client, client.websocket_connect("/ws") as ws:
        for cid in ("a", "b"):
            ws.send_text(json.dumps({"type": "open", "model": "m", "context_id": cid, "audio": "binary"}))
            assert json.loads(ws.receive_text())["context_id"] == cid
        ws.send_text(json.dumps({"type": "text", "context_id": "a", "text": "Alpha speaks first."}))
        ws.send_text(json.dumps({"type": "text", "context_id": "b", "text": "Bravo speaks too."}))
        ws.send_text(json.dumps({"type": "close", "context_id": "a"}))
        ws.send_text(json.dumps({"type": "close", "context_id": "b"}))
        audio: dict[str, bytes] = {"a": b"", "b": b""}
        done: set[str] = set()
        while done != {"a", "b"}:
            frame = ws.receive()
            if frame.get("bytes") is not None:
                data = frame["bytes"]
                cid = data[1 : 1 + data[0]].decode()
                audio[cid] += data[1 + data[0] :]
            elif json.loads(frame["text"])["type"] == "done":
                done.add(json.loads(frame["text"])["context_id"])
        assert audio == {"a": _expected("Alpha speaks first."), "b": _expected("Bravo speaks too.")}

        ws.send_text(json.dumps({"type": "open", "model": "m", "context_id": "old"}))
        json.loads(ws.receive_text())
        ws.send_text(json.dumps({"type": "text", "context_id": "old", "text": "One. Two. Three. Four. Five."}))
        ws.send_text(json.dumps({"type": "open", "model": "m", "context_id": "new", "interrupt": True}))
        while True:
            message = json.loads(ws.receive_text())
            if message["type"] == "opened" and message["context_id"] == "new":
                break
        ws.send_text(json.dumps({"type": "text", "context_id": "old", "text": "more"}))
        reply = json.loads(ws.receive_text())
        while reply["type"] == "audio":  # audio already on its way may still arrive
            reply = json.loads(ws.receive_text())
        assert reply["error"]["code"] == "context_not_found"


def test_context_limit_and_capacity_errors(backend: Backend) -> None:
    with TestClient(_app(backend)) as client, client.websocket_connect("/ws") as ws:
        for i in range(MAX_CONTEXTS):
            ws.send_text(json.dumps({"type": "open", "model": "m", "context_id": f"c{i}"}))
            assert json.loads(ws.receive_text())["type"] == "opened"
        ws.send_text(json.dumps({"type": "open", "model": "m", "context_id": "one-too-many"}))
        assert json.loads(ws.receive_text())["error"]["code"] == "too_many_contexts"
        backend.full = True
        ws.send_text(json.dumps({"type": "text", "context_id": "c0", "text": "Refused text."}))
        reply = json.loads(ws.receive_text())
        assert reply["error"]["code"] == "at_capacity" and reply["context_id"] == "c0"
        assert reply["error"]["type"] == "server_error"


def test_after_an_idle_pause_the_last_sentence_is_heard_to_its_end(ws: Any) -> None:
    ws.send_text(json.dumps({"type": "open", "model": "m", "idle_flush_ms": 100}))
    json.loads(ws.receive_text())
    ws.send_text(json.dumps({"type": "text", "text": "Sure."}))
    seen, audio = _until(ws, "flushed")
    assert seen[-1]["reason"] == "idle" and audio == _pcm(_spoken("Sure."))


def test_markup_on_the_text_stream_is_refused_not_read(ws: Any) -> None:
    ws.send_text(json.dumps({"type": "open", "model": "m"}))
    json.loads(ws.receive_text())
    ws.send_text(json.dumps({"type": "text", "text": "<speak>Hello <break time='1s'/></speak>"}))
    reply = json.loads(ws.receive_text())
    assert reply["type"] == "error" and reply["error"]["code"] == "ssml_unsupported"
    assert "/v1/audio/speech" in reply["error"]["message"]
    ws.send_text(json.dumps({"type": "text", "text": "Plain text is fine, and 3 < 4 too."}))
    ws.send_text(json.dumps({"type": "close"}))
    kinds = set()
    while "done" not in kinds:
        kinds.add(json.loads(ws.receive_text())["type"])
    assert "error" not in kinds and "audio" in kinds
