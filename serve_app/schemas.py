"""Request, error and stream-event shapes of the OpenAI-compatible speech endpoint.

``POST /v1/audio/speech`` takes ``SpeechRequest``. Errors leave as OpenAI's
``{"error": {"message", "type", "param", "code"}}`` (build them with ``error_response``;
``install_error_handlers`` makes FastAPI's validation errors a 400 in that shape, with
``param`` naming the offending field). With ``stream_format="sse"`` the body is
``text/event-stream`` of ``data: <json>`` lines: ``speech.audio.delta`` events carrying
base64 pieces of the encoded file, then one ``speech.audio.done`` with usage.

The official ``openai`` client (3.x) treats both stream formats as opaque bytes: it
sends ``Accept: application/octet-stream`` even for SSE and never parses the events, so
the server must not negotiate on ``Accept``. On 429 and 5xx it retries (twice by
default), waiting for ``Retry-After`` when that is at most 60 s; ``x-should-retry``
overrides its choice.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from serve_app.audio_format import UNSUPPORTED_FORMATS

__all__ = [
    "SSE_MEDIA_TYPE",
    "ErrorBody",
    "ErrorDetail",
    "SpeechAudioDelta",
    "SpeechAudioDone",
    "SpeechRequest",
    "SpeechUsage",
    "VoiceId",
    "error_response",
    "install_error_handlers",
    "sse_event",
]

SSE_MEDIA_TYPE = "text/event-stream"
ResponseFormat = Literal["mp3", "opus", "flac", "wav", "pcm"]
MAX_INPUT_CHARS = 4096  # OpenAI's limit; a longer text is a client error there too


class _Strict(BaseModel):
    """Base for edge models: unknown keys are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class VoiceId(_Strict):
    """OpenAI's custom-voice reference, ``{"id": "voice_1234"}``."""

    id: str = Field(min_length=1, description="Name of the voice within the model.")


class SpeechRequest(_Strict):
    """Body of ``POST /v1/audio/speech``, field for field as OpenAI's."""

    model: str = Field(min_length=1, description="Name of a deployed Chorus model (addon), e.g. 'ljspeech'.")
    input: str = Field(
        min_length=1,
        max_length=MAX_INPUT_CHARS,
        description=f"Text to speak, at most {MAX_INPUT_CHARS} characters.",
    )
    voice: str | VoiceId = Field(
        default="default",
        description=(
            "Voice (speaker) of the model, by name or as OpenAI's {'id': ...} object; "
            "OpenAI requires it, Chorus falls back to the model's default voice."
        ),
    )
    response_format: ResponseFormat = Field(
        default="mp3",
        description=(
            "Audio encoding. Defaults to mp3 as OpenAI does, so clients written for it "
            "(which save 'speech.mp3' without asking) keep working; wav and pcm cost "
            "the server nothing and keep exact length. aac is not available."
        ),
    )
    speed: float = Field(default=1.0, ge=0.25, le=4.0, description="Speaking rate factor, 0.25 to 4.0.")
    stream_format: Literal["audio", "sse"] = Field(
        default="audio",
        description="'audio': the encoded file as a chunked body; 'sse': server-sent events.",
    )
    instructions: str | None = Field(
        default=None,
        max_length=MAX_INPUT_CHARS,
        description=(
            "Style instructions. Accepted so OpenAI clients that always send them keep "
            "working; voices that cannot follow instructions ignore them, as OpenAI's "
            "tts-1 does."
        ),
    )

    @field_validator("response_format", mode="before")
    @classmethod
    def _explain_unsupported(cls, value: Any) -> Any:
        """Turn OpenAI formats we cannot encode into a reason, not a bare 'not one of'."""
        if isinstance(value, str) and value in UNSUPPORTED_FORMATS:
            raise PydanticCustomError(
                "unsupported_format",
                "'{fmt}' is not supported: {reason}",
                {"fmt": value, "reason": UNSUPPORTED_FORMATS[value]},
            )
        return value

    @property
    def voice_name(self) -> str:
        """The voice as a plain name, whichever form the client used."""
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice


class ErrorDetail(_Strict):
    """The inner object of an OpenAI error body."""

    message: str = Field(description="Human-readable explanation.")
    type: str = Field(description="Error class, e.g. 'invalid_request_error', 'server_error'.")
    param: str | None = Field(default=None, description="Request field at fault, if any.")
    code: str | None = Field(default=None, description="Machine-readable code, if any.")


class ErrorBody(_Strict):
    """OpenAI's error envelope, ``{"error": {...}}``."""

    error: ErrorDetail = Field(description="What went wrong.")


def error_response(
    status_code: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSONResponse with an OpenAI-shaped error body.

    For overload answer 503 (or 429) with ``Retry-After``: the openai client then
    retries by itself.
    """
    detail = ErrorDetail(message=message, type=type, param=param, code=code)
    return JSONResponse(ErrorBody(error=detail).model_dump(), status_code=status_code, headers=headers)


def _param_of(loc: tuple[int | str, ...]) -> str | None:
    """The top-level body field an error location points at.

    Locations look like ``("body", "voice", "VoiceId", "id")``; below the top level
    pydantic inserts union-member tags, so only the top-level name is reliable.
    """
    if len(loc) >= 2 and loc[0] == "body" and isinstance(loc[1], str):
        return loc[1]
    return None


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """400 in OpenAI's shape for the first validation error, as OpenAI reports one."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    param = _param_of(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        message = "The request body is not valid JSON."
    elif param is not None:
        message = f"{param}: {message}"
    return error_response(400, message, param=param, code=str(first.get("type")))


def install_error_handlers(app: FastAPI) -> None:
    """Make request validation failures OpenAI-shaped 400s instead of FastAPI's 422."""
    app.add_exception_handler(RequestValidationError, _validation_error_handler)


class SpeechUsage(_Strict):
    """Usage in ``speech.audio.done``. Chorus voices have no tokens: by convention the
    ingress reports input characters and output audio samples."""

    input_tokens: int = Field(ge=0, description="Input size (characters of input).")
    output_tokens: int = Field(ge=0, description="Output size (audio samples).")
    total_tokens: int = Field(ge=0, description="input_tokens + output_tokens.")

    @classmethod
    def of(cls, input_chars: int, output_samples: int) -> SpeechUsage:
        """Usage with the total filled in."""
        return cls(
            input_tokens=input_chars,
            output_tokens=output_samples,
            total_tokens=input_chars + output_samples,
        )


class SpeechAudioDelta(_Strict):
    """One SSE event with the next bytes of the encoded file, base64."""

    type: Literal["speech.audio.delta"] = Field(default="speech.audio.delta", description="Event type.")
    audio: str = Field(description="Base64 of the next bytes of the encoded audio file.")

    @classmethod
    def of(cls, data: bytes) -> SpeechAudioDelta:
        """Event carrying ``data``."""
        return cls(audio=base64.b64encode(data).decode("ascii"))


class SpeechAudioDone(_Strict):
    """The last SSE event of a successful stream."""

    type: Literal["speech.audio.done"] = Field(default="speech.audio.done", description="Event type.")
    usage: SpeechUsage = Field(description="Size of the request and of the audio.")


def sse_event(event: SpeechAudioDelta | SpeechAudioDone | ErrorBody) -> bytes:
    """Frame an event as OpenAI does: one ``data:`` line and a blank line, no ``event:``."""
    return b"data: " + event.model_dump_json().encode() + b"\n\n"
