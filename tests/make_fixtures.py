"""Build the tiny, seeded fixture addons the tests run on (random weights, a few KB each).

    python -m tests.make_fixtures OUT_DIR

Makes ``tiny-fast`` (duration-based), ``tiny-taco`` (attention-based), ``tiny-neural``
(duration-based with an exported neural vocoder of its own), ``tiny-vocoder`` (a universal
vocoder package for the fixtures' mel settings) and ``tiny-universal`` (tiny-fast using it).
Deterministic: same seed, same bytes of output.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import torch

from addons.models import AttentionEncoder, DecoderStep, DurationPredictor, FrameVocoder, MelDecoder, TextEncoder
from addons.recipes.builders import attention_addon, duration_addon
from addons.text.config import FrontendConfig
from addons.text.espeak import get_espeak
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


#: The fixtures' Griffin-Lim (tiny-fast's and tiny-taco's vocoder) runs 4 iterations, not the default
#: 32: the tests compare paths (HTTP, batches, chunks, resumes) to the bit, not phase quality, and
#: Griffin-Lim was most of the suite's synthesis time (docs/testing.md).
GRIFFIN_LIM = {"type": "GriffinLim", "n_iter": 4}


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
        vocoder_network=voc,
        **({} if vocoder else {"vocoder": GRIFFIN_LIM}),
        **_common(name, "Fixture: duration-based, random weights"),
    )


def build_taco(out: Path, keys: bool = True) -> Path:
    """``keys=False``: the same voice with the attention keys computed inside the step network, as
    exported before they had a network of their own."""
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
        keys=keys,
        vocoder=GRIFFIN_LIM,
        **_common("tiny-taco", "Fixture: attention-based, random weights"),
    )


def build_universal(out: Path) -> dict[str, Path]:
    """A tiny universal vocoder package, and tiny-fast naming it as its vocoder."""
    from addons.models.vocos import VocosVocoder
    from addons.recipes.vocoder import export_vocoder

    torch.manual_seed(3)
    model = VocosVocoder(MEL.n_mels, MEL.n_fft, MEL.hop_length, dim=16, hidden=32, layers=2, kernel_size=3)
    package = export_vocoder(model, MEL, out / "tiny-vocoder", {"what": "random weights"}, name="tiny-vocoder")
    addon = out / "tiny-universal"
    shutil.copytree(out / "tiny-fast", addon, dirs_exist_ok=True)
    manifest = json.loads((addon / "addon.json").read_text())
    manifest.update(name="tiny-universal", vocoder={"type": "UniversalVocoder", "name": "tiny-vocoder"})
    (addon / "addon.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return {"tiny-vocoder": package, "tiny-universal": addon}


def build_all(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    built = {"tiny-fast": build_fast(out), "tiny-neural": build_fast(out, vocoder=True), "tiny-taco": build_taco(out)}
    return built | build_universal(out)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/addons")
    for name, path in build_all(target).items():
        print(f"{name}: {path}")
