"""Every HTTP error the server can produce, over real HTTP to the Ray Serve app, in OpenAI's shape.

One Ray instance for the module. The app serves one tiny fixture voice with API keys on, room
for two speech streams, and a fixed-size text encoder that fails on long sentences (so a stream
can fail midway); a second application's ingress has broken handles, for the 500 path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient

from serve_app.http import HttpPolicy, install, json_depth, key_digests
from tests.shared_ray import serve_apps

pytestmark = [pytest.mark.ray, pytest.mark.shared_ray, pytest.mark.slow]

KEY = "test-key-not-secret"
OTHER_KEY = "sk-second-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}
SPEECH = "/v1/audio/speech"
SHORT = {"model": "tiny-fast", "input": "Hello there.", "response_format": "pcm"}
LONG_TEXT = "Hello there. " * 60  # many short sentences: a stream that takes a while, and never fails


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The error object of a response, checked to be JSON in OpenAI's shape with ``status``."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    expected_type = "server_error" if status >= 500 else "invalid_request_error"
    assert body["error"]["type"] == expected_type
    error: dict[str, Any] = body["error"]
    return error


@pytest.fixture(scope="module")
def server(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("ray")
    pytest.importorskip("ray.serve")
    import addons
    from serve_app.app import AppArgs, build_app
    from serve_app.ingress import Ingress, ModelInfo

    fragile = tmp_path_factory.mktemp("fragile") / "tiny-fast"
    shutil.copytree(fixture_dir / "tiny-fast", fragile)
    manifest = json.loads((fragile / "addon.json").read_text())
    manifest["networks"]["text_encoder"].update(receptive_field=None, static_length=12)
    (fragile / "addon.json").write_text(json.dumps(manifest))

    args = AppArgs(
        addons=[str(fragile)],
        context="static",
        max_concurrent_streams=2,
        api_keys=[KEY],
        deployments={"tiny-fast-decoder": {"num_replicas": 1}},  # the default two: test_serve_faults' concern
    )
    info = ModelInfo.of(addons.read_manifest(fragile))
    broken: Any = Ingress
    with serve_apps(
        (build_app(args), "chorus", "/"),
        (broken.bind({"tiny-fast": info}, {"tiny-fast": (None, None, None)}, HttpPolicy()), "broken", "/broken"),
    ) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as c:
        yield c


# -- routing ---------------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
def test_unknown_path_is_404(client: httpx.Client) -> None:
    error = _error(client.get("/v1/nothing-here"), 404)
    assert error["code"] == "not_found" and "/v1/nothing-here" in error["message"]


@pytest.mark.ray
@pytest.mark.slow
def test_wrong_method_is_405_with_allow(client: httpx.Client) -> None:
    response = client.get(SPEECH)
    error = _error(response, 405)
    assert response.headers["allow"] == "POST"
    assert error["code"] == "method_not_allowed" and "use POST" in error["message"]


# -- the body --------------------------------------------------------------------------------------
BODY_CASES = [
    # (content, content-type, status, code, fragment)
    (b'{"model": "tiny-fast", "input": ', "application/json", 400, "invalid_json", "not valid JSON"),
    (b'{"model": "tiny-fast", "input": "caf\xe9"}', "application/json", 400, "invalid_encoding", "not UTF-8"),
    (b"[" * 20_000 + b"]" * 20_000, "application/json", 400, "json_too_deep", "32 levels"),
    (b'{"a": ' * 5_000 + b"1" + b"}" * 5_000, "application/json", 400, "json_too_deep", "32 levels"),
    (b"", "application/json", 400, "missing_body", "body is missing"),
    (b'{"model": "tiny-fast", "input": "hi"}', "text/plain", 415, "unsupported_media_type", "'text/plain'"),
    (b"model=tiny-fast&input=hi", "application/x-www-form-urlencoded", 415, "unsupported_media_type", "Content-Type"),
    (b'["tiny-fast", "hi"]', "application/json", 400, "body_not_object", "got an array"),
    (b'"hi"', "application/json", 400, "body_not_object", "got a string"),
]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize(("content", "content_type", "status", "code", "fragment"), BODY_CASES)
def test_bad_bodies(
    client: httpx.Client, content: bytes, content_type: str, status: int, code: str, fragment: str
) -> None:
    error = _error(client.post(SPEECH, content=content, headers={"content-type": content_type}), status)
    assert error["code"] == code and fragment in error["message"]
    assert "application/json" in error["message"]  # every body error says what to send instead


FIELD_CASES = [
    # (body, param, code, the whole message)
    (
        {"model": "tiny-fast"},
        "input",
        "missing",
        "input: field required — text to speak, a string of 1-4096 characters",
    ),
    ({**SHORT, "speed": 9}, "speed", "less_than_equal", "speed: must be a number between 0.25 and 4.0, or null, got 9"),
    (
        {**SHORT, "speed": "fast"},
        "speed",
        "float_parsing",
        'speed: must be a number between 0.25 and 4.0, or null, got "fast"',
    ),
    ({**SHORT, "model": 7}, "model", "string_type", "model: must be a non-empty string, got 7"),
    (
        {**SHORT, "input": "x" * 5000},
        "input",
        "string_too_long",
        "input: must be a string of 1-4096 characters, got 5000 characters",
    ),
    (
        {**SHORT, "response_format": "ogg"},
        "response_format",
        "literal_error",
        'response_format: must be one of "mp3", "opus", "aac", "flac", "wav", "pcm", got "ogg"',
    ),
    (
        {**SHORT, "voice": {"name": "x"}},
        "voice",
        "string_type",
        'voice: must be a string or an object {"id": a non-empty string}, got {"name": "x"}',
    ),
]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize(("body", "param", "code", "message"), FIELD_CASES)
def test_field_errors_name_the_field_and_the_fix(
    client: httpx.Client, body: dict[str, Any], param: str, code: str, message: str
) -> None:
    error = _error(client.post(SPEECH, json=body), 400)
    assert (error["param"], error["code"], error["message"]) == (param, code, message)


@pytest.mark.ray
@pytest.mark.slow
def test_unknown_field_lists_the_accepted_ones(client: httpx.Client) -> None:
    error = _error(client.post(SPEECH, json={**SHORT, "loudness": 3}), 400)
    assert error["param"] == "loudness" and "accepted fields are model, input, voice" in error["message"]


# -- body size -------------------------------------------------------------------------------------
def _send_raw(url: str, head: bytes, parts: list[bytes]) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` and ``parts`` (a body left unfinished) on a socket; return the response read back."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=60) as sock:
        sock.sendall(head)
        for part in parts:
            sock.sendall(part)
        data = _receive(sock, b"")
        while b"\r\n\r\n" not in data:
            data = _receive(sock, data)
        head_bytes, body = data.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            body = _receive(sock, body)
    return int(lines[0].split()[1]), headers, body


def _receive(sock: socket.socket, data: bytes) -> bytes:
    more = sock.recv(65536)
    assert more, "the server closed the connection without a complete response"
    return data + more


def _request_head(path: str, framing: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", f"Authorization: Bearer {KEY}", "Content-Type: application/json"]
    return ("\r\n".join([*lines, framing]) + "\r\n\r\n").encode()


@pytest.mark.ray
@pytest.mark.slow
def test_a_10_mb_body_gets_413(client: httpx.Client) -> None:
    start = time.perf_counter()
    response = client.post(SPEECH, content=b" " * 10_000_000, headers=JSON)
    elapsed = time.perf_counter() - start
    error = _error(response, 413)
    assert error["code"] == "body_too_large" and "65536 bytes" in error["message"]
    print(f"10 MB body refused in {elapsed:.2f} s")


@pytest.mark.ray
@pytest.mark.slow
def test_413_comes_before_the_declared_body_is_sent(server: str) -> None:
    status, headers, body = _send_raw(server, _request_head(SPEECH, "Content-Length: 10000000"), [])
    assert status == 413 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "body_too_large"


@pytest.mark.ray
@pytest.mark.slow
def test_a_chunked_body_is_cut_at_the_limit(server: str) -> None:
    chunk = b" " * 40_000
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    # Two chunks pass the 64 KiB limit; the upload is never finished, yet the answer comes.
    status, _, body = _send_raw(server, _request_head(SPEECH, "Transfer-Encoding: chunked"), [framed, framed])
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"


# -- overload ---------------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
def test_streams_over_the_limit_get_json_503_with_retry_after(client: httpx.Client) -> None:
    with contextlib.ExitStack() as streams:
        flowing = []  # an iterator dropped early would close its connection, and end the stream
        for _ in range(2):  # both hold their place: headers and audio are flowing
            response = streams.enter_context(client.stream("POST", SPEECH, json={**SHORT, "input": LONG_TEXT}))
            assert response.status_code == 200
            flowing.append(response.iter_bytes())
            next(flowing[-1])
        refused = client.post(SPEECH, json=SHORT)
        error = _error(refused, 503)
        assert refused.headers["retry-after"] == "1" and error["code"] == "overloaded"
        assert client.get("/v1/models").status_code == 200  # only speech is limited
    deadline = time.monotonic() + 30  # the closed streams give their places back
    while (status := client.post(SPEECH, json=SHORT).status_code) == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200


# -- failures on the server ---------------------------------------------------------------------------
LEAKS = ("Traceback", "Error", "NoneType", "Actor", "Ray", 'File "')


@pytest.mark.ray
@pytest.mark.slow
def test_unexpected_exception_is_a_bare_500(server: str) -> None:
    response = httpx.post(f"{server}/broken{SPEECH}", json=SHORT, timeout=60)
    error = _error(response, 500)
    assert error["code"] == "internal_error"
    assert not any(leak in response.text for leak in LEAKS), response.text


@pytest.mark.ray
@pytest.mark.slow
def test_not_ready_is_a_503_without_internals(server: str) -> None:
    response = httpx.get(f"{server}/broken/ready", timeout=60)
    error = _error(response, 503)
    assert error["code"] == "not_ready" and response.headers["retry-after"] == "1"
    assert not any(leak in response.text for leak in LEAKS), response.text


@pytest.mark.ray
@pytest.mark.slow
def test_mid_stream_sse_error_says_what_to_do_and_nothing_internal(client: httpx.Client) -> None:
    from serve_app.ingress import MID_STREAM_FAILURE

    text = "Hello there. This second sentence is far too long for the fixed encoder size, so it fails."
    response = client.post(SPEECH, json={**SHORT, "input": text, "stream_format": "sse"})
    assert response.status_code == 200
    events = [json.loads(b.removeprefix("data: ")) for b in response.text.split("\n\n") if b.strip()]
    assert events[0]["type"] == "speech.audio.delta"
    assert events[-1] == {
        "error": {"message": MID_STREAM_FAILURE, "type": "server_error", "param": None, "code": "synthesis_failed"}
    }
    assert not any(e.get("type") == "speech.audio.done" for e in events)


def test_failure_mid_stream_never_looks_complete(client: httpx.Client) -> None:
    """The first sentence was fine (200, audio sent); the chunked body then ends without its terminator,
    so no client takes the short WAV for a whole one."""
    text = "Hello there. This second sentence is far too long for the fixed encoder size, so it fails."
    body = {**SHORT, "input": text, "response_format": "wav"}
    with pytest.raises(httpx.RemoteProtocolError), client.stream("POST", SPEECH, json=body) as response:
        assert response.status_code == 200
        for _ in response.iter_bytes():
            pass


# -- API keys ---------------------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer wrong"}, "invalid_api_key"),
        ({"Authorization": f"Basic {KEY}"}, "missing_api_key"),
        ({"Authorization": f"Bearer {KEY}x"}, "invalid_api_key"),
    ],
)
def test_without_the_right_key_401(server: str, headers: dict[str, str], code: str) -> None:
    for method, path in (("GET", "/v1/models"), ("POST", SPEECH), ("GET", "/nowhere"), ("GET", "/openapi.json")):
        response = httpx.request(method, f"{server}{path}", json=SHORT, headers=headers, timeout=60)
        error = _error(response, 401)
        assert response.headers["www-authenticate"] == "Bearer" and error["code"] == code
        assert KEY not in response.text


@pytest.mark.ray
@pytest.mark.slow
def test_probes_need_no_key(server: str) -> None:
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server}/ready", timeout=30).status_code == 200


@pytest.mark.ray
@pytest.mark.slow
def test_openai_client_with_and_without_the_key(server: str, tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    good = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY)
    assert {m.id for m in good.models.list()} == {"tiny-fast"}
    out = tmp_path / "speech.pcm"
    with good.audio.speech.with_streaming_response.create(
        model="tiny-fast", voice="default", input="Hello there.", response_format="pcm"
    ) as response:
        response.stream_to_file(out)
    assert out.stat().st_size > 0
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.code == "invalid_api_key"


def test_keys_reach_the_deployment_only_as_digests(fixture_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.cloudpickle

    from serve_app.app import AppArgs, build_app

    monkeypatch.setenv("CHORUS_API_KEYS", f" {OTHER_KEY} ,, ")
    digest = hashlib.sha256(b"third").hexdigest()
    args = AppArgs(addons=[str(fixture_dir / "tiny-fast")], api_keys=[KEY, f"sha256:{digest}"])
    assert KEY not in repr(args) and KEY not in str(args.model_dump())
    application = build_app(args)
    policy = application._bound_deployment._replica_config.init_args[2]
    assert set(policy.api_key_digests) == {hashlib.sha256(k.encode()).hexdigest() for k in (KEY, OTHER_KEY)} | {digest}
    blob = ray.cloudpickle.dumps(application)
    assert KEY.encode() not in blob and OTHER_KEY.encode() not in blob


# -- pieces, in process ---------------------------------------------------------------------------------
def test_key_digests_and_json_depth() -> None:
    assert key_digests(["a", " a ", "", f"sha256:{'0' * 64}"]) == tuple(
        sorted({hashlib.sha256(b"a").hexdigest(), "0" * 64})
    )
    assert json_depth(b'{"a": [1, {"b": "[[[[{{{{"}], "c": "\\"[["}') == 3
    assert json_depth(b"1") == 0


def test_plain_text_errors_from_elsewhere_become_json() -> None:
    """Ray installs plain-text handlers of its own (e.g. 503 for BackPressureError)."""
    app = FastAPI()
    install(app, HttpPolicy)

    @app.get("/busy")
    async def busy() -> PlainTextResponse:
        return PlainTextResponse("Request dropped due to backpressure", status_code=503)

    response = TestClient(app).get("/busy")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "overloaded"
    assert "backpressure" not in response.text


def test_admission_counts_streams_in_flight() -> None:
    app = FastAPI()
    install(app, lambda: HttpPolicy(max_concurrent_streams=1), stream_paths=("/slow",))
    entered, release = threading.Event(), threading.Event()

    @app.post("/slow")
    def slow() -> dict[str, str]:
        entered.set()
        release.wait(30)
        return {"ok": "yes"}

    with TestClient(app) as c:
        first = threading.Thread(target=lambda: c.post("/slow"))
        first.start()
        assert entered.wait(30)
        refused = c.post("/slow")
        release.set()
        first.join()
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
        assert c.post("/slow").status_code == 200
