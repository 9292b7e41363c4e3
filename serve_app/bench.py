"""``chorus bench serve`` (streaming figures over HTTP beside in-process) and ``chorus bench capacity``
(many listeners at once: first audio, playback stalls, refusals, throughput, beside the unbatched
path and Ray's own floor)."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import httpx

__all__ = ["BenchRow", "CapacityRow", "format_capacity", "format_table", "run_bench", "run_capacity"]

TEXT = (
    "The morning train to the coast was late again. She packed three sandwiches and an old paperback. "
    "Nobody on the platform seemed surprised."
)
WAV_HEADER = 44


@dataclass(frozen=True)
class BenchRow:
    path: str  # "in-process" or "http"
    concurrency: int
    streams: int
    ttfa_p50_ms: float
    ttfa_p90_ms: float
    ttfa_p99_ms: float
    rtf: float  # mean over streams of synthesis time / audio time
    throughput: float  # seconds of audio produced per wall-clock second

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class _Stream:
    ttfa: float
    total: float
    audio_s: float


def _row(path: str, concurrency: int, streams: list[_Stream], wall: float) -> BenchRow:
    ttfa = sorted(s.ttfa * 1000 for s in streams)
    q = statistics.quantiles(ttfa, n=100, method="inclusive") if len(ttfa) > 1 else ttfa * 99
    rtf = statistics.fmean(s.total / s.audio_s for s in streams)
    return BenchRow(path, concurrency, len(streams), q[49], q[89], q[98], rtf, sum(s.audio_s for s in streams) / wall)


def _in_process(addon: str | None, concurrency: int, requests: int) -> BenchRow:
    import addons

    voice = addons.load(addon)
    list(voice.stream("Warm up."))
    results: list[_Stream] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(requests):
            start, first, samples = time.perf_counter(), None, 0
            for chunk in voice.stream(TEXT):
                first = first or time.perf_counter() - start
                samples += chunk.samples.size
            with lock:
                results.append(_Stream(first or 0.0, time.perf_counter() - start, samples / voice.sample_rate))

    return _timed("in-process", concurrency, results, lambda: _threads(worker, concurrency))


def _threads(worker: Callable[[], None], n: int) -> None:
    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _timed(path: str, concurrency: int, results: list[_Stream], run: Callable[[], None]) -> BenchRow:
    start = time.perf_counter()
    run()
    return _row(path, concurrency, results, time.perf_counter() - start)


async def _http_level(url: str, model: str, rate: int, concurrency: int, requests: int) -> list[_Stream]:
    body = {"model": model, "input": TEXT, "response_format": "wav"}
    async with httpx.AsyncClient(timeout=300) as client:

        async def one() -> _Stream:
            start, first, size = time.perf_counter(), None, 0
            async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
                response.raise_for_status()
                async for data in response.aiter_bytes():
                    size += len(data)
                    if first is None and size > WAV_HEADER:
                        first = time.perf_counter() - start
            return _Stream(first or 0.0, time.perf_counter() - start, (size - WAV_HEADER) / 2 / rate)

        async def slot() -> list[_Stream]:
            return [await one() for _ in range(requests)]

        slots = await asyncio.gather(*(slot() for _ in range(concurrency)))
    return [s for group in slots for s in group]


def run_bench(addon: str | None, levels: list[int], requests: int) -> list[BenchRow]:
    """In-process rows, then HTTP rows from an embedded local Serve, for each concurrency level."""
    import ray
    from ray import serve

    import addons
    from serve_app.server import ApplicationConfig, ServeConfig, free_port, start_local

    directory = addons.find_addon(addon or addons.DEFAULT_ADDON)
    manifest = addons.read_manifest(directory)
    rows = [_in_process(str(directory), c, requests) for c in levels]
    port = free_port()
    config = ServeConfig(applications=[ApplicationConfig(args={"addons": [str(directory)]})])
    start_local(config, "127.0.0.1", port)
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(_http_level(url, manifest.name, manifest.mel.sample_rate, 1, 1))  # warm-up
        for c in levels:
            start = time.perf_counter()
            streams = asyncio.run(_http_level(url, manifest.name, manifest.mel.sample_rate, c, requests))
            rows.append(_row("http", c, streams, time.perf_counter() - start))
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def format_table(rows: list[BenchRow]) -> str:
    head = f"{'path':<11} {'streams':>7} {'conc':>4} {'TTFA p50':>9} {'p90':>8} {'p99':>8} {'RTF':>7} {'audio s/s':>9}"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r.path:<11} {r.streams:>7} {r.concurrency:>4} {r.ttfa_p50_ms:>6.0f} ms {r.ttfa_p90_ms:>5.0f} ms "
            f"{r.ttfa_p99_ms:>5.0f} ms {r.rtf:>7.3f} {r.throughput:>9.2f}"
        )
    return "\n".join(lines)


# -- chorus bench capacity ----------------------------------------------------------------------

CAPACITY_LEVELS = (1, 4, 8, 16, 32)
ARRIVALS = ("burst", "steady")
SYSTEMS = ("chorus", "unbatched", "floor")
SYSTEM_NOTES = {
    "chorus": "continuous batching + admission control (the defaults)",
    "chorus-nice5": "the defaults, but stage replicas 5 nicer than the ingress (stage_nice=5)",
    "chorus-fused": "the defaults, but each decoder replica also vocodes (fused_vocoder): one call per sentence",
    "unbatched": "batching=0, admission off: every stream alone, every stream admitted",
    "floor": "the real ingress over no-op stages: Ray's own cost for this hop structure",
    "floor-fused": "the same no-op stages in the fused structure (fused_vocoder): its own floor",
}
STALL_S = 0.01  # a playback gap shorter than this is not counted as a stall


@dataclass(frozen=True)
class _Listener:
    status: int
    answered_s: float  # request to response headers
    chunks: tuple[tuple[float, int], ...]  # (seconds since the request, bytes) per body piece

    def ttfa(self) -> float | None:
        return self.chunks[0][0] if self.chunks else None

    def audio_s(self, rate: int) -> float:
        return sum(n for _, n in self.chunks) / 2 / rate

    def stalls(self, rate: int) -> list[float]:
        """Playback gaps: playback starts with the first byte and plays whatever has arrived."""
        if not self.chunks:
            return []
        gaps, clock, heard = [], self.chunks[0][0], self.chunks[0][1] / 2 / rate
        for arrival, size in self.chunks[1:]:
            if arrival > clock + heard:
                gaps.append(arrival - (clock + heard))
                clock = arrival - heard  # playback resumes where it ran dry
            heard += size / 2 / rate
        return gaps


@dataclass(frozen=True)
class CapacityRow:
    system: str
    arrival: str
    streams: int
    admitted: int
    refused: int
    refusal_ms_max: float
    ttfa_p50_ms: float
    ttfa_p99_ms: float
    stalled_share: float  # of admitted streams, the share whose playback ran dry
    worst_stall_ms: float
    throughput: float  # audio-seconds per wall-clock second, admitted streams

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _quantile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[q - 1]


async def _listen(client: httpx.AsyncClient, url: str, body: dict[str, object], delay: float) -> _Listener:
    await asyncio.sleep(delay)
    start = time.perf_counter()
    chunks: list[tuple[float, int]] = []
    async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
        answered = time.perf_counter() - start
        if response.status_code != 200:
            await response.aread()
            return _Listener(response.status_code, answered, ())
        async for data in response.aiter_bytes():
            chunks.append((time.perf_counter() - start, len(data)))
    return _Listener(200, answered, tuple(chunks))


async def _capacity_level(
    url: str, model: str, streams: int, arrival: str, spacing_s: float
) -> tuple[list[_Listener], float]:
    body: dict[str, object] = {"model": model, "input": TEXT, "response_format": "pcm", "sample_rate": "native"}
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        start = time.perf_counter()
        delays = [i * spacing_s if arrival == "steady" else 0.0 for i in range(streams)]
        listeners = await asyncio.gather(*(_listen(client, url, body, d) for d in delays))
        return list(listeners), time.perf_counter() - start


def _capacity_row(system: str, arrival: str, listeners: list[_Listener], wall: float, rate: int) -> CapacityRow:
    ok = [x for x in listeners if x.status == 200]
    refused = [x for x in listeners if x.status in (429, 503)]
    if len(ok) + len(refused) != len(listeners):
        bad = sorted({x.status for x in listeners} - {200, 429, 503})
        raise RuntimeError(f"{system}: unexpected HTTP status {bad}")
    ttfa = [t * 1000 for x in ok if (t := x.ttfa()) is not None]
    stalls = [x.stalls(rate) for x in ok]
    worst = max((max(s) for s in stalls if s), default=0.0)
    return CapacityRow(
        system,
        arrival,
        len(listeners),
        len(ok),
        len(refused),
        max((x.answered_s * 1000 for x in refused), default=0.0),
        _quantile(ttfa, 50),
        _quantile(ttfa, 99),
        sum(1 for s in stalls if any(g > STALL_S for g in s)) / len(ok) if ok else 0.0,
        worst * 1000,
        sum(x.audio_s(rate) for x in ok) / wall,
    )


def run_capacity(
    addon: str | None,
    levels: list[int],
    arrivals: list[str],
    systems: list[str],
    on_row: Callable[[CapacityRow], None] | None = None,
) -> list[CapacityRow]:
    """For each system (served one after another on one local Ray), each arrival pattern and each
    level: ``level`` listeners asking for TEXT at once ("burst"), or one every utterance length /
    level seconds ("steady": about ``level`` listening at any time), over HTTP as pcm."""
    import ray
    from ray import serve

    import addons
    from serve_app.app import AppArgs, build_app
    from serve_app.bench_floor import build_floor_app, profile_addon
    from serve_app.deployments import DEFAULTS, STAGE_NICE
    from serve_app.server import free_port

    directory = addons.find_addon(addon or addons.DEFAULT_ADDON)
    manifest = addons.read_manifest(directory)
    rate = manifest.mel.sample_rate
    profile = profile_addon(directory, TEXT) if {"floor", "floor-fused"} & set(systems) else None
    utterance_s = _utterance_seconds(directory)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    rows: list[CapacityRow] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for system in systems:
            if system in ("floor", "floor-fused"):
                assert profile is not None
                app = build_floor_app(directory, profile, DEFAULTS, fused=system == "floor-fused")
            else:
                plain = system == "unbatched"
                args = AppArgs(
                    addons=[str(directory)],
                    batching=0 if plain else 32,
                    admission=not plain,
                    stage_nice=5 if system == "chorus-nice5" else STAGE_NICE,
                    fused_vocoder=system == "chorus-fused",
                )
                app = build_app(args)
            serve.run(app, name=system, route_prefix=f"/{system}")
            asyncio.run(_capacity_level(f"{url}/{system}", manifest.name, 1, "burst", 0.0))  # warm-up
            for arrival in arrivals:
                for level in levels:
                    found, wall = asyncio.run(
                        _capacity_level(f"{url}/{system}", manifest.name, level, arrival, utterance_s / level)
                    )
                    row = _capacity_row(system, arrival, found, wall, rate)
                    rows.append(row)
                    if on_row:
                        on_row(row)
                    time.sleep(1.0)  # let admission's view of the last level drain
            serve.delete(system)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def _utterance_seconds(directory: object) -> float:
    import addons

    voice = addons.load(directory)  # type: ignore[arg-type]
    return sum(c.samples.size for c in voice.stream(TEXT)) / voice.sample_rate


def format_capacity(rows: list[CapacityRow]) -> str:
    head = (
        f"{'system':<10} {'arrival':<7} {'streams':>7} {'admit':>5} {'refuse':>6} {'refusal':>8} "
        f"{'TTFA p50':>9} {'p99':>8} {'stalled':>7} {'worst':>8} {'audio s/s':>9}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r.system:<10} {r.arrival:<7} {r.streams:>7} {r.admitted:>5} {r.refused:>6} "
            f"{r.refusal_ms_max:>5.0f} ms {r.ttfa_p50_ms:>6.0f} ms {r.ttfa_p99_ms:>5.0f} ms "
            f"{r.stalled_share:>6.0%} {r.worst_stall_ms:>5.0f} ms {r.throughput:>9.2f}"
        )
    return "\n".join(lines)
