"""A teacher corpus said by a Piper addon (the tiny fixture) and a chorus-fast student trained on it:
ids and durations as the teacher gives them, its noise off, resume without repeats, and an exported
student that validates, reads text as the teacher does and speaks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import addons
from addons.formats.manifest import read_manifest
from addons.recipes import corpus, distill, evaluate, fast, taco, teacher, training, vocoder
from addons.recipes.corpus import Corpus
from addons.text.config import PiperFrontendConfig
from blocks.audio import log_mel
from serve_app import cli
from tests.make_piper_fixture import build_piper_addons

pytestmark = pytest.mark.slow

SENTENCES = [
    "The cat sat on the mat.",
    "Bring me the red box, please.",
    "Where did you put my keys?",
    '"Why would you shoot loons?", the ranger asked.',  # two sentences to Piper's front end: skipped
    "We walked home in the rain.",
    "It was a bright cold day!",
    "She reads a book every week.",
    "Open the window a little.",
    "The train leaves at noon.",
    "Nobody knows the answer yet.",
    "My brother plays the violin.",
]
HELD_OUT, TRAIN = 2, 6


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def piper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_piper_addons(tmp_path_factory.mktemp("piper"))["tiny-piper"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


def _build(piper: Path, text_file: Path, out: Path, train: int = TRAIN, *extra: str) -> int:
    argv = ["--teacher", str(piper), "--text", str(text_file), "--out", str(out), "--threads", "1"]
    return corpus.main([*argv, "--train", str(train), "--held-out", str(HELD_OUT), *extra])


@pytest.fixture(scope="module")
def teacher_corpus(piper: Path, text_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    assert _build(piper, text_file, out) == 0
    return out


def _arrays(out: Path) -> dict[str, np.ndarray]:
    shards = list(teacher.read_shards(out, audio=True))
    return {k: np.concatenate([s[k] for s in shards]) for k in ("text", "position", "held_out", "ids", "audio", "mel")}


def test_ids_durations_mel_and_audio_are_the_teachers(teacher_corpus: Path, piper: Path) -> None:
    c = Corpus.load(teacher_corpus)
    assert (len(c.held_out), len(c.train)) == (HELD_OUT, TRAIN)
    assert isinstance(c.frontend, PiperFrontendConfig) and c.frontend == read_manifest(piper).frontend
    quiet = teacher.Teacher(piper).voice  # the front part's own durations, noise off
    shards = list(teacher.read_shards(teacher_corpus, audio=True))
    audio = np.concatenate([s["audio"] for s in shards]).astype(np.float32) / 32767
    starts = np.concatenate(
        [s["sample_offsets"][:-1] + sum(len(p["audio"]) for p in shards[:i]) for i, s in enumerate(shards)]
    )
    for n, u in enumerate(c.held_out + c.train):
        (sentence,) = quiet.sentences(u.text)
        assert u.ids.tolist() == sentence.ids.tolist()  # the teacher front end's ids, "_" (0) included
        assert 0 in u.ids.tolist()
        assert int(u.durations.sum()) == u.frames == u.mel.shape[0]
        given = quiet.encode(sentence.ids)["durations"]
        assert u.durations.tolist() == given.astype(np.int64).tolist()
        said = audio[starts[n] : starts[n] + u.frames * c.mel.hop_length]
        assert len(said) == u.frames * c.mel.hop_length
        again = log_mel(torch.from_numpy(said), c.mel).numpy()
        assert np.abs(again - u.mel.astype(np.float32)).max() < 0.05  # int16 and float16 rounding only


def test_held_out_texts_come_first_and_the_split_text_is_skipped(teacher_corpus: Path) -> None:
    arrays = _arrays(teacher_corpus)
    order = teacher.order_of(corpus.clean_sentences(SENTENCES), seed=0)
    said = [order[p] for p in arrays["position"]]
    assert said == arrays["text"].tolist()
    assert arrays["held_out"].tolist() == [True] * HELD_OUT + [False] * TRAIN
    assert SENTENCES[3] not in said and SENTENCES[3] in order[: arrays["position"][-1] + 1]
    meta = json.loads((teacher_corpus / "meta.json").read_text())
    assert meta["skipped"] == 1 and meta["durations"] and meta["complete"]
    assert meta["teacher"]["noise_off"] == ["stack[0].sequence_block.noise_scale", "stack[0].sequence_block.noise_w"]


def test_noise_is_off(teacher_corpus: Path, piper: Path) -> None:
    """The corpus holds the teacher's noise-free output: any seed gives it, while the addon as
    shipped gives another draw for each seed."""
    text = str(_arrays(teacher_corpus)["text"][0])
    stored = _arrays(teacher_corpus)["mel"]
    quiet = teacher.Teacher(piper).voice
    shipped = addons.load(piper)
    a, b = (quiet.synthesize(text, seed=s)[0] for s in (1, 2))
    assert np.array_equal(a, b)
    c, d = (shipped.synthesize(text, seed=s)[0] for s in (1, 2))
    assert not np.array_equal(c, d)
    mel = log_mel(torch.from_numpy(a), quiet.manifest.mel).numpy()
    assert np.abs(mel - stored[: len(mel)].astype(np.float32)).max() < 0.05


def test_resumed_build_equals_a_straight_one(
    teacher_corpus: Path, piper: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(teacher, "SHARD_SIZE", 2)
    out = tmp_path / "resumed"
    assert _build(piper, text_file, out, 1) == 0  # held-out and one training text, then stop
    assert _build(piper, text_file, out, 1) == 0  # nothing left to do: nothing said again
    assert json.loads((out / "meta.json").read_text())["train"] == 1
    assert _build(piper, text_file, out, TRAIN, "--minutes", "1e-9") == 0  # out of time at once
    assert _build(piper, text_file, out, TRAIN) == 0
    resumed, straight = _arrays(out), _arrays(teacher_corpus)
    assert len(list((out / teacher.SHARDS).iterdir())) > 2
    for key, value in straight.items():
        assert np.array_equal(resumed[key], value), key
    assert len(set(resumed["position"].tolist())) == len(resumed["position"])


def test_another_corpus_in_the_same_directory_is_refused(teacher_corpus: Path, piper: Path, text_file: Path) -> None:
    before = sorted(p.name for p in (teacher_corpus / teacher.SHARDS).iterdir())
    assert _build(piper, text_file, teacher_corpus, TRAIN, "--seed", "1") == 1
    assert sorted(p.name for p in (teacher_corpus / teacher.SHARDS).iterdir()) == before


@pytest.mark.parametrize("argv", [["--minutes", "5"], ["--teacher", "no-such-addon"]])
def test_bad_arguments_exit_2(argv: list[str], text_file: Path, tmp_path: Path) -> None:
    assert (
        corpus.main([*argv, "--text", str(text_file), "--out", str(tmp_path), "--train", "2", "--held-out", "1"]) == 2
    )


def test_student_trains_exports_validates_and_reads_as_the_teacher(
    teacher_corpus: Path, piper: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = ["--corpus", str(teacher_corpus), "--out", str(tmp_path / "run"), "--threads", "1", "--dim", "16"]
    assert fast.main([*options, "--batch-frames", "3000", "--steps", "2", "--no-export"]) == 0
    assert fast.main([*options, "--steps", "3", "--resume", "--export", str(tmp_path / "voice")]) == 0
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 3]
    assert cli.main(["addon", "validate", str(tmp_path / "voice")]) == 0
    assert "ok" in capsys.readouterr().out
    student, shipped = addons.load(tmp_path / "voice"), addons.load(piper)
    assert student.name == "chorus-fast-tiny-piper"
    assert student.manifest.frontend == shipped.manifest.frontend
    text = "Nobody reads the answer twice."
    assert [s.ids.tolist() for s in student.sentences(text)] == [s.ids.tolist() for s in shipped.sentences(text)]
    audio, mel = student.synthesize(text)
    assert mel.shape[0] > 0 and audio.shape == (mel.shape[0] * student.hop_length,)
    assert np.isfinite(audio).all()

    # scored against the stored noise-free audio, reading the held-out texts as the corpus did
    options = ["--corpus", str(teacher_corpus), "--out", str(tmp_path / "eval"), "--threads", "1", "--plots", "0"]
    assert evaluate.main([*options, "--n", "2", "--addons", str(tmp_path / "voice")]) == 0
    assert "reads" not in capsys.readouterr().err
    rows = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["chorus-fast-tiny-piper"]
    held = Corpus.load(teacher_corpus).held_out
    assert [r["text"] for r in rows] == [u.text for u in held]
    assert all(r["mcd_db"] > 0 and np.isfinite(r["duration_mae_frames"]) for r in rows)
    assert "tiny-piper, noise off" in (tmp_path / "eval" / "evaluation.md").read_text()

    # a new run starts from the exported voice's weights (how a shipped voice is trained on)
    c = Corpus.load(teacher_corpus)
    model = fast.FastRecipe(fast.parser().parse_args(["--dim", "16", "--init-from", str(tmp_path / "voice")])).build(c)
    exported = training.addon_weights(tmp_path / "voice", "decoder", "decoder")
    assert all(torch.equal(v, exported[k]) for k, v in model.decoder.state_dict().items())
    options = ["--corpus", str(teacher_corpus), "--threads", "1", "--steps", "1", "--no-export"]
    assert (
        fast.main([*options, "--out", str(tmp_path / "run2"), "--dim", "16", "--init-from", str(tmp_path / "voice")])
        == 0
    )
    assert "starting from" in capsys.readouterr().err
    assert (
        fast.main([*options, "--out", str(tmp_path / "run3"), "--dim", "32", "--init-from", str(tmp_path / "voice")])
        == 2
    )
    assert "sizes or names differ" in capsys.readouterr().err
    assert fast.main([*options, "--out", str(tmp_path / "run4"), "--dim", "16", "--init-from", str(piper)]) == 2


def test_taco_student_trains_on_the_teacher_corpus_and_reads_as_the_teacher(
    teacher_corpus: Path, piper: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sizes = ["--dim", "16", "--rnn", "16", "--prenet", "8", "--attention", "8", "--free-runs", "1"]
    options = ["--corpus", str(teacher_corpus), "--out", str(tmp_path / "run"), "--threads", "1", *sizes]
    assert taco.main([*options, "--steps", "2", "--window", "96", "--export", str(tmp_path / "voice")]) == 0
    assert cli.main(["addon", "validate", str(tmp_path / "voice")]) == 0
    assert "ok" in capsys.readouterr().out
    student, shipped = addons.load(tmp_path / "voice"), addons.load(piper)
    assert student.name == "chorus-taco-tiny-piper"
    assert student.manifest.frontend.model_copy(update={"max_sentence_phonemes": 400}) == shipped.manifest.frontend
    assert student.manifest.frontend.max_sentence_phonemes == 96
    text = "Nobody reads the answer twice."
    assert [s.ids.tolist() for s in student.sentences(text)] == [s.ids.tolist() for s in shipped.sentences(text)]
    audio, mel = student.synthesize(text)
    assert audio.shape == (mel.shape[0] * student.hop_length,) and np.isfinite(audio).all()
    assert taco.main([*options, "--steps", "2", "--init-from", str(tmp_path / "voice")]) == 2
    assert "teacher corpus" in capsys.readouterr().err


def test_calibrated_durations_add_up_to_the_teachers_frames(teacher_corpus: Path) -> None:
    c = Corpus.load(teacher_corpus)
    torch.manual_seed(0)
    model = fast.FastModel(c.symbols, c.mel.n_mels, 16, 0.0, None)
    batch = fast.collate(c.train)

    def said() -> float:
        with torch.no_grad():
            return float(
                torch.round(model.durations(model.encoder(batch.ids, batch.token_mask), batch.token_mask)).sum()
            )

    fast.calibrate_durations(model, c.train)
    assert abs(said() / float(batch.durations.sum()) - 1.0) < 0.01
    with torch.no_grad():
        model.durations.proj.bias.sub_(0.5)  # speaks short now
    assert said() < 0.8 * float(batch.durations.sum())
    assert fast.calibrate_durations(model, c.train) == pytest.approx(0.5, abs=0.05)
    assert abs(said() / float(batch.durations.sum()) - 1.0) < 0.01


def test_vocoder_trains_on_the_teachers_stored_audio(teacher_corpus: Path, tmp_path: Path) -> None:
    c = Corpus.load(teacher_corpus)
    audio = vocoder.teacher_audio(c.held_out, c.mel, teacher_corpus)
    stored = _arrays(teacher_corpus)["audio"]
    assert np.array_equal(np.concatenate([audio[u.text] for u in c.held_out]), stored[: sum(map(len, audio.values()))])
    sizes = ["--dim=16", "--hidden=32", "--layers=2", "--kernel=3", "--batch-size=4", "--segment=8"]
    options = ["--corpus", str(teacher_corpus), "--out", str(tmp_path / "run"), "--export", str(tmp_path / "voc")]
    assert vocoder.main([*options, *sizes, "--threads", "1", "--steps", "2"]) == 0
    assert (
        vocoder.main(["--evaluate", "--corpus", str(teacher_corpus), "--export", str(tmp_path / "voc"), "--n", "1"])
        == 0
    )


def test_distill_runs_every_recipe_resumes_and_its_students_speak_through_their_vocoder(
    piper: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CHORUS_ADDON_PATH", raising=False)
    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["--teacher", str(piper), "--name", "tiny", "--text", str(text_file), "--work", str(work)]
    argv += ["--out", str(out), "--train", str(TRAIN), "--held-out", str(HELD_OUT)]
    argv += ["--vocoder-steps", "1", "--fast-steps", "1"]
    assert distill.main([*argv, "--corpus-minutes", "1e-9"]) == distill.AGAIN  # stopped before the corpus was done
    assert not (out / "chorus-fast-tiny").exists()
    assert distill.main([*argv, "--taco-steps", "1", "--evaluate", "1"]) == 0
    capsys.readouterr()
    # run again with one more taco step: the finished runs are kept, taco resumes
    assert distill.main([*argv, "--taco-steps", "2", "--evaluate", "0"]) == 0
    said = capsys.readouterr().err
    assert "chorus-vocoder-tiny has trained its 1 steps" in said and "chorus-fast-tiny has trained its 1 steps" in said
    history = {k: (work / k / "history.jsonl").read_text().splitlines() for k in ("vocoder", "fast", "taco")}
    assert {k: [json.loads(line)["step"] for line in v] for k, v in history.items()} == {
        "vocoder": [1],
        "fast": [1],
        "taco": [1, 2],
    }
    monkeypatch.setenv("CHORUS_ADDON_PATH", str(out))
    for kind in ("fast", "taco"):
        voice = addons.load(out / f"chorus-{kind}-tiny")
        assert voice.manifest.vocoder == {"type": "UniversalVocoder", "name": "chorus-vocoder-tiny"}
        audio, mel = voice.synthesize("The cat sat.")
        assert audio.shape == (mel.shape[0] * voice.hop_length,) and np.isfinite(audio).all()
    rows = json.loads((work / "evaluation" / "evaluation.json").read_text())
    assert set(rows) >= {"chorus-fast-tiny", "chorus-taco-tiny"}
    assert distill.main([*argv, "--name", "no/slash"]) == 2
