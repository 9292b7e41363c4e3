"""A small Python client for Chorus's incremental-text WebSocket (``/v1/audio/speech/stream``).

Feed it text as it is written (a generator of language-model tokens, say) and iterate over the
audio as it is spoken::

    from serve_app.client import SpeechStream

    with SpeechStream("ws://127.0.0.1:8000", model="chorus-fast") as stream:
        for pcm in stream.speak(tokens()):      # tokens(): any iterable of str
            player.write(pcm)                    # 16-bit mono PCM at stream.sample_rate

The protocol is in :mod:`serve_app.realtime` and docs/api.md.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

__all__ = ["SpeechStream", "SpeechStreamError"]

PATH = "/v1/audio/speech/stream"


class SpeechStreamError(RuntimeError):
    """The server answered a message with an error (``error`` holds its OpenAI-shaped object)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.error = error


class SpeechStream:
    """One connection and one context on it; ``speak`` may be called again for the next turn."""

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8000",
        *,
        model: str,
        voice: str = "default",
        speed: float | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        from websockets.sync.client import connect

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._connection = connect(url.rstrip("/") + PATH, additional_headers=headers, open_timeout=timeout)
        self.socket = self._connection.__enter__()  # websockets wants connect() entered as a context
        self.timeout = timeout
        self.model, self.voice, self.speed = model, voice, speed
        self.sample_rate = 0
        self._turn = 0

    def speak(self, pieces: Iterable[str], *, interrupt: bool = True) -> Iterator[bytes]:
        """PCM chunks of the text in ``pieces``, while ``pieces`` is still being read (a thread sends
        them). ``interrupt``: a new turn cancels what the previous one was still saying."""
        self._turn += 1
        context = f"turn-{self._turn}"
        opening: dict[str, Any] = {"type": "open", "context_id": context, "model": self.model, "voice": self.voice}
        if self.speed is not None:
            opening["speed"] = self.speed
        self._send({**opening, "interrupt": interrupt})
        failure: list[BaseException] = []
        sender = threading.Thread(target=self._send_all, args=(context, pieces, failure), daemon=True)
        sender.start()
        try:
            while True:
                message = json.loads(self.socket.recv(timeout=self.timeout))
                if message.get("context_id") not in (context, None):
                    continue  # the tail of an interrupted turn
                if message["type"] == "opened":
                    self.sample_rate = int(message["sample_rate"])
                elif message["type"] == "audio":
                    yield base64.b64decode(message["audio"])
                elif message["type"] == "error":
                    raise SpeechStreamError(message["error"])
                elif message["type"] == "done":
                    return
        finally:
            sender.join(timeout=self.timeout)
            if failure:
                raise failure[0]

    def _send_all(self, context: str, pieces: Iterable[str], failure: list[BaseException]) -> None:
        try:
            for piece in pieces:
                if piece:
                    self._send({"type": "text", "context_id": context, "text": piece})
            self._send({"type": "close", "context_id": context})
        except BaseException as exc:  # reported by speak(), in the caller's thread
            failure.append(exc)
            self._send({"type": "cancel", "context_id": context})

    def _send(self, message: dict[str, Any]) -> None:
        self.socket.send(json.dumps(message))

    def close(self) -> None:
        self._connection.__exit__(None, None, None)

    def __enter__(self) -> SpeechStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
