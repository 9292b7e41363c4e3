"""The voices distilled from joe and shipped in addons/distilled: they read text as joe does, speak
through their own fine-tuned vocoder, and stay close to joe's noise-free speech on sentences nobody
trained or tuned on (the figures of docs/voices.md come from addons.recipes.evaluate)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import addons
from addons.engine.catalog import PATH_ENV
from addons.recipes.evaluate import f0_errors, mcd
from serve_app import cli

pytestmark = pytest.mark.slow

DISTILLED = Path(__file__).resolve().parents[1] / "addons" / "distilled"
STUDENT, VOCODER = "chorus-fast-joe", "chorus-vocoder-joe"

#: Not in the corpus's sentences (fortunes): written for this test.
HELD_OUT = [
    "Seven lighthouse keepers argued quietly about the weather on Tuesday.",
    "Would you carry these heavy boxes upstairs, please?",
    "The orchestra tuned its instruments while the audience waited.",
]


@pytest.fixture(scope="module")
def joe_quiet(joe_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> addons.Voice:
    """joe with its noise off: the speech its students learned."""
    target = tmp_path_factory.mktemp("joe") / "joe-quiet"
    shutil.copytree(joe_dir, target)
    manifest = json.loads((target / "addon.json").read_text())
    manifest["stack"][0]["sequence_block"].update(noise_scale=0.0, noise_w=0.0)
    (target / "addon.json").write_text(json.dumps(manifest))
    return addons.load(target)


@pytest.fixture(scope="module")
def student() -> Iterator[addons.Voice]:
    """The shipped student, its vocoder found where `make serve` finds it (on the addon search path)."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv(PATH_ENV, str(DISTILLED))
        yield addons.load(DISTILLED / STUDENT)


def test_the_shipped_voices_validate_and_name_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    for name in (STUDENT, VOCODER):
        assert cli.main(["addon", "validate", str(DISTILLED / name)]) == 0, name
    assert "ok" in capsys.readouterr().out
    manifest = json.loads((DISTILLED / STUDENT / "addon.json").read_text())
    assert manifest["vocoder"] == {"type": "UniversalVocoder", "name": VOCODER}


def test_the_student_reads_text_as_joe(student: addons.Voice, joe_quiet: addons.Voice) -> None:
    for text in HELD_OUT:
        assert [s.ids.tolist() for s in student.sentences(text)] == [s.ids.tolist() for s in joe_quiet.sentences(text)]


@pytest.mark.parametrize("text", HELD_OUT)
def test_the_student_speaks_close_to_joe(student: addons.Voice, joe_quiet: addons.Voice, text: str) -> None:
    audio, _ = student.synthesize(text)
    reference, _ = joe_quiet.synthesize(text)
    assert abs(len(audio) / len(reference) - 1.0) < 0.10
    settings = student.manifest.mel
    assert mcd(audio, reference, settings, 25) < 2.2  # docs/voices.md: 20 held-out sentences average below 1.6
    rms_cents, gross, voicing = f0_errors(audio, reference, settings, 25)
    # docs/voices.md, 20 held-out sentences: 118 ± 33 cents, 10 % gross, 26 % voicing (Griffin-Lim on
    # joe's own mel: 24 cents, 3.5 %, 23 %: YIN's voicing calls are noisy on any resynthesis)
    assert rms_cents < 200.0 and gross < 30.0 and voicing < 40.0


def test_streamed_equals_whole(student: addons.Voice) -> None:
    text = HELD_OUT[2]
    whole, _ = student.synthesize(text)
    streamed = np.concatenate([c.samples for c in student.stream(text)])
    assert np.array_equal(streamed, whole)
