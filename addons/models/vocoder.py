"""A small frame-wise neural vocoder: convolutions over mel frames, ``hop`` samples per frame."""

from __future__ import annotations

import torch
from torch import nn

from addons.models.layers import MaskedConvStack

__all__ = ["FrameVocoder"]


class FrameVocoder(nn.Module):
    """``mel`` ``[B, T, n_mels]``, ``mask`` -> ``audio`` ``[B, T * hop]`` in [-1, 1]."""

    def __init__(
        self, n_mels: int = 80, hop: int = 256, dim: int = 128, kernel_size: int = 5, dilations: list[int] | None = None
    ) -> None:
        super().__init__()
        self.hop = hop
        self.inp = nn.Linear(n_mels, dim)
        self.convs = MaskedConvStack(dim, kernel_size, dilations or [1, 2, 4])
        self.out = nn.Linear(dim, hop)
        self.receptive_field = self.convs.receptive_field

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.convs(self.inp(mel), mask)
        audio = torch.tanh(self.out(x)) * mask.unsqueeze(-1)
        return audio.reshape(audio.shape[0], -1)
