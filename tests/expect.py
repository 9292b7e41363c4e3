"""What an output must be, computed in process: the audio a served or CLI path must equal."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf


def in_process_pcm(
    directory: Path, text: str, context: str = "dynamic", output_rate: int | None = None, **options: Any
) -> np.ndarray:
    """The int16 samples the voice in ``directory`` gives ``text`` in process, as the server's pcm
    (and wav) encoders quantize them: at the voice's own rate, or resampled to ``output_rate``."""
    from serve_app.audio_format import make_encoder

    voice = _voice(Path(directory), context)
    encoder = make_encoder("pcm", voice.sample_rate, output_rate=output_rate)
    body = b"".join(encoder.encode(c.samples) for c in voice.stream(text, **options))
    return np.frombuffer(encoder.header() + body + encoder.finish(), dtype="<i2")


def wav_samples(data: bytes | Path) -> tuple[np.ndarray, int]:
    """A WAV file's int16 samples and rate."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    samples, rate = sf.read(source, dtype="int16")
    return samples, int(rate)


@functools.lru_cache(maxsize=16)
def _voice(directory: Path, context: str) -> Any:
    """A voice loaded once per test session (``Voice.stream`` keeps no state between calls)."""
    import addons

    return addons.load(directory, context=context)
