"""Signatures and stacks of the reference architectures, for exporting them as addons.

Used by the training recipes (trained weights) and by the test fixtures (tiny random weights),
so both produce addons of exactly the same format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from addons.formats.export import NetworkExport, export_addon
from addons.models import AttentionEncoder, DecoderStep, DurationPredictor, FrameVocoder, MelDecoder, TextEncoder
from addons.models.attention import AttentionKeys, KeyedDecoderStep
from blocks import MelSettings, TensorSpec

__all__ = ["DURATION_STACK", "attention_addon", "attention_step_networks", "duration_addon", "frame_vocoder_network"]

DURATION_STACK: list[dict[str, Any]] = [
    {
        "type": "StreamablePipeline",
        "sequence_block": {"type": "Encoders"},
        "streamable_block": {"type": "StreamableStack", "stack": [{"type": "Upsampler"}, {"type": "Decoder"}]},
    }
]


def _t(name: str, *shape: int | str, dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name=name, dtype=dtype, shape=tuple(shape))


def _static(rf: int, centre: int) -> int:
    return centre + 2 * rf


def duration_addon(
    out: str | Path,
    encoder: TextEncoder,
    durations: DurationPredictor,
    decoder: MelDecoder,
    *,
    mel: MelSettings,
    static_tokens: int = 64,
    static_frames: int = 128,
    vocoder_network: FrameVocoder | None = None,
    **manifest: Any,
) -> Path:
    """Export a duration-based (FastSpeech-style) addon with the design-example stack.

    ``static_tokens``/``static_frames`` are the window centres compiled for the static context.
    ``vocoder_network``: a vocoder of the addon's own, exported beside the others (the manifest's
    ``vocoder`` then defaults to the NeuralVocoder block running it); ``manifest`` fields, such as
    ``vocoder``, go into addon.json as they are.
    """
    dim = encoder.embed.embedding_dim
    networks = {
        "text_encoder": NetworkExport(
            encoder,
            "encoder",
            [_t("phoneme_ids", "B", "T", dtype="int64"), _t("mask", "B", "T")],
            [_t("encoding", "B", "T", dim)],
            encoder.receptive_field,
            _static(encoder.receptive_field, static_tokens),
        ),
        "duration_predictor": NetworkExport(
            durations,
            "encoder",
            [_t("encoding", "B", "T", dim), _t("mask", "B", "T")],
            [_t("durations", "B", "T")],
            durations.receptive_field,
            _static(durations.receptive_field, static_tokens),
        ),
        "decoder": NetworkExport(
            decoder,
            "decoder",
            [_t("frames", "B", "T", dim), _t("mask", "B", "T")],
            [_t("mel", "B", "T", mel.n_mels)],
            decoder.receptive_field,
            _static(decoder.receptive_field, static_frames),
        ),
    }
    if vocoder_network is not None:
        networks["vocoder"] = frame_vocoder_network(vocoder_network, mel, static_frames)
        manifest.setdefault("vocoder", {"type": "NeuralVocoder"})
    return export_addon(out, networks, mel=mel, stack=manifest.pop("stack", DURATION_STACK), **manifest)


def frame_vocoder_network(vocoder: FrameVocoder, mel: MelSettings, static_frames: int = 128) -> NetworkExport:
    return NetworkExport(
        vocoder,
        "vocoder",
        [_t("mel", "B", "T", mel.n_mels), _t("mask", "B", "T")],
        [_t("audio", "B", f"T*{mel.hop_length}")],
        vocoder.receptive_field,
        _static(vocoder.receptive_field, static_frames),
    )


def attention_addon(
    out: str | Path,
    encoder: AttentionEncoder,
    step: DecoderStep,
    *,
    mel: MelSettings,
    window: int = 48,
    static_tokens: int = 64,
    stop_threshold: float = 0.5,
    max_frames_per_token: float = 12.0,
    keys: bool = True,
    **manifest: Any,
) -> Path:
    """Export an attention-based (Tacotron-style) addon: Encoders, then AttentionDecoder.

    ``keys``: the step's attention keys are computed once per sentence by a third network
    (``attention_keys``, after the encoder) and passed to the step as a per-token input, instead of
    being recomputed from ``memory`` at every step; the same weights and outputs either way.
    """
    dim = encoder.embed.embedding_dim
    networks = {
        "encoder": NetworkExport(
            encoder,
            "encoder",
            [_t("phoneme_ids", "B", "T", dtype="int64"), _t("mask", "B", "T")],
            [_t("memory", "B", "T", dim)],
            encoder.receptive_field,
            _static(encoder.receptive_field, static_tokens),
        ),
        **attention_step_networks(step, mel, window, static_tokens, keys),
    }
    stack = [
        {
            "type": "StreamablePipeline",
            "sequence_block": {"type": "Encoders"},
            "streamable_block": {
                "type": "AttentionDecoder",
                "window": window,
                "stop_threshold": stop_threshold,
                "max_frames_per_token": max_frames_per_token,
            },
        }
    ]
    return export_addon(out, networks, mel=mel, stack=manifest.pop("stack", stack), **manifest)


def attention_step_networks(
    step: DecoderStep, mel: MelSettings, window: int, static_tokens: int, keys: bool = True
) -> dict[str, NetworkExport]:
    """The decoder step network of an attention addon and, with ``keys``, the ``attention_keys``
    encoder network that computes its keys once per sentence (see :func:`attention_addon`)."""
    dim, attention = step.keys.in_features, step.keys.out_features
    states = [_t(name, "B", size) for name, size in step.state_shapes().items()]
    networks = {}
    if keys:
        networks["attention_keys"] = NetworkExport(
            AttentionKeys(step),
            "encoder",
            [_t("memory", "B", "T", dim)],
            [_t("keys", "B", "T", attention)],
            0,
            _static(0, static_tokens),
        )
    networks["decoder_step"] = NetworkExport(
        KeyedDecoderStep(step) if keys else step,
        "decoder_step",
        [
            _t("prev_frame", "B", mel.n_mels),
            _t("memory", "B", "T", dim),
            _t("mask", "B", "T"),
            _t("attention_prev", "B", "T"),
            _t("attention_cum", "B", "T"),
            *([_t("keys", "B", "T", attention)] if keys else []),
            *states,
        ],
        [
            _t("frames", "B", step.reduction, mel.n_mels),
            _t("stop_logit", "B", step.reduction),
            _t("attention", "B", "T"),
            *states,
        ],
        None,
        window,
    )
    return networks
