"""The serving edge's schemas: validation errors name the field in OpenAI's error
shape, SSE events are framed as OpenAI's, the official client understands both, and
deployment options merge by layer into kwargs Ray accepts."""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import openai
import pytest
from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse
from fastapi.testclient import TestClient

from serve_app.audio_format import iter_encoded, make_encoder
from serve_app.options import DeploymentOptions, merge_deployment_options
from serve_app.schemas import (
    SSE_MEDIA_TYPE,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechRequest,
    SpeechUsage,
    error_response,
    install_error_handlers,
    sse_event,
)

SR = 24000
VALID = {"model": "m", "input": "Hello."}


def make_app() -> FastAPI:
    """A stand-in ingress: silence in the requested format and stream format."""
    app = FastAPI()
    app.state.busy_calls = 0
    install_error_handlers(app)

    @app.post("/v1/audio/speech")
    async def speech(req: SpeechRequest) -> Response:
        if req.model == "busy":
            app.state.busy_calls += 1
            # retry-after-ms (the client's own header) keeps the test fast.
            headers = {"Retry-After": "1", "retry-after-ms": "10"}
            return error_response(503, "overloaded", type="server_error", headers=headers)
        silence = [np.zeros(2400, np.float32)] * 2
        encoder = make_encoder(req.response_format, SR)
        parts = list(iter_encoded(encoder, silence))

        async def sse() -> AsyncIterator[bytes]:
            for part in parts:
                yield sse_event(SpeechAudioDelta.of(part))
            yield sse_event(SpeechAudioDone(usage=SpeechUsage.of(len(req.input), 4800)))

        async def audio() -> AsyncIterator[bytes]:
            for part in parts:
                yield part

        if req.stream_format == "sse":
            return StreamingResponse(sse(), media_type=SSE_MEDIA_TYPE)
        return StreamingResponse(audio(), media_type=encoder.media_type)

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(make_app())


def test_defaults() -> None:
    req = SpeechRequest.model_validate(VALID)
    assert (req.voice_name, req.response_format, req.speed, req.stream_format) == (
        "default",
        "mp3",
        None,  # the voice preset's speed, else the addon's default: resolved per model
        "audio",
    )
    assert SpeechRequest.model_validate({**VALID, "voice": {"id": "v2"}}).voice_name == "v2"


def test_every_field_is_described() -> None:
    for model in (SpeechRequest, SpeechUsage, SpeechAudioDelta, SpeechAudioDone):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "x"}, "model", "missing"),
        ({**VALID, "input": ""}, "input", "string_too_short"),
        ({**VALID, "input": "x" * 4097}, "input", "string_too_long"),
        ({**VALID, "speed": 4.5}, "speed", "less_than_equal"),
        ({**VALID, "speed": 0.1}, "speed", "greater_than_equal"),
        ({**VALID, "response_format": "ogg"}, "response_format", "literal_error"),
        ({**VALID, "response_format": "m4a"}, "response_format", "literal_error"),
        ({**VALID, "stream_format": "chunks"}, "stream_format", "literal_error"),
        ({**VALID, "voice": 7}, "voice", "string_type"),
        ({**VALID, "voice": {"name": "x"}}, "voice", "string_type"),
        ({**VALID, "lang": "en"}, "lang", "extra_forbidden"),
    ],
)
def test_validation_errors_name_the_field(client: TestClient, body: dict[str, Any], param: str, code: str) -> None:
    resp = client.post("/v1/audio/speech", json=body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"], error["type"]) == (
        param,
        code,
        "invalid_request_error",
    )
    assert error["message"].startswith(f"{param}: ")


def test_format_error_lists_the_formats_that_work(client: TestClient) -> None:
    resp = client.post("/v1/audio/speech", json={**VALID, "response_format": "m4a"})
    message = resp.json()["error"]["message"]
    assert all(f'"{fmt}"' in message for fmt in ("mp3", "opus", "aac", "flac", "wav", "pcm"))
    for fmt in ("mp3", "opus", "aac", "flac", "wav", "pcm"):  # and each of those works
        assert client.post("/v1/audio/speech", json={**VALID, "response_format": fmt}).status_code == 200


def test_invalid_json_is_a_400(client: TestClient) -> None:
    resp = client.post("/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] is None


def test_sse_events_decode_to_the_audio_file(client: TestClient) -> None:
    body = {**VALID, "response_format": "wav", "stream_format": "sse"}
    resp = client.post("/v1/audio/speech", json=body)
    assert resp.headers["content-type"].startswith(SSE_MEDIA_TYPE)
    blocks = [b for b in resp.text.split("\n\n") if b]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks)
    events = [json.loads(b[len("data: ") :]) for b in blocks]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1] == {
        "type": "speech.audio.done",
        "usage": {"input_tokens": 6, "output_tokens": 4800, "total_tokens": 4806},
    }
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert audio[:4] == b"RIFF" and len(audio) == 44 + 2 * 4800


def _openai_client(app: FastAPI) -> openai.AsyncOpenAI:
    """The official client talking to ``app`` in-process."""
    # openai 3.x is built on the httpx2 fork, older releases on httpx; use its own.
    httpx_name = openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0]
    transport = importlib.import_module(httpx_name).ASGITransport(app=app)
    http = openai.DefaultAsyncHttpxClient(transport=transport, base_url="http://test")
    return openai.AsyncOpenAI(api_key="unused", base_url="http://test/v1", http_client=http)


def test_official_client_streams_audio_and_sse() -> None:
    async def run() -> tuple[bytes, bytes]:
        oai = _openai_client(make_app())
        speech = oai.audio.speech.with_streaming_response
        async with speech.create(model="m", input="hi", voice="alloy", response_format="wav") as r:
            audio = b"".join([c async for c in r.iter_bytes()])
        async with speech.create(model="m", input="hi", voice="alloy", response_format="pcm", stream_format="sse") as r:
            sse = b"".join([c async for c in r.iter_bytes()])
        return audio, sse

    audio, sse = asyncio.run(run())
    assert audio[:4] == b"RIFF"
    # The client does not parse SSE for speech: the caller gets the raw event stream.
    assert sse.startswith(b'data: {"type":"speech.audio.delta"')


def test_official_client_raises_with_param_and_retries_503() -> None:
    app = make_app()

    async def run(**kw: Any) -> openai.APIStatusError:
        oai = _openai_client(app).with_options(max_retries=1)
        with pytest.raises(openai.APIStatusError) as info:
            await oai.audio.speech.create(**{"model": "m", "input": "hi", "voice": "a", **kw})
        return info.value

    bad = asyncio.run(run(speed=5))
    assert isinstance(bad, openai.BadRequestError) and bad.param == "speed"
    busy = asyncio.run(run(model="busy"))
    assert isinstance(busy, openai.InternalServerError) and busy.status_code == 503
    assert app.state.busy_calls == 2  # one retry, as max_retries=1 allows


# Deployment options: code defaults < addon hints < file overrides.

DEFAULTS = {"max_ongoing_requests": 8, "ray_actor_options": {"num_cpus": 0.25}}
NEURON_HINT = {
    "ray_actor_options": {"num_cpus": 1, "resources": {"neuron_cores": 1, "inf2_node": 0.01}},
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 4},
}


def test_later_layers_win_field_by_field() -> None:
    override = {
        "ray_actor_options": {"num_gpus": 1, "resources": {"gpu_node": 0.01}},
        "autoscaling_config": {"max_replicas": 8, "upscale_delay_s": 1},
    }
    merged = merge_deployment_options(DEFAULTS, NEURON_HINT, override)
    assert merged == {
        "max_ongoing_requests": 8,
        # num_cpus survives from the hint; resources is replaced, not unioned.
        "ray_actor_options": {"num_cpus": 1, "num_gpus": 1, "resources": {"gpu_node": 0.01}},
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 8, "upscale_delay_s": 1},
    }


def test_fixed_replicas_and_autoscaling_exclude_each_other() -> None:
    fixed = merge_deployment_options(DEFAULTS, NEURON_HINT, {"num_replicas": 3})
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    scaled = merge_deployment_options({"num_replicas": 2}, None, NEURON_HINT)
    assert "num_replicas" not in scaled and scaled["autoscaling_config"]["max_replicas"] == 4


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"replicas": 2}, "replicas"),
        ({"num_replicas": 2, "autoscaling_config": {"max_replicas": 3}}, "not both"),
        ({"ray_actor_options": {"resources": {"GPU": 1}}}, "use num_gpus"),
        ({"ray_actor_options": {"resources": {"neuron_cores": 0.5}}}, "whole number"),
        ({"autoscaling_config": {"min_replicas": 5, "max_replicas": 2}}, "min_replicas"),
        ({"max_queued_requests": 0}, "max_queued_requests"),
    ],
)
def test_invalid_overrides_name_layer_and_key(override: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        merge_deployment_options(DEFAULTS, NEURON_HINT, override)
    assert "override" in str(info.value)


def test_merged_min_is_checked_against_rays_default_max() -> None:
    with pytest.raises(ValueError, match="max_replicas"):
        merge_deployment_options(None, None, {"autoscaling_config": {"min_replicas": 3}})


def test_every_option_field_is_described() -> None:
    for name, field in DeploymentOptions.model_fields.items():
        assert field.description, name


def test_ray_accepts_the_merged_options() -> None:
    serve = pytest.importorskip("ray.serve")
    kwargs = merge_deployment_options(DEFAULTS, NEURON_HINT, {"max_queued_requests": 16})
    deployment = serve.deployment(type("Probe", (), {})).options(**kwargs)
    assert deployment.ray_actor_options == kwargs["ray_actor_options"]
