"""Griffin-Lim streaming quality, long-text memory, and third-party block registration."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from blocks import REGISTRY, BlockConfig, GriffinLim, MelSettings, Request, StackError, StreamableBlock, parse_block
from blocks.audio import log_mel
from blocks.base import BuildEnv
from blocks.effects import ChunkwiseBlock

MEL = MelSettings()
ROOT = Path(__file__).resolve().parents[1]


def _gl(**cfg: object) -> GriffinLim:
    env = BuildEnv(lambda n, d: None, {}, MEL)  # type: ignore[arg-type,return-value]
    block = env.build(parse_block({"type": "GriffinLim", **cfg}, StreamableBlock, "test"))
    assert isinstance(block, GriffinLim)
    return block


def _test_mel() -> torch.Tensor:
    t = torch.arange(MEL.sample_rate * 2) / MEL.sample_rate
    f0 = 140 + 60 * torch.sin(2 * torch.pi * 0.7 * t)  # a gliding voice-like tone with harmonics
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / MEL.sample_rate
    audio = sum(torch.sin(k * phase) / k for k in range(1, 8)) * 0.2
    return log_mel(audio, MEL)[None]


def _vocode(gl: GriffinLim, mel: torch.Tensor, chunk: int) -> torch.Tensor:
    chunks = (mel[:, i : i + chunk] for i in range(0, mel.shape[1], chunk))
    return torch.cat(list(gl.stream(chunks, {}, Request())), dim=1)[0]


def test_griffin_lim_streaming_seams_are_clean() -> None:
    mel = _test_mel()
    streamed = _vocode(_gl(chunk_frames=16, context_frames=8), mel, 5)
    whole = _vocode(_gl(chunk_frames=10_000), mel, mel.shape[1])
    assert streamed.numel() == whole.numel() == mel.shape[1] * MEL.hop_length
    # Spectral fidelity: streaming loses little against whole-utterance Griffin-Lim.
    err_stream = (log_mel(streamed, MEL) - mel[0]).abs().mean()
    err_whole = (log_mel(whole, MEL) - mel[0]).abs().mean()
    assert err_stream < err_whole * 1.25 + 0.05
    # No clicks: sample-to-sample jumps at the seams look like jumps anywhere else.
    jumps = streamed.diff().abs()
    seams = torch.arange(16, mel.shape[1], 16) * MEL.hop_length
    near = torch.stack([jumps[s - 4 : s + 4].max() for s in seams])
    assert near.max() <= 1.5 * torch.quantile(jumps, 0.999)


def test_griffin_lim_is_deterministic_and_input_chunking_invariant() -> None:
    mel = _test_mel()[:, :60]
    a, b = _vocode(_gl(n_iter=4), mel, 60), _vocode(_gl(n_iter=4), mel, 7)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_long_text_streams_without_growing_memory(fixture_dir: Path) -> None:
    script = textwrap.dedent(
        f"""
        import resource, addons
        voice = addons.load({str(fixture_dir / "tiny-neural")!r})
        def run(n):
            text = " ".join(f"This is sentence number {{i}} of a very long text." for i in range(n))
            return sum(c.samples.size for c in voice.stream(text))
        run(30)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        samples = run(300)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(before, after, samples)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300, check=True
    )
    before, after, samples = map(int, out.stdout.split())
    assert samples > 300 * 22050  # over five minutes of audio went through
    assert after - before < 40 * 1024, f"peak RSS grew by {(after - before) / 1024:.0f} MB"


class Invert(ChunkwiseBlock):
    """A third-party effect: flips the sign of audio."""

    type_name = "tests.Invert"
    Config = BlockConfig

    def apply(self, chunk: torch.Tensor, request: Request) -> torch.Tensor:
        return -chunk


def test_third_party_block_by_module_path_and_by_registration() -> None:
    node = parse_block({"type": "tests.test_vocoders_and_registry:Invert"}, StreamableBlock, "effects[0]")
    assert node.cls is Invert
    REGISTRY.register(Invert)
    assert "tests.Invert" in REGISTRY.names()
    assert parse_block({"type": "tests.Invert"}, ChunkwiseBlock, "x").cls is Invert
    with pytest.raises(StackError, match="cannot import block type"):
        parse_block({"type": "tests.nowhere:Thing"}, StreamableBlock, "x")
    with pytest.raises(StackError, match="not a Block subclass"):
        parse_block({"type": "pathlib:Path"}, StreamableBlock, "x")
