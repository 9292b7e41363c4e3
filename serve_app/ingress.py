"""The HTTP ingress: OpenAI-compatible speech streaming over every deployed addon.

It validates requests, splits text into sentences (plain string work), and pulls each stage in
turn: sentence -> encoders deployment -> decoder deployment (a stream of mel chunks) -> vocoder
deployment (carrying the stream's vocoder state) -> an audio encoder or SSE events. The first
audio chunk is produced before the response starts, so every error up to then is a proper JSON
status; after that a failure cuts the stream (audio) or ends it with an error event (SSE).
"""

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import ray
from fastapi import FastAPI, Response, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.metrics import Counter, Gauge, Histogram

from addons.engine.families import VoiceUnavailable
from addons.engine.marks import MarkTracker, SpeechMark, provides_marks
from addons.engine.options import OptionError, ResolvedOptions, resolve_options
from addons.formats.manifest import AddonManifest
from addons.text.config import LexiconEntry
from addons.text.frontend import Frontend, LexiconError
from addons.text.ssml import SSMLError, script_of
from serve_app.admission import AdmissionConfig, AtCapacity, ModelAdmission, RecentVoices
from serve_app.aliases import Aliases, OpenAINames
from serve_app.audio_format import (
    RESAMPLED_FORMATS,
    AudioEncoder,
    ResampledEncoder,
    UnsupportedFormatError,
    make_encoder,
)
from serve_app.deployments import DEFAULTS
from serve_app.http import HttpPolicy, install
from serve_app.realtime import Opened, OpenMessage, ProtocolError, SpeechSocket
from serve_app.schemas import (
    SSE_MEDIA_TYPE,
    ErrorBody,
    ErrorDetail,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechMarksEvent,
    SpeechRequest,
    SpeechUsage,
    error_response,
    sse_event,
)
from serve_app.streams import LOST_REPLICA, NoSpeakableText, StageHandles, UtterancePlan, synthesize

__all__ = ["OPENAI_PCM_RATE", "Ingress", "ModelInfo", "SpeechBody"]

RETRY_AFTER_S = "1"
MID_STREAM_FAILURE = "synthesis failed mid-stream; the audio so far is incomplete, retry the request"
SPEECH_PATH = "/v1/audio/speech"
MARKS_PATH = "/v1/audio/speech/marks"
PROBE_PATHS = ("/health", "/ready")  # open to health checkers even when API keys are on
# The listening page (serve_app/static): plain files, open like the probes (they hold no data;
# the page sends the API key the user types with its own requests).
PAGE_FILES = {"index.html": "text/html", "page.js": "text/javascript", "page.css": "text/css"}
PAGE_PATHS = ("/", *(f"/static/{name}" for name in PAGE_FILES))
logger = logging.getLogger("ray.serve")
OVERLOAD = (BackPressureError, DeploymentUnavailableError, *LOST_REPLICA)  # lost: after MAX_RESUMES tries
OUTCOME_TAGS: Any = ("model", "outcome")  # Ray's stub types tag_keys as a 1-tuple
FAMILY_TAGS: Any = ("family", "start")
OPENAI_PCM_RATE = 24_000  # OpenAI's pcm: code written for it plays pcm at this rate
SAMPLE_RATE_HEADER = "X-Sample-Rate"
READY_PROBE_S = 5.0  # GET /ready: how long a stage may take to answer
LIST_PROBE_S = 1.0  # GET /v1/models: the same for a model not listed yet
_Body = TypeVar("_Body", bound=SpeechRequest)


@dataclass(frozen=True)
class ModelInfo:
    """What the ingress knows of a model without loading it: its validated manifest."""

    manifest: AddonManifest
    speech_marks: bool = False  # its stack aligns frames to phonemes (see addons.engine.marks)
    #: the server's pronunciation overrides for this model (Serve argument ``lexicons``)
    lexicon: tuple[LexiconEntry, ...] = ()
    #: its decoder replicas also vocode (``AppArgs.fused_vocoder``): one streamed call per sentence
    fused_vocoder: bool = False
    #: the voice family whose shared replicas serve it (``AppArgs.families``), or None: its own deployments
    family: str | None = None
    #: voices the family's replicas hold at once (caps times replicas), and a cold voice's load time, s
    family_capacity: int = 1
    cold_start_s: float = 0.0

    @property
    def unit(self) -> str:
        """What admission and readiness count by: the family (its replicas are shared), else the model."""
        return self.family or self.manifest.name

    def stage_handles(self, handles: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
        """The model's stage handles; a family voice's name each request to the family's replicas
        (``multiplexed_model_id``), so Serve routes it to a replica that holds that voice."""
        if self.family is None:
            return handles
        encoders, decoder, vocoder = handles
        name = self.manifest.name
        own = self.fused_vocoder or self.manifest.uses_own_vocoder
        return (
            encoders.options(multiplexed_model_id=name),
            decoder.options(multiplexed_model_id=name),
            vocoder.options(multiplexed_model_id=name) if own else vocoder,
        )

    @classmethod
    def of(cls, manifest: AddonManifest, lexicon: Sequence[LexiconEntry] = ()) -> "ModelInfo":
        return cls(manifest, provides_marks(manifest), tuple(lexicon))

    def resolve(self, **options: Any) -> ResolvedOptions:
        """A request's options resolved for this model (``addons.engine.options.resolve_options``), the
        server's lexicon after the request's own (and before the addon's)."""
        _, resolved = resolve_options(self.manifest, **options)
        if self.lexicon:
            resolved = resolved.replace(lexicon=[*resolved.lexicon, *(e.model_dump() for e in self.lexicon)])
        return resolved

    def card(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "id": m.name,
            "object": "model",
            "created": 0,
            "owned_by": "chorus",
            "description": m.description,
            "language": m.language,
            "sample_rate": m.mel.sample_rate,
            "voices": sorted(m.voices),
            "speech_marks": self.speech_marks,
            "family": self.family,
        }


class SpeechBody(SpeechRequest):
    """The body of ``POST /v1/audio/speech`` (and ``/marks``): a ``SpeechRequest`` and the rate of
    its pcm or wav audio. The WebSocket route speaks at the model's own rate (it says which)."""

    sample_rate: Annotated[int, Field(ge=8000, le=48000)] | Literal["native"] | None = Field(
        None,
        description=(
            f"Sample rate of pcm and wav audio, Hz (8000-48000, resampled by FFmpeg's resampler), or 'native': "
            f"the model's own (its card's sample_rate). Unset: {OPENAI_PCM_RATE} for pcm, as OpenAI's, and the "
            "model's own for wav; the other formats have their codec's rate and take only 'native'. The "
            f"response's {SAMPLE_RATE_HEADER} header says the rate of the audio sent."
        ),
    )

    def output_rate(self, native: int) -> int | None:
        """The rate the audio is resampled to (None: the model's own)."""
        if self.sample_rate == "native":
            return None
        if self.sample_rate is None:
            return OPENAI_PCM_RATE if self.response_format == "pcm" else None
        return self.sample_rate


def _samples_at(marks: Sequence[SpeechMark], native: int, rate: int) -> list[dict[str, Any]]:
    """Marks as JSON, their sample positions counted at ``rate`` (the audio's) instead of ``native``."""
    found = [m.as_dict() for m in marks]
    if rate != native:
        for mark in found:
            for key in ("start_sample", "end_sample"):
                mark[key] = round(mark[key] * rate / native)
    return found


class SpeechError(Exception):
    """A request error found before the response started: becomes an OpenAI-shaped JSON body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        headers = {"Retry-After": RETRY_AFTER_S} if self.status in (429, 503) else None
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return error_response(self.status, self.message, type=kind, param=self.param, code=self.code, headers=headers)


class _Encoded:
    """The encoded bytes of an audio stream (header, chunks, trailer), counting the samples."""

    def __init__(self, encoder: AudioEncoder, first: np.ndarray | None, rest: AsyncIterator[np.ndarray]) -> None:
        self.encoder, self.first, self.rest = encoder, first, rest
        self.samples = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        header = self.encoder.header()
        if header:
            yield header
        if self.first is not None and (data := self._encode(self.first)):
            yield data
        async for chunk in self.rest:
            data = self._encode(chunk)
            if data:
                yield data
        tail = self.encoder.finish()
        if tail:
            yield tail

    def _encode(self, chunk: np.ndarray) -> bytes:
        self.samples += chunk.size
        return self.encoder.encode(chunk)

    @property
    def samples_out(self) -> int:
        """Samples of the audio sent, at its own rate (the model's unless it was resampled)."""
        return self.encoder.samples_out if isinstance(self.encoder, ResampledEncoder) else self.samples


def _replica_policy() -> HttpPolicy:
    """The HTTP policy of the ingress replica serving the current request."""
    ingress: Any = serve.get_replica_context().servable_object
    policy: HttpPolicy = ingress.http_policy
    return policy


app = FastAPI(title="Chorus", description="Many text-to-speech models side by side.")
install(app, _replica_policy, stream_paths=(SPEECH_PATH, MARKS_PATH), open_paths=PROBE_PATHS + PAGE_PATHS)


def _page_file(name: str) -> Response:
    data = (resources.files("serve_app") / "static" / name).read_bytes()
    return Response(data, media_type=PAGE_FILES[name], headers={"Cache-Control": "no-cache"})


class _SocketBackend:
    """The ingress as a WebSocket connection sees it (serve_app.realtime.SpeechBackend)."""

    def __init__(self, ingress: "Ingress") -> None:
        self.ingress = ingress

    def open_context(self, message: OpenMessage) -> Opened:
        body = SpeechRequest(
            model=message.model,
            input="-",
            voice=message.voice,
            speed=message.speed,
            lexicon=message.lexicon,
            normalize=message.normalize,
        )
        body, _ = self.ingress._map_names(body)
        info = self.ingress.models.get(body.model)
        if info is None:
            problem = self.ingress._unknown_model(message.model, body.voice_name)
            raise ProtocolError(problem, "model_not_found", "model")
        try:
            resolved = info.resolve(
                voice=body.voice_name, speed=body.speed, lexicon=body.lexicon, normalize=body.normalize, seed=body.seed
            )
        except OptionError as exc:
            raise ProtocolError(str(exc), exc.code, exc.param) from None
        try:
            tracker = self.ingress._tracker(info, list(message.timestamps))
        except SpeechError as exc:
            raise ProtocolError(exc.message, exc.code or "timestamps_unavailable", exc.param) from None
        return Opened(body.model, body.voice_name, resolved, info.manifest.mel.sample_rate, tracker)

    async def synthesize(
        self,
        model: str,
        sentences: AsyncIterator[str],
        options: Mapping[str, Any],
        marks: MarkTracker | None = None,
        on_marks: Callable[[list[SpeechMark]], None] | None = None,
    ) -> AsyncIterator[np.ndarray]:
        try:
            async for audio in self.ingress._synthesize(model, sentences, options, marks, on_marks):
                yield audio
        except SpeechError as exc:
            raise ProtocolError(exc.message, exc.code or "synthesis_failed", exc.param) from None
        except OVERLOAD as exc:
            raise ProtocolError(f"overloaded, retry shortly ({type(exc).__name__})", "overloaded") from None


# Everything the ingress's routes use is defined above it: serve.ingress pickles the app (and
# with it the globals its routes reference) when the class is decorated.
@serve.deployment(**DEFAULTS["ingress"])
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        models: dict[str, ModelInfo],
        handles: dict[str, tuple[Any, Any, Any]],
        http_policy: HttpPolicy | None = None,
        aliases: Aliases | None = None,
    ) -> None:
        self.models = models
        self.handles = {name: models[name].stage_handles(stages) for name, stages in handles.items()}
        self.http_policy = http_policy or HttpPolicy()
        self._ready: set[str] = set()  # models every stage of which has answered (see _ready_models)
        self.aliases = aliases or Aliases.build(OpenAINames(), models, next(iter(models)))
        tags = ("model",)
        self.ttfa = Histogram(
            "chorus_time_to_first_audio_seconds",
            description="Seconds from request to the first audio bytes.",
            boundaries=[0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 5],
            tag_keys=tags,
        )
        self.rtf = Histogram(
            "chorus_real_time_factor",
            description="Synthesis seconds per second of audio, per finished stream.",
            boundaries=[0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2],
            tag_keys=tags,
        )
        self.outcomes = Counter(
            "chorus_speech_requests", description="Speech requests by outcome.", tag_keys=OUTCOME_TAGS
        )
        limits = AdmissionConfig(ceiling=self.http_policy.max_concurrent_streams, enabled=self.http_policy.admission)
        # a family's voices share its replicas, so they share its admission
        self.admission = {info.unit: ModelAdmission(limits) for info in models.values()}
        self.recent = {info.family: RecentVoices(info.family_capacity) for info in models.values() if info.family}
        self.families: dict[str, list[str]] = {}  # family -> its voices (model names)
        for name, info in models.items():
            if info.family:
                self.families.setdefault(info.family, []).append(name)
        self.family_ttfa = Histogram(
            "chorus_family_first_audio_seconds",
            description="Seconds from request to the first audio of a family's voice, by expected start (cold, warm).",
            boundaries=[0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 3, 5, 10],
            tag_keys=FAMILY_TAGS,
        )
        self.load = {
            key: Gauge(f"chorus_{key}", description=text, tag_keys=tags)
            for key, text in (
                ("streams", "Streams in progress per model on this ingress replica."),
                ("limit", "Learned stream capacity per model on this ingress replica."),
                ("starting", "Streams waiting for their first audio, per model."),
                ("min_lead_s", "Smallest listener buffer (seconds of audio ahead of playback), per model."),
            )
        }

    # -- catalogue and health -------------------------------------------------------------------
    @app.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        """The models that can speak now: a model is listed once every stage of it has answered."""
        ready = await self._ready_models(LIST_PROBE_S)
        return {"object": "list", "data": [self.models[name].card() for name in ready]}

    @app.get("/v1/audio/voices")
    async def list_voices(self, model: str | None = None) -> Response:
        if model is not None and model not in self.models:
            return SpeechError(404, f"model '{model}' not found", "model", "model_not_found").response()
        data = [
            {"model": name, "voice": voice, "description": preset.description}
            for name, info in self.models.items()
            if model in (None, name)
            for voice, preset in sorted(info.manifest.voices.items())
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/", include_in_schema=False)
    async def page(self) -> Response:
        """The listening page: type text, pick model and voice, hear it stream."""
        return _page_file("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def page_asset(self, name: str) -> Response:
        if name not in PAGE_FILES:
            return SpeechError(404, f"no file '{name}' here", code="not_found").response()
        return _page_file(name)

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(self) -> Response:
        """200 when every stage of every model answers now; else 503 naming the models still starting."""
        answering = await self._probe(list(self.models), READY_PROBE_S)
        self._ready.update(answering)
        waiting = [name for name in self.models if name not in answering]
        if waiting:
            message = f"not ready: model {', '.join(waiting)} is not answering yet (its stages are starting)"
            headers = {"Retry-After": RETRY_AFTER_S}
            return error_response(503, message, type="server_error", code="not_ready", headers=headers)
        return JSONResponse({"status": "ready", "models": sorted(self.models)})

    async def _answering(self, model: str, timeout: float) -> bool:
        """Whether every stage deployment of ``model`` answers within ``timeout`` seconds."""
        stages = list({id(stage): stage for stage in self.handles[model]}.values())  # fused: decoder twice
        try:
            await asyncio.wait_for(asyncio.gather(*(stage.ready.remote() for stage in stages)), timeout=timeout)
        except Exception:  # not answering means not ready; which stage and why is for the log
            logger.info("model %r: a stage did not answer within %.1f s", model, timeout, exc_info=True)
            return False
        return True

    async def _ready_models(self, timeout: float) -> list[str]:
        """The models that can speak, in order; once a model has answered it stays listed (a lost
        replica is replaced while its streams resume elsewhere, see serve_app.streams)."""
        self._ready.update(await self._probe([name for name in self.models if name not in self._ready], timeout))
        return [name for name in self.models if name in self._ready]

    async def _probe(self, names: list[str], timeout: float) -> set[str]:
        """Those of ``names`` whose stages answer; a family's voices share its replicas, so one
        probe answers for all of them."""
        units: dict[str, str] = {}
        for name in names:
            units.setdefault(self.models[name].unit, name)
        answers = await asyncio.gather(*(self._answering(name, timeout) for name in units.values()))
        up = {unit for unit, ok in zip(units, answers, strict=True) if ok}
        return {name for name in names if self.models[name].unit in up}

    @app.get("/metrics")
    async def metrics(self) -> Response:
        """This node's Prometheus metrics (Ray's own and Chorus's), proxied from Ray's exporter."""
        node = next(n for n in ray.nodes() if n["NodeID"] == ray.get_runtime_context().get_node_id())
        url = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"
        try:
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        except OSError:
            logger.warning("metrics exporter at %s unreachable", url, exc_info=True)
            message = "metrics are unavailable: this node's exporter is not answering"
            return error_response(503, message, type="server_error", code="metrics_unavailable")
        return Response(body, media_type="text/plain; version=0.0.4")

    # -- speech -----------------------------------------------------------------------------------
    @app.post("/v1/audio/speech")
    async def speech(self, body: SpeechBody) -> Response:
        start = time.perf_counter()
        body, headers = self._map_names(body)
        marks: list[SpeechMark] = []  # filled as each sentence's mel completes, sent as SSE events
        try:
            if body.timestamps and body.stream_format != "sse":
                raise SpeechError(
                    400,
                    "timestamps come as 'speech.marks' events: ask with stream_format 'sse' "
                    "(or use the WebSocket /v1/audio/speech/stream)",
                    "timestamps",
                    "timestamps_need_sse",
                )
            info, encoder, audio, first = await self._start(body, body.timestamps, marks)
        except SpeechError as exc:
            # An unknown model is the client's text: not a tag (Ray's metrics take ASCII only, and few values).
            model = body.model if body.model in self.models else "unknown"
            self.outcomes.inc(tags={"model": model, "outcome": f"http_{exc.status}"})
            return exc.response()
        self.ttfa.observe(time.perf_counter() - start, tags={"model": body.model})
        rate = info.manifest.mel.sample_rate
        encoded = _Encoded(encoder, first, audio)
        headers = {**headers, SAMPLE_RATE_HEADER: str(encoder.output_rate)}
        if body.stream_format == "sse":
            events = self._sse(body, encoded, start, rate, marks)
            return StreamingResponse(events, media_type=SSE_MEDIA_TYPE, headers=headers)
        return StreamingResponse(
            self._audio(body, encoded, start, rate), media_type=encoder.media_type, headers=headers
        )

    @app.post(MARKS_PATH)
    async def speech_marks(self, body: SpeechBody) -> Response:
        """The speech marks of the audio ``POST /v1/audio/speech`` gives for the same body, as JSON
        lines (one mark per line), for clients that take the audio as a plain file. Synthesis is
        deterministic, so these are exactly that audio's marks."""
        body, headers = self._map_names(body)
        marks: list[SpeechMark] = []
        try:
            info, encoder, audio, first = await self._start(
                body, body.timestamps or ["sentence", "ssml", "word"], marks
            )
        except SpeechError as exc:
            return exc.response()
        native, rate = info.manifest.mel.sample_rate, encoder.output_rate
        headers = {**headers, SAMPLE_RATE_HEADER: str(rate)}

        async def lines() -> AsyncIterator[bytes]:
            pending = first is not None
            while pending:
                for mark in _samples_at(marks, native, rate):
                    yield (json.dumps(mark) + "\n").encode()
                marks.clear()
                pending = await anext(audio, None) is not None
            for mark in _samples_at(marks, native, rate):
                yield (json.dumps(mark) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson", headers=headers)

    # -- incremental text over a WebSocket (see serve_app.realtime) --------------------------------
    @app.websocket("/v1/audio/speech/stream")
    async def speech_stream(self, ws: WebSocket) -> None:
        await SpeechSocket(ws, _SocketBackend(self)).run()

    async def _start(
        self, body: SpeechBody, kinds: Sequence[str], marks: list[SpeechMark]
    ) -> tuple[ModelInfo, AudioEncoder, AsyncIterator[np.ndarray], np.ndarray | None]:
        """Validate ``body`` and start its stream up to the first audio (errors before any byte is
        sent are ``SpeechError``); marks of ``kinds`` are appended to ``marks`` as they come."""
        info, resolved, encoder, items = self._prepare(body)
        tracker = self._tracker(info, kinds)  # each part of the input tells it its text
        audio = self._synthesize(body.model, items, resolved, tracker, marks.extend)
        return info, encoder, audio, await self._first_chunk(audio)

    def _tracker(self, info: ModelInfo, kinds: Sequence[str]) -> MarkTracker | None:
        """Speech marks of ``kinds`` for a stream (None: not asked for); a model without an
        alignment to derive them from says so (400), rather than inventing them."""
        if not kinds:
            return None
        if not info.speech_marks:
            raise SpeechError(
                400,
                f"model '{info.manifest.name}' gives no speech marks (its blocks report no alignment); "
                "ask without timestamps",
                "timestamps",
                "timestamps_unavailable",
            )
        mel = info.manifest.mel
        return MarkTracker(mel.hop_length, mel.sample_rate, kinds)

    def _map_names(self, body: _Body) -> tuple[_Body, dict[str, str]]:
        """OpenAI's model and voice names mapped to served ones (see :mod:`serve_app.aliases`), and
        the response headers that say what was used and whether ``instructions`` were followed."""
        model = self.aliases.model(body.model)
        if body.voice_name in self.families.get(model, ()):  # a family named as the model, its voice as the voice
            model, body = body.voice_name, body.model_copy(update={"voice": "default"})
        info = self.models.get(model)
        if info is None:
            return body, {}
        voice = self.aliases.voice(body.voice_name, info.manifest.voices)
        headers = {"X-Chorus-Model": model, "X-Chorus-Voice": voice}
        if body.instructions and body.instructions.strip():
            # No Chorus voice conditions on a text prompt yet; say so rather than pretend.
            headers["X-Chorus-Instructions"] = f"ignored; model {model} cannot follow instructions"
        return body.model_copy(update={"model": model, "voice": voice}), headers

    def _unknown_model(self, model: str, voice: str) -> str:
        """What to tell a client that named a model not served (a family needs one of its voices)."""
        if model in self.families:
            voices = ", ".join(sorted(self.families[model]))
            return f"model '{model}' is a voice family with no voice '{voice}': name one of its voices ({voices})"
        return f"model '{model}' not found (available: {', '.join(sorted(self.models))})"

    def _prepare(self, body: SpeechBody) -> tuple[ModelInfo, ResolvedOptions, AudioEncoder, UtterancePlan]:
        """The model, resolved options, audio encoder and what to say (sentences and an SSML
        document's pauses) of a request; every mistake in it is a ``SpeechError``."""
        info = self.models.get(body.model)
        if info is None:
            raise SpeechError(404, self._unknown_model(body.model, body.voice_name), "model", "model_not_found")
        try:
            resolved = info.resolve(
                voice=body.voice_name, speed=body.speed, lexicon=body.lexicon, normalize=body.normalize, seed=body.seed
            )
        except OptionError as exc:
            raise SpeechError(400, str(exc), exc.param, exc.code) from None
        native = info.manifest.mel.sample_rate
        rate = body.output_rate(native)
        if rate is not None and rate != native and body.response_format not in RESAMPLED_FORMATS:
            raise SpeechError(
                400,
                f"sample_rate {rate}: only {' and '.join(RESAMPLED_FORMATS)} take a rate of their own "
                f"({body.response_format} has its codec's; send 'native' or leave it out)",
                "sample_rate",
                "unsupported_sample_rate",
            )
        try:
            encoder = make_encoder(body.response_format, native, output_rate=rate)
        except UnsupportedFormatError as exc:
            raise SpeechError(400, str(exc), "response_format", "unsupported_format") from None
        if not Frontend.normalize(body.input):
            raise SpeechError(400, "input is empty", "input", "empty_input")
        try:
            items = UtterancePlan.of_script(script_of(body.input, body.input_format), resolved)
        except SSMLError as exc:
            raise SpeechError(400, str(exc), "input", "invalid_ssml") from None
        return info, resolved, encoder, items

    async def _first_chunk(self, audio: AsyncIterator[np.ndarray]) -> np.ndarray | None:
        try:
            return await anext(audio)
        except StopAsyncIteration:
            return None
        except OVERLOAD as exc:
            raise SpeechError(503, f"overloaded, retry shortly ({type(exc).__name__})", code="overloaded") from None

    async def _synthesize(
        self,
        model: str,
        sentences: UtterancePlan | AsyncIterator[str],
        options: Mapping[str, Any],
        marks: MarkTracker | None = None,
        on_marks: Callable[[list[SpeechMark]], None] | None = None,
    ) -> AsyncIterator[np.ndarray]:
        """Audio chunks for ``sentences`` (a list, or sentences still being written), if the model
        has room for one more listener; resumed on another replica if one dies under the stream."""
        encoders, decoder, vocoder = self.handles[model]
        handles = StageHandles(encoders, decoder, vocoder, self.models[model].fused_vocoder)
        resumed = lambda stage: self.outcomes.inc(tags={"model": model, "outcome": f"resumed_{stage}"})  # noqa: E731
        mel = self.models[model].manifest.mel
        rate = mel.sample_rate
        try:
            info = self.models[model]
            warm = info.family is None or self.recent[info.family].touch(model)
            ticket = self.admission[info.unit].admit(rate, 0.0 if warm else info.cold_start_s)
        except AtCapacity as exc:
            raise SpeechError(
                503, f"model '{model}' is at capacity: {exc}; retry shortly", code="at_capacity"
            ) from None
        try:
            stream = synthesize(handles, model, sentences, options, mel, resumed, marks, on_marks)
            async for audio in stream:
                if info.family and ticket.first_audio is None:
                    start = "warm" if warm else "cold"
                    waited = time.monotonic() - ticket.admitted
                    self.family_ttfa.observe(waited, tags={"family": info.family, "start": start})
                ticket.heard(audio.size)
                self._report_load(model)
                yield audio
        except NoSpeakableText:
            raise SpeechError(400, "input has no speakable characters", "input", "no_speakable_text") from None
        except LexiconError as exc:  # raised by an encoders replica: its message, not Ray's traceback
            cause = getattr(exc, "cause", None) or exc
            raise SpeechError(400, str(cause.args[0] if cause.args else cause), "lexicon", "invalid_lexicon") from None
        except VoiceUnavailable as exc:  # a family voice whose files went bad: the others serve on
            cause = getattr(exc, "cause", None) or exc
            message = str(cause.args[0] if cause.args else cause)
            raise SpeechError(503, message, "model", "voice_unavailable") from None
        finally:
            ticket.close()
            self._report_load(model)

    def _report_load(self, model: str) -> None:
        for key, value in self.admission[self.models[model].unit].figures().items():
            if key in self.load:
                self.load[key].set(value, tags={"model": model})

    async def _audio(self, body: SpeechRequest, audio: _Encoded, start: float, rate: int) -> AsyncIterator[bytes]:
        try:
            async for data in audio:
                yield data
        except Exception:  # cut the stream without its end: a client must not take it as complete
            self.outcomes.inc(tags={"model": body.model, "outcome": "failed_mid_stream"})
            raise
        self._finished(body.model, start, audio.samples, rate)

    async def _sse(
        self, body: SpeechRequest, audio: _Encoded, start: float, rate: int, marks: list[SpeechMark]
    ) -> AsyncIterator[bytes]:
        out = audio.encoder.output_rate
        try:
            async for data in audio:
                if marks:
                    yield sse_event(SpeechMarksEvent(marks=_samples_at(marks, rate, out)))
                    marks.clear()
                yield sse_event(SpeechAudioDelta.of(data))
            if marks:
                yield sse_event(SpeechMarksEvent(marks=_samples_at(marks, rate, out)))
        except Exception:  # the client must see the failure, not a short "complete" stream
            self.outcomes.inc(tags={"model": body.model, "outcome": "failed_mid_stream"})
            logger.exception("speech stream (sse) for model %r failed mid-stream", body.model)
            detail = ErrorDetail(message=MID_STREAM_FAILURE, type="server_error", code="synthesis_failed")
            yield sse_event(ErrorBody(error=detail))
            return
        yield sse_event(SpeechAudioDone(usage=SpeechUsage.of(len(body.input), audio.samples_out)))
        self._finished(body.model, start, audio.samples, rate)

    def _finished(self, model: str, start: float, samples: int, rate: int) -> None:
        self.outcomes.inc(tags={"model": model, "outcome": "ok"})
        if samples:
            self.rtf.observe((time.perf_counter() - start) / (samples / rate), tags={"model": model})
