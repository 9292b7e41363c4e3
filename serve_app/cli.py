"""The ``chorus`` command line: synthesize, benchmark, inspect addons, serve.

Bad input exits with code 2 and one line naming the problem; nothing here does tensor math.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]

EXIT_USAGE = 2
#: ``synth --out`` extensions and the serve_app.audio_format encoder each picks.
OUT_FORMATS = {
    ".wav": "wav",
    ".mp3": "mp3",
    ".flac": "flac",
    ".opus": "opus",
    ".ogg": "opus",
    ".aac": "aac",
    ".pcm": "pcm",
    ".raw": "pcm",
}


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chorus", description="Serve many text-to-speech models side by side.")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="synthesize text to a WAV file")
    synth.add_argument("--addon", default=None, help="addon name or directory (default: the bundled default voice)")
    text = synth.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="text to speak")
    text.add_argument("--text-file", type=Path, help="UTF-8 file with the text to speak")
    synth.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output audio file; its extension picks the format: " + ", ".join(OUT_FORMATS),
    )
    synth.add_argument("--context", choices=["dynamic", "static"], default="dynamic", help="execution context")
    synth.add_argument("--voice", default="default", help="one of the addon's voices")
    synth.add_argument(
        "--speed", type=float, default=None, help="speaking rate factor; unset: the voice's own (range: docs/api.md)"
    )
    synth.add_argument("--mel-out", type=Path, help="also save the mel frames [F, n_mels] as .npy")
    synth.add_argument("--mel-plot", type=Path, help="also save a PNG plot of the mel")
    synth.add_argument(
        "--marks-out", type=Path, help="also save speech marks (sentence, ssml, word, phoneme) as JSON lines"
    )
    synth.add_argument(
        "--ssml",
        action="store_true",
        help="the text is an SSML document (docs/ssml.md); a text whose root is <speak> is read so anyway",
    )
    _threads_flags(synth)
    synth.set_defaults(func=_synth)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    bsynth = bench_sub.add_parser("synth", help="in-process time to first audio, real-time factor, peak memory")
    bsynth.add_argument("--addon", default=None, help="addon name or directory")
    bsynth.add_argument("--context", choices=["dynamic", "static"], default="dynamic")
    bsynth.add_argument("--repeats", type=int, default=3, help="runs per text; the best is reported")
    _threads_flags(bsynth)
    bsynth.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bsynth.add_argument(
        "--compare",
        nargs="+",
        metavar="THREADS:AHEAD",
        help="instead: these plans taking turns on the long text, e.g. 1:8 2:0 (RTF per round)",
    )
    bsynth.add_argument(
        "--sentences",
        type=int,
        default=20,
        help="how many of the benchmark's 20 sentences make the long text (2-20; default 20)",
    )
    bsynth.add_argument("--rounds", type=int, default=4, help="with --compare: rounds of the plans in turn")
    bsynth.set_defaults(func=_bench_synth)

    serve = sub.add_parser("serve", help="serve every installed addon over HTTP (embedded local Ray Serve)")
    what = serve.add_mutually_exclusive_group()
    what.add_argument("--config", type=Path, help="a Serve config file (its applications' args are used)")
    what.add_argument(
        "--addon", action="append", metavar="NAME", help="serve only this addon (name or directory; repeatable)"
    )
    serve.add_argument(
        "--voices-dir",
        action="append",
        type=Path,
        metavar="DIR",
        help="also serve the voices in DIR (addons, or Piper .onnx + .onnx.json pairs) as one family: shared "
        "replicas loading voices on first use (repeatable; docs/deploy.md)",
    )
    serve.add_argument(
        "--voices-per-replica", type=int, default=None, metavar="N", help="with --voices-dir: voices a replica holds"
    )
    serve.add_argument(
        "--replica-memory",
        type=int,
        default=None,
        metavar="MB",
        help="with --voices-dir: memory a replica may give its voices; the cap per replica follows (default 1024)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    serve.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may schedule (default: all)")
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="Ray's Prometheus exporter port, on 127.0.0.1 only (default: a free one); "
        "scrape GET /metrics on --port, behind the API keys",
    )
    serve.set_defaults(func=_serve)

    bserve = bench_sub.add_parser("serve", help="time to first audio, RTF and throughput over HTTP vs in-process")
    bserve.add_argument("--addon", default=None, help="addon name or directory")
    bserve.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="concurrent streams")
    bserve.add_argument("--requests", type=int, default=2, help="requests per stream slot at each level")
    bserve.add_argument("--json", action="store_true")
    bserve.set_defaults(func=_bench_serve)

    bcap = bench_sub.add_parser(
        "capacity", help="many listeners at once: first audio, stalls, refusals, throughput, beside baselines"
    )
    bcap.add_argument("--addon", default=None, help="addon name or directory")
    bcap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16, 32], help="concurrent listeners")
    bcap.add_argument("--arrivals", nargs="+", choices=["burst", "steady"], default=["burst", "steady"])
    bcap.add_argument(
        "--systems",
        nargs="+",
        choices=["chorus", "chorus-nice5", "chorus-fused", "unbatched", "floor", "floor-fused"],
        default=["chorus", "unbatched", "floor"],
        help=(
            "chorus: the defaults; chorus-nice5: the defaults but stage_nice 5 (stages yield the CPU to the ingress); "
            "chorus-fused: the defaults but fused_vocoder (each decoder replica vocodes its sentences); "
            "unbatched: batching and admission off; floor: no-op stages (Ray's cost); floor-fused: the same, fused"
        ),
    )
    bcap.add_argument("--json", action="store_true")
    bcap.set_defaults(func=_bench_capacity)

    bpeer = bench_sub.add_parser(
        "peer", help="Chorus against Piper's own HTTP server on the same voice and texts, one after the other"
    )
    bpeer.add_argument("--model", type=Path, default=None, help="Piper's .onnx (default: the installed joe voice)")
    bpeer.add_argument(
        "--addon",
        default=None,
        help="the same voice imported for Chorus: name or directory (default: en_us-joe-medium)",
    )
    bpeer.add_argument(
        "--texts", type=Path, default=None, help="UTF-8 file, one paragraph per line (default: built in)"
    )
    bpeer.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="concurrent requests")
    bpeer.add_argument("--requests", type=int, default=3, help="requests per concurrent client at each level")
    bpeer.add_argument(
        "--systems",
        nargs="+",
        choices=["piper", "chorus", "chorus-all", "chorus-fused"],
        default=["piper", "chorus"],
        help="run one after another: piper (its own server), chorus (chorus serve's defaults), "
        "chorus-all (the defaults but admission control off: every stream served), "
        "chorus-fused (the waveform stage in the decoder replica)",
    )
    bpeer.add_argument("--json", action="store_true")
    bpeer.set_defaults(func=_bench_peer)

    bfamily = bench_sub.add_parser(
        "family", help="copies of one voice as one family (1, 10, 50 voices) beside the voice alone: memory, cold/warm"
    )
    bfamily.add_argument("--addon", default=None, help="the voice to copy: name or directory (default: joe)")
    bfamily.add_argument("--voices", type=int, nargs="+", default=[1, 10, 50], help="family sizes")
    bfamily.add_argument("--cap", type=int, default=4, help="voices per replica, every stage")
    bfamily.add_argument("--requests", type=int, default=20, help="cold voices, warm samples, requests per pattern")
    bfamily.add_argument("--concurrency", type=int, default=4, help="clients in the uniform and Zipf traffic")
    bfamily.add_argument(
        "--graphs",
        type=int,
        nargs="+",
        default=[],
        help="also N copies as N deployment graphs, where memory allows (1: the voice alone, always measured)",
    )
    bfamily.add_argument("--seed", type=int, default=0, help="the Zipf draw's seed")
    bfamily.add_argument(
        "--no-admission", action="store_true", help="serve with admission control off (args.admission false)"
    )
    bfamily.add_argument("--json", action="store_true")
    bfamily.set_defaults(func=_bench_family)

    deploy = sub.add_parser("deploy", help="plan a cluster deployment")
    deploy_sub = deploy.add_subparsers(dest="deploy_command", required=True)
    dplan = deploy_sub.add_parser(
        "plan", help="which deployment goes to which node type, with which resources (no Ray needed)"
    )
    dplan.add_argument("config", type=Path, help="a Serve config file, e.g. serve_app/serve_config.cluster.yaml")
    dplan.add_argument(
        "--cluster", type=Path, default=Path("cluster.yaml"), help="the cluster-launcher config (default cluster.yaml)"
    )
    dplan.set_defaults(func=_deploy_plan)

    addon = sub.add_parser("addon", help="inspect addons")
    addon_sub = addon.add_subparsers(dest="addon_command", required=True)
    validate = addon_sub.add_parser("validate", help="check an addon directory: manifest, stack, networks")
    validate.add_argument("directory", type=Path)
    validate.set_defaults(func=_addon_validate)
    listing = addon_sub.add_parser("list", help="list installed addons")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_addon_list)
    importing = addon_sub.add_parser("import", help="import a foreign voice as an addon")
    import_sub = importing.add_subparsers(dest="import_kind", required=True)
    piper = import_sub.add_parser("piper", help="a Piper voice: MODEL.onnx and its MODEL.onnx.json")
    piper.add_argument("model", type=Path, help="the voice's .onnx file")
    piper.add_argument("--config", type=Path, default=None, help="its .onnx.json (default: beside the model)")
    piper.add_argument("--out", type=Path, default=None, help="the addon directory to write (default: ./NAME)")
    piper.add_argument("--name", default=None, help="the addon's name (default: from the file, lower case)")
    piper.set_defaults(func=_addon_import_piper)
    return parser


def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        return str(args.text)
    try:
        return Path(args.text_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read --text-file {args.text_file}: {exc}") from None


def _check_writable(path: Path, flag: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise CliError(f"{flag} {path} is a directory")
    if not parent.is_dir():
        raise CliError(f"{flag} {path}: directory {parent} does not exist")
    if path.exists() and not os.access(path, os.W_OK):
        raise CliError(f"{flag} {path} is not writable")
    try:  # os.access says yes to root everywhere; only a real file creation tells
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".chorus-probe-"):
            pass
    except OSError as exc:
        raise CliError(f"{flag} {path} is not writable ({exc.strerror})") from None


def _threads_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: addons.threads_plan's)"
    )
    parser.add_argument(
        "--ahead",
        type=int,
        default=None,
        help="mel chunks the decoder runs ahead of the vocoder in a worker thread, 0: none (default: threads_plan's)",
    )


def _threads(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """``--threads`` and ``--ahead``, each defaulting to :func:`addons.threads_plan`'s for this machine."""
    import addons

    if args.threads is not None and args.threads < 1:
        raise CliError("--threads must be at least 1")
    if args.ahead is not None and args.ahead < 0:
        raise CliError("--ahead must be at least 0")
    plan = addons.threads_plan()
    return addons.ThreadsPlan(
        plan.threads if args.threads is None else args.threads, plan.ahead if args.ahead is None else args.ahead
    )


def _load(addon: str | None, context: str = "dynamic"):  # type: ignore[no-untyped-def]
    import addons

    try:
        return addons.load(addon, context=context)
    except addons.AddonError as exc:
        raise CliError(str(exc)) from None


def _synth(args: argparse.Namespace) -> int:
    import soundfile as sf
    import torch

    import addons
    from blocks import NetworkError

    text = _read_text(args)
    plan = _threads(args)
    fmt = _out_format(args.out)
    outputs = (("--out", args.out), ("--mel-out", args.mel_out), ("--mel-plot", args.mel_plot))
    for flag, path in (*outputs, ("--marks-out", args.marks_out)):
        if path is not None:
            _check_writable(path, flag)
    voice = _load(args.addon, args.context)
    voice.ahead = plan.ahead
    torch.set_num_threads(plan.threads)
    if args.marks_out is not None and not voice.provides_marks:
        raise CliError(f"--marks-out: addon {voice.name} gives no speech marks (its blocks report no alignment)")
    kinds = ("sentence", "ssml", "word", "phoneme") if args.marks_out is not None else ()
    marks: list[dict[str, object]] = []
    options: dict[str, object] = {"voice": args.voice, **({"speed": args.speed} if args.speed is not None else {})}
    if args.ssml:
        options["input_format"] = "ssml"
    fd, partial = tempfile.mkstemp(
        prefix=".chorus-", suffix=args.out.suffix, dir=args.out.parent if str(args.out.parent) else "."
    )
    os.close(fd)
    mels: list[np.ndarray] = []
    frames = samples = 0
    try:
        with (
            sf.SoundFile(partial, "w", samplerate=voice.sample_rate, channels=1, subtype="PCM_16", format="WAV")
            if fmt == "wav"
            else _EncodedFile(partial, fmt, voice.sample_rate)
        ) as wav:
            for chunk in voice.stream(text, with_mel=True, marks=kinds, **options):
                marks += [m.as_dict() for m in chunk.marks]
                if chunk.mel is not None:
                    frames += chunk.mel.shape[0]
                    if args.mel_out or args.mel_plot:
                        mels.append(chunk.mel)
                samples += chunk.samples.size
                wav.write(chunk.samples)
        _ordinary_mode(partial, args.out)
        os.replace(partial, args.out)
    except addons.TextError as exc:
        raise CliError(str(exc)) from None
    except NetworkError as exc:
        raise CliError(f"addon {voice.name} ({voice.directory}): {exc}") from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    mel = np.concatenate(mels) if mels else None
    try:
        if args.mel_out is not None and mel is not None:
            np.save(args.mel_out, mel)
        if args.mel_plot is not None and mel is not None:
            _plot_mel(mel, voice, args.mel_plot)
        if args.marks_out is not None:
            args.marks_out.write_text("".join(json.dumps(m) + "\n" for m in marks), encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write mel or marks output: {exc}") from None
    seconds = samples / voice.sample_rate
    print(
        f"{args.out}: {seconds:.2f} s, {frames} mel frames x {voice.hop_length} samples at {voice.sample_rate} Hz ({voice.name})"
    )
    return 0


def _out_format(path: Path) -> str:
    """The audio format ``--out``'s extension names (serve_app.audio_format's), or a CliError."""
    fmt = OUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        ext = repr(path.suffix) if path.suffix else "no extension"
        raise CliError(f"--out {path}: {ext} names no audio format; end it in {', '.join(OUT_FORMATS)}")
    return fmt


class _EncodedFile:
    """An audio file in a format of :mod:`serve_app.audio_format`, written as ``soundfile.SoundFile``
    writes a WAV: ``write(samples)`` per chunk; the codec is flushed on a clean exit. Buffered, so
    headers that record the length (FLAC's) are complete."""

    def __init__(self, path: str, fmt: str, sample_rate: int) -> None:
        from serve_app.audio_format import make_encoder

        self._encoder = make_encoder(fmt, sample_rate, buffered=True)
        self._file = open(path, "wb")  # noqa: SIM115 (closed in __exit__)
        self._file.write(self._encoder.header())

    def write(self, samples: np.ndarray) -> None:
        self._file.write(self._encoder.encode(samples))

    def __enter__(self) -> _EncodedFile:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            if kind is None:
                self._file.write(self._encoder.finish())
        finally:
            self._file.close()


def _ordinary_mode(partial: str, target: Path) -> None:
    """Give a file made by ``tempfile.mkstemp`` (mode 0600) the mode an ordinary write would:
    the replaced file's, or 0666 less the umask."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(partial, mode)


def _plot_mel(mel: np.ndarray, voice, path: Path) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, mel.shape[0] / 80), 3))
    ax.imshow(mel.T, origin="lower", aspect="auto", interpolation="nearest")
    ax.set(xlabel=f"frame ({voice.hop_length / voice.sample_rate * 1000:.1f} ms)", ylabel="mel band", title=voice.name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bench_synth(args: argparse.Namespace) -> int:
    from addons.engine.bench import bench_voice, long_text

    if args.repeats < 1:
        raise CliError("--repeats must be at least 1")
    try:
        long_text(args.sentences)  # the range is the benchmark's: refused before any voice loads
    except ValueError as exc:
        raise CliError(f"--{exc}") from None
    plan = _threads(args)
    if args.compare:
        return _compare_plans(args)
    voice = _load(args.addon, args.context)
    voice.ahead = plan.ahead
    results = bench_voice(voice, repeats=args.repeats, threads=plan.threads, sentences=args.sentences)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
        return 0
    print(f"threads {results[0].threads}, decoder ahead {voice.ahead} chunks")
    print(
        f"{'addon':<16} {'context':<8} {'text':<13} {'first chunk':>12} {'total':>9} {'audio':>8} {'RTF':>7} "
        f"{'acoustic':>9} {'vocoder':>8} {'peak RSS':>9}"
    )
    for r in results:
        print(
            f"{r.addon:<16} {r.context:<8} {r.text:<13} {r.first_chunk_s * 1000:>9.1f} ms {r.total_s:>7.3f} s "
            f"{r.audio_s:>6.2f} s {r.rtf:>7.4f} {r.acoustic_rtf:>9.4f} {r.vocoder_rtf:>8.4f} {r.peak_rss_mb:>6.0f} MB"
        )
    return 0


def _compare_plans(args: argparse.Namespace) -> int:
    import addons
    from addons.engine.bench import compare_plans

    plans = []
    for item in args.compare:
        threads, _, ahead = item.partition(":")
        try:
            plan = addons.ThreadsPlan(int(threads), int(ahead))
        except ValueError:
            raise CliError(f"--compare: {item!r} is not THREADS:AHEAD, e.g. 1:8") from None
        if plan.threads < 1 or plan.ahead < 0:
            raise CliError(f"--compare: {item!r} needs THREADS >= 1 and AHEAD >= 0")
        plans.append(plan)
    if args.rounds < 1:
        raise CliError("--rounds must be at least 1")
    voice = _load(args.addon, args.context)
    results = compare_plans(voice, plans, args.rounds, args.sentences)
    if args.json:
        print(json.dumps([{"threads": p.threads, "ahead": p.ahead, "rtf": r} for p, r in results.items()], indent=2))
        return 0
    print(f"{voice.name}, {args.sentences} sentences, end-to-end RTF per round (plans in turn)")
    for p, rtf in results.items():
        print(
            f"threads {p.threads}, ahead {p.ahead:>2}: best {min(rtf):.4f}  rounds {' '.join(f'{x:.4f}' for x in rtf)}"
        )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from serve_app.server import read_config, run_server

    try:
        config = read_config(args.config)
        if args.addon:
            config.applications[0].args["addons"] = args.addon
        if args.voices_dir:
            config.applications[0].args.setdefault("families", []).extend(_families(args))
        elif args.voices_per_replica is not None or args.replica_memory is not None:
            raise CliError("--voices-per-replica and --replica-memory go with --voices-dir")
        return run_server(config, args.host, args.port, args.num_cpus, args.metrics_port)
    except ValueError as exc:  # addon, args or config errors, found before Ray starts
        raise CliError(str(exc)) from None


def _families(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``AppArgs.families`` entries for ``chorus serve --voices-dir``."""
    for folder in args.voices_dir:
        if not folder.is_dir():
            raise CliError(f"--voices-dir {folder}: no such folder")
    if args.voices_per_replica is not None and args.voices_per_replica < 1:
        raise CliError("--voices-per-replica must be at least 1")
    if args.replica_memory is not None and args.replica_memory < 16:
        raise CliError("--replica-memory must be at least 16 (MB)")
    extra: dict[str, Any] = {}
    if args.voices_per_replica is not None:
        extra["voices_per_replica"] = args.voices_per_replica
    if args.replica_memory is not None:
        extra["replica_memory_mb"] = args.replica_memory
    return [{"voices_dir": str(folder), **extra} for folder in args.voices_dir]


def _deploy_plan(args: argparse.Namespace) -> int:
    from serve_app.deploy_plan import plan_config
    from serve_app.placement import format_plan

    try:
        plans = plan_config(args.config, args.cluster)
    except ValueError as exc:  # a resource no node type offers, or a broken file
        raise CliError(str(exc)) from None
    for name, rows, notes in plans:
        print(f"# application {name}: {args.config} on {args.cluster}")
        print(format_plan(rows))
        for note in notes:
            print(f"# {note}")
    return 0


def _bench_serve(args: argparse.Namespace) -> int:
    from serve_app.bench import format_table, run_bench

    if min(args.concurrency) < 1 or args.requests < 1:
        raise CliError("--concurrency and --requests must be at least 1")
    try:
        rows = run_bench(args.addon, args.concurrency, args.requests)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps([r.as_dict() for r in rows], indent=2) if args.json else format_table(rows))
    return 0


def _bench_capacity(args: argparse.Namespace) -> int:
    from serve_app.bench import SYSTEM_NOTES, format_capacity, run_capacity

    if min(args.levels) < 1 or max(args.levels) > 256:
        raise CliError("--levels must be between 1 and 256")
    if not args.json:
        for system in args.systems:
            print(f"# {system}: {SYSTEM_NOTES[system]}")
        print(format_capacity([]))
    show = None if args.json else lambda row: print(format_capacity([row]).splitlines()[1], flush=True)
    try:
        rows = run_capacity(args.addon, args.levels, args.arrivals, args.systems, on_row=show)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    return 0


def _bench_peer(args: argparse.Namespace) -> int:
    from serve_app.bench_peer import SYSTEM_NOTES, format_peer, format_ratios, plan_peer, run_peer

    try:
        plan = plan_peer(args.model, args.addon, args.texts, args.levels, args.requests, args.systems)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        result = run_peer(plan)
        print(json.dumps({"model": str(plan.model), "addon": str(plan.addon), **result.as_dict()}, indent=2))
        return 0
    print(f"# piper: {plan.model}; chorus: {plan.addon}; {len(plan.texts)} texts, {plan.requests} per client per level")
    for system in plan.systems:
        print(f"# {system}: {SYSTEM_NOTES[system]}")
    result = run_peer(
        plan,
        on_row=lambda row: print(format_peer([row]).splitlines()[1], flush=True),
        on_ready=lambda system, s: print(f"# {system} ready in {s:.1f} s", flush=True),
    )
    print(format_peer(result.rows))
    print(format_ratios(result))
    return 0


def _bench_family(args: argparse.Namespace) -> int:
    from serve_app.bench_family import SYSTEM_NOTES, format_family, format_systems, plan_family, run_family

    try:
        plan = plan_family(
            args.addon,
            args.voices,
            args.cap,
            args.requests,
            args.concurrency,
            args.graphs,
            args.seed,
            not args.no_admission,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(run_family(plan).as_dict(), indent=2))
        return 0
    admission = "on" if plan.admission else "off"
    print(
        f"# {plan.addon}: voices {list(plan.voices)}, cap {plan.cap}, {plan.requests} requests, "
        f"C {plan.concurrency}, admission {admission}"
    )
    for system, note in SYSTEM_NOTES.items():
        print(f"# {system}: {note}")
    result = run_family(
        plan,
        on_row=lambda row: print(format_systems([row]).splitlines()[1], flush=True),
        on_note=lambda text: print(f"# {text}", flush=True),
    )
    print(format_family(result))
    return 0


def _addon_validate(args: argparse.Namespace) -> int:
    import addons
    from addons.engine.vocoders import PACKAGE_FILE

    if (args.directory / PACKAGE_FILE).is_file() and not (args.directory / "addon.json").is_file():
        return _vocoder_validate(args.directory)
    try:
        manifest = addons.read_manifest(args.directory)
        contexts = ["dynamic"] + (["static"] if any(s.static_length for s in manifest.networks.values()) else [])
        for context in contexts:  # every network file is read, checked and run in each context it declares
            audio, mel = addons.Voice(manifest, args.directory, context).synthesize("Hello.")
    except (addons.AddonError, addons.TextError) as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:  # a network that loads but does not run: still the addon's fault
        raise CliError(f"{args.directory}: networks failed a test synthesis: {exc}") from None
    print(
        f"{args.directory}: ok — {manifest.name} {manifest.version} ({manifest.language}), "
        f"{len(manifest.networks)} networks, test synthesis {mel.shape[0]} frames / {audio.size} samples"
    )
    return 0


def _vocoder_validate(directory: Path) -> int:
    from addons.engine.vocoders import check_vocoder
    from addons.formats.manifest import AddonError

    try:
        summary = check_vocoder(directory)
    except AddonError as exc:
        raise CliError(str(exc)) from None
    print(f"{directory}: ok — {summary}")
    return 0


def _addon_import_piper(args: argparse.Namespace) -> int:
    from addons.formats.manifest import AddonError
    from addons.formats.piper import import_piper

    if args.name is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", args.name):
        raise CliError(f"--name {args.name!r}: lower-case letters, digits, '_', '.', '-' (at most 64)")
    try:
        report = import_piper(args.model, args.out, args.config, args.name)
    except AddonError as exc:
        raise CliError(str(exc)) from None
    how = (
        f"split at the waveform decoder (chained parts equal the graph to {report.split_difference:.1g}; windows "
        f"with {report.context_frames} frames of context to {report.window_difference:.1g}), streams within a sentence"
        if report.split
        else "imported whole (no split point reproduced the graph), streams sentence by sentence"
    )
    print(
        f"{report.directory}: ok — {how}; {report.noise_inputs} noise inputs seeded by Chorus; "
        f"speech marks {'from the durations' if report.marks else 'unavailable (no durations found)'}"
    )
    return 0


def _addon_list(args: argparse.Namespace) -> int:
    import addons

    found = addons.list_addons()
    if args.json:
        print(
            json.dumps(
                [
                    {"name": m.name, "description": m.description, "language": m.language, "path": str(p)}
                    for p, m in found
                ],
                indent=2,
            )
        )
        return 0
    for path, m in found:
        print(f"{m.name:<20} {m.language:<8} {m.description}  [{path}]")
    if not found:
        print("no addons found (searched: " + ", ".join(str(d) for d in addons.addon_dirs()) + ")")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CliError as exc:
        print(f"chorus: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback for the user; CHORUS_DEBUG=1 shows it
        if os.environ.get("CHORUS_DEBUG") == "1":
            raise
        print(
            f"chorus: error: {type(exc).__name__}: {_one_line(str(exc))} (CHORUS_DEBUG=1 for details)", file=sys.stderr
        )
        return EXIT_USAGE


def _one_line(message: str) -> str:
    """Messages from torch or pydantic can span lines; the CLI promises one."""
    return " ".join(message.split())


if __name__ == "__main__":
    raise SystemExit(main())
