"""A decoder replica killed under live streams: every stream completes, equal to an undisturbed run.

The ingress resumes each stream on the surviving replica from the sentence it was in (synthesis
is deterministic), skipping the samples already sent; meanwhile the model stays available.
The voice speaks through a neural vocoder, as the bundled ones do, and streams running at once
share encoder and decoder passes: batches are bit-exact (padded encoder batches and batched
networks only where a probe shows they equal single passes), so the audio is compared exactly.
(Griffin-Lim turns any last-bit difference in a mel into audible ones; a Griffin-Lim voice found
the padded encoder batches that were not exact, and is exact through a fault now too.)
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from ray import serve

from serve_app.ingress import OPENAI_PCM_RATE
from tests.expect import in_process_pcm
from tests.shared_ray import serve_apps

pytestmark = [pytest.mark.ray, pytest.mark.shared_ray, pytest.mark.slow]

SENTENCE = "Streams survive a lost replica, sentence after sentence, without a click or a gap."
TEXT = " ".join([SENTENCE] * 5)  # long enough that six streams are mid-sentence at the kill
STREAMS = 6


@pytest.fixture(scope="module")
def server(fixture_dir: Path) -> Iterator[str]:
    from serve_app.app import AppArgs, build_app

    # Admission off: while the replica is replaced, the streams it held fall behind playback, and
    # admission rightly answers a new one 503 "at capacity" on a loaded machine; what this module
    # checks is the replica's loss (tests/test_admission.py checks admission).
    addon = [str(fixture_dir / "tiny-universal")]
    with serve_apps((build_app(AppArgs(addons=addon, admission=False)), "chorus", "/")) as url:
        yield url


def _speech(url: str, text: str = TEXT) -> bytes:
    body = {"model": "tiny-universal", "input": text, "response_format": "pcm"}
    with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        return b"".join(r.iter_bytes())


def _decoder(app: str) -> Any:
    return serve.get_deployment_handle("tiny-universal-decoder", app_name=app)


def _busy_replica(app: str, deadline: float) -> int:
    """The pid of a decoder replica that is decoding right now."""
    decoder = _decoder(app)
    while time.monotonic() < deadline:
        stats = decoder.stats.remote().result()
        if stats["active"]:
            return int(stats["pid"])
        time.sleep(0.01)
    raise AssertionError("no decoder replica was busy")


def test_default_decoder_runs_two_replicas(server: str) -> None:
    status = serve.status().applications["chorus"].deployments["tiny-universal-decoder"]
    assert sum(status.replica_states.values()) == 2


@pytest.mark.parametrize("app", ["chorus", "fused"])
def test_killed_decoder_replica_streams_complete_and_equal(
    server: str, app: str, request: Any, fixture_dir: Path
) -> None:
    url = server if app == "chorus" else request.getfixturevalue("fused_app")  # tests/conftest.py
    reference = _speech(url)
    if app == "fused":
        assert reference == _speech(server)  # fused or not, the same audio
    want = in_process_pcm(fixture_dir / "tiny-universal", TEXT, output_rate=OPENAI_PCM_RATE)
    assert np.array_equal(np.frombuffer(reference, "<i2"), want)  # HTTP equals in process
    sentence = _speech(url, SENTENCE)
    results: list[bytes | BaseException] = []

    def listen() -> None:
        try:
            results.append(_speech(url))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=listen) for _ in range(STREAMS)]
    for t in threads:
        t.start()
    victim = _busy_replica(app, time.monotonic() + 30)
    os.kill(victim, signal.SIGKILL)
    during = _speech(url, SENTENCE)  # the model stays available while the replica is replaced
    for t in threads:
        t.join(timeout=120)
    assert during == sentence  # said while the replica was replaced: as undisturbed
    assert len(results) == STREAMS
    for result in results:
        assert isinstance(result, bytes), repr(result)
        assert len(result) == len(reference)  # no sample lost or repeated where the stream resumed
        assert result == reference  # and every sample as an undisturbed run makes it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # and the dead replica is replaced
        status = serve.status().applications[app].deployments["tiny-universal-decoder"]
        if status.replica_states.get("RUNNING", 0) == 2:
            break
        time.sleep(0.2)
    assert status.replica_states.get("RUNNING", 0) == 2
