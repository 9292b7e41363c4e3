"""Reference network architectures for Chorus addons (plain torch modules, no Chorus imports).

Each module's ``forward`` follows the signature conventions of :mod:`blocks.network`: batch at
axis 0, sequence at axis 1, and a ``mask`` ``[B, T]`` (1.0 = real) for chunkable networks,
which zero padded positions after every layer so padding behaves exactly like the sequence edge.
"""

from addons.models.attention import AttentionEncoder, DecoderStep
from addons.models.duration import DurationPredictor, MelDecoder, TextEncoder
from addons.models.layers import MaskedConvStack
from addons.models.vocoder import FrameVocoder
from addons.models.vocos import VocosVocoder

__all__ = [
    "AttentionEncoder",
    "DecoderStep",
    "DurationPredictor",
    "FrameVocoder",
    "MaskedConvStack",
    "MelDecoder",
    "TextEncoder",
    "VocosVocoder",
]
