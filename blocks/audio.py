"""Mel-spectrogram settings and the STFT helpers every block shares.

Conventions used across Chorus:
- a mel chunk is a float32 tensor ``[1, frames, n_mels]`` of natural-log mel magnitudes;
- one mel frame corresponds to exactly ``hop_length`` audio samples, so ``F`` frames make
  ``F * hop_length`` samples (STFT with ``center=True``);
- audio is float32 in ``[-1, 1]`` at ``sample_rate`` Hz.
"""

from __future__ import annotations

import functools
import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MelSettings", "log_mel", "mel_filterbank", "stft_window"]

LOG_FLOOR = 1e-5


class MelSettings(BaseModel):
    """How mel frames relate to audio; shared by an addon's acoustic model and its vocoder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: int = Field(22050, gt=0, le=384_000, description="Audio sample rate in Hz.")
    n_fft: int = Field(1024, gt=0, le=16384, description="FFT size in samples.")
    hop_length: int = Field(256, gt=0, le=16384, description="Samples per mel frame.")
    win_length: int = Field(1024, gt=0, le=16384, description="Analysis window length in samples.")
    n_mels: int = Field(80, gt=0, le=512, description="Number of mel bands.")
    f_min: float = Field(0.0, ge=0, description="Lowest mel band edge in Hz.")
    f_max: float = Field(8000.0, gt=0, description="Highest mel band edge in Hz.")

    @model_validator(mode="after")
    def _check(self) -> MelSettings:
        if self.win_length > self.n_fft:
            raise ValueError("win_length must not exceed n_fft")
        if self.f_max > self.sample_rate / 2:
            raise ValueError("f_max must not exceed the Nyquist frequency (sample_rate / 2)")
        if self.f_min >= self.f_max:
            raise ValueError("f_min must be below f_max")
        return self

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    # Slaney scale: linear below 1 kHz, logarithmic above.
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    lin = f / f_sp
    log = min_log_hz / f_sp + torch.log(torch.clamp(f, min=1e-10) / min_log_hz) / logstep
    return torch.where(f >= min_log_hz, log, lin)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=8)
def mel_filterbank(settings: MelSettings) -> torch.Tensor:
    """Slaney-normalized triangular filters, ``[n_mels, n_freq]``."""
    freqs = torch.linspace(0, settings.sample_rate / 2, settings.n_freq, dtype=torch.float64)
    m_min, m_max = (
        _hz_to_mel(torch.tensor(settings.f_min, dtype=torch.float64)),
        _hz_to_mel(torch.tensor(settings.f_max, dtype=torch.float64)),
    )
    edges = _mel_to_hz(torch.linspace(float(m_min), float(m_max), settings.n_mels + 2, dtype=torch.float64))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lower) / (center - lower)
    down = (upper - freqs[None, :]) / (upper - center)
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    fb = fb * (2.0 / (upper - lower))  # equal area per band
    return fb.to(torch.float32)


@functools.lru_cache(maxsize=8)
def stft_window(win_length: int) -> torch.Tensor:
    return torch.hann_window(win_length, dtype=torch.float32)


def log_mel(audio: torch.Tensor, settings: MelSettings) -> torch.Tensor:
    """Log-mel of 1-D ``audio`` as ``[frames, n_mels]`` with ``frames = len(audio) // hop_length``.

    The frame count is trimmed to whole hops so that ``frames * hop_length <= len(audio)``, the
    same relation the vocoders invert.
    """
    spec = torch.stft(
        audio.to(torch.float32),
        n_fft=settings.n_fft,
        hop_length=settings.hop_length,
        win_length=settings.win_length,
        window=stft_window(settings.win_length),
        center=True,
        return_complex=True,
    ).abs()
    frames = audio.shape[-1] // settings.hop_length
    mel = mel_filterbank(settings) @ spec[:, :frames]
    return torch.log(torch.clamp(mel, min=LOG_FLOOR)).T.contiguous()
