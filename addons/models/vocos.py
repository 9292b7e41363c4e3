"""A small universal neural vocoder in the Vocos style: a frame-rate ConvNeXt backbone and an
inverse-STFT head (log-magnitude and phase per frame), written so that it chunks exactly.

The inverse STFT is done here rather than with ``torch.istft``: each frame is ``irfft`` times a
periodic Hann window, frames are overlap-added with "center" alignment (frame ``t`` is centred on
sample ``t * hop``, as ``log_mel`` analyses it), and the sum is divided by the *constant* steady-state
window envelope (``sum w^2`` over the overlapping frames, 1.5 for Hann at 75% overlap) instead of
the edge-dependent one. A missing or masked frame then contributes zero the same way at an utterance
edge, a chunk edge and in batch padding, so chunked, whole and batched outputs agree to float rounding
and the graph exports with ``torch.export`` for any length.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ConvNeXtBlock", "VocosVocoder"]


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, LayerNorm over channels, pointwise MLP with GELU, layer scale, residual; on ``[B, T, C]``.

    The input must already be zero on masked positions; the output is again (so padding acts as the edge).
    """

    def __init__(self, dim: int, hidden: int, kernel_size: int, layer_scale: float) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.scale = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(x.transpose(1, 2)).transpose(1, 2)
        y = self.down(nn.functional.gelu(self.up(self.norm(y))))
        return (x + self.scale * y) * m


class VocosVocoder(nn.Module):
    """``mel`` ``[B, T, n_mels]`` (natural-log mel), ``mask`` ``[B, T]`` -> ``audio`` ``[B, T * hop]`` in [-1, 1].

    Output samples ``[t * hop, (t + 1) * hop)`` belong to frame ``t`` and depend on frames
    ``t - receptive_field .. t + receptive_field``; samples of masked frames are zero.
    """

    def __init__(
        self,
        n_mels: int = 80,
        n_fft: int = 1024,
        hop: int = 256,
        dim: int = 192,
        hidden: int = 512,
        layers: int = 6,
        kernel_size: int = 7,
        max_magnitude: float = 1e3,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd so the receptive field is symmetric")
        if n_fft % hop or (n_fft // hop) % 2:
            raise ValueError("n_fft must be an even multiple of hop (centred frames of whole hops)")
        self.n_fft, self.hop = n_fft, hop
        self.segments = n_fft // hop
        self.log_max_magnitude = math.log(max_magnitude)
        self.embed = nn.Conv1d(n_mels, dim, kernel_size, padding=kernel_size // 2)
        self.embed_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, hidden, kernel_size, 1.0 / layers) for _ in range(layers))
        self.final_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_fft + 2)  # log-magnitude and phase of n_fft // 2 + 1 bins
        window = torch.hann_window(n_fft, periodic=True)
        envelope = (window**2).reshape(self.segments, hop).sum(0)
        if float(envelope.max() - envelope.min()) > 1e-4:
            raise ValueError(f"the Hann window's overlap-add envelope is not constant at hop {hop}")
        self.register_buffer("window", window / float(envelope.mean()), persistent=False)
        #: Frames of context each output frame needs on each side: the convolutions', plus the
        #: overlap-add (a hop of samples is touched by the frames up to ``segments / 2`` away).
        self.receptive_field = (layers + 1) * (kernel_size // 2) + self.segments // 2

    def spectrum(self, mel: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-magnitude and phase ``[B, T, n_fft // 2 + 1]`` (before masking)."""
        m = mask.unsqueeze(-1)
        x = self.embed((mel * m).transpose(1, 2)).transpose(1, 2)
        x = self.embed_norm(x) * m
        for block in self.blocks:
            x = block(x, m)
        log_magnitude, phase = self.head(self.final_norm(x)).chunk(2, dim=-1)
        return log_magnitude, phase

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        log_magnitude, phase = self.spectrum(mel, mask)
        magnitude = torch.exp(torch.clamp(log_magnitude, max=self.log_max_magnitude)) * mask.unsqueeze(-1)
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=-1) * self.window  # [B, T, n_fft]
        audio = self._overlap_add(frames)
        return torch.clamp(audio, -1.0, 1.0) * mask.repeat_interleave(self.hop, dim=1)

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, T, n_fft]`` centred frames -> ``[B, T * hop]``: hop block ``b`` sums segment ``k``
        of frame ``b + K/2 - k`` (``K = n_fft / hop``); frames outside ``0..T-1`` count as zero."""
        # No size is computed from the input (slices end counted from the end), so the exported
        # graph holds none and a TorchScript trace of it fits every length (addons.formats.netfile.traced).
        k_half = self.segments // 2
        segs = frames.unflatten(-1, (self.segments, self.hop))
        padded = nn.functional.pad(segs, (0, 0, 0, 0, k_half, k_half))  # K/2 zero frames on each side
        out = padded[:, 2 * k_half :, 0]
        for k in range(1, self.segments):
            out = out + padded[:, 2 * k_half - k : -k, k]  # frames t + K/2 - k for t in 0..T-1
        return out.flatten(1)
