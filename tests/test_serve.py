"""The Serve application end to end over HTTP: streaming, two architectures, SSE, errors,
disconnect cancellation and independent autoscaling. One Ray instance for the module."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import addons
from tests.expect import in_process_pcm, wav_samples
from tests.shared_ray import serve_apps

pytestmark = [pytest.mark.ray, pytest.mark.shared_ray, pytest.mark.slow]

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

TWO_VOICES = "Hello from two voices at once. And one more sentence."
SENTENCES = " ".join(f"This is sentence number {i}, spoken by a small test voice." for i in range(12))
STREAMED = " ".join(f"This is sentence number {i}, spoken by a small test voice." for i in range(5))
FAST_SCALING = {
    "autoscaling_config": {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 0,
        "downscale_delay_s": 600,
        "metrics_interval_s": 0.2,
        "look_back_period_s": 1,
        "policy": "requests",  # Ray's: streams in flight per replica
    },
    "graceful_shutdown_timeout_s": 0.5,
    "graceful_shutdown_wait_loop_s": 0.1,
}
# Chorus's own policy: how busy the replicas are (serve_app.autoscaling).
LOAD_SCALING = {
    "autoscaling_config": {**FAST_SCALING["autoscaling_config"], "max_replicas": 2, "policy": "load"},
    "graceful_shutdown_timeout_s": 0.5,
    "graceful_shutdown_wait_loop_s": 0.1,
}


#: The server's own lexicon (Serve argument ``lexicons``), for a word no other test says.
SERVER_PLS = '<lexicon alphabet="ipa"><lexeme><grapheme>Zorblax</grapheme><phoneme>ˈbɪɡ</phoneme></lexeme></lexicon>'


@pytest.fixture(scope="module")
def server(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from serve_app.app import AppArgs, build_app

    lexicon = tmp_path_factory.mktemp("lexicons") / "server.pls"
    lexicon.write_text(SERVER_PLS, encoding="utf-8")
    args = AppArgs(
        addons=[str(fixture_dir / "tiny-fast"), str(fixture_dir / "tiny-taco"), str(fixture_dir / "tiny-piper")],
        deployments={
            "tiny-fast-decoder": FAST_SCALING,
            "tiny-taco-decoder": FAST_SCALING,
            "universal-vocoder": LOAD_SCALING,
            "tiny-piper-decoder": {"num_replicas": 1},  # the default two: test_serve_faults' concern
        },
        lexicons={"*": [str(lexicon)]},
        # Admission would cap the load at what one replica keeps in real time on a slow machine,
        # and Ray's requests policy would then never see more than one decode stream at once.
        admission=False,
    )
    with serve_apps((build_app(args), "chorus", "/")) as url:
        yield url


def _replicas(deployment: str) -> int:
    status = serve.status().applications["chorus"].deployments[deployment]
    return sum(status.replica_states.values())


def test_load_on_one_model_scales_only_its_decoder(server: str) -> None:
    """And the shared vocoder, doing most of the work, scales on its replicas' busy share."""
    # First in the module, so that both models still sit at their minimum of one replica.
    assert _replicas("tiny-fast-decoder") == _replicas("tiny-taco-decoder") == _replicas("universal-vocoder") == 1
    stop = threading.Event()
    statuses: set[int] = set()

    def load() -> None:
        body = {"model": "tiny-fast", "input": SENTENCES, "response_format": "pcm"}
        while not stop.is_set():
            with httpx.stream("POST", f"{server}/v1/audio/speech", json=body, timeout=60) as response:
                statuses.add(response.status_code)
                for _ in response.iter_bytes():
                    if stop.is_set():  # hang up mid-stream: the server drops the work, the test goes on
                        break

    threads = [threading.Thread(target=load) for _ in range(8)]  # enough that decode streams overlap anywhere
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and min(_replicas("tiny-fast-decoder"), _replicas("universal-vocoder")) < 2:
            time.sleep(0.25)
        assert statuses == {200}, statuses  # every stream served: the load reached the stages
        assert _replicas("tiny-fast-decoder") >= 2
        assert _replicas("universal-vocoder") == 2
        assert _replicas("tiny-taco-decoder") == 1
    finally:
        stop.set()
        for t in threads:
            t.join()


def _speech(url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/speech", json={"response_format": "wav", **body}, timeout=120)


def test_streamed_wav_parses_and_starts_early(server: str, fixture_dir: Path) -> None:
    arrivals: list[tuple[float, int]] = []
    start = time.perf_counter()
    body = {"model": "tiny-fast", "input": STREAMED, "response_format": "wav"}
    with httpx.stream("POST", f"{server}/v1/audio/speech", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("audio/wav")
        data = b""
        for piece in response.iter_bytes():
            arrivals.append((time.perf_counter() - start, len(piece)))
            data += piece
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    samples, rate = wav_samples(data)
    assert rate == 22050 and np.array_equal(samples, in_process_pcm(fixture_dir / "tiny-fast", STREAMED))
    first, last = arrivals[0][0], arrivals[-1][0]
    assert len(arrivals) > 3 and first < 0.5 * last


def test_two_architectures_concurrently(server: str, fixture_dir: Path) -> None:
    results: dict[str, httpx.Response] = {}

    def call(model: str) -> None:
        results[model] = _speech(server, model=model, input=TWO_VOICES)

    threads = [threading.Thread(target=call, args=(m,)) for m in ("tiny-fast", "tiny-taco")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for model, response in results.items():
        assert response.status_code == 200, (model, response.text)
        samples, _ = wav_samples(response.content)
        assert np.array_equal(samples, in_process_pcm(fixture_dir / model, TWO_VOICES)), model


def test_sse_events_are_well_formed(server: str) -> None:
    response = httpx.post(
        f"{server}/v1/audio/speech",
        json={"model": "tiny-taco", "input": "Events, please.", "response_format": "pcm", "stream_format": "sse"},
        timeout=120,
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in response.text.split("\n\n") if b.strip()]
    events = [json.loads(b.removeprefix("data: ")) for b in blocks]
    assert all(b.startswith("data: ") for b in blocks)
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) == 2 * events[-1]["usage"]["output_tokens"] > 0


def test_openai_client_streams_unchanged(server: str, fixture_dir: Path, tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    out = tmp_path / "speech.wav"
    with client.audio.speech.with_streaming_response.create(
        model="tiny-fast", voice="default", input="The official client works.", response_format="wav"
    ) as response:
        response.stream_to_file(out)
    assert np.array_equal(wav_samples(out)[0], in_process_pcm(fixture_dir / "tiny-fast", "The official client works."))
    models = {m.id for m in client.models.list()}
    assert models == {"tiny-fast", "tiny-taco", "tiny-piper"}


def _decoded(data: bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data)) as f:
        return np.concatenate([frame.to_ndarray().reshape(-1) for frame in f.decode(audio=0)])


def _decoded_seconds(fmt: str, data: bytes, rate: int) -> float:
    import av

    if fmt == "pcm":  # OpenAI's pcm: 24 kHz, whatever the model's rate
        return len(data) / 2 / 24_000
    with av.open(io.BytesIO(data)) as f:
        stream = f.streams.audio[0]
        samples = sum(frame.samples for frame in f.decode(stream))
        return samples / stream.codec_context.sample_rate


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_unchanged_openai_code_gets_audio_in_every_format(server: str, fixture_dir: Path, fmt: str) -> None:
    """OpenAI's own model and voice names, every format, streamed and not: valid audio of the
    length the mapped Chorus model produces in process."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    text = "Unchanged code written for another service."
    voice = addons.load(fixture_dir / "tiny-fast")
    rate = voice.sample_rate
    want = sum(c.samples.size for c in voice.stream(text)) / rate
    whole = client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format=fmt)
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="nova", input=text, response_format=fmt, instructions="Speak cheerfully."
    ) as response:
        streamed = b"".join(response.iter_bytes())
        headers = response.headers
    if fmt == "opus":  # each Ogg stream gets its own random serial number: compare the audio
        assert _decoded(whole.content).tolist() == _decoded(streamed).tolist()
    else:  # the same mapped model and voice, the same bytes
        assert whole.content == streamed
    assert headers["x-chorus-model"] == "tiny-fast" and headers["x-chorus-voice"] == "default"
    assert "ignored" in headers["x-chorus-instructions"]
    slack = 4 * 1152 / rate if fmt in ("mp3", "aac") else 1e-3  # codec frames of priming/padding
    assert want - 1e-3 <= _decoded_seconds(fmt, streamed, rate) <= want + slack


@pytest.mark.parametrize(
    ("body", "status", "param", "fragment"),
    [
        ({"model": "nope", "input": "hi"}, 404, "model", "model 'nope' not found"),
        ({"model": "tiny-fast", "input": ""}, 400, "input", "input"),
        ({"model": "tiny-fast", "input": "   "}, 400, "input", "input is empty"),
        ({"model": "tiny-fast", "input": "x" * 5000}, 400, "input", "4096"),
        ({"model": "tiny-fast", "input": "--- ... ---"}, 400, "input", "no speakable characters"),
        ({"model": "tiny-fast", "input": "hi", "response_format": "ogg"}, 400, "response_format", "response_format"),
        ({"model": "tts-2", "input": "hi"}, 404, "model", "model 'tts-2' not found"),
        ({"model": "tiny-fast", "input": "<speak>Hi <break time='1s'></speak>"}, 400, "input", "malformed"),
        ({"model": "tiny-fast", "input": "<speak>Hi <audio src='a.mp3'/></speak>"}, 400, "input", "<audio>"),
        ({"model": "tiny-fast", "input": "<!DOCTYPE x [<!ENTITY a 'b'>]><speak>&a;</speak>"}, 400, "input", "DTD"),
        ({"model": "tiny-fast", "input": "Hi", "input_format": "ssml"}, 400, "input", "<speak>"),
        ({"model": "tts-1", "input": "hi", "voice": "nobody"}, 400, "voice", 'unknown voice "nobody"'),
        ({"model": "tiny-fast", "input": "hi", "voice": "nobody"}, 400, "voice", 'unknown voice "nobody"'),
        ({"model": "tiny-fast", "input": "hi", "speed": 10}, 400, "speed", "speed"),
        ({"model": "tiny-fast", "input": "hi", "loudness": 3}, 400, "loudness", "loudness"),
    ],
)
def test_bad_requests_get_openai_errors(
    server: str, body: dict[str, Any], status: int, param: str, fragment: str
) -> None:
    response = httpx.post(f"{server}/v1/audio/speech", json={"response_format": "wav", **body}, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and fragment in error["message"]


def test_catalogue_and_health(server: str) -> None:
    models = httpx.get(f"{server}/v1/models").json()
    assert {m["id"] for m in models["data"]} == {"tiny-fast", "tiny-taco", "tiny-piper"}
    piper = next(m for m in models["data"] if m["id"] == "tiny-piper")
    assert piper["speech_marks"] is True
    voices = httpx.get(f"{server}/v1/audio/voices", params={"model": "tiny-fast"}).json()["data"]
    assert {v["voice"] for v in voices} == {"default", "fast"}
    assert httpx.get(f"{server}/v1/audio/voices", params={"model": "nope"}).status_code == 404
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/ready", timeout=30)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def _decoder(model: str) -> Any:
    return serve.get_deployment_handle(f"{model}-decoder", app_name="chorus")


def test_stage_replicas_keep_their_priority_by_default(server: str) -> None:
    """stage_nice 0 (the default) leaves every stage replica at the priority Ray started it with;
    tests/test_autoscaling.py shows a nonzero value reaching each stage and lowering its priority."""
    stages = ("tiny-fast-encoders", "tiny-fast-decoder", "universal-vocoder")
    started = {serve.get_deployment_handle(name, app_name="chorus").niceness.remote().result() for name in stages}
    assert len(started) == 1, started


def test_disconnect_cancels_the_work(server: str) -> None:
    decoder = _decoder("tiny-taco")
    text = " ".join(["A long text that would take a while to speak in full, sentence after sentence."] * 40)
    before = decoder.stats.remote().result()["frames"]
    with httpx.stream(
        "POST",
        f"{server}/v1/audio/speech",
        json={"model": "tiny-taco", "input": text, "response_format": "pcm"},
        timeout=60,
    ) as r:
        next(r.iter_bytes())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and decoder.stats.remote().result()["active"]:
        time.sleep(0.1)
    stats = decoder.stats.remote().result()
    assert stats["active"] == 0
    settled = stats["frames"]
    time.sleep(1.0)
    assert decoder.stats.remote().result()["frames"] == settled  # nothing keeps decoding for the gone client
    assert settled - before < 40 * 40 * 4  # far less than the whole text (40 sentences x ~40 tokens x 4 frames)


def test_overload_answers_503_with_retry_after(server: str, fixture_dir: Path) -> None:
    from serve_app.app import AppArgs, build_app

    tight = {"num_replicas": 1, "max_ongoing_requests": 1, "max_queued_requests": 1}
    # Fused (the decoder replica vocodes too): one deployment fewer to start, the same one slot.
    args = AppArgs(
        addons=[str(fixture_dir / "tiny-taco")], deployments={"tiny-taco-decoder": tight}, fused_vocoder=True
    )
    serve.run(build_app(args), name="tight", route_prefix="/tight")
    # One long sentence (the attention decoder runs to its length guard): the six requests arrive
    # within milliseconds, while it holds the slot for a second or more.
    text = "A long sentence keeps the only decoder slot busy for quite a while, on purpose, and then some more."
    responses: list[httpx.Response] = []
    cut: list[Exception] = []

    def call() -> None:
        try:
            responses.append(_speech(f"{server}/tight", model="tiny-taco", input=text, response_format="pcm"))
        except httpx.RemoteProtocolError as exc:  # admitted, then a later sentence refused by Ray's queue
            cut.append(exc)  # visibly broken (no chunked terminator), never a short "complete" file

    threads = [threading.Thread(target=call) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        serve.delete("tight")
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses, statuses
    assert len(responses) + len(cut) == len(threads)
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["code"] == "overloaded"


@pytest.mark.parametrize(
    ("model", "voice", "options"),
    [(model, voice, {}) for model in ("tiny-fast", "tiny-taco") for voice in ("default", "fast")]
    + [("tiny-piper", "default", {}), ("tiny-piper", "default", {"seed": 5, "speed": 1.3})],
)
def test_http_pcm_equals_in_process(
    server: str, fixture_dir: Path, model: str, voice: str, options: dict[str, Any]
) -> None:
    """Same model, voice and (preset) speed: the bytes over HTTP are the in-process samples, encoded
    (a Piper voice's: with the noise its graph draws, from the same seed)."""
    from serve_app.audio_format import make_encoder

    text = "Over the wire or in process. The same samples, to the bit."
    local = addons.load(fixture_dir / model)
    encoder = make_encoder("pcm", local.sample_rate)
    want = b"".join(encoder.encode(chunk.samples) for chunk in local.stream(text, voice=voice, **options))
    got = _speech(server, model=model, input=text, voice=voice, response_format="pcm", sample_rate="native", **options)
    assert got.status_code == 200
    assert got.content == want
    if voice == "fast" and model == "tiny-fast":  # the preset's speed (1.5) applies over HTTP as in process
        default = b"".join(encoder.encode(chunk.samples) for chunk in local.stream(text))
        assert len(got.content) < len(default)


def _ws_audio(socket: Any, context: str = "default") -> tuple[bytes, float | None]:
    """A context's audio up to its ``done``, and when its first audio arrived (monotonic)."""
    audio, first = b"", None
    while True:
        message = json.loads(socket.recv(timeout=60))
        if message["type"] == "audio" and message["context_id"] == context:
            first = first or time.monotonic()
            audio += base64.b64decode(message["audio"])
        elif message["type"] == "error":
            raise AssertionError(message)
        elif message["type"] == "done" and message["context_id"] == context:
            return audio, first


@pytest.mark.parametrize("model", ["tiny-fast", "tiny-taco", "tiny-piper"])
def test_websocket_text_in_pieces_equals_a_plain_request(server: str, model: str) -> None:
    """Text a few characters at a time, with pauses: the audio of a plain request for the whole text."""
    from websockets.sync.client import connect

    text = "Text arrives a few characters at a time. The listener hears it as it comes! Does it match?"
    want = _speech(server, model=model, input=text, response_format="pcm", sample_rate="native")
    assert want.status_code == 200
    with connect(server.replace("http", "ws") + "/v1/audio/speech/stream") as socket:
        socket.send(json.dumps({"type": "open", "model": model}))
        assert json.loads(socket.recv(timeout=30))["type"] == "opened"
        for i in range(0, len(text), 4):
            socket.send(json.dumps({"type": "text", "text": text[i : i + 4]}))
            time.sleep(0.01)
        socket.send(json.dumps({"type": "close"}))
        audio, _ = _ws_audio(socket)
    assert audio == want.content


def test_websocket_cancel_stops_within_a_second_and_bad_messages_keep_it_open(server: str, fixture_dir: Path) -> None:
    from websockets.sync.client import connect

    with connect(server.replace("http", "ws") + "/v1/audio/speech/stream") as socket:
        socket.send("{not json")
        assert json.loads(socket.recv(timeout=30))["error"]["code"] == "invalid_json"
        socket.send(json.dumps({"type": "open", "model": "tts-1", "voice": "alloy"}))
        opened = json.loads(socket.recv(timeout=30))
        assert (opened["model"], opened["voice"]) == ("tiny-fast", "default")
        socket.send(json.dumps({"type": "text", "text": SENTENCES}))
        assert json.loads(socket.recv(timeout=30))["type"] == "audio"
        socket.send(json.dumps({"type": "cancel"}))
        start = time.monotonic()
        while json.loads(socket.recv(timeout=30))["type"] != "cancelled":
            pass
        assert time.monotonic() - start < 1.0
        socket.send(json.dumps({"type": "open", "model": "tiny-fast", "context_id": "next"}))
        socket.send(json.dumps({"type": "text", "context_id": "next", "text": "Still here."}))
        socket.send(json.dumps({"type": "close", "context_id": "next"}))
        audio, _ = _ws_audio(socket, "next")
        assert np.array_equal(np.frombuffer(audio, "<i2"), in_process_pcm(fixture_dir / "tiny-fast", "Still here."))


def _browser() -> Any:
    """Headless Chromium from Debian (installed by `make test`), or a skip that says what is missing."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    driver, browser = shutil.which("chromedriver"), shutil.which("chromium")
    if driver is None or browser is None:
        pytest.skip("needs chromium and chromium-driver (Debian packages; `make test` installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium for the page's tests (skipped without it)."""
    started = _browser()
    try:
        yield started
    finally:
        started.quit()


def _page_state(browser: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.TAG_NAME, "body").get_attribute("data-state"))


def test_the_page_plays_streamed_audio_in_a_real_browser(server: str, fixture_dir: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    text = "A page to listen on. It plays while the rest is still being spoken. Words light up as they are heard."
    want = _speech(server, model="tiny-taco", input=text, response_format="pcm", sample_rate="native")
    browser.get(f"{server}/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: _page_state(b) == "idle")
    Select(browser.find_element(By.ID, "model")).select_by_value("tiny-taco")
    box = browser.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)
    browser.find_element(By.ID, "play").click()
    wait.until(lambda b: _page_state(b) in ("done", "error"))
    assert _page_state(browser) == "done", browser.find_element(By.ID, "status").text
    decoded = int(browser.find_element(By.ID, "samples").text)
    assert decoded == len(want.content) // 2  # every streamed sample reached Web Audio
    assert int(browser.find_element(By.ID, "first-audio").text) > 0
    # The audio clock runs: what was scheduled is being played.
    played = browser.execute_script("return state.ctx ? state.ctx.currentTime : -1")
    assert played > 0
    # Words light up as they are heard, one after another, up to the last spoken word.
    marks = [m for c in addons.load(fixture_dir / "tiny-taco").stream(text, marks=["word"]) for m in c.marks]
    last = max(m.text_start for m in marks)
    reached = sum(1 for match in re.finditer(r"\S+", text) if match.start() <= last)
    wait.until(lambda b: int(b.find_element(By.ID, "highlighted").text) >= reached)
    assert int(browser.find_element(By.ID, "highlighted").text) == reached
    lit = browser.execute_script("return state.litAt")  # audio-clock times the words were reached
    assert lit == sorted(lit) and len({round(t, 3) for t in lit}) >= 2  # it moved as the audio played
    assert browser.find_element(By.ID, "download").get_attribute("href").startswith("blob:")


def test_the_pages_stop_stays_enabled_while_audio_plays_and_stops_it(server: str, browser: Any) -> None:
    """A long text arrives from the server long before it has been heard; Stop must still stop it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(f"{server}/")
    wait = WebDriverWait(browser, 120)
    wait.until(lambda b: _page_state(b) == "idle")
    Select(browser.find_element(By.ID, "model")).select_by_value("tiny-fast")
    box = browser.find_element(By.ID, "text")
    box.clear()
    box.send_keys(" ".join(["The page keeps a way to stop the voice while it is still talking."] * 6))
    browser.find_element(By.ID, "play").click()
    wait.until(lambda b: _page_state(b) in ("done", "error"))
    assert _page_state(browser) == "done", browser.find_element(By.ID, "status").text
    # Everything has arrived; several seconds of it are still to be heard.
    left = browser.execute_script("return state.nextTime - state.ctx.currentTime")
    assert left > 2, left
    stop = browser.find_element(By.ID, "stop")
    assert stop.is_enabled()
    stop.click()
    assert browser.execute_script("return state.ctx") is None  # its AudioContext is closed: silence
    assert not stop.is_enabled()
    assert browser.find_element(By.ID, "status").text == "Stopped."


def test_python_client_pipes_a_token_generator(server: str) -> None:
    from serve_app.client import SpeechStream

    text = "Tokens from a generator. Spoken as they come."
    want = _speech(server, model="tiny-fast", input=text, response_format="pcm", sample_rate="native").content

    def tokens() -> Iterator[str]:
        for i in range(0, len(text), 3):
            time.sleep(0.005)
            yield text[i : i + 3]

    with SpeechStream(server.replace("http", "ws"), model="tiny-fast") as stream:
        got = b"".join(stream.speak(tokens()))
        assert stream.sample_rate > 0
        again = b"".join(stream.speak(iter([text])))  # the next turn on the same connection
    assert got == want and again == want


@pytest.mark.parametrize("model", ["tiny-fast", "tiny-taco", "tiny-piper"])
def test_speech_marks_over_sse_equal_in_process(server: str, fixture_dir: Path, model: str) -> None:
    text = "Marks travel beside the audio.  Across sentences, too! (And brackets.)"
    kinds = ["sentence", "word", "phoneme"]
    local = addons.load(fixture_dir / model)
    want = [m.as_dict() for c in local.stream(text, marks=kinds) for m in c.marks]
    response = _speech(
        server,
        model=model,
        input=text,
        response_format="pcm",
        sample_rate="native",
        stream_format="sse",
        timestamps=kinds,
    )
    assert response.status_code == 200
    events = [json.loads(b.removeprefix("data: ")) for b in response.text.split("\n\n") if b.strip()]
    got = [m for e in events if e["type"] == "speech.marks" for m in e["marks"]]
    assert got == want and got
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert max(m["end_sample"] for m in got) <= len(pcm) // 2
    refused = _speech(server, model=model, input=text, response_format="pcm", timestamps=["word"])
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "timestamps_need_sse"
    # Beside a plain audio file: the same marks as JSON lines from /v1/audio/speech/marks.
    lines = httpx.post(
        f"{server}/v1/audio/speech/marks", json={"model": model, "input": text, "timestamps": kinds}, timeout=60
    )
    assert lines.status_code == 200 and lines.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in lines.text.splitlines()] == want
    card = next(m for m in httpx.get(f"{server}/v1/models").json()["data"] if m["id"] == model)
    assert card["speech_marks"] is True


def test_websocket_sends_marks_beside_the_audio(server: str, fixture_dir: Path) -> None:
    from websockets.sync.client import connect

    text = "Words with times. Over the socket."
    want = [
        m.as_dict()["value"]
        for c in addons.load(fixture_dir / "tiny-fast").stream(text, marks=["word"])
        for m in c.marks
    ]
    with connect(server.replace("http", "ws") + "/v1/audio/speech/stream") as socket:
        socket.send(json.dumps({"type": "open", "model": "tiny-fast", "timestamps": ["word"]}))
        assert json.loads(socket.recv(timeout=30))["type"] == "opened"
        socket.send(json.dumps({"type": "text", "text": text}))
        socket.send(json.dumps({"type": "close"}))
        marks = []
        while True:
            message = json.loads(socket.recv(timeout=60))
            if message["type"] == "marks":
                marks += message["marks"]
            elif message["type"] == "done":
                break
    assert [m["value"] for m in marks] == want and want


@pytest.mark.parametrize("model", ["tiny-fast", "tiny-taco", "tiny-piper"])
def test_ssml_over_http_equals_in_process(server: str, fixture_dir: Path, model: str) -> None:
    """Breaks, rate, volume, sub, say-as, phoneme and marks: the same samples and marks as in process."""
    doc = (
        '<speak><p><s>Say <sub alias="World Wide Web">WWW</sub> now.</s><s><mark name="m"/>Then <break time="200ms"/>'
        '<say-as interpret-as="digits">42</say-as>.</s></p><break time="350ms"/>'
        '<prosody rate="150%" volume="-6dB">Faster and softer, <phoneme ph="ˈbɪɡ">big</phoneme>.</prosody>'
        '<mark name="end"/></speak>'
    )
    kinds = ["sentence", "ssml", "word"]
    local = addons.load(fixture_dir / model)
    chunks = list(local.stream(doc, marks=kinds))
    want_marks = [m.as_dict() for c in chunks for m in c.marks]
    response = _speech(
        server,
        model=model,
        input=doc,
        response_format="pcm",
        sample_rate="native",
        stream_format="sse",
        timestamps=kinds,
    )
    assert response.status_code == 200, response.text
    events = [json.loads(b.removeprefix("data: ")) for b in response.text.split("\n\n") if b.strip()]
    got = [m for e in events if e["type"] == "speech.marks" for m in e["marks"]]
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert got == want_marks and [m["value"] for m in got if m["type"] == "ssml"] == ["m", "end"]
    from serve_app.audio_format import make_encoder

    encoder = make_encoder("pcm", local.sample_rate)
    assert pcm == b"".join(encoder.encode(c.samples) for c in chunks)
    plain = _speech(server, model=model, input=doc, response_format="pcm", sample_rate="native", input_format="ssml")
    assert plain.status_code == 200 and plain.content == pcm


def test_server_lexicon_applies_after_the_requests_own(server: str, fixture_dir: Path) -> None:
    from serve_app.audio_format import make_encoder

    text = "A Zorblax here."
    local = addons.load(fixture_dir / "tiny-fast")
    encoder = make_encoder("pcm", local.sample_rate)

    def pcm(**options: Any) -> bytes:
        return b"".join(encoder.encode(c.samples) for c in local.stream(text, **options))

    served = [{"grapheme": "Zorblax", "phonemes": "b'Ig"}]
    got = _speech(server, model="tiny-fast", input=text, response_format="pcm", sample_rate="native")
    assert got.status_code == 200 and got.content == pcm(lexicon=served) != pcm()
    asked = [{"grapheme": "Zorblax", "alias": "tomato"}]
    mine = _speech(server, model="tiny-fast", input=text, response_format="pcm", sample_rate="native", lexicon=asked)
    assert mine.content == pcm(lexicon=asked)
    pls = "<lexicon><lexeme><grapheme>Zorblax</grapheme><alias>tomato</alias></lexeme></lexicon>"
    as_pls = _speech(server, model="tiny-fast", input=text, response_format="pcm", sample_rate="native", lexicon=pls)
    assert as_pls.content == mine.content
    bad = _speech(server, model="tiny-fast", input=text, lexicon="<lexicon><lexeme>")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "lexicon"
    assert "malformed" in bad.json()["error"]["message"]


def test_request_lexicon_over_http_equals_in_process(server: str, fixture_dir: Path) -> None:
    from serve_app.audio_format import make_encoder

    text = "Chorus sings. The word Chorus again."
    lexicon = [{"grapheme": "Chorus", "alias": "core us"}]
    local = addons.load(fixture_dir / "tiny-fast")
    encoder = make_encoder("pcm", local.sample_rate)
    want = b"".join(encoder.encode(c.samples) for c in local.stream(text, lexicon=lexicon))
    got = _speech(server, model="tiny-fast", input=text, response_format="pcm", sample_rate="native", lexicon=lexicon)
    assert got.status_code == 200 and got.content == want
    plain = _speech(server, model="tiny-fast", input=text, response_format="pcm", sample_rate="native")
    assert plain.content != want
    bad = _speech(
        server,
        model="tiny-fast",
        input=text,
        response_format="pcm",
        sample_rate="native",
        lexicon=[{"grapheme": "Chorus", "phonemes": "QQ"}],
    )
    assert bad.status_code == 400, bad.text
    error = bad.json()["error"]
    assert (error["param"], error["code"]) == ("lexicon", "invalid_lexicon") and "'Chorus'" in error["message"]
    shape = _speech(server, model="tiny-fast", input=text, lexicon=[{"grapheme": "two words", "alias": "x"}])
    assert shape.status_code == 400 and shape.json()["error"]["param"] == "lexicon"
