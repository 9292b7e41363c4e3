"""Request, error and stream-event shapes of the OpenAI-compatible speech endpoint.

``POST /v1/audio/speech`` takes ``SpeechRequest``. Errors leave as OpenAI's
``{"error": {"message", "type", "param", "code"}}`` (build them with ``error_response``;
``install_error_handlers`` makes FastAPI's validation errors a 400 in that shape, with
``param`` naming the offending field and a message built from the model's own schema:
``speed: must be a number between 0.25 and 4.0, or null, got 9``). The rest of the HTTP edge
(404/405/413/415/401/500 and admission) is in ``serve_app.http``. With ``stream_format="sse"`` the body is
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
import functools
import json
import re
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from addons.engine.options import InputFormat, Seed, Speed, option
from addons.text.pls import LEXICON_ERROR, LexiconInput
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
    "body_error_message",
    "error_response",
    "field_error_message",
    "install_error_handlers",
    "sse_event",
]

SSE_MEDIA_TYPE = "text/event-stream"
ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
MAX_INPUT_CHARS = 4096  # OpenAI's limit; a longer text is a client error there too


class _Strict(BaseModel):
    """Base for edge models: unknown keys are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class VoiceId(_Strict):
    """OpenAI's custom-voice reference, ``{"id": "voice_1234"}``."""

    id: str = Field(min_length=1, description="Name of the voice within the model.")


class SpeechRequest(_Strict):
    """Body of ``POST /v1/audio/speech``, field for field as OpenAI's."""

    model: str = Field(
        min_length=1,
        description="A deployed Chorus model (addon), e.g. 'chorus-fast', or an OpenAI name mapped to one ('tts-1').",
    )
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
            "the server nothing and keep exact length; opus is Ogg Opus (resampled to a rate "
            "Opus carries), aac is ADTS."
        ),
    )
    speed: Speed | None = option("speed")
    stream_format: Literal["audio", "sse"] = Field(
        default="audio",
        description="'audio': the encoded file as a chunked body; 'sse': server-sent events.",
    )
    lexicon: LexiconInput = option("lexicon")
    input_format: InputFormat = option("input_format")
    seed: Seed | None = option("seed")
    normalize: bool = option("normalize")
    timestamps: list[Literal["sentence", "ssml", "word", "phoneme"]] = Field(
        default_factory=list,
        description=(
            "Speech marks to stream beside the audio as 'speech.marks' events (needs stream_format 'sse' and "
            "a model whose card says speech_marks): when each sentence, word and phoneme is heard, and 'ssml': "
            "when each <mark name> of an SSML input is reached."
        ),
    )
    instructions: str | None = Field(
        default=None,
        max_length=MAX_INPUT_CHARS,
        description=(
            "Style instructions. Accepted so OpenAI clients that always send them keep "
            "working; a voice that cannot follow them ignores them, as OpenAI's tts-1 does, "
            "and the response says so in the X-Chorus-Instructions header."
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
    """The top-level body field (or query parameter) an error location points at.

    Locations look like ``("body", "voice", "VoiceId", "id")``; below the top level
    pydantic inserts union-member tags, so only the top-level name is reliable.
    """
    if len(loc) >= 2 and loc[0] in ("body", "query") and isinstance(loc[1], str):
        return loc[1]
    return None


SEND_JSON = "send a JSON object with Content-Type: application/json"
#: Error types whose message already says what is wrong and what to send (the code is the type).
_OWN_WORDS = frozenset({"unsupported_format", LEXICON_ERROR})
_RANGE_ERRORS = frozenset(
    {"string_too_short", "string_too_long", "greater_than", "greater_than_equal", "less_than", "less_than_equal"}
)


def _json_kind(value: Any) -> str:
    """How a JSON value reads in a message: its type, with the value itself when short."""
    if isinstance(value, str):
        return json.dumps(value) if len(value) <= 40 else f"a string of {len(value)} characters"
    if isinstance(value, bytes):
        return "a non-JSON body"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return type(value).__name__
    if len(text) <= 40:
        return text
    return "an object" if isinstance(value, dict) else "an array" if isinstance(value, list) else text[:40]


def _expected(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    """What a JSON schema property accepts, in words: 'a string of 1-4096 characters'."""
    if "$ref" in prop:
        prop = defs.get(prop["$ref"].rsplit("/", 1)[-1], {})
    if "anyOf" in prop:
        options = [p for p in prop["anyOf"] if p.get("type") != "null"]
        words = " or ".join(_expected(p, defs) for p in options)
        return f"{words}, or null" if len(options) < len(prop["anyOf"]) else words
    if "enum" in prop:
        return "one of " + ", ".join(json.dumps(v) for v in prop["enum"])
    kind = prop.get("type")
    if kind == "string":
        low, high = prop.get("minLength"), prop.get("maxLength")
        if low and high:
            return f"a string of {low}-{high} characters"
        if high:
            return f"a string of at most {high} characters"
        return "a non-empty string" if low == 1 else f"a string of at least {low} characters" if low else "a string"
    if kind in ("number", "integer"):
        noun = "an integer" if kind == "integer" else "a number"
        low, high = prop.get("minimum"), prop.get("maximum")
        if low is not None and high is not None:
            return f"{noun} between {low} and {high}"
        if low is not None:
            return f"{noun} of at least {low}"
        return f"{noun} of at most {high}" if high is not None else noun
    if kind == "object":
        fields = ", ".join(f'"{k}": {_expected(v, defs)}' for k, v in prop.get("properties", {}).items())
        return f"an object {{{fields}}}"
    return {"boolean": "true or false", "array": "an array"}.get(str(kind), "a valid value")


def _purpose(prop: dict[str, Any]) -> str:
    """The first clause of a field's description, as a phrase: 'text to speak'."""
    first = re.split(r"[.,;]", prop.get("description", ""), maxsplit=1)[0].strip()
    return first[:1].lower() + first[1:]


def field_error_message(error: dict[str, Any], schema: dict[str, Any]) -> str:
    """One validation error as '<field>: <what is wrong> — <what to send>'.

    ``schema`` is the JSON schema of the body model; it supplies each field's
    constraints, so messages follow the model instead of restating it.
    """
    loc = tuple(error.get("loc", ()))
    param = _param_of(loc) or ".".join(str(part) for part in loc[1:]) or "request"
    kind, value = str(error.get("type")), error.get("input")
    props, defs = schema.get("properties", {}), schema.get("$defs", {})
    prop = props.get(param) if loc[:1] == ("body",) else None
    if kind == "extra_forbidden":
        return f"{param}: unknown field; accepted fields are {', '.join(props)}"
    if prop is None or kind in _OWN_WORDS:
        return f"{param}: {error.get('msg', 'invalid value')}"
    if kind == "value_error":  # a validator's own words (a lexicon document that cannot be read, ...)
        return f"{param}: {str(error.get('msg', 'invalid value')).removeprefix('Value error, ')}"
    expected = _expected(prop, defs)
    if kind == "missing":
        purpose = _purpose(prop)
        return (
            f"{param}: field required — {purpose}, {expected}" if purpose else f"{param}: field required — {expected}"
        )
    if kind in _RANGE_ERRORS and isinstance(value, str):
        return f"{param}: must be {expected}, got {len(value)} characters"
    shown = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _json_kind(value)
    return f"{param}: must be {expected}, got {shown}"


def body_error_message(error: dict[str, Any]) -> tuple[int, str, str]:
    """Status, message and code for an error about the body as a whole (not one field)."""
    kind, value = error.get("type"), error.get("input")
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "syntax error")
        loc = tuple(error.get("loc", ()))
        where = f" at character {loc[1]}" if len(loc) > 1 and isinstance(loc[1], int) else ""
        return 400, f"request body is not valid JSON ({reason}{where}): {SEND_JSON}", "invalid_json"
    if kind == "missing":
        return 400, f"request body is missing: {SEND_JSON}", "missing_body"
    if isinstance(value, bytes):
        return 415, f"request body is not JSON: {SEND_JSON}", "unsupported_media_type"
    return 400, f"request body must be a JSON object, got {_json_kind(value)}: {SEND_JSON}", "body_not_object"


def _body_schema(request: Request) -> dict[str, Any]:
    """JSON schema of the matched route's body model, if it has one."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    model = getattr(getattr(body_field, "field_info", None), "annotation", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return _model_schema(model)
    return {}


@functools.cache
def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """400 in OpenAI's shape for the first validation error, as OpenAI reports one.

    ``code`` is pydantic's error type for field errors (``missing``, ``string_too_long``, ...);
    errors about the body as a whole get codes of their own (see ``body_error_message``).
    """
    assert isinstance(exc, RequestValidationError)
    first = dict(exc.errors()[0])
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid" or loc == ("body",):
        status, message, code = body_error_message(first)
        return error_response(status, message, code=code)
    message = field_error_message(first, _body_schema(request))
    return error_response(400, message, param=_param_of(loc), code=str(first.get("type")))


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


class SpeechMarksEvent(_Strict):
    """Chorus's own SSE event (asked for with ``timestamps``): speech marks of the audio, in order
    (a sentence's marks follow its audio; their times place them exactly in it)."""

    type: Literal["speech.marks"] = Field(default="speech.marks", description="Event type.")
    marks: list[dict[str, Any]] = Field(
        description=(
            "Marks: type (sentence, word, phoneme), value, start_ms, end_ms, start_sample, end_sample "
            "(in the audio), text_start, text_end (character offsets in input)."
        )
    )


def sse_event(event: SpeechAudioDelta | SpeechAudioDone | SpeechMarksEvent | ErrorBody) -> bytes:
    """Frame an event as OpenAI does: one ``data:`` line and a blank line, no ``event:``."""
    return b"data: " + event.model_dump_json().encode() + b"\n\n"
