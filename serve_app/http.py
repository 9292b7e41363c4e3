"""The HTTP edge of the ingress: every refusal in OpenAI's error shape, most before FastAPI runs.

``install(app, policy, ...)`` puts pure ASGI middleware in front of the FastAPI app (outermost
first) and error handlers behind it:

* ``ErrorShapeMiddleware``: any error response that is not JSON (Starlette's or Ray's own
  plain-text ones) leaves as ``{"error": {...}}``, keeping ``Allow``, ``WWW-Authenticate``
  and ``Retry-After``.
* ``ApiKeyMiddleware``: with keys configured, ``Authorization: Bearer <key>`` on every path
  but the health probes; only SHA-256 digests of the keys are held and compared.
* ``BodyLimitMiddleware``: 413 from ``Content-Length`` before a byte is read; a chunked body
  is counted as it arrives and refused at the limit, never buffered past it.
* ``AdmissionMiddleware``: at most ``max_concurrent_streams`` speech requests in flight per
  ingress replica; the next one gets 503 with ``Retry-After`` at once. A deliberately small
  piece, to be replaced by capacity-based admission.
* ``JSONBodyRoute`` (the app's route class): a body must be UTF-8 JSON, an object, nested at
  most ``MAX_JSON_DEPTH`` deep, sent as ``application/json``; checked before FastAPI parses it.
* Handlers: 404/405 and FastAPI's own ``HTTPException``s, and any unexpected exception as a
  500 with no internals (the details go to the replica log).

The limits come from ``policy()``, called per request: in a Serve replica it reads the ingress
instance, which got its ``HttpPolicy`` from ``build_app``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Collection, Coroutine, Iterable
from http import HTTPStatus
from itertools import accumulate
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.schemas import SEND_JSON, ErrorBody, error_response, install_error_handlers

__all__ = [
    "API_KEYS_ENV",
    "ERROR_RESPONSES",
    "MAX_JSON_DEPTH",
    "HttpPolicy",
    "install",
    "key_digests",
]

logger = logging.getLogger("ray.serve")

API_KEYS_ENV = "CHORUS_API_KEYS"
MAX_JSON_DEPTH = 32  # a speech request needs 2 (the body and a voice object)
RETRY_AFTER_S = "1"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_KEPT_HEADERS = ("allow", "www-authenticate", "retry-after")

# Documented on every operation; "4XX"/"5XX" also stop FastAPI from advertising its 422.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "model": ErrorBody,
        "description": (
            "Client error: 400 invalid request (param names the field), 401 missing or wrong API key "
            "(when keys are configured), 404 unknown model or path, 405 wrong method, 413 body too "
            "large, 415 body not application/json."
        ),
    },
    "5XX": {
        "model": ErrorBody,
        "description": "Server error: 500 internal error, 503 overloaded or not ready (with Retry-After).",
    },
}


class HttpPolicy(BaseModel):
    """Limits and credentials of the HTTP edge, as the ingress receives them from ``build_app``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Largest request body accepted, bytes.")
    max_concurrent_streams: int = Field(64, ge=1, description="Speech requests in flight per ingress replica.")
    admission: bool = Field(True, description="Refuse a stream a model cannot serve in real time.")
    api_key_digests: tuple[str, ...] = Field(
        (), description="SHA-256 hex digests of the accepted API keys; empty turns authentication off."
    )

    @field_validator("api_key_digests")
    @classmethod
    def _hex_digests(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not all(_DIGEST.match(d) for d in v):
            raise ValueError("api_key_digests must be lowercase SHA-256 hex digests")
        return v


def key_digests(keys: Iterable[str]) -> tuple[str, ...]:
    """SHA-256 hex digests of API keys; an entry ``sha256:<hex>`` is taken as a digest already."""
    digests = set()
    for key in (k.strip() for k in keys):
        if not key:
            continue
        if key.startswith("sha256:") and _DIGEST.match(key[7:]):
            digests.add(key[7:])
        else:
            digests.add(hashlib.sha256(key.encode()).hexdigest())
    return tuple(sorted(digests))


def _route_path(scope: Scope) -> str:
    """The path within the application (without a Serve ``route_prefix``), as Starlette routes it."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return str(path)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


# -- middleware ------------------------------------------------------------------------------------
class ErrorShapeMiddleware:
    """Rewrite error responses that are not JSON into OpenAI's shape (status and key headers kept)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None

        async def shaped_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400 and not _is_json(message):
                held = message
                return
            if held is None:
                await send(message)
            elif not message.get("more_body", False):  # the plain-text body is dropped
                await _plain_to_json(held)(scope, receive, send)

        await self.app(scope, receive, shaped_send)


def _is_json(start: Message) -> bool:
    for key, value in start.get("headers", ()):
        if key.lower() == b"content-type":
            return bytes(value).split(b";")[0].strip().lower() == b"application/json"
    return False


def _plain_to_json(start: Message) -> Response:
    status = int(start["status"])
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start.get("headers", ())}
    kept = {k: headers[k] for k in _KEPT_HEADERS if k in headers}
    if status in (429, 503):
        kept.setdefault("retry-after", RETRY_AFTER_S)
    code = {429: "overloaded", 503: "overloaded", 500: "internal_error"}.get(status) or _status_code(status)
    try:
        phrase = HTTPStatus(status).phrase.lower()
    except ValueError:
        phrase = "error"
    kind = "server_error" if status >= 500 else "invalid_request_error"
    retry = "; retry shortly" if status in (429, 503) else ""
    return error_response(status, f"{phrase}{retry}", type=kind, code=code, headers=kept or None)


class ApiKeyMiddleware:
    """Bearer-token authentication when the policy holds key digests; ``open_paths`` stay open."""

    def __init__(self, app: ASGIApp, policy: Callable[[], HttpPolicy], open_paths: Collection[str] = ()) -> None:
        self.app, self.policy, self.open_paths = app, policy, frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        digests = self.policy().api_key_digests if scope["type"] in ("http", "websocket") else ()
        if not digests or _route_path(scope) in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = _bearer(_header(scope, b"authorization"))
        if token is None:
            message, code = "missing API key: send it as the header 'Authorization: Bearer <key>'", "missing_api_key"
        elif not _known(token, digests):
            message, code = "invalid API key (the key is not accepted by this server)", "invalid_api_key"
        else:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # refused before the handshake: HTTP 403, reason in the close
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        headers = {"WWW-Authenticate": "Bearer"}
        await error_response(401, message, code=code, headers=headers)(scope, receive, send)


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _known(token: str, digests: Collection[str]) -> bool:
    presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
    found = False
    for digest in digests:  # every digest is compared, so timing does not tell which matched
        found |= hmac.compare_digest(presented, digest)
    return found


class BodyLimitMiddleware:
    """413 for bodies over ``max_body_bytes``; reads at most that much, then replays it to the app."""

    def __init__(self, app: ASGIApp, policy: Callable[[], HttpPolicy]) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.policy().max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending its body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(limit)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _too_large(limit: int) -> Response:
    message = f"request body is larger than {limit} bytes; a speech request needs far less ({SEND_JSON})"
    return error_response(413, message, code="body_too_large")


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect a streaming response listens for

    return replayed


class AdmissionMiddleware:
    """At most ``max_concurrent_streams`` POSTs to ``paths`` in flight in this replica; 503 beyond.

    A request holds its place until its response (the whole audio stream) is finished.
    """

    def __init__(self, app: ASGIApp, policy: Callable[[], HttpPolicy], paths: Collection[str] = ()) -> None:
        self.app, self.policy, self.paths = app, policy, frozenset(paths)
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limited = scope["type"] == "http" and scope["method"] == "POST" and _route_path(scope) in self.paths
        if not limited:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.policy().max_concurrent_streams:
            message = "the server is busy: every speech stream is in use; retry after the Retry-After delay"
            refusal = error_response(
                503, message, type="server_error", code="overloaded", headers={"Retry-After": RETRY_AFTER_S}
            )
            await refusal(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


# -- the JSON body, after routing --------------------------------------------------------------------
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(_DEPTH_STEP)))


def json_depth(body: bytes) -> int:
    """How deep arrays and objects nest in ``body``, without parsing it (strings are skipped)."""
    brackets = _STRINGS.sub(b"", body).translate(None, delete=_NOT_BRACKETS)
    return max(accumulate(_DEPTH_STEP[b] for b in brackets), default=0)


def json_body_problem(content_type: str | None, body: bytes) -> Response | None:
    """Why ``body`` is not a JSON object a route can validate, as an error response; None if it is."""
    if not body:
        return error_response(400, f"request body is missing: {SEND_JSON}", code="missing_body")
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        sent = f"Content-Type {media!r}" if media else "no Content-Type"
        return error_response(415, f"{sent} is not accepted: {SEND_JSON}", code="unsupported_media_type")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"request body is not UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start}): {SEND_JSON}"
        return error_response(400, message, code="invalid_encoding")
    if json_depth(body) > MAX_JSON_DEPTH:
        message = f"request body nests arrays or objects more than {MAX_JSON_DEPTH} levels deep: {SEND_JSON}"
        return error_response(400, message, code="json_too_deep")
    try:
        value = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        return error_response(400, f"request body is not valid JSON ({exc}): {SEND_JSON}", code="invalid_json")
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(type(value), "a number")
        message = f"request body must be a JSON object, got {kind}: {SEND_JSON}"
        return error_response(400, message, code="body_not_object")
    return None


class JSONBodyRoute(APIRoute):
    """A route whose body, when it takes one, is checked by ``json_body_problem`` before FastAPI parses it.

    Running after routing keeps 404 and 405 ahead of body errors.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            problem = json_body_problem(request.headers.get("content-type"), await request.body())
            if problem is not None:
                return problem
            response: Response = await handler(request)
            return response

        return checked


# -- handlers ------------------------------------------------------------------------------------------
async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's and FastAPI's HTTPExceptions (unknown path, wrong method, ...) in our shape."""
    assert isinstance(exc, StarletteHTTPException)
    path = request.url.path[:200]
    headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() in _KEPT_HEADERS} or None
    if exc.status_code == 404:
        return error_response(404, f"no route {path!r} (see /docs for the API)", code="not_found")
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"method {request.method} is not allowed on {path!r}; use {allowed}"
        return error_response(405, message, code="method_not_allowed", headers=headers)
    kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
    return error_response(
        exc.status_code, str(exc.detail), type=kind, code=_status_code(exc.status_code), headers=headers
    )


def _status_code(status: int) -> str:
    """A code for an error no handler named: the status's phrase, e.g. ``not_found``, ``http_499``."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Any unexpected exception: a 500 that says nothing of the server's insides; the log gets it all."""
    logger.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    message = "internal server error: the request failed on the server; retry it, or report it if it persists"
    return error_response(500, message, type="server_error", code="internal_error")


def install(
    app: FastAPI,
    policy: Callable[[], HttpPolicy],
    *,
    stream_paths: Collection[str] = (),
    open_paths: Collection[str] = (),
) -> None:
    """Install the error shape, limits and authentication on ``app``, before its routes are declared.

    ``stream_paths`` are admission-limited POST paths; ``open_paths`` need no API key (health probes).
    """
    install_error_handlers(app)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.router.route_class = JSONBodyRoute
    app.router.responses = {**ERROR_RESPONSES, **app.router.responses}
    # add_middleware puts each one outside the previous: the last added runs first.
    app.add_middleware(AdmissionMiddleware, policy=policy, paths=stream_paths)
    app.add_middleware(BodyLimitMiddleware, policy=policy)
    app.add_middleware(ApiKeyMiddleware, policy=policy, open_paths=open_paths)
    app.add_middleware(ErrorShapeMiddleware)
