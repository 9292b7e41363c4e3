"""Masked convolution stacks: a finite, declared receptive field along the sequence axis."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaskedConvStack"]


class MaskedConvStack(nn.Module):
    """Residual 1-D conv blocks over ``[B, T, C]`` with the mask applied after every layer.

    Zeroing padded positions before each convolution makes a padded/masked window compute what
    the unpadded sequence would at its edge, which is what lets Chorus chunk and pad freely.
    """

    def __init__(self, channels: int, kernel_size: int, dilations: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd so the receptive field is symmetric")
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=d * (kernel_size - 1) // 2, dilation=d)
            for d in dilations
        )
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in dilations)
        self.dropout = nn.Dropout(dropout)
        self.receptive_field = sum(d * (kernel_size - 1) // 2 for d in dilations)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1)
        x = x * m
        for conv, norm in zip(self.convs, self.norms, strict=True):
            y = conv(x.transpose(1, 2)).transpose(1, 2)
            y = norm(torch.nn.functional.gelu(y))
            x = (x + self.dropout(y)) * m
        return x
