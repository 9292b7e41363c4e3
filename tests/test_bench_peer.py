"""``chorus bench peer``'s pure parts: argument errors start nothing, the listener arithmetic on
made-up timings, the WAV header Piper answers with, and the table and JSON. No server starts here."""

from __future__ import annotations

import asyncio
import io
import json
import math
import subprocess
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest

from serve_app import bench_peer
from serve_app.bench import _Listener
from serve_app.bench_peer import PeerResult, PeerRow, format_peer, format_ratios, peer_row, wav_layout
from serve_app.cli import main

RATE = 1000  # Hz: 2 bytes of 16-bit audio per millisecond keep the arithmetic readable


@pytest.fixture
def no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("bench peer started a process for bad arguments")

    monkeypatch.setattr(subprocess, "Popen", refuse)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--levels", "0"], "--levels must be between 1 and 256"),
        (["--levels", "1", "257"], "--levels must be between 1 and 256"),
        (["--requests", "0"], "--requests must be between 1 and 100"),
        (["--model", "missing.onnx"], "--model missing.onnx: no such file"),
        (["--model", "voice.pt2"], "--model voice.pt2: not an .onnx file"),
        (["--addon", "no-such-addon"], 'addon "no-such-addon" not found'),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    args: list[str], message: str, no_processes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "peer", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"chorus: error: {message}") and err.count("\n") == 1


def test_empty_texts_file_is_refused(tmp_path: Path, no_processes: None, capsys: pytest.CaptureFixture[str]) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("\n  \n", encoding="utf-8")
    assert main(["bench", "peer", "--texts", str(texts)]) == 2
    assert "has no paragraphs" in capsys.readouterr().err


def test_unknown_system_is_refused_before_anything_starts(no_processes: None) -> None:
    with pytest.raises(ValueError, match="--systems: unknown sherpa"):
        bench_peer.plan_peer(None, None, None, [1], 1, ["piper", "sherpa"])


def _chunks(*pieces: tuple[float, float]) -> tuple[tuple[float, int], ...]:
    """(arrival s, audio s) -> (arrival s, bytes) at RATE."""
    return tuple((t, round(audio * RATE) * 2) for t, audio in pieces)


def test_row_arithmetic_on_made_up_timings() -> None:
    whole = [_Listener(200, t, _chunks((t, 2.0))) for t in (0.1, 0.2, 0.3, 0.4, 0.5)]  # Piper: all at once
    row = peer_row("piper", 5, whole, wall=2.0, rate=RATE)
    assert (row.streams, row.ok, row.refused) == (5, 5, 0)
    assert row.ttfa_p50_ms == pytest.approx(300.0)
    assert row.ttfa_p99_ms == pytest.approx(496.0)  # inclusive percentiles, as bench capacity
    assert row.stalled_share == 0.0 and row.worst_stall_ms == 0.0
    assert row.throughput == pytest.approx(10.0 / 2.0)

    # Plays from 0.1 s: 0.2 s heard runs dry at 0.3, the next piece (0.25) is in time, the third
    # (0.7 s) comes 0.2 s after the 0.4 s heard ran out at 0.5.
    late = _Listener(200, 0.05, _chunks((0.1, 0.2), (0.25, 0.2), (0.7, 0.2)))
    steady = _Listener(200, 0.05, _chunks((0.1, 0.2), (0.2, 0.2), (0.3, 0.2)))
    refused = _Listener(503, 0.01, ())
    row = peer_row("chorus", 3, [late, steady, refused], wall=1.0, rate=RATE)
    assert (row.ok, row.refused) == (2, 1)
    assert row.stalled_share == pytest.approx(0.5)
    assert row.worst_stall_ms == pytest.approx(200.0)
    assert row.throughput == pytest.approx(1.2)


def _wav(rate: int, samples: int, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(samples * channels, np.int16).tobytes())
    return out.getvalue()


def test_wav_layout() -> None:
    data = _wav(22050, 10)
    assert wav_layout(data) == (44, 22050)
    assert wav_layout(data[:30]) is None  # header still arriving
    with pytest.raises(ValueError, match="mono"):
        wav_layout(_wav(22050, 10, channels=2))
    with pytest.raises(ValueError, match="not a WAV"):
        wav_layout(b"<html>error page</html>")


def test_piper_listener_counts_samples_not_header() -> None:
    body = _wav(RATE, 1500)

    async def go() -> _Listener:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
        async with httpx.AsyncClient(transport=transport) as client:
            return await bench_peer._listen_piper(client, "http://127.0.0.1:1", "Hi.", RATE)

    listener = asyncio.run(go())
    assert listener.status == 200 and listener.audio_s(RATE) == pytest.approx(1.5)


def test_level_gives_every_system_the_same_texts_in_order() -> None:
    spoken: list[str] = []

    async def send(client: httpx.AsyncClient, text: str) -> _Listener:
        spoken.append(text)
        return _Listener(200, 0.0, ((0.0, 2),))

    listeners, wall = asyncio.run(bench_peer._level(send, ["a", "b", "c"], level=2, requests=2))
    assert len(listeners) == 4 and wall >= 0
    assert sorted(spoken) == ["a", "a", "b", "c"]  # client 0: a, b; client 1: c, a


def _row(system: str, level: int, ttfa: float, throughput: float) -> PeerRow:
    return PeerRow(system, level, level * 3, level * 3, 0, ttfa, ttfa * 2, 0.0, 0.0, throughput)


def test_table_ratios_and_json() -> None:
    rows = [_row("piper", 1, 200.0, 10.0), _row("piper", 16, 3000.0, 12.0), _row("chorus", 1, 100.0, 8.0)]
    rows.append(_row("chorus", 16, 600.0, 9.0))
    rows.append(_row("chorus-all", 16, 1500.0, 15.0))
    result = PeerResult(rows, {"piper": 3.0, "chorus": 20.0})
    assert result.ratios() == [
        {"system": "chorus", "level": 1, "ttfa_p50": 0.5, "throughput": 0.8},
        {"system": "chorus", "level": 16, "ttfa_p50": 0.2, "throughput": 0.75},
        {"system": "chorus-all", "level": 16, "ttfa_p50": 0.5, "throughput": 1.25},
    ]
    table = format_peer(rows).splitlines()
    assert table[0].split()[:3] == ["system", "level", "streams"] and len(table) == 6
    assert table[2].split()[:2] == ["piper", "16"] and "3000 ms" in table[2]
    ratios = format_ratios(result).splitlines()
    assert ratios[2].split() == ["chorus", "16", "0.200x", "0.75x"]
    loaded = json.loads(json.dumps(result.as_dict()))
    assert loaded["ready_s"] == {"piper": 3.0, "chorus": 20.0} and loaded["rows"][3]["system"] == "chorus"
    assert math.isnan(PeerResult([_row("piper", 4, 0.0, 1.0), _row("chorus", 4, 5.0, 1.0)]).ratios()[0]["ttfa_p50"])
