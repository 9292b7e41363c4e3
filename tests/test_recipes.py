"""The training recipes on a tiny corpus: corpus durations, a few steps of each recipe with resume
and export, the exported voices speaking, the evaluation, and argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import addons
from addons.recipes import corpus, evaluate, fast, taco, training
from addons.recipes.corpus import Corpus, build_corpus, clean_sentences, durations_from_events, teacher_utterance
from addons.text.espeak import get_espeak
from blocks import MelSettings

pytestmark = pytest.mark.slow

SENTENCES = [
    "The cat sat on the mat.",
    "Bring me the red box, please.",
    "Where did you put my keys?",
    "We walked home in the rain.",
    "It was a bright cold day!",
    "She reads a book every week.",
    "Open the window a little.",
    "The train leaves at noon.",
    "Nobody knows the answer yet.",
    "My brother plays the violin.",
    "Dogs bark at strangers.",
    "Keep calm and carry on.",
]

# Numbers, abbreviations and punctuation that espeak-ng expands or pauses on.
HARD_TEXTS = [
    "Dr. Smith paid $4.99 for 3 apples, didn't he?",
    "At 10:30 a.m. on Jan. 5th, the U.S.A. won 2-1; wow!",
    'She said "no" (twice) -- then left... at 7 p.m.',
]


def _argv(**options: object) -> list[str]:
    """Command-line options from keywords: ``free_runs=1`` -> ``["--free-runs", "1"]``."""
    return [part for key, value in options.items() for part in (f"--{key.replace('_', '-')}", str(value))]


TINY_FAST = _argv(dim=16)
TINY_TACO = _argv(dim=16, rnn=16, prenet=16, attention=16, reduction=4, window=16, free_runs=1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(SENTENCES, out, train=10, held_out=2, seed=0, source="test sentences")
    return out


def _train(module: object, tiny_corpus: Path, run: Path, extra: list[str]) -> int:
    options = _argv(corpus=tiny_corpus, out=run / "run", export=run / "voice", threads=1, batch_frames=1500, minutes=5)
    return module.main([*options, *extra])  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def trained(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both recipes, 2 steps, then resumed to 3 steps and exported."""
    runs = {}
    for name, module, sizes in (("fast", fast, TINY_FAST), ("taco", taco, TINY_TACO)):
        run = tmp_path_factory.mktemp(name)
        assert _train(module, tiny_corpus, run, [*sizes, "--steps", "2", "--no-export"]) == 0
        assert _train(module, tiny_corpus, run, [*sizes, "--steps", "3", "--resume"]) == 0
        runs[name] = run
    return runs


# -- corpus --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", HARD_TEXTS)
def test_teacher_durations_cover_the_mel_exactly(text: str) -> None:
    phonemes, durations, mel = teacher_utterance(text, MelSettings())
    assert list(phonemes) == get_espeak().phonemize(text)
    assert len(durations) == len(phonemes)
    assert int(durations.sum()) == mel.shape[0]
    assert (durations >= 0).all()
    assert phonemes[-1] == "_" and durations[-1] == 0  # espeak's zero-length end marker


def test_durations_round_event_offsets_to_frames() -> None:
    # starts at 1.2, 2.3 and 3.9 hops; 4 frames in all; the first phoneme takes the leading silence
    assert durations_from_events([300, 600, 1000], 1100, 256).tolist() == [2, 2, 0]
    assert durations_from_events([0, 5000], 1100, 256).tolist() == [4, 0]  # clipped to the mel


def test_clean_sentences_keep_prose_only() -> None:
    texts = ["Hello there, friend. x = f(y); print(x)", "Thomas K. Smith came. He said hi!", "Hello there, friend."]
    assert clean_sentences(texts) == ["Hello there, friend.", "Thomas K. Smith came.", "He said hi!"]


def test_corpus_round_trip(tiny_corpus: Path) -> None:
    c = Corpus.load(tiny_corpus)
    assert (len(c.train), len(c.held_out)) == (10, 2)
    assert list(c.phonemes) == sorted(c.phonemes)
    assert not {u.text for u in c.held_out} & {u.text for u in c.train}
    for u in c.train + c.held_out:
        assert int(u.durations.sum()) == u.frames == u.mel.shape[0]
        assert [c.phonemes[i - 1] for i in u.ids] == get_espeak().phonemize(u.text)
    meta = json.loads((tiny_corpus / corpus.META_FILE).read_text())
    assert meta["train"] == 10 and meta["hours"] > 0


# -- recipes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fast", "taco"])
def test_recipe_resumes_exports_and_speaks(trained: dict[str, Path], name: str) -> None:
    run = trained[name]
    history = [json.loads(line) for line in (run / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 3]
    assert all(np.isfinite(h["train"]["loss"]) for h in history)
    voice = addons.load(run / "voice")
    assert voice.name == f"chorus-{name}"
    assert voice.manifest.vocoder == {"type": "UniversalVocoder", "name": "chorus-vocoder"}
    audio, mel = voice.synthesize("Keep the change.")
    assert mel.shape[0] > 0 and audio.shape == (mel.shape[0] * voice.hop_length,)
    assert np.isfinite(audio).all()


def test_recipe_exports_a_voice_with_griffin_lim_when_asked(tiny_corpus: Path, tmp_path: Path) -> None:
    assert _train(fast, tiny_corpus, tmp_path, [*TINY_FAST, "--steps", "1", "--vocoder", "griffin-lim"]) == 0
    vocoder = json.loads((tmp_path / "voice" / "addon.json").read_text())["vocoder"]
    assert vocoder["type"] == "GriffinLim"
    assert addons.load(tmp_path / "voice").synthesize("Keep it.")[0].size > 0


def test_taco_starts_from_an_exported_voice_with_another_reduction(
    trained: dict[str, Path], tiny_corpus: Path, tmp_path: Path
) -> None:
    """--init-from: the exported weights, frame heads rebuilt for the new r (frame j from old
    frame min(j, r_old - 1)), everything else as exported."""
    source = trained["taco"] / "voice"
    sizes = [*TINY_TACO[: TINY_TACO.index("--reduction")], "--reduction", "6", "--window", "16", "--free-runs", "1"]
    c = Corpus.load(tiny_corpus)
    recipe = taco.TacoRecipe(taco.parser().parse_args([*sizes, "--init-from", str(source)]))
    model = recipe.build(c)
    old = taco.TacoRecipe(taco.parser().parse_args(TINY_TACO))
    exported = training.load_model(old, c, trained["taco"] / "run" / "checkpoint.pt")
    assert isinstance(model, taco.TacoModel) and isinstance(exported, taco.TacoModel)
    assert torch.equal(model.encoder.embed.weight, exported.encoder.embed.weight)
    assert torch.equal(model.step.att_rnn.weight_hh, exported.step.att_rnn.weight_hh)
    n = c.mel.n_mels
    for j, old_j in enumerate([0, 1, 2, 3, 3, 3]):
        assert torch.equal(
            model.step.frames.weight[j * n : (j + 1) * n], exported.step.frames.weight[old_j * n : (old_j + 1) * n]
        )
        assert torch.equal(model.step.stop.bias[j], exported.step.stop.bias[old_j])
    assert _train(taco, tiny_corpus, tmp_path, [*sizes, "--init-from", str(source), "--steps", "1"]) == 0
    assert addons.load(tmp_path / "voice").synthesize("Keep it.")[1].shape[0] > 0
    bigger = [*sizes[: sizes.index("--rnn")], "--rnn", "32", *sizes[sizes.index("--rnn") + 2 :]]
    assert _train(taco, tiny_corpus, tmp_path / "x", [*bigger, "--init-from", str(source), "--steps", "1"]) == 2


def test_resumed_run_matches_an_uninterrupted_one(trained: dict[str, Path], tiny_corpus: Path, tmp_path: Path) -> None:
    assert _train(fast, tiny_corpus, tmp_path, [*TINY_FAST, "--steps", "3", "--no-export"]) == 0
    straight = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(trained["fast"] / "run" / "checkpoint.pt", weights_only=True)
    assert straight["progress"]["step"] == resumed["progress"]["step"] == 3
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])


def test_evaluate_writes_table_and_plots(trained: dict[str, Path], tiny_corpus: Path, tmp_path: Path) -> None:
    voices = [str(trained[n] / "voice") for n in ("fast", "taco")]
    options = _argv(corpus=tiny_corpus, out=tmp_path, n=1, plots=1, threads=1)
    code = evaluate.main([*options, "--addons", *voices])
    assert code == 0
    table = (tmp_path / "evaluation.md").read_text()
    assert "chorus-fast" in table and "chorus-taco" in table and "vocoder floor" in table
    assert (tmp_path / "mel_1.png").stat().st_size > 0


def test_f0_follows_a_glide_and_silence_is_unvoiced() -> None:
    sr, hop = 22050, 256
    t = np.arange(sr) / sr
    f0 = 110.0 + 90.0 * t  # 110 -> 200 Hz over a second
    phase = 2 * np.pi * np.cumsum(f0) / sr
    audio = 0.3 * np.sign(np.sin(phase)) + 0.1 * np.sin(2 * phase)
    audio[: sr // 4] = 0.0
    est = evaluate.f0_yin(audio, sr, hop)
    assert len(est) == len(audio) // hop
    frames = np.arange(len(est)) * hop / sr
    assert not est[frames < 0.2].any()
    voiced = frames > 0.3
    assert (est[voiced] > 0).all()
    assert np.abs(1200 * np.log2(est[voiced] / (110.0 + 90.0 * frames[voiced]))).max() < 25.0
    # an octave up is a gross error wherever both are voiced
    octave = np.sign(np.sin(2 * phase)) * 0.3
    octave[: sr // 4] = 0.0
    settings = MelSettings()
    rms, gross, voicing = evaluate.f0_errors(octave, audio, settings, 25)
    assert gross > 90.0 and voicing < 10.0
    assert evaluate.f0_errors(audio, audio, settings, 25) == (0.0, 0.0, 0.0)
    # a steady tone 50 cents sharp (on a glide the alignment would pair frames of like pitch)
    steady, sharp = (0.3 * np.sign(np.sin(2 * np.pi * f * t)) for f in (150.0, 150.0 * 2 ** (50 / 1200)))
    rms, gross, _ = evaluate.f0_errors(sharp, steady, settings, 25)
    assert 35.0 < rms < 65.0 and gross < 5.0


def test_dtw_and_mcd_basics() -> None:
    rows, cols = evaluate.dtw_path(np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))
    assert rows.tolist() == [0, 1, 1] and cols.tolist() == [0, 1, 2]
    assert np.allclose(evaluate.mel_cepstra(np.full((3, 80), -4.0), 25), 0.0)  # flat spectrum: energy only
    audio = get_espeak().synthesize("Hello.").audio
    assert evaluate.mcd(audio, audio, MelSettings(), 25) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        (fast, ["--minutes", "0"]),
        (fast, ["--dim", "7"]),
        (fast, ["--vocoder", "no-such-vocoder"]),
        (taco, ["--reduction", "0"]),
        (taco, ["--no-such-option"]),
        (taco, ["--reexport"]),
        (corpus, ["--train", "0"]),
        (evaluate, ["--addons", "/no/such/addon"]),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    module: object, argv: list[str], tiny_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if module in (fast, taco):
        argv = ["--corpus", str(tiny_corpus), *argv]
    assert module.main(argv) == 2  # type: ignore[attr-defined]
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error:" in err


def test_reexport_computes_attention_keys_once_with_the_same_audio(fixture_dir: Path, tmp_path: Path) -> None:
    """A taco voice exported with the keys inside its step network, written again by
    ``taco.reexport``: the keys get an encoder network of their own (a per-token input of the
    step), and the audio is the same to the bit, whole-text and windowed, in both contexts."""
    from tests.make_fixtures import build_taco

    plain = build_taco(tmp_path / "plain", keys=False)
    assert set(json.loads((plain / "addon.json").read_text())["networks"]) == {"encoder", "decoder_step"}
    keyed = taco.reexport(plain, tmp_path / "keyed")
    networks = json.loads((keyed / "addon.json").read_text())["networks"]
    assert networks["attention_keys"]["role"] == "encoder"
    assert "keys" in [t["name"] for t in networks["decoder_step"]["inputs"]]
    texts = ["Hi.", "A sentence long enough to move the attention window along its phonemes."]
    for context in ("dynamic", "static"):
        voices = [addons.load(d, context=context) for d in (plain, keyed, fixture_dir / "tiny-taco")]
        for text in texts:
            audio = [v.synthesize(text)[0] for v in voices]
            assert audio[0].size > 0
            assert all(np.array_equal(audio[0], a) for a in audio[1:]), (context, text)
