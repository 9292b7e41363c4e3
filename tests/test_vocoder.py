"""The Vocos-style neural vocoder: its inverse STFT, chunked == whole == batched on the exported
program, exported == eager, and its recipe (train, resume, export, evaluate) on a tiny corpus."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from addons.formats.netfile import _Traced, executable, load_program
from addons.models.vocos import VocosVocoder
from addons.recipes import vocoder
from addons.recipes.corpus import build_corpus
from addons.text.espeak import get_espeak
from blocks import MelSettings, log_mel
from blocks.network import ExecutionContext, NetworkRunner, NetworkSpec

TINY = {"dim": 16, "hidden": 32, "layers": 2, "kernel": 3}
SENTENCES = ["The cat sat on the mat.", "Where did you put my keys?", "We walked home in the rain.", "Keep calm."]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _tiny_model(seed: int = 0) -> VocosVocoder:
    torch.manual_seed(seed)
    model = vocoder.build_model(TINY, MelSettings()).eval()
    with torch.no_grad():  # a louder, more varied output than the initial one, so comparisons mean something
        model.head.bias[:513].fill_(3.0)
    return model


def _mel(frames: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 80, generator=gen) * 2.0 - 5.0


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[VocosVocoder, NetworkRunner]:
    model = _tiny_model()
    directory = vocoder.export_vocoder(model, MelSettings(), tmp_path_factory.mktemp("vocoder"), {"steps": 0})
    runner, settings = vocoder.load_vocoder(directory)
    assert settings == MelSettings()
    return model, runner


def test_receptive_field_counts_convolutions_and_overlap() -> None:
    assert _tiny_model().receptive_field == 3 * 1 + 2
    assert VocosVocoder(dim=16, hidden=16, layers=6, kernel_size=7).receptive_field == 7 * 3 + 2


def test_inverse_stft_inverts_log_mel_analysis() -> None:
    """The head's irfft, window and constant-envelope overlap-add undo a centred Hann STFT away from the edges."""
    model = _tiny_model()
    audio = torch.from_numpy(get_espeak().synthesize("Hello there.").audio)
    frames = len(audio) // 256
    spec = torch.stft(audio, 1024, 256, window=torch.hann_window(1024), center=True, return_complex=True)
    rebuilt = model._overlap_add(torch.fft.irfft(spec[:, :frames].T, n=1024, dim=-1)[None] * model.window)[0]
    assert rebuilt.shape == (frames * 256,)
    assert torch.allclose(rebuilt[1024:-1024], audio[1024 : frames * 256 - 1024], atol=1e-5)


def test_exported_matches_eager_and_has_t_times_hop_samples(exported: tuple[VocosVocoder, NetworkRunner]) -> None:
    model, runner = exported
    mel = _mel(37, batch=2)
    with torch.no_grad():
        want = model(mel, torch.ones(2, 37))
    got = runner.run({"mel": mel})["audio"]
    assert got.shape == want.shape == (2, 37 * 256)
    assert float(want.abs().max()) > 1e-3
    assert float((got - want).abs().max()) < 1e-4
    assert float(got.abs().max()) <= 1.0


@pytest.mark.parametrize("pieces", [[1, 5, 30, 2, 40], [64], [13] * 6])
def test_streamed_chunks_equal_the_whole_utterance(
    exported: tuple[VocosVocoder, NetworkRunner], pieces: list[int]
) -> None:
    _, runner = exported
    mel = _mel(sum(pieces))
    whole = runner.run({"mel": mel})["audio"]
    stream = runner.windowed(chunk=16)
    parts, at = [], 0
    for n in pieces:
        parts += stream.push({"mel": mel[:, at : at + n]})
        at += n
    parts += stream.finish()
    chunked = torch.cat([p["audio"] for p in parts], dim=1)
    assert chunked.shape == whole.shape
    assert float((chunked - whole).abs().max()) < 1e-4


def test_static_windows_equal_the_whole_utterance(exported: tuple[VocosVocoder, NetworkRunner]) -> None:
    _, runner = exported
    spec = runner.spec.model_copy(update={"static_length": 24})
    static = NetworkRunner("vocoder", spec, runner.module, ExecutionContext.STATIC)
    mel = _mel(50)
    assert float((static.run({"mel": mel})["audio"] - runner.run({"mel": mel})["audio"]).abs().max()) < 1e-4


def test_padded_batch_equals_each_item_alone(exported: tuple[VocosVocoder, NetworkRunner]) -> None:
    model, runner = exported
    lengths = [30, 11, 22]
    mel = _mel(max(lengths), batch=len(lengths))
    mask = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        mask[i, :n] = 1.0
    nets: list[Callable[..., torch.Tensor]] = [model, runner.module]  # type: ignore[list-item]
    for net in nets:
        with torch.no_grad():
            batched = net(mel, mask)
            for i, n in enumerate(lengths):
                alone = net(mel[i : i + 1, :n], torch.ones(1, n))
                assert float((batched[i, : n * 256] - alone[0]).abs().max()) < 1e-5
                assert not batched[i, n * 256 :].any()


def test_batch_log_mel_matches_log_mel() -> None:
    settings = MelSettings()
    audio = torch.from_numpy(get_espeak().synthesize("One two three.").audio[: 20 * 256 + 17])
    batch = vocoder.batch_log_mel(torch.stack([audio, audio * 0.5]), settings)
    for i, gain in enumerate((1.0, 0.5)):
        assert torch.allclose(batch[i], log_mel(audio * gain, settings), atol=1e-3)  # sqrt(|z|^2 + 1e-10) at the floor


# -- recipe --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(SENTENCES, out, train=3, held_out=1, seed=0, source="test sentences")
    return out


def _options(tiny_corpus: Path, run: Path, *extra: str) -> list[str]:
    sizes = [f"--{k}={v}" for k, v in TINY.items()]
    base = ["--corpus", str(tiny_corpus), "--out", str(run / "run"), "--export", str(run / "vocoder")]
    return [*base, "--threads", "1", "--batch-size", "4", "--segment", "8", *sizes, *extra]


def test_recipe_trains_resumes_exports_and_evaluates(tiny_corpus: Path, tmp_path: Path) -> None:
    assert vocoder.main(_options(tiny_corpus, tmp_path, "--steps", "2", "--no-export")) == 0
    assert not (tmp_path / "vocoder").exists()
    assert vocoder.main(_options(tiny_corpus, tmp_path, "--steps", "3", "--resume")) == 0
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 3]
    assert all(np.isfinite(h["train"]["loss"]) and np.isfinite(h["val"]["mel_l1"]) for h in history)

    doc = json.loads((tmp_path / "vocoder" / vocoder.CONFIG_FILE).read_text())
    assert set(doc) == {"name", "mel", "network", "trained"}
    assert doc["trained"]["steps"] == 3 and doc["trained"]["threads"] == 1
    assert doc["network"]["role"] == "vocoder" and doc["network"]["outputs"][0]["shape"] == ["B", "T*256"]
    runner, settings = vocoder.load_vocoder(tmp_path / "vocoder")
    assert runner.spec.receptive_field == 5 and settings == MelSettings()
    assert runner.run({"mel": _mel(9)})["audio"].shape == (1, 9 * 256)

    results = vocoder.evaluate_vocoders(tiny_corpus, tmp_path / "vocoder", n=1, cepstra=25, chunk=8)
    assert len(results) == 3
    assert all(np.isfinite(r["mcd_db"]) and r["rtf"] > 0 for r in results.values())


def test_resumed_run_matches_an_uninterrupted_one(tiny_corpus: Path, tmp_path: Path) -> None:
    for run, steps in ((tmp_path / "a", ["2", "3"]), (tmp_path / "b", ["3"])):
        for i, n in enumerate(steps):
            resume = ["--resume"] if i else []
            assert vocoder.main(_options(tiny_corpus, run, "--steps", n, "--no-export", *resume)) == 0
    a, b = (torch.load(tmp_path / r / "run" / "checkpoint.pt", weights_only=True)["model"] for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tuning_starts_from_an_exported_vocoder(tiny_corpus: Path, tmp_path: Path) -> None:
    """``--init-from`` starts a run from an exported vocoder's weights, its sizes (not the flags'),
    and names the export as asked; a directory that holds no vocoder is refused with exit code 2."""
    assert vocoder.main(_options(tiny_corpus, tmp_path / "base", "--steps", "2")) == 0
    base = tmp_path / "base" / "vocoder"
    tuned = tmp_path / "tuned"
    extra = ["--steps", "1", "--init-from", str(base), "--name", "chorus-vocoder-tiny", "--no-export"]
    options = [o for o in _options(tiny_corpus, tuned, *extra) if not o.startswith("--dim")] + ["--dim=24"]
    assert vocoder.main(options) == 0
    start = torch.load(tuned / "run" / "checkpoint.pt", weights_only=True)["model"]
    want = vocoder.read_vocoder(base)[0].state_dict()
    assert start.keys() == want.keys() and all(start[k].shape == want[k].shape for k in want)
    assert (
        vocoder.main(
            [
                *_options(tiny_corpus, tuned, "--steps", "1", "--resume"),
                "--init-from",
                str(base),
                "--name",
                "chorus-vocoder-tiny",
            ]
        )
        == 0
    )
    doc = json.loads((tuned / "vocoder" / vocoder.CONFIG_FILE).read_text())
    assert doc["name"] == "chorus-vocoder-tiny" and doc["trained"]["init_from"] == str(base)
    assert vocoder.main(_options(tiny_corpus, tmp_path / "bad", "--steps", "1", "--init-from", str(tmp_path))) == 2


def _sized_overlap_add(self: VocosVocoder, frames: torch.Tensor) -> torch.Tensor:
    """The overlap-add as exported before 2026-12-04: sizes computed from the input's shape."""
    b, t, _ = frames.shape
    k_half = self.segments // 2
    padded = torch.nn.functional.pad(frames.reshape(b, t, self.segments, self.hop), (0, 0, 0, 0, k_half, k_half))
    out = padded[:, 2 * k_half : 2 * k_half + t, 0]
    for k in range(1, self.segments):
        out = out + padded[:, 2 * k_half - k : 2 * k_half - k + t, k]
    return out.reshape(b, t * self.hop)


def _program(directory: Path) -> torch.export.ExportedProgram:
    package = json.loads((directory / "vocoder.json").read_text())
    spec = NetworkSpec.model_validate(package["network"])
    return load_program(directory / spec.file, spec, directory)


@pytest.mark.slow
def test_reexport_gives_a_graph_traced_for_every_length_with_the_same_audio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export whose overlap-add computes sizes from its input cannot be traced (a trace would fix
    one length) and runs operator by operator; ``--reexport`` rebuilds it from its weights with
    today's graph, which Chorus runs as a trace, and the audio is the same to the bit."""
    with monkeypatch.context() as patch:
        patch.setattr(VocosVocoder, "_overlap_add", _sized_overlap_add)
        old = vocoder.export_vocoder(_tiny_model(), MelSettings(), tmp_path / "old", {"steps": 7})
    assert vocoder.main(["--reexport", "--init-from", str(old), "--export", str(tmp_path / "new")]) == 0
    new = tmp_path / "new"
    assert json.loads((new / "vocoder.json").read_text()) == json.loads((old / "vocoder.json").read_text())
    runs = [executable(_program(d), "cpu") for d in (old, new)]
    assert not isinstance(runs[0], _Traced) and isinstance(runs[1], _Traced)
    with torch.inference_mode():
        for frames, batch in ((1, 1), (7, 2), (40, 1), (131, 3)):
            mel, mask = _mel(frames, batch), torch.ones(batch, frames)
            if batch > 1:
                mask[-1, frames // 2 :] = 0.0  # a padded item
            want, got = (run(mel, mask) for run in runs)
            assert float(want.abs().max()) > 1e-3
            assert torch.equal(got, want), (frames, batch)


def test_bundled_vocoder_runs_as_a_trace() -> None:
    assert isinstance(executable(_program(Path("addons/bundled/chorus-vocoder")), "cpu"), _Traced)


@pytest.mark.parametrize(
    "argv",
    [
        ["--reexport"],
        ["--reexport", "--init-from", "addons/bundled/chorus-taco", "--export", "/nonexistent/out"],
        ["--reexport", "--init-from", "addons/bundled/chorus-vocoder", "--export", "addons/bundled"],
    ],
)
def test_bad_reexport_exits_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert vocoder.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error:" in err


@pytest.mark.parametrize("argv", [["--layers", "0"], ["--kernel", "4"], ["--evaluate", "--n", "0"], ["--bogus"]])
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], tiny_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vocoder.main(["--corpus", str(tiny_corpus), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error:" in err
