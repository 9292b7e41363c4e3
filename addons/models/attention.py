"""Tacotron-style model: a convolutional encoder and one autoregressive decoder step.

The step uses location-sensitive attention over a window of the encoder output and returns its
recurrent state explicitly, so Chorus's AttentionDecoder block drives the loop (and the window)
and the network stays a fixed-signature export.
"""

from __future__ import annotations

import torch
from torch import nn

from addons.models.duration import TextEncoder

__all__ = ["AttentionEncoder", "AttentionKeys", "DecoderStep", "KeyedDecoderStep"]


class AttentionEncoder(TextEncoder):
    """``phoneme_ids`` ``[B, T]``, ``mask`` -> ``memory`` ``[B, T, dim]``: a lighter TextEncoder
    whose output the decoder attends over."""

    def __init__(
        self,
        n_symbols: int,
        dim: int = 128,
        kernel_size: int = 5,
        dilations: list[int] | None = None,
        dropout: float = 0.1,
        padding_idx: int | None = 0,
    ) -> None:
        super().__init__(n_symbols, dim, kernel_size, dilations or [1, 2, 4, 1], dropout, padding_idx)


class DecoderStep(nn.Module):
    """One decoder step (``r`` frames) with location-sensitive attention.

    Inputs: ``prev_frame`` ``[B, n_mels]``, ``memory`` ``[B, T, dim]``, ``mask`` ``[B, T]``,
    ``attention_prev`` and ``attention_cum`` ``[B, T]``, then states ``h_att``, ``c_att``,
    ``h_dec``, ``c_dec`` ``[B, rnn]`` and ``context`` ``[B, dim]``. Outputs: ``frames``
    ``[B, r, n_mels]``, ``stop_logit`` ``[B, r]``, ``attention`` ``[B, T]`` and the new states.
    """

    state_names = ("h_att", "c_att", "h_dec", "c_dec", "context")

    def __init__(
        self,
        n_mels: int = 80,
        dim: int = 128,
        reduction: int = 3,
        prenet: int = 128,
        rnn: int = 256,
        attention: int = 128,
        location_filters: int = 16,
        location_kernel: int = 15,
        prenet_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.n_mels, self.dim, self.reduction, self.rnn = n_mels, dim, reduction, rnn
        self.prenet = nn.Sequential(
            nn.Linear(n_mels, prenet),
            nn.ReLU(),
            nn.Dropout(prenet_dropout),
            nn.Linear(prenet, prenet),
            nn.ReLU(),
            nn.Dropout(prenet_dropout),
        )
        self.att_rnn = nn.LSTMCell(prenet + dim, rnn)
        self.query = nn.Linear(rnn, attention, bias=False)
        self.keys = nn.Linear(dim, attention, bias=False)
        self.location_conv = nn.Conv1d(2, location_filters, location_kernel, padding=location_kernel // 2, bias=False)
        self.location = nn.Linear(location_filters, attention, bias=False)
        self.energy = nn.Linear(attention, 1, bias=False)
        self.dec_rnn = nn.LSTMCell(rnn + dim, rnn)
        self.frames = nn.Linear(rnn + dim, n_mels * reduction)
        self.stop = nn.Linear(rnn + dim, reduction)

    def state_shapes(self) -> dict[str, int]:
        return {"h_att": self.rnn, "c_att": self.rnn, "h_dec": self.rnn, "c_dec": self.rnn, "context": self.dim}

    def forward(
        self,
        prev_frame: torch.Tensor,
        memory: torch.Tensor,
        mask: torch.Tensor,
        attention_prev: torch.Tensor,
        attention_cum: torch.Tensor,
        h_att: torch.Tensor,
        c_att: torch.Tensor,
        h_dec: torch.Tensor,
        c_dec: torch.Tensor,
        context: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        states = (h_att, c_att, h_dec, c_dec, context)
        return self.step(prev_frame, memory, self.keys(memory), mask, attention_prev, attention_cum, states)

    def step(
        self,
        prev_frame: torch.Tensor,
        memory: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
        attention_prev: torch.Tensor,
        attention_cum: torch.Tensor,
        states: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, ...]:
        """:meth:`forward` given the attention ``keys`` of ``memory`` (``self.keys(memory)``) and
        the recurrent ``states`` in :attr:`state_names` order."""
        h_att, c_att, h_dec, c_dec, context = states
        h_att, c_att = self.att_rnn(torch.cat([self.prenet(prev_frame), context], dim=-1), (h_att, c_att))
        location = self.location_conv(torch.stack([attention_prev, attention_cum], dim=1)).transpose(1, 2)
        energies = self.energy(torch.tanh(self.query(h_att).unsqueeze(1) + keys + self.location(location))).squeeze(-1)
        energies = energies.masked_fill(mask < 0.5, -1e9)
        weights = torch.softmax(energies, dim=-1) * mask
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)
        h_dec, c_dec = self.dec_rnn(torch.cat([h_att, context], dim=-1), (h_dec, c_dec))
        out = torch.cat([h_dec, context], dim=-1)
        frames = self.frames(out).view(-1, self.reduction, self.n_mels)
        return frames, self.stop(out), weights, h_att, c_att, h_dec, c_dec, context


class AttentionKeys(nn.Module):
    """``memory`` ``[B, T, dim]`` -> ``keys`` ``[B, T, attention]``: a decoder step's attention
    keys, once per sentence. Exported beside :class:`KeyedDecoderStep` so that the step does not
    recompute them (a ``[T, dim] x [dim, attention]`` product, about half its arithmetic) every step."""

    def __init__(self, step: DecoderStep) -> None:
        super().__init__()
        self.keys = step.keys  # shared

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        return self.keys(memory)


class KeyedDecoderStep(nn.Module):
    """A :class:`DecoderStep` taking the precomputed ``keys`` ``[B, T, attention]`` (see
    :class:`AttentionKeys`) after ``attention_cum``: the same submodules (shared, under the same
    names, but for ``keys``), the same outputs."""

    def __init__(self, step: DecoderStep) -> None:
        super().__init__()
        for name, module in step.named_children():
            if name != "keys":
                self.add_module(name, module)
        self.n_mels, self.dim, self.reduction, self.rnn = step.n_mels, step.dim, step.reduction, step.rnn

    def forward(
        self,
        prev_frame: torch.Tensor,
        memory: torch.Tensor,
        mask: torch.Tensor,
        attention_prev: torch.Tensor,
        attention_cum: torch.Tensor,
        keys: torch.Tensor,
        h_att: torch.Tensor,
        c_att: torch.Tensor,
        h_dec: torch.Tensor,
        c_dec: torch.Tensor,
        context: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        states = (h_att, c_att, h_dec, c_dec, context)
        step = DecoderStep.step  # the same submodules under the same names
        return step(self, prev_frame, memory, keys, mask, attention_prev, attention_cum, states)  # type: ignore[arg-type]
