"""Fuzz the HTTP API from its own OpenAPI schema (schemathesis), against the real Ray Serve app.

Every operation in ``/openapi.json`` gets generated requests, valid and invalid; the server must
never answer 5xx, every status must be one the schema documents, and every error must be JSON
in OpenAI's shape. A quarter of the speech bodies are pointed at the deployed model with a short
input, so real synthesis runs too without making the run slow. ``make fuzz`` runs this alone.

(Plain ``@given`` over each operation's strategy, not schemathesis's pytest plugin: its lazy
fixture loader does not run under pytest 9.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.shared_ray, pytest.mark.slow]

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode, checks  # noqa: E402

MODEL = "tiny-universal"
SPEECH = "/v1/audio/speech"
MAX_EXAMPLES = 40  # per operation, half valid and half invalid requests on average
SPOKEN_CHARS = 24  # bodies sent to the real model keep this much input: synthesis stays quick


@pytest.fixture(scope="module")
def server(fused_app: str) -> str:
    """The session's fused app (tests/conftest.py): the fuzzing does not depend on how the app
    vocodes, and this module then also checks the fused path's audio and marks."""
    return fused_app


@pytest.fixture(scope="module")
def operations(server: str) -> list[Any]:
    """Every operation of the running app's own ``/openapi.json``."""
    loaded = schemathesis.openapi.from_url(f"{server}/openapi.json", timeout=60)
    found = [result.ok() for result in loaded.get_all_operations()]
    assert any(op.path == SPEECH for op in found)
    return found


def _check(case: Any, response: Any) -> None:
    """No 5xx, a documented status, a body matching its schema; any error JSON in OpenAI's shape."""
    case.validate_response(
        response,
        checks=[checks.not_a_server_error, checks.status_code_conformance, checks.response_schema_conformance],
    )
    if response.status_code >= 400:
        where = f"{case.method} {case.formatted_path} -> {response.status_code}"
        content_type = response.headers.get("content-type", [""])[0]  # lowercase names, lists of values
        assert content_type.startswith("application/json"), (where, content_type, response.text[:300])
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, (where, body)
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], (where, body)


def _speak(case: Any) -> None:
    """Point a speech body at the deployed model with a short input: real synthesis, quickly."""
    if case.path == SPEECH and isinstance(case.body, dict):
        case.body["model"] = MODEL
        if isinstance(case.body.get("input"), str):
            case.body["input"] = case.body["input"][:SPOKEN_CHARS]


def test_no_server_errors_and_every_error_in_shape(operations: list[Any]) -> None:
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    for operation in operations:
        cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))

        @given(case=cases, spoken=st.integers(0, 3))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            phases=[Phase.generate],  # no shrinking: a failure is reported as found
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def fuzz(case: Any, spoken: int) -> None:
            if spoken == 0:  # a quarter of the speech bodies reach the model
                _speak(case)
            _check(case, case.call(timeout=60))

        fuzz()


def test_fused_vocoder_gives_the_in_process_audio_and_marks(server: str, fixture_dir: Path) -> None:
    """AppArgs.fused_vocoder: no vocoder deployment; the bytes and speech marks over HTTP are the
    in-process ones (tests/test_serve.py checks the same of the unfused default)."""
    import base64
    import json

    import httpx

    import addons
    from serve_app.audio_format import make_encoder

    assert not any("vocoder" in name for name in serve.status().applications["fused"].deployments)
    text = "Fused or not. The same samples, to the bit; and marks."
    local = addons.load(fixture_dir / MODEL)
    chunks = list(local.stream(text, marks=["word", "phoneme"]))
    encoder = make_encoder("pcm", local.sample_rate)
    want = b"".join(encoder.encode(c.samples) for c in chunks)
    body = {"model": MODEL, "input": text, "response_format": "pcm", "sample_rate": "native"}
    got = httpx.post(f"{server}{SPEECH}", json=body, timeout=120)
    assert got.status_code == 200 and got.content == want
    body |= {"stream_format": "sse", "timestamps": ["word", "phoneme"]}
    sse = httpx.post(f"{server}{SPEECH}", json=body, timeout=120)
    events = [json.loads(b.removeprefix("data: ")) for b in sse.text.split("\n\n") if b.strip()]
    marks = [m for e in events if e["type"] == "speech.marks" for m in e["marks"]]
    assert marks == [m.as_dict() for c in chunks for m in c.marks] and marks
    assert b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta") == want
