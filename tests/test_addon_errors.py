"""Broken addons are rejected before any weights load, with a message naming the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import addons


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _delete(*path: Any) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        node = m
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


BROKEN: dict[str, tuple[str, Callable[[dict[str, Any]], Any], str]] = {
    "typo in a block type": (
        "tiny-fast",
        _set(["stack", 0, "streamable_block", "stack", 1, "type"], "Decodr"),
        r'stack\[0\]\.streamable_block\.stack\[1\]: unknown block type "Decodr" \(known: .*AttentionDecoder.*Decoder',
    ),
    "sequence block in a streamable slot": (
        "tiny-fast",
        _set(["stack", 0, "streamable_block"], {"type": "Encoders"}),
        r"stack\[0\]\.streamable_block: .*Encoders.* is a SequenceBlock, but this slot needs a StreamableBlock",
    ),
    "decoder before the upsampler": (
        "tiny-fast",
        _set(["stack", 0, "streamable_block", "stack"], [{"type": "Decoder"}, {"type": "Upsampler"}]),
        r'stack\[0\]\.streamable_block\.stack\[0\]: Decoder consumes a "frames" stream',
    ),
    "upsampler input nobody produces": (
        "tiny-fast",
        _set(["stack", 0, "streamable_block", "stack", 0, "durations"], "pitch"),
        r"stack\[0\]\.streamable_block\.stack\[0\]: Upsampler needs 'pitch'",
    ),
    "unknown block option": (
        "tiny-fast",
        _set(["stack", 0, "streamable_block", "stack", 1, "chunk_size"], 3),
        r"stack\[0\]\.streamable_block\.stack\[1\]: Decoder: chunk_size: Extra inputs are not permitted",
    ),
    "block referencing a missing network": (
        "tiny-fast",
        _set(["stack", 0, "streamable_block", "stack", 1, "network"], "postnet"),
        r'stack\[0\]\.streamable_block\.stack\[1\]: unknown network "postnet"',
    ),
    "pipeline without its sequence block": (
        "tiny-fast",
        _delete("stack", 0, "sequence_block"),
        r'stack\[0\]: StreamablePipeline needs "sequence_block"',
    ),
    "stack that never makes mel": (  # frames are a stack's end too, but this vocoder needs mel
        "tiny-fast",
        _set(["stack", 0, "streamable_block"], {"type": "Upsampler"}),
        r'vocoder: GriffinLim consumes a "mel" stream, upstream gives frames',
    ),
    "missing name": ("tiny-fast", _delete("name"), r"name: Field required"),
    "bad sample rate": (
        "tiny-fast",
        _set(["mel", "sample_rate"], -5),
        r"mel\.sample_rate: Input should be greater than 0",
    ),
    "f_max above Nyquist": ("tiny-fast", _set(["mel", "f_max"], 20000.0), r"mel: f_max must not exceed the Nyquist"),
    "future schema version": ("tiny-fast", _set(["schema_version"], 99), r"schema_version 99 is not supported"),
    "network file missing": (
        "tiny-fast",
        _set(["networks", "decoder", "file"], "gone.pt2"),
        r"missing network file: networks\.decoder\.file \(gone\.pt2\)",
    ),
    "network file outside the addon": (
        "tiny-fast",
        _set(["networks", "decoder", "file"], "../x.pt2"),
        r"networks\.decoder\.file: .*plain file name",
    ),
    "pickle instead of pt2": (
        "tiny-fast",
        _set(["networks", "decoder", "file"], "decoder.pkl"),
        r"networks\.decoder\.file: .*ending in \.pt2",
    ),
    "static length too small": (
        "tiny-fast",
        _set(["networks", "decoder", "static_length"], 4),
        r"networks\.decoder: .*static_length 4 leaves no room",
    ),
    "no default voice": ("tiny-fast", _set(["voices"], {"calm": {}}), r'voices must include one called "default"'),
    "duplicate phoneme": (
        "tiny-fast",
        lambda m: m["frontend"]["phonemes"].append(m["frontend"]["phonemes"][0]),
        r"frontend\.phonemes: duplicate phonemes",
    ),
    "effect that is not audio-to-audio": (
        "tiny-fast",
        _set(["effects"], [{"type": "GriffinLim"}]),
        r"effects\[0\]: .*GriffinLim.* needs a ChunkwiseBlock",
    ),
    "attention window over static length": (
        "tiny-taco",
        _set(["stack", 0, "streamable_block", "window"], 1000),
        r"stack\[0\]\.streamable_block: window 1000 exceeds network \"decoder_step\" static_length",
    ),
    "attention keys nobody computes": (
        "tiny-taco",
        _set(["stack", 0, "sequence_block", "networks"], ["encoder"]),
        r"stack\[0\]\.streamable_block: AttentionDecoder \(per-token inputs of network \"decoder_step\"\) needs 'keys'",
    ),
    "vocoder that is not a vocoder": (
        "tiny-fast",
        _set(["vocoder"], {"type": "Gain", "db": 1}),
        r"vocoder: .*Gain.* needs a Vocoder",
    ),
    "not JSON": ("tiny-fast", lambda m: "not json", r"not valid JSON|Input should be a valid dictionary"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
@pytest.mark.slow
def test_broken_addon_is_rejected_naming_the_field(edit_addon: Callable[..., Path], case: str) -> None:
    name, edit, pattern = BROKEN[case]
    directory = edit_addon(name, edit)
    with pytest.raises(addons.AddonError, match=pattern):
        addons.load(directory)


def test_at_least_ten_kinds_of_broken_addon() -> None:
    assert len(BROKEN) >= 10


def test_missing_addon_names_the_known_ones(fixture_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHORUS_ADDON_PATH", str(fixture_dir))
    with pytest.raises(addons.AddonError, match=r'addon "nope" not found \(known: .*tiny-fast'):
        addons.load("nope")
    assert addons.load("tiny-taco").name == "tiny-taco"


def test_unknown_context(fixture_dir: Path) -> None:
    with pytest.raises(addons.AddonError, match="unknown context"):
        addons.load(fixture_dir / "tiny-fast", context="inferentia")
