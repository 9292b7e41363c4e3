"""Planning splits an addon into stages; each builds only its own blocks and holds only its own networks.

An encoders replica never resolves the decoder's or the vocoder's networks, a decoder replica
never the encoders' or the vocoder's, so neither checks nor holds their files or weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import addons
from addons.engine.options import resolve_options
from addons.engine.stages import AudioStage
from addons.formats.manifest import AddonError, read_manifest
from blocks import Request, parse_stack
from blocks.stages import split_stack

ROLES = {"encoders": {"encoder"}, "decoder": {"decoder", "decoder_step"}, "audio": {"vocoder"}}


def _loaded(voice: addons.Voice) -> dict[str, bool]:
    return {name: runner.loaded for (name, _), runner in voice._load_network._programs.items()}


@pytest.mark.parametrize("name", ["tiny-fast", "tiny-neural", "tiny-universal", "tiny-taco"])
def test_each_stage_builds_only_its_own_networks(fixture_dir: Path, name: str) -> None:
    directory = fixture_dir / name
    manifest = read_manifest(directory)
    roles = {n: s.role for n, s in manifest.networks.items()}
    for stage in ("encoders", "decoder", "audio"):
        voice = addons.load(directory, batching=8, stages=[stage])  # as that stage's replica holds it
        built = {n for n in voice._stage(stage).networks if n in roles}
        assert {roles[n] for n in built} <= ROLES[stage], (stage, built)
        assert set(_loaded(voice)) == built  # nothing else was even resolved
        assert not any(_loaded(voice).values())  # and weights wait for the first run or load()
        other = next(s for s in ("encoders", "decoder", "audio") if s != stage)
        with pytest.raises(AddonError, match=f"the {other} stage was not built here"):
            voice._stage(other)


@pytest.mark.parametrize("name", ["tiny-neural", "tiny-universal", "tiny-taco"])
@pytest.mark.slow
def test_stages_alone_give_the_voices_audio(fixture_dir: Path, name: str) -> None:
    directory = fixture_dir / name
    manifest = read_manifest(directory)
    text = "Only the encoders run here. Then the decoder."
    want, _ = addons.load(directory).synthesize(text)

    encoders = addons.load(directory, batching=8, stages=["encoders"])
    features = encoders.encode_batch([s.ids for s in encoders.sentences(text)])
    assert {manifest.networks[n].role for n, on in _loaded(encoders).items() if on} <= ROLES["encoders"]

    decoder = addons.load(directory, batching=8, stages=["decoder"])
    request = Request(options=resolve_options(manifest)[1])
    mel = [np.concatenate(list(decoder.decode(f, request))) for f in features]
    ran = {n for n, on in _loaded(decoder).items() if on}
    assert ran and all(manifest.networks[n].role in ROLES["decoder"] for n in ran)

    audio = AudioStage.load_from(directory, manifest, "cpu", batching=8)  # the vocoder replica
    state = audio.start()
    got = [audio.process(state, m, request) for m in mel] + [audio.finish(state, request)]
    np.testing.assert_allclose(np.concatenate(got), want, atol=1e-5)


def test_split_rule_takes_the_first_pipelines_sequence_block() -> None:
    stack = parse_stack(
        [
            {
                "type": "StreamablePipeline",
                "sequence_block": {"type": "Encoders"},
                "streamable_block": {"type": "StreamableStack", "stack": [{"type": "Upsampler"}, {"type": "Decoder"}]},
            },
            {"type": "ChunkStats"},
        ]
    )
    plan = split_stack(stack)
    assert plan.encoders is not None and plan.encoders.cls.type_name == "Encoders"
    assert [c.cls.type_name for c in plan.decoder.children] == ["StreamableStack", "ChunkStats"]
    no_pipeline = parse_stack([{"type": "Upsampler"}, {"type": "Decoder"}])
    assert split_stack(no_pipeline).encoders is None and split_stack(no_pipeline).decoder is no_pipeline


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
    names = voice.load_networks(["decoder"])
    assert names and {roles[n] for n in names} <= ROLES["decoder"]
    assert {n for n, on in _loaded(voice).items() if on} == set(names)


@pytest.mark.slow
def test_the_cli_applies_the_voice_presets_gain(edit_addon: Callable[..., Path], tmp_path: Path) -> None:
    """One loop: ``chorus synth --voice`` gives what ``Voice.stream`` gives (the preset's gain too)."""
    import soundfile as sf

    from tests.helpers import chorus

    def add_quiet(m: dict[str, Any]) -> None:
        m["voices"]["quiet"] = {"gain_db": -9.0}

    directory = edit_addon("tiny-fast", add_quiet)
    out = tmp_path / "out.wav"
    text = "The preset's gain applies here too."
    result = chorus("synth", "--addon", str(directory), "--voice", "quiet", "--text", text, "--out", str(out))
    assert result.returncode == 0, result.stderr
    want = np.concatenate([c.samples for c in addons.load(directory).stream(text, voice="quiet")])
    loud = np.concatenate([c.samples for c in addons.load(directory).stream(text)])
    got, _ = sf.read(out, dtype="float32")
    np.testing.assert_allclose(got, want, atol=1.5 / 32768)
    assert np.abs(got - loud).max() > 10 / 32768
