"""The UniversalVocoder block: one neural vocoder package shared by every addon trained for its mel settings."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import addons
from addons.engine.vocoders import find_vocoder, load_universal
from addons.engine.voice import AudioStage
from addons.formats.manifest import AddonError, read_manifest
from tests.helpers import chorus

ROOT = Path(__file__).resolve().parents[1]
TEXT = "A shared vocoder. It speaks for many voices."


def test_addon_speaks_through_the_package_it_names(fixture_dir: Path) -> None:
    voice = addons.load(fixture_dir / "tiny-universal")
    chunks = list(voice.stream(TEXT))
    audio = np.concatenate([c.samples for c in chunks])
    whole, mel = voice.synthesize(TEXT)
    assert len(chunks) > 1 and np.array_equal(audio, whole)  # streamed equals whole
    assert audio.size == len(mel) * voice.hop_length and len(mel) > 0 and np.isfinite(audio).all()
    assert not read_manifest(fixture_dir / "tiny-universal").uses_own_vocoder  # one shared deployment serves it


def test_stream_equals_whole_and_in_process_equals_audio_stage(fixture_dir: Path) -> None:
    voice = addons.load(fixture_dir / "tiny-universal")
    streamed = np.concatenate([c.samples for c in voice.stream(TEXT)])
    whole, _ = voice.synthesize(TEXT)
    assert np.array_equal(streamed, whole)


@pytest.fixture
def installed(fixture_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Packages are found where addons are installed, for addons copied elsewhere too."""
    monkeypatch.setenv("CHORUS_ADDON_PATH", str(fixture_dir))
    return fixture_dir


def test_one_loaded_copy_serves_every_addon(
    fixture_dir: Path, installed: Path, edit_addon: Callable[..., Path]
) -> None:
    other = edit_addon("tiny-universal", lambda m: m.update(name="tiny-universal-two"))
    a = AudioStage.load_from(fixture_dir / "tiny-universal", read_manifest(fixture_dir / "tiny-universal"), "cpu")
    b = AudioStage.load_from(other, read_manifest(other), "cpu")
    assert a.vocoder.runner is b.vocoder.runner  # type: ignore[attr-defined]


def test_other_mel_settings_are_refused_naming_them(installed: Path, edit_addon: Callable[..., Path]) -> None:
    def other_rate(m: dict) -> None:  # type: ignore[type-arg]
        m["mel"]["f_max"] = m["mel"]["f_max"] - 1000

    addon = edit_addon("tiny-universal", other_rate)
    with pytest.raises(AddonError, match=r"trained for other mel settings.*f_max"):
        addons.load(addon)


@pytest.mark.slow
def test_a_missing_package_is_a_clear_error(installed: Path, edit_addon: Callable[..., Path]) -> None:
    addon = edit_addon("tiny-universal", lambda m: m["vocoder"].update(name="no-such-vocoder"))
    with pytest.raises(AddonError, match='universal vocoder "no-such-vocoder" not found'):
        addons.load(addon)
    result = chorus("addon", "validate", str(addon))
    assert result.returncode == 2 and "no-such-vocoder" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.update(name="someone-else"), 'names the vocoder "someone-else"'),
        (lambda p: p.update(extra=1), "extra"),
        (lambda p: p["network"].update(file="../tiny-fast/addon.json"), "must be a plain file name"),
    ],
)
def test_a_broken_package_is_refused(
    fixture_dir: Path,
    tmp_path: Path,
    edit: Callable[[dict], None],
    message: str,  # type: ignore[type-arg]
) -> None:
    import shutil

    package = tmp_path / "tiny-vocoder"
    shutil.copytree(fixture_dir / "tiny-vocoder", package)
    (tmp_path / "tiny-fast").mkdir()
    (tmp_path / "tiny-fast" / "addon.json").write_text("{}")
    meta = json.loads((package / "vocoder.json").read_text())
    edit(meta)
    (package / "vocoder.json").write_text(json.dumps(meta))
    with pytest.raises(AddonError, match=message):
        find_vocoder("tiny-vocoder", tmp_path / "some-addon")
        load_universal("tiny-vocoder", __import__("torch").device("cpu"), tmp_path / "some-addon")


@pytest.mark.slow
def test_addon_validate_checks_a_vocoder_package(fixture_dir: Path, tmp_path: Path) -> None:
    import shutil

    good = chorus("addon", "validate", str(fixture_dir / "tiny-vocoder"))
    assert good.returncode == 0 and "universal vocoder tiny-vocoder" in good.stdout, good.stderr
    broken = tmp_path / "tiny-vocoder"
    shutil.copytree(fixture_dir / "tiny-vocoder", broken)
    (broken / "vocoder.pt2").write_bytes(b"not a zip archive")
    bad = chorus("addon", "validate", str(broken))
    assert bad.returncode == 2 and "vocoder.pt2" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("name", "context"),
    [("tiny-universal", "dynamic"), ("tiny-neural", "dynamic"), ("tiny-neural", "static"), ("tiny-fast", "dynamic")],
)
def test_first_frames_is_what_the_first_call_needs(fixture_dir: Path, name: str, context: str) -> None:
    import torch

    voice = addons.load(fixture_dir / name, context=context)
    need = voice.vocoder.first_frames
    mel = torch.full((1, need, voice.manifest.mel.n_mels), -5.0)
    assert voice.vocoder.process(voice.vocoder.start(), mel[:, : need - 1]).shape[1] == 0
    assert voice.vocoder.process(voice.vocoder.start(), mel).shape[1] > 0
