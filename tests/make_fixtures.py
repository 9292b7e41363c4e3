"""Build the tiny, seeded fixture addons the tests run on (random weights, a few KB each).

    python -m tests.make_fixtures OUT_DIR

Makes ``tiny-fast`` (duration-based), ``tiny-taco`` (attention-based) and ``tiny-neural``
(duration-based with an exported neural vocoder). Deterministic: same seed, same bytes of output.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from addons.builders import attention_addon, duration_addon
from addons.espeak import get_espeak
from addons.manifest import FrontendConfig
from addons.models import AttentionEncoder, DecoderStep, DurationPredictor, FrameVocoder, MelDecoder, TextEncoder
from blocks import MelSettings

MEL = MelSettings(n_mels=20, f_max=8000.0)
TEXT = (
    "The quick brown fox jumps over the lazy dog. Dr. Smith paid 3 dollars and 40 cents, didn't he? "
    "She sells sea shells by the sea shore; a big black bug bit a big black bear. Which witch is which? "
    "Judge George joked about the thick zoo vision, oil, boy, cow, hour, air, ear, poor, cure."
)


def inventory() -> tuple[str, ...]:
    return tuple(sorted(set(get_espeak().phonemize(TEXT))))


def _common(name: str, description: str) -> dict[str, object]:
    return {
        "name": name,
        "description": description,
        "language": "en-us",
        "frontend": FrontendConfig(phonemes=inventory(), max_sentence_phonemes=80),
        "voices": {"default": {}, "fast": {"speed": 1.5, "description": "faster"}},
    }


def build_fast(out: Path, vocoder: bool = False) -> Path:
    torch.manual_seed(1)
    n = len(inventory()) + 1
    enc = TextEncoder(n, dim=16, kernel_size=3, dilations=[1, 2], dropout=0.0)
    dur = DurationPredictor(16, kernel_size=3, dilations=[1], dropout=0.0)
    with torch.no_grad():
        dur.proj.bias.fill_(math.log1p(4.0))  # about 4 frames per token, so mels have length
    dec = MelDecoder(16, MEL.n_mels, kernel_size=3, dilations=[1, 2, 1])
    voc = FrameVocoder(MEL.n_mels, MEL.hop_length, dim=16, kernel_size=3, dilations=[1, 2]) if vocoder else None
    name = "tiny-neural" if vocoder else "tiny-fast"
    return duration_addon(
        out / name,
        enc,
        dur,
        dec,
        mel=MEL,
        static_tokens=8,
        static_frames=16,
        vocoder=voc,
        **_common(name, "Fixture: duration-based, random weights"),
    )


def build_taco(out: Path) -> Path:
    torch.manual_seed(2)
    n = len(inventory()) + 1
    enc = AttentionEncoder(n, dim=16, kernel_size=3, dilations=[1, 2], dropout=0.0)
    step = DecoderStep(
        MEL.n_mels, dim=16, reduction=2, prenet=16, rnn=24, attention=16, location_filters=4, location_kernel=5
    )
    with torch.no_grad():
        step.stop.bias.fill_(-6.0)  # random weights never "decide" to stop; the length guard ends them
    return attention_addon(
        out / "tiny-taco",
        enc,
        step.eval(),
        mel=MEL,
        window=12,
        static_tokens=8,
        max_frames_per_token=4.0,
        **_common("tiny-taco", "Fixture: attention-based, random weights"),
    )


def build_all(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    return {"tiny-fast": build_fast(out), "tiny-neural": build_fast(out, vocoder=True), "tiny-taco": build_taco(out)}


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/addons")
    for name, path in build_all(target).items():
        print(f"{name}: {path}")
