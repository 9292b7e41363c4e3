"""``chorus bench family``: many copies of one voice served as one family, beside one graph per voice.

Each system runs as ``chorus serve`` in a subprocess in its own process group on a free loopback
port, one after the other, and is stopped by signalling that group (also on errors and Ctrl-C):

- ``single``: the voice alone, its own deployment graph (``--addon``): the baseline;
- ``family`` at each voice count V: V copies of the voice under other names (hard-linked network
  files, an addon.json each) in one folder, served as one family alone (``--voices-dir``,
  ``--voices-per-replica``, ``families_only``): replicas load voices on first use, LRU;
- ``graphs`` at each count N > 1: the N copies as N deployment graphs (``--addon`` each), where the
  machine's free memory holds N times what the single graph measured.

What each server is asked, over HTTP (streamed pcm of one sentence; first audio = the first body
byte after the request was sent):

1. cold/warm: a voice no replica holds (the first request to it in the server's life), then the
   same voice again at once (warm), for ``requests`` voices (or all V, if fewer), sequentially;
   a voice with fewer than ``requests`` voices is asked again until ``requests`` warm samples;
2. traffic: ``concurrency`` clients, each sending its share of the requests back to back, the
   voices chosen round robin (``uniform``: at least every voice once) and then by a seeded Zipf
   law (s = 1.1, ``zipf``); with one voice, the one pattern ``one``;
3. sweep: every voice no request has answered yet (admission may refuse under traffic), once, one
   at a time: whether every voice answers.

Memory is read from /proc: the resident set (RSS, and PSS, which splits shared pages among their
sharers) of the replica processes of the served voices' deployments (Ray names them
``ray::ServeReplica:<app>:<deployment>``), at ready (no request yet), after the first voice loaded,
at the end, and the peak sampled every half second. Beside it, the cap's arithmetic: per stage,
what its replicas held at ready plus cap x replicas x what one voice needs there by the estimate the
family planner sizes caps with (``addons.engine.families``: network bytes x RESIDENT_FACTOR + overhead).
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from serve_app.bench import _Listener, _quantile
from serve_app.bench_peer import (
    CHORUS_READY_TIMEOUT_S,
    LOOPBACK,
    READY_POLL_S,
    _find_addon,
    _stop,
    _tail,
    _terminate_as_interrupt,
)
from serve_app.server import free_port

__all__ = [
    "TEXT",
    "FamilyBenchPlan",
    "FamilyBenchResult",
    "Latency",
    "StageMemory",
    "SystemRow",
    "TrafficRow",
    "format_family",
    "measure_system",
    "plan_family",
    "run_family",
]

# One held-out sentence (about four seconds of joe's speech): no test or other benchmark speaks it.
TEXT = "The lighthouse keeper wrote down every ship that passed, even the small ones with no names."
APP = "chorus"  # the Serve application chorus serve runs (ApplicationConfig's default name)
STAGES = ("encoders", "decoder", "vocoder")
ZIPF_S = 1.1
MAX_VOICES = 500
MAX_REQUESTS = 1000
MAX_CONCURRENCY = 64
SAMPLE_S = 0.5  # memory sampling period while a server is measured
MEMORY_HEADROOM = 0.8  # graphs run only where this share of the free memory holds their estimate
FAMILY_READY_TIMEOUT_S = 600.0  # fifty voices are scanned (every network checked) before Ray starts
MIB = 1 << 20


@dataclass(frozen=True)
class FamilyBenchPlan:
    """What one run measures, resolved and checked before anything starts."""

    addon: Path  # the voice copied (an addon directory)
    model: str  # its name
    rate: int  # Hz
    voices: tuple[int, ...]  # family sizes V
    graphs: tuple[int, ...]  # graph-per-voice counts N > 1 (the single graph is the baseline)
    cap: int  # voices per replica, every family stage
    requests: int  # cold voices sampled; warm samples; requests per traffic pattern (at least V uniform)
    concurrency: int
    seed: int = 0
    admission: bool = True  # chorus serve's admission control (off: every stream is served)
    baseline: bool = True  # serve the voice alone first
    text: str = TEXT


@dataclass(frozen=True)
class Latency:
    """First-audio figures of ``n`` answered requests, ms (NaN with none)."""

    n: int
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        ms = [s * 1000 for s in seconds]
        return cls(len(ms), _quantile(ms, 50), _quantile(ms, 99))


@dataclass(frozen=True)
class StageMemory:
    """One deployment kind's replicas (all voices' deployments of that stage, for graphs), MiB."""

    stage: str
    replicas: int
    idle_mib: float  # RSS at ready: no voice loaded by a request yet (a graph's replicas hold theirs)
    end_mib: float  # RSS after every request
    per_voice_est_mib: float  # what one voice needs in this stage by the planner's estimate
    first_voice_mib: float  # what a replica's first voice took, measured (at least the estimate); graphs: NaN
    bound_mib: float  # family: idle + replicas x (first voice measured + (min(cap, V) - 1) x estimate); graphs: NaN


@dataclass(frozen=True)
class TrafficRow:
    pattern: str  # uniform, zipf or one
    requests: int
    ok: int
    refused: int  # 429/503 answers (admission control, or a voice refused)
    expected_cold: int  # requests whose voice was not among the last cap x encoders-replicas voices asked
    ttfa: Latency
    throughput: float  # audio seconds per wall second over the pattern, answered requests


@dataclass(frozen=True)
class SystemRow:
    system: str  # single, family or graphs
    voices: int
    cap: int | None  # voices per replica (family only)
    ready_s: float  # start of chorus serve to /ready
    stages: list[StageMemory]
    rss_idle_mib: float  # the served voices' replicas: sum of RSS at ready
    rss_first_mib: float  # ... after the first request (one voice loaded, for a family)
    rss_end_mib: float  # ... after every request
    rss_peak_mib: float  # ... highest sum seen while measuring (sampled every SAMPLE_S)
    pss_end_mib: float  # ... sum of PSS at the end (shared pages split among their sharers)
    bound_mib: float  # family: the cap's arithmetic (sum of the stages' bounds); else NaN
    server_rss_mib: float  # every process of the server at the end (Ray's own, ingress, proxy included)
    cold: Latency  # first request to a voice (family: no replica held it; graphs: its graph was loaded)
    warm: Latency  # the same voice asked again right after
    traffic: list[TrafficRow]
    voices_answered: int  # distinct voices with at least one answered request
    swept: int  # voices no earlier request had answered, asked once more one at a time at the end
    errors: list[str] = field(default_factory=list)  # refusals and failures: kind, count, first message

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class FamilyBenchResult:
    plan: FamilyBenchPlan
    load_stages_s: dict[str, float]  # in-process load of one voice per stage, best of 3 (voice_load_s)
    rows: list[SystemRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # systems not run, and why

    @property
    def load_s(self) -> float:
        """A cold voice's load time: its three stages loaded one after another (an upper bound)."""
        return sum(self.load_stages_s.values())

    def checks(self) -> list[dict[str, object]]:
        """The issue's targets per family row: warm p50 within 1.2x of the single voice's; cold p50
        within the voice's load time plus the warm p50; resident memory within the cap's arithmetic."""
        single = next((r for r in self.rows if r.system == "single"), None)
        out: list[dict[str, object]] = []
        for r in self.rows:
            if r.system != "family":
                continue
            warm_ratio = r.warm.p50_ms / single.warm.p50_ms if single and single.warm.n else float("nan")
            allowance = self.load_s * 1000 + r.warm.p50_ms
            out.append(
                {
                    "voices": r.voices,
                    "warm_p50_over_single": warm_ratio,
                    "warm_ok": warm_ratio <= 1.2,
                    "cold_p50_ms": r.cold.p50_ms,
                    "load_plus_warm_ms": allowance,
                    "cold_ok": r.cold.p50_ms <= allowance,
                    "rss_peak_over_bound": r.rss_peak_mib / r.bound_mib,
                    "memory_ok": r.rss_peak_mib <= r.bound_mib,
                    "every_voice_answered": r.voices_answered == r.voices,
                }
            )
        return out

    def as_dict(self) -> dict[str, object]:
        plan = {**asdict(self.plan), "addon": str(self.plan.addon)}
        return {
            "plan": plan,
            "load_s": self.load_s,
            "load_stages_s": self.load_stages_s,
            "rows": [r.as_dict() for r in self.rows],
            "checks": self.checks(),
            "skipped": self.skipped,
        }


# -- planning ---------------------------------------------------------------------------------


def plan_family(
    addon: str | None,
    voices: Sequence[int],
    cap: int,
    requests: int,
    concurrency: int,
    graphs: Sequence[int] = (),
    seed: int = 0,
    admission: bool = True,
) -> FamilyBenchPlan:
    """Resolve the voice and check the counts; ValueError names a bad one."""
    import addons

    if not voices or min(voices) < 1 or max(voices) > MAX_VOICES:
        raise ValueError(f"--voices must be between 1 and {MAX_VOICES}")
    if graphs and (min(graphs) < 1 or max(graphs) > MAX_VOICES):
        raise ValueError(f"--graphs must be between 1 and {MAX_VOICES}")
    if cap < 1:
        raise ValueError("--cap must be at least 1")
    if not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"--requests must be between 1 and {MAX_REQUESTS}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
    try:
        directory = _find_addon(addon)
        manifest = addons.read_manifest(directory)
    except addons.AddonError as exc:
        raise ValueError(str(exc)) from None
    many = tuple(sorted({n for n in graphs if n > 1}))  # one graph is the single-voice baseline
    return FamilyBenchPlan(
        directory, manifest.name, manifest.mel.sample_rate, tuple(dict.fromkeys(voices)), many, cap, requests,
        concurrency, seed, admission,
    )  # fmt: skip


# -- the voices: copies under other names -----------------------------------------------------


def copy_voices(source: Path, folder: Path, count: int, stem: str = "voice") -> list[str]:
    """``count`` copies of the addon ``source`` in ``folder`` as ``<stem>-000``...: network files
    hard-linked where the file system allows it (copied where not), an addon.json of their own."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((source / "addon.json").read_text(encoding="utf-8"))
    names = [f"{stem}-{i:03d}" for i in range(count)]
    for name in names:
        target = folder / name
        shutil.copytree(source, target, copy_function=_link, ignore=_nested_addons)
        (target / "addon.json").unlink()  # the linked one is the source's own
        (target / "addon.json").write_text(json.dumps({**manifest, "name": name}), encoding="utf-8")
    return names


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system: a copy costs disk, not memory (loads read the file either way)
        shutil.copy2(src, dst)


def _nested_addons(directory: str, names: list[str]) -> set[str]:
    """Sub-folders that are addons of their own are not part of this one."""
    return {n for n in names if (Path(directory) / n / "addon.json").is_file()}


def voice_load_s(directory: Path, repeats: int = 3) -> dict[str, float]:
    """Seconds to load one voice in each family stage in this process, as the family's replicas load
    it (serve_app.families: the stage alone, batching as served; best of ``repeats``, the files in
    the page cache). A cold request loads it in all three, the encoders' and vocoder's at once."""
    import addons
    from addons.engine.stages import AudioStage
    from serve_app.deployments import DEFAULT_BATCHING

    manifest = addons.read_manifest(directory)
    loads = {
        "encoders": lambda: addons.load(directory, device="cpu", stages=["encoders"]).encoders,
        "decoder": lambda: addons.load(directory, device="cpu", batching=DEFAULT_BATCHING, stages=["decoder"]).decoder,
        "vocoder": lambda: AudioStage.load_from(directory, manifest, "cpu", DEFAULT_BATCHING),
    }
    best = dict.fromkeys(loads, math.inf)
    for _ in range(repeats):
        for stage, make in loads.items():
            start = time.perf_counter()
            make().load()
            best[stage] = min(best[stage], time.perf_counter() - start)
            gc.collect()
    return best


# -- memory, from /proc -----------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:  # the process is gone
        return ""


def _parent(pid: int) -> int:
    stat = _read(f"/proc/{pid}/stat")
    return int(stat.rsplit(")", 1)[1].split()[1]) if stat else 0


def server_processes(root: int) -> dict[int, str]:
    """Every live process descended from ``root`` (itself included): pid -> its command line."""
    parents, lines = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            pid = int(entry)
            parents[pid] = _parent(pid)
            lines[pid] = _read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()
    inside: dict[int, str] = {}
    for pid in parents:
        up, seen = pid, 0
        while up > 1 and up != root and seen < 64:
            up, seen = parents.get(up, 0), seen + 1
        if up == root:
            inside[pid] = lines[pid]
    return inside


def replica_deployment(cmdline: str) -> str | None:
    """The deployment of a Serve replica process of the chorus application, from its title.

    While a replica runs a method, Ray titles it ``ray::ServeReplica:APP:DEPLOYMENT.method`` (a
    health check, a request): the method is not part of the name (a reading taken then missed
    the replica). Chorus's deployment names end in ``-encoders``, ``-decoder`` or ``-vocoder``,
    never in an identifier after a dot."""
    head = cmdline.split(" ", 1)[0]
    prefix = f"ray::ServeReplica:{APP}:"
    if not head.startswith(prefix):
        return None
    name, dot, method = head[len(prefix) :].rpartition(".")
    return name if dot and method.isidentifier() else head[len(prefix) :]


def _kib(pid: int, key: str, source: str) -> int:
    for line in _read(f"/proc/{pid}/{source}").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    return _kib(pid, "VmRSS", "status") / 1024


def pss_mib(pid: int) -> float:
    return _kib(pid, "Pss", "smaps_rollup") / 1024


class Replicas:
    """The replica processes of the served voices' deployments, grouped by stage."""

    def __init__(self, root: int, deployments: dict[str, str]) -> None:
        self.root = root
        self.deployments = deployments  # deployment name -> stage

    def by_stage(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {s: [] for s in STAGES}
        for pid, line in server_processes(self.root).items():
            deployment = replica_deployment(line)
            if deployment in self.deployments:
                found[self.deployments[deployment]].append(pid)
        return found

    def rss(self) -> dict[str, float]:
        return {stage: sum(rss_mib(p) for p in pids) for stage, pids in self.by_stage().items()}

    def server_rss(self) -> float:
        return sum(rss_mib(p) for p in server_processes(self.root))


@contextmanager
def _peak(replicas: Replicas) -> Iterator[list[float]]:
    """Sample the replicas' summed RSS every SAMPLE_S while the block runs; yields [peak]."""
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], sum(replicas.rss().values()))
            stop.wait(SAMPLE_S)

    thread = threading.Thread(target=sample, name="chorus-bench-memory", daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], sum(replicas.rss().values()))


# -- requests ---------------------------------------------------------------------------------


class _Asked:
    """Every request's outcome in one server's life, and the voices a family would hold by the
    ingress's own estimate (the last ``capacity`` distinct voices asked, as RecentVoices counts)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.recent: OrderedDict[str, None] = OrderedDict()
        self.answered: set[str] = set()
        self.errors: dict[str, tuple[int, str]] = {}  # "HTTP 503 at_capacity" -> (count, first message)

    def touch(self, voice: str) -> bool:
        """Record that ``voice`` is asked now; whether it was expected cold."""
        cold = voice not in self.recent
        self.recent[voice] = None
        self.recent.move_to_end(voice)
        while len(self.recent) > self.capacity:
            self.recent.popitem(last=False)
        return cold

    def outcome(self, voice: str, listener: _Listener, error: str) -> None:
        if listener.status == 200 and listener.chunks:
            self.answered.add(voice)
            return
        code, _, message = error.partition(": ")
        kind = f"HTTP {listener.status} {code}".strip()
        count, first = self.errors.get(kind, (0, f"{voice}: {message}"))
        self.errors[kind] = (count + 1, first)

    def error_lines(self) -> list[str]:
        return [f"{kind} x{count} (first: {first[:200]})" for kind, (count, first) in self.errors.items()]


async def _ask(client: httpx.AsyncClient, url: str, plan: FamilyBenchPlan, voice: str, asked: _Asked) -> _Listener:
    """One streamed request (as ``chorus bench capacity`` listens), its outcome recorded in ``asked``
    with the error's code and message where it was refused."""
    start = time.perf_counter()
    chunks: list[tuple[float, int]] = []
    error = ""
    async with client.stream("POST", f"{url}/v1/audio/speech", json=_body(plan, voice)) as response:
        answered = time.perf_counter() - start
        if response.status_code != 200:
            error = _error_text(await response.aread())
        else:
            async for data in response.aiter_bytes():
                chunks.append((time.perf_counter() - start, len(data)))
    listener = _Listener(response.status_code, answered, tuple(chunks))
    asked.outcome(voice, listener, error)
    return listener


def _error_text(body: bytes) -> str:
    """``code: message`` of an OpenAI-style error body, else its first characters."""
    try:
        error = json.loads(body)["error"]
        return f"{error.get('code') or error.get('type')}: {error.get('message')}"
    except (ValueError, KeyError, TypeError):
        return f": {body[:200].decode('utf-8', 'replace')}"


def _body(plan: FamilyBenchPlan, voice: str) -> dict[str, object]:
    return {"model": voice, "input": plan.text, "response_format": "pcm", "sample_rate": "native"}


def _first(listener: _Listener) -> float | None:
    return listener.ttfa() if listener.status == 200 else None


async def _cold_and_warm(
    plan: FamilyBenchPlan, url: str, names: list[str], asked: _Asked, after_first: Callable[[], None]
) -> tuple[list[float], list[float]]:
    """Cold then warm first audio, one request at a time (see the module docstring)."""
    cold: list[float] = []
    warm: list[float] = []
    sampled = names[: plan.requests]
    repeats = math.ceil(plan.requests / len(sampled))
    async with httpx.AsyncClient(timeout=300) as client:
        for i, voice in enumerate(sampled):
            asked.touch(voice)
            first = await _ask(client, url, plan, voice, asked)
            if i == 0:
                after_first()
            if (t := _first(first)) is not None:
                cold.append(t)
            for _ in range(repeats if len(warm) < plan.requests else 0):
                asked.touch(voice)
                again = await _ask(client, url, plan, voice, asked)
                if (t := _first(again)) is not None:
                    warm.append(t)
    return cold, warm


async def _sweep(plan: FamilyBenchPlan, url: str, names: list[str], asked: _Asked) -> int:
    """Every voice not answered yet, asked once, one at a time (every voice answers, or not);
    how many were asked."""
    left = [v for v in names if v not in asked.answered]
    async with httpx.AsyncClient(timeout=300) as client:
        for voice in left:
            asked.touch(voice)
            await _ask(client, url, plan, voice, asked)
    return len(left)


def traffic(names: list[str], pattern: str, requests: int, seed: int) -> list[str]:
    """The voices asked, in order: round robin (at least every voice once), or Zipf (s = ZIPF_S,
    the first name the most asked) drawn with ``seed``."""
    if pattern != "zipf":
        return [names[i % len(names)] for i in range(max(requests, len(names)))]
    weights = np.arange(1, len(names) + 1, dtype=np.float64) ** -ZIPF_S
    picks = np.random.default_rng(seed).choice(len(names), size=requests, p=weights / weights.sum())
    return [names[int(i)] for i in picks]


async def _traffic(plan: FamilyBenchPlan, url: str, pattern: str, order: list[str], asked: _Asked) -> TrafficRow:
    """``concurrency`` clients taking the next voice of ``order`` as each finishes its last request."""
    queue = list(reversed(order))
    results: list[tuple[str, _Listener]] = []
    cold = 0
    limits = httpx.Limits(max_connections=plan.concurrency + 4, max_keepalive_connections=plan.concurrency + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one_client() -> None:
            nonlocal cold
            while queue:
                voice = queue.pop()
                cold += asked.touch(voice)
                results.append((voice, await _ask(client, url, plan, voice, asked)))

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(plan.concurrency)))
        wall = time.perf_counter() - start
    ok = [x for _, x in results if x.status == 200]
    ttfa = Latency.of([t for x in ok if (t := x.ttfa()) is not None])
    audio = sum(x.audio_s(plan.rate) for x in ok)
    refused = sum(1 for _, x in results if x.status in (429, 503))
    return TrafficRow(pattern, len(results), len(ok), refused, cold, ttfa, audio / wall if wall > 0 else 0.0)


# -- one server -------------------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    """One server to measure: what it serves and how chorus serve is asked to serve it."""

    kind: str  # single, family or graphs
    names: list[str]  # the voices' model names
    deployments: dict[str, str]  # its voices' deployment names -> stage
    serve_args: list[str]  # chorus serve's arguments besides --config, --host, --port, --metrics-port
    app_args: dict[str, object]  # the config file's application args
    capacity: int  # voices the family's encoders hold at once (cap x replicas); every voice for graphs


def family_system(plan: FamilyBenchPlan, folder: Path, names: list[str]) -> System:
    family = folder.name
    return System(
        "family",
        names,
        {f"{family}-{s}": s for s in STAGES},
        ["--voices-dir", str(folder), "--voices-per-replica", str(plan.cap)],
        {"families_only": True},
        plan.cap,  # one encoders replica (the default)
    )


def graphs_system(kind: str, directories: list[Path], names: list[str]) -> System:
    return System(
        kind,
        names,
        {f"{n}-{s}": s for n in names for s in STAGES},
        [],
        {"addons": [str(d) for d in directories]},
        len(names),
    )


def _argv(plan: FamilyBenchPlan, system: System, config: Path, port: int) -> list[str]:
    args = {**system.app_args, **({} if plan.admission else {"admission": False})}
    config.write_text(json.dumps({"applications": [{"args": args}]}), encoding="utf-8")  # JSON is YAML
    serve = ["serve", "--config", str(config), *system.serve_args]
    serve += ["--host", LOOPBACK, "--port", str(port), "--metrics-port", str(free_port(LOOPBACK))]
    return [sys.executable, "-m", "serve_app.cli", *serve]


def measure_system(plan: FamilyBenchPlan, system: System, workdir: Path) -> SystemRow:
    """Start ``system``'s server, ask it everything (module docstring), stop it; its row."""
    port = free_port(LOOPBACK)
    url = f"http://{LOOPBACK}:{port}"
    argv = _argv(plan, system, workdir / f"{system.kind}-{len(system.names)}.yaml", port)
    with _server_process(system, argv, url, workdir) as (ready_s, root):
        replicas = Replicas(root, system.deployments)
        idle = replicas.rss()
        first: dict[str, float] = {}
        asked = _Asked(system.capacity)
        with _peak(replicas) as peak:
            cold, warm = asyncio.run(
                _cold_and_warm(plan, url, system.names, asked, lambda: first.update(replicas.rss()))
            )
            rows = []
            patterns = ("uniform", "zipf") if len(system.names) > 1 else ("one",)
            for k, pattern in enumerate(patterns):
                order = traffic(system.names, pattern, plan.requests, plan.seed + k)
                rows.append(asyncio.run(_traffic(plan, url, pattern, order, asked)))
            swept = asyncio.run(_sweep(plan, url, system.names, asked))
        end = replicas.rss()
        # the highest sum seen: the samples' and every reading taken outside them (RSS moves between)
        peak_mib = max(peak[0], *(sum(r.values()) for r in (idle, first, end)))
        pss = sum(pss_mib(p) for pids in replicas.by_stage().values() for p in pids)
        server = replicas.server_rss()
        counts = {s: len(p) for s, p in replicas.by_stage().items()}
    stages = _stages(plan, system, counts, idle, first, end)
    family = system.kind == "family"
    return SystemRow(
        system.kind,
        len(system.names),
        plan.cap if family else None,
        ready_s,
        stages,
        sum(idle.values()),
        sum(first.values()),
        sum(end.values()),
        peak_mib,
        pss,
        sum(s.bound_mib for s in stages) if family else math.nan,
        server,
        Latency.of(cold),
        Latency.of(warm),
        rows,
        len(asked.answered),
        swept,
        asked.error_lines(),
    )


def _stages(
    plan: FamilyBenchPlan,
    system: System,
    counts: dict[str, int],
    idle: dict[str, float],
    first: dict[str, float],
    end: dict[str, float],
) -> list[StageMemory]:
    """Each stage's memory beside the cap's arithmetic: a replica's first voice as measured (it
    carries the replica's working set: arenas, the batching probe's buffers), each further voice
    it may hold at the estimate, times the replicas."""
    from addons.engine.families import RESIDENT_FACTOR, VOICE_OVERHEAD_BYTES, stage_bytes
    from addons.formats.manifest import read_manifest

    sizes = stage_bytes(read_manifest(plan.addon), plan.addon)
    held = min(plan.cap, len(system.names))
    out = []
    for stage in STAGES:
        if not counts[stage]:
            continue  # no such deployment (a voice without its own vocoder)
        per_voice = (sizes[stage] * RESIDENT_FACTOR + VOICE_OVERHEAD_BYTES) / MIB
        first_voice = max(per_voice, first.get(stage, idle[stage]) - idle[stage])  # one replica's first load
        bound = (
            idle[stage] + counts[stage] * (first_voice + (held - 1) * per_voice)
            if system.kind == "family"
            else math.nan
        )
        measured = first_voice if system.kind == "family" else math.nan
        out.append(StageMemory(stage, counts[stage], idle[stage], end[stage], per_voice, measured, bound))
    return out


@contextmanager
def _server_process(system: System, argv: list[str], url: str, workdir: Path) -> Iterator[tuple[float, int]]:
    """Run ``argv`` in its own session until the block ends (stopped as ``chorus bench peer`` stops
    its servers); yield seconds from start to /ready and the server's pid."""
    name = f"{system.kind}-{len(system.names)}"
    log = workdir / f"{name}.log"
    start = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True
        )
    try:
        deadline = start + (CHORUS_READY_TIMEOUT_S if system.kind == "single" else FAMILY_READY_TIMEOUT_S)
        while not _ready(url):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} server exited with {proc.returncode} before it was ready: {_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} server not ready after {deadline - start:.0f} s: {_tail(log)}")
            time.sleep(READY_POLL_S)
        yield time.monotonic() - start, proc.pid
    finally:
        _stop(proc)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=10.0).status_code == 200
    except httpx.HTTPError:
        return False  # not listening yet


# -- the run ----------------------------------------------------------------------------------


def run_family(
    plan: FamilyBenchPlan,
    on_row: Callable[[SystemRow], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> FamilyBenchResult:
    """The voice's load time, then each system in turn, alone on this machine (module docstring)."""
    note = on_note or (lambda _: None)
    result = FamilyBenchResult(plan, voice_load_s(plan.addon))
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in result.load_stages_s.items())
    note(f"one voice loads in {result.load_s:.2f} s in process, best of 3 ({stages})")

    def measured(row: SystemRow) -> None:
        result.rows.append(row)
        if on_row:
            on_row(row)

    with _terminate_as_interrupt(), tempfile.TemporaryDirectory(prefix="chorus-bench-family-") as tmp:
        work = Path(tmp)
        if plan.baseline:
            measured(measure_system(plan, graphs_system("single", [plan.addon], [plan.model]), work))
        for count in plan.voices:
            folder = work / f"v{count}" / "family"  # the family's name, its deployments' prefix
            names = copy_voices(plan.addon, folder, count, plan.model)
            measured(measure_system(plan, family_system(plan, folder, names), work))
            shutil.rmtree(folder.parent)
        for count in plan.graphs:
            reason = _graphs_do_not_fit(result, count)
            if reason:
                result.skipped.append(f"graphs {count}: {reason}")
                note(f"graphs {count} skipped: {reason}")
                continue
            folder = work / f"g{count}"
            names = copy_voices(plan.addon, folder, count, plan.model)
            measured(measure_system(plan, graphs_system("graphs", [folder / n for n in names], names), work))
            shutil.rmtree(folder)
    return result


def _graphs_do_not_fit(result: FamilyBenchResult, count: int) -> str | None:
    """Why ``count`` graphs are not started (None: they fit): the single graph's replicas times
    ``count``, plus the rest of its server, against the share MEMORY_HEADROOM of the free memory."""
    single = next((r for r in result.rows if r.system == "single"), None)
    if single is None:
        return "no single-voice measurement to size them by"
    need = count * single.rss_peak_mib + (single.server_rss_mib - single.rss_end_mib)
    free = _available_mib()
    if need > MEMORY_HEADROOM * free:
        return (
            f"estimated {need:.0f} MiB ({count} x {single.rss_peak_mib:.0f} MiB of replicas + the server) "
            f"> {MEMORY_HEADROOM:.0%} of the {free:.0f} MiB available"
        )
    return None


def _available_mib() -> float:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- output -----------------------------------------------------------------------------------

SYSTEM_NOTES = {
    "single": "the voice alone: its own deployment graph (chorus serve --addon)",
    "family": "V copies of the voice as one family (chorus serve --voices-dir, families_only)",
    "graphs": "V copies, each its own deployment graph (chorus serve --addon x V)",
}
FIGURE_NOTES = (
    "memory: MiB of RSS summed over the replica processes of the served voices' deployments (ingress, "
    "proxy, controller and Ray's own processes not included: 'server' is every process of the server)",
    "idle: at /ready, before any request; first: after the first request; peak: highest sampled sum; "
    "bound: the cap's arithmetic, per stage idle + replicas x (a replica's first voice as measured + (min(cap, V) - 1) x the planner's per-voice estimate)",
    "cold: first audio of a voice's first request (family: no replica held it; single/graphs: loaded at start); "
    "warm: the same voice asked again right after; first audio = first pcm byte, ms, sequential requests",
    "traffic: C clients back to back; uniform = round robin over the voices, zipf = seeded Zipf (s 1.1); "
    "exp. cold: requests whose voice was not among the last cap x encoders-replicas voices asked",
)


def _ms(lat: Latency) -> str:
    return f"{lat.p50_ms:>6.0f} {lat.p99_ms:>6.0f} ({lat.n:>3})"


def format_systems(rows: Sequence[SystemRow]) -> str:
    head = (
        f"{'system':<7} {'V':>4} {'cap':>4} {'ready':>6} {'replicas':>8} {'idle':>6} {'first':>6} {'end':>6} "
        f"{'peak':>6} {'bound':>6} {'PSS':>6} {'server':>7}  {'cold p50   p99 (n)':>19}  "
        f"{'warm p50   p99 (n)':>19} {'answered (swept)':>16}"
    )
    lines = [head]
    for r in rows:
        replicas = "/".join(str(s.replicas) for s in r.stages)
        cap = str(r.cap) if r.cap is not None else "-"
        bound = f"{r.bound_mib:>6.0f}" if math.isfinite(r.bound_mib) else f"{'-':>6}"
        lines.append(
            f"{r.system:<7} {r.voices:>4} {cap:>4} {r.ready_s:>5.0f}s {replicas:>8} {r.rss_idle_mib:>6.0f} "
            f"{r.rss_first_mib:>6.0f} {r.rss_end_mib:>6.0f} {r.rss_peak_mib:>6.0f} {bound} {r.pss_end_mib:>6.0f} "
            f"{r.server_rss_mib:>7.0f}  {_ms(r.cold)}  {_ms(r.warm)} {r.voices_answered:>4}/{r.voices:<3} ({r.swept})"
        )
    return "\n".join(lines)


def format_stages(rows: Sequence[SystemRow]) -> str:
    head = f"{'system':<7} {'V':>4} {'stage':<8} {'replicas':>8} {'idle':>6} {'end':>6} {'per voice (est.)':>16} {'1st voice':>9} {'bound':>6}"
    lines = [head]
    for r in rows:
        for s in r.stages:
            bound = f"{s.bound_mib:>6.0f}" if math.isfinite(s.bound_mib) else f"{'-':>6}"
            first = f"{s.first_voice_mib:>9.0f}" if math.isfinite(s.first_voice_mib) else f"{'-':>9}"
            lines.append(
                f"{r.system:<7} {r.voices:>4} {s.stage:<8} {s.replicas:>8} {s.idle_mib:>6.0f} {s.end_mib:>6.0f} "
                f"{s.per_voice_est_mib:>16.0f} {first} {bound}"
            )
    return "\n".join(lines)


def format_traffic(rows: Sequence[SystemRow], concurrency: int) -> str:
    head = (
        f"{'system':<7} {'V':>4} {'pattern':<8} {'C':>3} {'requests':>8} {'ok':>4} {'refused':>7} {'exp.cold':>8} "
        f"{'TTFA p50':>9} {'p99':>7} {'audio s/s':>9}"
    )
    lines = [head]
    for r in rows:
        for t in r.traffic:
            lines.append(
                f"{r.system:<7} {r.voices:>4} {t.pattern:<8} {concurrency:>3} {t.requests:>8} {t.ok:>4} "
                f"{t.refused:>7} {t.expected_cold:>8} {t.ttfa.p50_ms:>6.0f} ms {t.ttfa.p99_ms:>4.0f} ms "
                f"{t.throughput:>9.2f}"
            )
    return "\n".join(lines)


def format_checks(result: FamilyBenchResult) -> str:
    lines = []
    for c in result.checks():
        lines.append(
            f"family V={c['voices']}: warm p50 {c['warm_p50_over_single']:.2f}x the single voice's "
            f"({'ok' if c['warm_ok'] else 'MISSED'}, target 1.2x); cold p50 {c['cold_p50_ms']:.0f} ms vs load + warm "
            f"{c['load_plus_warm_ms']:.0f} ms ({'ok' if c['cold_ok'] else 'MISSED'}); peak RSS "
            f"{c['rss_peak_over_bound']:.2f}x the cap's arithmetic ({'ok' if c['memory_ok'] else 'MISSED'}); "
            f"every voice answered: {'yes' if c['every_voice_answered'] else 'NO'}"
        )
    return "\n".join(lines)


def format_family(result: FamilyBenchResult) -> str:
    """The whole report: the systems' memory and latency, the traffic, the targets, what was skipped."""
    parts = [
        "\n".join(f"# {note}" for note in FIGURE_NOTES),
        format_systems(result.rows),
        format_stages(result.rows),
        format_traffic(result.rows, result.plan.concurrency),
        format_checks(result),
    ]
    parts += [f"# skipped: {s}" for s in result.skipped]
    for r in result.rows:
        parts += [f"# {r.system} V={r.voices} errors: {'; '.join(r.errors)}"] if r.errors else []
    return "\n".join(p for p in parts if p)
