"""FastSpeech-style duration model: text encoder, duration predictor, parallel mel decoder.

All three are convolutional with finite receptive fields, so Chorus can chunk, pad and stream
them exactly. Durations are in mel frames.
"""

from __future__ import annotations

import torch
from torch import nn

from addons.models.layers import MaskedConvStack

__all__ = ["DurationPredictor", "MelDecoder", "TextEncoder"]


class TextEncoder(nn.Module):
    """``phoneme_ids`` ``[B, T]`` int64, ``mask`` ``[B, T]`` -> ``encoding`` ``[B, T, dim]``.

    ``padding_idx``: the id whose embedding stays zero (Chorus's espeak front end pads with 0 and
    never says it); None where id 0 is a phoneme (Piper's ``_``). Padding is masked either way.
    """

    def __init__(
        self,
        n_symbols: int,
        dim: int = 192,
        kernel_size: int = 5,
        dilations: list[int] | None = None,
        dropout: float = 0.1,
        padding_idx: int | None = 0,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_symbols, dim, padding_idx=padding_idx)
        self.convs = MaskedConvStack(dim, kernel_size, dilations or [1, 2, 4, 1, 2, 4], dropout)
        self.receptive_field = self.convs.receptive_field

    def forward(self, phoneme_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.convs(self.embed(phoneme_ids), mask)


class DurationPredictor(nn.Module):
    """``encoding`` ``[B, T, dim]``, ``mask`` -> ``durations`` ``[B, T]`` in frames (>= 0)."""

    def __init__(
        self, dim: int = 192, kernel_size: int = 3, dilations: list[int] | None = None, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.convs = MaskedConvStack(dim, kernel_size, dilations or [1, 2, 1], dropout)
        self.proj = nn.Linear(dim, 1)
        self.receptive_field = self.convs.receptive_field

    def log_durations(self, encoding: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``log(1 + frames)``, the training target's domain."""
        return self.proj(self.convs(encoding.detach() if self.training else encoding, mask)).squeeze(-1) * mask

    def forward(self, encoding: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.expm1(self.log_durations(encoding, mask)), min=0.0) * mask


class MelDecoder(nn.Module):
    """``frames`` ``[B, F, dim]`` (upsampled encodings), ``mask`` -> ``mel`` ``[B, F, n_mels]``."""

    def __init__(
        self,
        dim: int = 192,
        n_mels: int = 80,
        kernel_size: int = 5,
        dilations: list[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.convs = MaskedConvStack(dim, kernel_size, dilations or [1, 2, 4, 8, 1, 2, 4, 8], dropout)
        self.proj = nn.Linear(dim, n_mels)
        self.receptive_field = self.convs.receptive_field

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(frames, mask)) * mask.unsqueeze(-1)
