"""One contract suite that every registered block runs: determinism, lengths, chunking invariance.

A new block type must add a case to CASES (the first test fails until it does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import addons
from blocks import REGISTRY, Block, Request, SequenceBlock, StreamableBlock, parse_block
from blocks.base import BuildEnv

TEXT = "The quick brown fox jumps over the lazy dog, twice."


@dataclass
class Case:
    block: Block
    features: dict[str, torch.Tensor]
    source: torch.Tensor | None = None  # the whole upstream stream, [1, N, ...]
    scale: int | None = 1  # output units per source unit (samples per frame for vocoders)


def _env(voice: addons.Voice) -> BuildEnv:
    return voice.env


def _build(voice: addons.Voice, spec: dict[str, object], role: type[Block]) -> Block:
    return _env(voice).build(parse_block(spec, role, "test"))


def _features(voice: addons.Voice) -> dict[str, torch.Tensor]:
    (sentence,) = list(voice.sentences(TEXT))
    return {k: torch.as_tensor(v)[None] for k, v in voice.encode(sentence.ids).items()}


def _frames(voice: addons.Voice) -> torch.Tensor:
    feats = _features(voice)
    up = _build(voice, {"type": "Upsampler"}, StreamableBlock)
    assert isinstance(up, StreamableBlock)
    return torch.cat(list(up.stream(None, feats, Request(options={"speed": 1.0}))), dim=1)


def _mel(voice: addons.Voice) -> torch.Tensor:
    feats = {"frames": _frames(voice)}
    dec = _build(voice, {"type": "Decoder"}, StreamableBlock)
    assert isinstance(dec, StreamableBlock)
    return torch.cat(list(dec.stream(iter([feats["frames"]]), feats, Request())), dim=1)


def _case_sequence(kind: str) -> Callable[[Path], Case]:
    def make(fx: Path) -> Case:
        voice = addons.load(fx / "tiny-fast")
        spec: dict[str, object] = {"type": kind}
        if kind == "SequenceBlockContainer":
            spec = {
                "type": kind,
                "blocks": [
                    {"type": "Encoders", "networks": ["text_encoder"]},
                    {"type": "Encoders", "networks": ["duration_predictor"]},
                ],
            }
        (sentence,) = list(voice.sentences(TEXT))
        return Case(_build(voice, spec, SequenceBlock), {"phoneme_ids": torch.as_tensor(sentence.ids)[None]})

    return make


def _case_stream(
    name: str, spec: dict[str, object], source: str | None, scale: int | None = 1
) -> Callable[[Path], Case]:
    def make(fx: Path) -> Case:
        voice = addons.load(fx / name)
        feats = _features(voice)
        src = {"frames": _frames, "mel": _mel}[source](voice) if source else None
        return Case(_build(voice, spec, StreamableBlock), feats, src, scale if source else None)

    return make


def _audio_case(spec: dict[str, object]) -> Callable[[Path], Case]:
    def make(fx: Path) -> Case:
        voice = addons.load(fx / "tiny-fast")
        return Case(_build(voice, spec, StreamableBlock), {}, torch.sin(torch.arange(3000) / 7.0)[None] * 0.5)

    return make


PIPER_IDS = torch.tensor([[1, 0, 20, 0, 59, 0, 24, 0, 27, 0, 3, 0, 35, 0, 61, 0, 88, 0, 24, 0, 17, 0, 10, 0, 2]])


def _piper_sequence(fx: Path) -> Case:
    voice = addons.load(fx / "tiny-piper")
    spec = voice.manifest.stack[0]["sequence_block"]
    return Case(_build(voice, spec, SequenceBlock), {"phoneme_ids": PIPER_IDS})


def _piper_features(voice: addons.Voice) -> dict[str, torch.Tensor]:
    features = voice.encoders.encode(PIPER_IDS[0].numpy(), Request(options={"speed": 1.0}))
    return {k: torch.as_tensor(v)[None] for k, v in features.items()}


def _piper_stream(spec: dict[str, object], source: bool) -> Callable[[Path], Case]:
    def make(fx: Path) -> Case:
        voice = addons.load(fx / "tiny-piper")
        feats = _piper_features(voice)
        return Case(_build(voice, spec, StreamableBlock), feats, feats["frames"] if source else None, 256)

    return make


def _framed_audio(fx: Path) -> Case:
    voice = addons.load(fx / "tiny-fast")
    samples = torch.sin(torch.arange(256 * 12) / 7.0) * 0.5
    return Case(_build(voice, {"type": "FramedAudio"}, StreamableBlock), {}, samples.reshape(1, 12, 256), 256)


CASES: dict[str, Callable[[Path], Case]] = {
    "VitsInputs": _piper_sequence,
    "FrameSource": _piper_stream({"type": "FrameSource", "chunk_frames": 5}, False),
    "FramedAudio": _framed_audio,
    "Encoders": _case_sequence("Encoders"),
    "CustomizedEncoders": _case_sequence("CustomizedEncoders"),
    "SequenceBlockContainer": _case_sequence("SequenceBlockContainer"),
    "Upsampler": _case_stream("tiny-fast", {"type": "Upsampler", "chunk_frames": 5}, None),
    "AttentionDecoder": _case_stream("tiny-taco", {"type": "AttentionDecoder", "window": 8, "chunk_frames": 3}, None),
    "Decoder": _case_stream("tiny-fast", {"type": "Decoder", "chunk_frames": 6}, "frames"),
    "StreamableStack": _case_stream(
        "tiny-fast", {"type": "StreamableStack", "stack": [{"type": "Decoder"}, {"type": "ChunkStats"}]}, "frames"
    ),
    "StreamablePipeline": _case_stream(
        "tiny-fast",
        {
            "type": "StreamablePipeline",
            "sequence_block": {"type": "Encoders", "networks": ["duration_predictor"]},
            "streamable_block": {"type": "Upsampler"},
        },
        None,
    ),
    "GriffinLim": _case_stream(
        "tiny-fast", {"type": "GriffinLim", "chunk_frames": 8, "context_frames": 4, "n_iter": 4}, "mel", 256
    ),
    "NeuralVocoder": _case_stream("tiny-neural", {"type": "NeuralVocoder", "chunk_frames": 4}, "mel", 256),
    "UniversalVocoder": _case_stream(
        "tiny-universal",
        {"type": "UniversalVocoder", "name": "tiny-vocoder", "chunk_frames": 3, "max_chunk_frames": 16},
        "mel",
        256,
    ),
    "Gain": _audio_case({"type": "Gain", "db": -3.0}),
    "ChunkStats": _audio_case({"type": "ChunkStats"}),
}


def _chunks(x: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for i in range(0, x.shape[1], size):
        yield x[:, i : i + size]


def _run(case: Case, chunk: int | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
    request = Request(options={"speed": 1.0})
    if isinstance(case.block, SequenceBlock):
        return case.block(dict(case.features), request)
    assert isinstance(case.block, StreamableBlock)
    source = None if case.source is None else _chunks(case.source, chunk or case.source.shape[1])
    return torch.cat(list(case.block.stream(source, dict(case.features), request)), dim=1)


def test_every_registered_block_has_a_contract_case() -> None:
    assert set(REGISTRY.names()) <= set(CASES), f"add contract cases for {set(REGISTRY.names()) - set(CASES)}"


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, fixture_dir: Path) -> Case:
    return CASES[request.param](fixture_dir)


@pytest.mark.slow
def test_deterministic(case: Case) -> None:
    a, b = _run(case), _run(case)
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow
def test_shapes_and_lengths(case: Case) -> None:
    out = _run(case)
    if isinstance(out, dict):  # sequence block: every output is per token, batch 1 (frames: per frame)
        tokens = case.features["phoneme_ids"].shape[1]
        per_token = {k: v for k, v in out.items() if k != "frames"}
        assert per_token and all(v.shape[:2] == (1, tokens) for v in per_token.values())
        if "frames" in out:  # a VITS front part's latent frames: as many as the durations say
            assert out["frames"].shape[1] == int(out["durations"].sum())
        return
    assert out.shape[0] == 1 and out.shape[1] > 0 and torch.isfinite(out).all()
    if case.source is not None and case.scale is not None:
        assert out.shape[1] == case.source.shape[1] * case.scale


# Blocks that read an upstream stream (the others start one and are covered below).
CONSUMERS = ["ChunkStats", "Decoder", "FramedAudio", "Gain", "GriffinLim", "NeuralVocoder", "StreamableStack"]


@pytest.mark.parametrize("chunk", [1, 7])
@pytest.mark.parametrize("name", CONSUMERS)
@pytest.mark.slow
def test_chunked_source_equals_whole(fixture_dir: Path, name: str, chunk: int) -> None:
    case = CASES[name](fixture_dir)
    assert case.source is not None
    whole, chunked = _run(case), _run(case, chunk)
    assert isinstance(whole, torch.Tensor) and isinstance(chunked, torch.Tensor)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-4)


def test_decoder_chunks_equal_whole_sequence_network(fixture_dir: Path) -> None:
    voice = addons.load(fixture_dir / "tiny-fast")
    frames = _frames(voice)
    whole = voice._load_network("decoder", voice.device).call(
        {"frames": frames, "mask": torch.ones(1, frames.shape[1])}
    )["mel"]
    for chunk in (1, 3, 64):
        dec = _build(voice, {"type": "Decoder", "chunk_frames": chunk}, StreamableBlock)
        assert isinstance(dec, StreamableBlock)
        streamed = torch.cat(list(dec.stream(_chunks(frames, 5), {}, Request())), dim=1)
        torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-4)


def test_source_blocks_give_the_same_total_whatever_the_chunk_size(fixture_dir: Path) -> None:
    for name, spec in (("tiny-fast", {"type": "Upsampler"}), ("tiny-taco", {"type": "AttentionDecoder", "window": 8})):
        voice = addons.load(fixture_dir / name)
        feats = _features(voice)
        outs = []
        for chunk in (1, 5, 1000):
            block = _build(voice, {**spec, "chunk_frames": chunk}, StreamableBlock)
            assert isinstance(block, StreamableBlock)
            outs.append(torch.cat(list(block.stream(None, feats, Request(options={"speed": 1.0}))), dim=1))
        for out in outs[1:]:
            torch.testing.assert_close(out, outs[0], rtol=0, atol=1e-6)
