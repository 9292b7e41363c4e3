"""Each stage's process holds only its own networks: weights are read when a network first runs.

An encoders replica never runs the decoder or the vocoder, a decoder replica never the encoders
or the vocoder, so neither ever holds their weights (files are still checked when the voice loads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import addons
from addons.manifest import read_manifest
from addons.voice import AudioStage, resolve_options
from blocks import NeuralVocoder, Request


def _loaded(voice: addons.Voice) -> dict[str, bool]:
    found = {name: runner.loaded for (name, _), runner in voice._load_network._programs.items()}
    if type(voice.vocoder) is NeuralVocoder:  # the addon's own (a universal one is shared by the process)
        found["(vocoder)"] = voice.vocoder.runner.loaded
    return found


@pytest.mark.parametrize("name", ["tiny-neural", "tiny-universal", "tiny-taco"])
def test_each_stage_loads_only_what_it_runs(fixture_dir: Path, name: str) -> None:
    directory = fixture_dir / name
    manifest = read_manifest(directory)
    roles = {n: s.role for n, s in manifest.networks.items()}
    encoders = addons.load(directory, batching=8)  # as the encoders replica holds it
    assert not any(_loaded(encoders).values())
    features = encoders.encode_batch([s.ids for s in encoders.sentences("Only the encoders run here.")])
    assert {n for n, on in _loaded(encoders).items() if on} == {n for n, r in roles.items() if r == "encoder"}

    decoder = addons.load(directory, batching=8)  # as the decoder replica holds it
    options = resolve_options(manifest)[1]
    mel = np.concatenate(list(decoder.decode(features[0], Request(options=options))))
    assert mel.shape[0] > 0
    ran = {n for n, on in _loaded(decoder).items() if on}
    assert ran and all(roles[n] in ("decoder", "decoder_step") for n in ran)

    audio = AudioStage.load(directory, manifest, "cpu", batching=8)  # the vocoder replica
    state = audio.start()
    out = audio.process(state, mel, Request(options=options))
    assert out.size + audio.finish(state, Request(options=options)).size > 0
    if hasattr(audio.vocoder, "runner"):
        assert audio.vocoder.runner.loaded


def test_batched_voice_still_equals_plain_after_lazy_loading(fixture_dir: Path) -> None:
    plain = addons.load(fixture_dir / "tiny-neural")
    batched = addons.load(fixture_dir / "tiny-neural", batching=8)
    text = "Loaded on first use, the same to the bit."
    want = np.concatenate([c.samples for c in plain.stream(text)])
    got = np.concatenate([c.samples for c in batched.stream(text)])
    assert np.array_equal(want, got)


@pytest.mark.parametrize("name", ["tiny-fast", "tiny-taco", "tiny-neural"])
def test_a_replica_warms_up_its_own_stage_only(fixture_dir: Path, name: str) -> None:
    directory = fixture_dir / name
    roles = {n: s.role for n, s in read_manifest(directory).networks.items()}
    voice = addons.load(directory, batching=8)
    names = voice.load_networks({"decoder", "decoder_step"})
    assert names and {roles[n] for n in names} <= {"decoder", "decoder_step"}
    assert {n for n, on in _loaded(voice).items() if on} == set(names)
