"""``chorus bench serve``: streaming figures over HTTP beside the same figures in-process."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import httpx

__all__ = ["BenchRow", "format_table", "run_bench"]

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

    directory = addons.find_addon(addon or addons.loader.DEFAULT_ADDON)
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
