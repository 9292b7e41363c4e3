"""The chorus command line: valid WAVs, and one clear line with exit code 2 for bad input."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import addons
from addons.engine.voice import PIPELINED_AHEAD
from serve_app.cli import main
from tests.helpers import chorus, run_cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """``chorus synth`` and ``bench synth`` set torch's threads for their process, here pytest's."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_synth_writes_wav_matching_mel_frames(fixture_dir: Path, tmp_path: Path) -> None:
    out, mel_out, plot = tmp_path / "out.wav", tmp_path / "mel.npy", tmp_path / "mel.png"
    code = main(
        [
            "synth",
            "--addon",
            str(fixture_dir / "tiny-fast"),
            "--text",
            "Hello there. How are you?",
            "--out",
            str(out),
            "--mel-out",
            str(mel_out),
            "--mel-plot",
            str(plot),
        ]
    )
    assert code == 0
    audio, rate = sf.read(out)
    mel = np.load(mel_out)
    assert rate == 22050 and audio.ndim == 1
    assert audio.shape[0] == mel.shape[0] * 256
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".chorus-*"))  # no partial file left behind


def test_synth_static_context_and_text_file(fixture_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "in.txt"
    text.write_text("A sentence from a file.", encoding="utf-8")
    out = tmp_path / "s.wav"
    assert (
        main(
            [
                "synth",
                "--addon",
                str(fixture_dir / "tiny-taco"),
                "--text-file",
                str(text),
                "--out",
                str(out),
                "--context",
                "static",
            ]
        )
        == 0
    )
    # as the voice says it in process, through the same 16-bit WAV writer
    want, _ = addons.load(fixture_dir / "tiny-taco", context="static").synthesize("A sentence from a file.")
    expected = io.BytesIO()
    sf.write(expected, want, 22050, subtype="PCM_16", format="WAV")
    expected.seek(0)
    assert np.array_equal(sf.read(out, dtype="int16")[0], sf.read(expected, dtype="int16")[0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", ""], "text is empty"),
        (["--text", "   --- ...   "], "no speakable characters"),
        (["--text", "hi", "--addon", "no-such-addon"], 'addon "no-such-addon" not found'),
        (["--text", "hi", "--out", "/nonexistent-dir/x.wav"], "directory /nonexistent-dir does not exist"),
        (["--text", "hi", "--out", "/proc/x.wav"], "is not writable"),
        (["--text-file", "/nonexistent.txt"], "cannot read --text-file"),
        (["--text", "hi", "--speed", "9"], "speed"),
        (["--text", "hi", "--voice", "nobody"], 'unknown voice "nobody"'),
        (["--text", "hi", "--context", "gpu"], "invalid choice"),
        (["--text", "hi", "--ahead", "-1"], "--ahead must be at least 0"),
        (["--text", "hi", "--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_synth_bad_input_exits_2_with_one_line(
    fixture_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    full = ["synth", "--addon", str(fixture_dir / "tiny-fast"), "--out", str(tmp_path / "o.wav"), *args]
    result = chorus(*full)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 or lines[0].startswith("usage:")
    assert not (tmp_path / "o.wav").exists()


def test_the_command_in_a_process_of_its_own(fixture_dir: Path, tmp_path: Path) -> None:
    """The tests above call ``main`` in this process; a user's shell runs the interpreter: the same
    exit codes and one line on stderr there, for a usage error, a refused value and a bad addon."""
    out = tmp_path / "o.wav"
    for args, message in (
        (["synth", "--addon", str(fixture_dir / "tiny-fast"), "--text", "hi", "--context", "gpu"], "invalid choice"),
        (
            ["synth", "--addon", str(fixture_dir / "tiny-fast"), "--text", "hi", "--speed", "9", "--out", str(out)],
            "speed",
        ),
        (["addon", "validate", str(tmp_path)], "addon.json"),
    ):
        result = run_cli(*args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert [line for line in result.stderr.splitlines() if line.strip()][-1].startswith("chorus"), result.stderr
    assert not out.exists()
    argv = ["synth", "--addon", str(fixture_dir / "tiny-fast"), "--text", "Hello there.", "--out"]
    ok = run_cli(*argv, str(out))
    assert ok.returncode == 0, ok.stderr
    assert chorus(*argv, str(tmp_path / "here.wav")).returncode == 0
    assert out.read_bytes() == (tmp_path / "here.wav").read_bytes()


def test_addon_validate_and_list(fixture_dir: Path, tmp_path: Path) -> None:
    ok = chorus("addon", "validate", str(fixture_dir / "tiny-neural"))
    assert ok.returncode == 0 and "ok" in ok.stdout
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "addon.json").write_text("{}")
    bad = chorus("addon", "validate", str(broken))
    assert bad.returncode == 2 and "Field required" in bad.stderr and "Traceback" not in bad.stderr
    listing = chorus("addon", "list", "--json", env={"CHORUS_ADDON_PATH": str(fixture_dir)})
    names = {a["name"] for a in json.loads(listing.stdout)}
    assert {"tiny-fast", "tiny-taco", "tiny-neural"} <= names


def test_threads_plan_pipelines_where_there_are_two_cores_or_more() -> None:
    assert addons.threads_plan(1) == addons.ThreadsPlan(threads=1, ahead=0)
    assert addons.threads_plan(2) == addons.ThreadsPlan(threads=1, ahead=PIPELINED_AHEAD)
    assert addons.threads_plan(7) == addons.ThreadsPlan(threads=3, ahead=PIPELINED_AHEAD)
    assert addons.threads_plan() == addons.threads_plan(len(os.sched_getaffinity(0)))


def test_synth_and_bench_default_to_the_threads_plan(
    fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    addon = str(fixture_dir / "tiny-taco")
    plan = addons.threads_plan()
    bench = ["bench", "synth", "--addon", addon, "--repeats", "1", "--sentences", "2"]
    assert main(bench) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"threads {plan.threads}, decoder ahead {plan.ahead} chunks"
    assert [line.split()[2:4] for line in lines[2:]] == [["1", "sentence"], ["2", "sentences"]]
    assert main([*bench, "--threads", "2", "--ahead", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "threads 2, decoder ahead 3 chunks"
    text = "Pipelined or not, the same samples."
    for name, flags in (("plan", []), ("plain", ["--threads", "1", "--ahead", "0"])):
        assert main(["synth", "--addon", addon, "--text", text, "--out", str(tmp_path / f"{name}.wav"), *flags]) == 0
        if name == "plan":
            assert torch.get_num_threads() == plan.threads
    assert np.array_equal(sf.read(tmp_path / "plan.wav")[0], sf.read(tmp_path / "plain.wav")[0])


def test_bench_synth_compares_plans_in_turn(fixture_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    addon = str(fixture_dir / "tiny-taco")
    before = torch.get_num_threads()
    argv = [
        "bench",
        "synth",
        "--addon",
        addon,
        "--compare",
        "1:0",
        "1:2",
        "--rounds",
        "2",
        "--sentences",
        "3",
        "--json",
    ]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert [(r["threads"], r["ahead"]) for r in results] == [(1, 0), (1, 2)]
    assert all(len(r["rtf"]) == 2 and min(r["rtf"]) > 0 for r in results)
    assert torch.get_num_threads() == before
    for bad in (["1x"], ["0:8"], ["1:-1"]):
        assert main(["bench", "synth", "--addon", addon, "--compare", *bad]) == 2
        assert "--compare" in capsys.readouterr().err
    for sentences in ("1", "21"):
        assert main(["bench", "synth", "--addon", addon, "--sentences", sentences]) == 2
        assert capsys.readouterr().err == f"chorus: error: --sentences must be 2 to 20, not {sentences}\n"


def test_bench_synth_reports_figures(fixture_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "synth", "--addon", str(fixture_dir / "tiny-neural"), "--json", "--repeats", "1"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["text"] for r in results] == ["1 sentence", "20 sentences"]
    short, long = results
    assert long["audio_s"] > 5 * short["audio_s"]
    assert all(r["first_chunk_s"] <= r["total_s"] and r["rtf"] > 0 and r["peak_rss_mb"] > 0 for r in results)


@pytest.mark.parametrize(
    ("name", "codec"), [("x.mp3", "mp3"), ("x.flac", "flac"), ("x.ogg", "opus"), ("x.OPUS", "opus")]
)
def test_synth_writes_the_format_its_out_extension_names(
    fixture_dir: Path, tmp_path: Path, name: str, codec: str
) -> None:
    import av

    out = tmp_path / name
    assert main(["synth", "--addon", str(fixture_dir / "tiny-fast"), "--text", "Hello there.", "--out", str(out)]) == 0
    with av.open(str(out)) as f:
        assert f.streams.audio[0].codec_context.name.startswith(codec)  # FFmpeg decodes mp3 as "mp3float"
        assert sum(frame.samples for frame in f.decode(audio=0)) > 0


def test_synth_refuses_an_out_extension_that_names_no_format(fixture_dir: Path, tmp_path: Path) -> None:
    for name in ("x.xyz", "speech"):
        result = chorus(
            "synth", "--addon", str(fixture_dir / "tiny-fast"), "--text", "Hi.", "--out", str(tmp_path / name)
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert "names no audio format" in result.stderr and ".mp3" in result.stderr
        assert not (tmp_path / name).exists()


def test_files_the_cli_writes_have_ordinary_modes(fixture_dir: Path, tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        outs = {
            flag: tmp_path / name
            for flag, name in (("--out", "x.wav"), ("--marks-out", "m.jsonl"), ("--mel-out", "m.npy"))
        }
        argv = ["synth", "--addon", str(fixture_dir / "tiny-fast"), "--text", "Hello there."]
        assert main([*argv, *(x for flag, path in outs.items() for x in (flag, str(path)))]) == 0
        assert {flag: path.stat().st_mode & 0o777 for flag, path in outs.items()} == dict.fromkeys(outs, 0o644)
        flac = tmp_path / "x.flac"
        assert main([*argv, "--out", str(flac)]) == 0 and flac.stat().st_mode & 0o777 == 0o644
        outs["--out"].chmod(0o640)  # an existing file keeps its mode, as any overwrite would
        assert main([*argv, "--out", str(outs["--out"])]) == 0 and outs["--out"].stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(mask)
