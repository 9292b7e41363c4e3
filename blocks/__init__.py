"""Chorus integration framework: blocks that turn exported networks into streaming synthesis.

Knows nothing of Ray or HTTP. See :mod:`blocks.base` for the contracts.
"""

from blocks.attention import AttentionDecoder
from blocks.audio import MelSettings, log_mel
from blocks.base import (
    ALIGNMENT,
    MAX_FRAMES,
    Block,
    BlockConfig,
    BlockNode,
    BuildEnv,
    Features,
    PlanEnv,
    Request,
    SequenceBlock,
    StackError,
    StreamableBlock,
    StreamKind,
)
from blocks.containers import SequenceBlockContainer, StreamablePipeline, StreamableStack
from blocks.decoder import Decoder
from blocks.effects import ChunkStats, ChunkwiseBlock, Gain
from blocks.encoders import CustomizedEncoders, Encoders
from blocks.network import ExecutionContext, LazyModule, NetworkError, NetworkRunner, NetworkSpec, TensorSpec
from blocks.registry import REGISTRY, BlockRegistry, parse_block, parse_stack, plan_stack, register_block
from blocks.upsampler import Upsampler
from blocks.vits import FramedAudio, FrameSource, VitsInputs
from blocks.vocoders import GriffinLim, NeuralVocoder, UniversalVocoder, Vocoder

for _cls in (
    SequenceBlockContainer,
    StreamableStack,
    StreamablePipeline,
    Encoders,
    CustomizedEncoders,
    Upsampler,
    Decoder,
    AttentionDecoder,
    GriffinLim,
    NeuralVocoder,
    UniversalVocoder,
    Gain,
    ChunkStats,
    VitsInputs,
    FrameSource,
    FramedAudio,
):
    REGISTRY.register(_cls)

__all__ = [
    "ALIGNMENT",
    "MAX_FRAMES",
    "REGISTRY",
    "AttentionDecoder",
    "Block",
    "BlockConfig",
    "BlockNode",
    "BlockRegistry",
    "BuildEnv",
    "ChunkStats",
    "ChunkwiseBlock",
    "CustomizedEncoders",
    "Decoder",
    "Encoders",
    "ExecutionContext",
    "Features",
    "FrameSource",
    "FramedAudio",
    "Gain",
    "GriffinLim",
    "LazyModule",
    "MelSettings",
    "NetworkError",
    "NetworkRunner",
    "NetworkSpec",
    "NeuralVocoder",
    "PlanEnv",
    "Request",
    "SequenceBlock",
    "SequenceBlockContainer",
    "StackError",
    "StreamKind",
    "StreamableBlock",
    "StreamablePipeline",
    "StreamableStack",
    "TensorSpec",
    "UniversalVocoder",
    "Upsampler",
    "VitsInputs",
    "Vocoder",
    "log_mel",
    "parse_block",
    "parse_stack",
    "plan_stack",
    "register_block",
]
