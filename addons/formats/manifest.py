"""The addon manifest (``addon.json``): a versioned, strict pydantic schema.

It is validated once, at load, in two steps: the schema itself, then the stack, vocoder and
effects against the declared networks (:func:`check_manifest`), still before any weights load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    JsonValue,
    ValidationError,
    model_validator,
)

from addons.text.config import (
    AnyFrontendConfig,
    Strict,
    format_validation_error,
)
from blocks import (
    ChunkwiseBlock,
    MelSettings,
    NetworkSpec,
    PlanEnv,
    StackError,
    StreamKind,
    Vocoder,
    parse_block,
    parse_stack,
    plan_stack,
)
from blocks.tempo import MAX_SPEED, MIN_SPEED

__all__ = [
    "SCHEMA_VERSION",
    "AddonError",
    "AddonManifest",
    "DeploymentHints",
    "StageDeployment",
    "SynthesisDefaults",
    "VoicePreset",
    "check_manifest",
    "read_manifest",
]

SCHEMA_VERSION = 1
#: Vocoder blocks that need no network of the addon, so one deployment serves every addon using them.
SHARED_VOCODERS = ("GriffinLim", "UniversalVocoder")
MANIFEST_NAME = "addon.json"
BlockSpecJson = dict[str, JsonValue]


class AddonError(ValueError):
    """An addon that cannot be loaded; the message names the file and the field."""


class SynthesisDefaults(Strict):
    """Per-request options and their defaults; a request may override each."""

    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED, description="Speaking rate multiplier (2.0 = twice as fast).")


class VoicePreset(Strict):
    description: str = Field("", description="What this voice sounds like.")
    speed: float | None = Field(
        None, ge=MIN_SPEED, le=MAX_SPEED, description="Speed for this voice, unless the request sets one."
    )
    gain_db: float = Field(0.0, ge=-60, le=24, description="Output gain of this voice in dB.")
    speaker: int | None = Field(
        None, ge=0, le=65535, description="The model's speaker id for this voice (a multi-speaker model's)."
    )


class StageDeployment(Strict):
    """Hints for serving one stage (encoders, decoder or vocoder); Serve config files may override."""

    num_replicas: int | Literal["auto"] | None = Field(None, description="Fixed replica count, or 'auto'.")
    autoscaling_config: dict[str, float | int] | None = Field(None, description="Ray Serve autoscaling_config.")
    max_ongoing_requests: int | None = Field(None, ge=1, description="Concurrent requests per replica.")
    max_queued_requests: int | None = Field(None, ge=-1, description="Queue bound before 503; -1 = unbounded.")
    ray_actor_options: dict[str, JsonValue] | None = Field(
        None, description="num_cpus, num_gpus, resources (e.g. {'neuron_cores': 1}), accelerator_type, ..."
    )
    context: Literal["dynamic", "static"] | None = Field(None, description="Execution context on this stage's nodes.")


class DeploymentHints(Strict):
    encoders: StageDeployment = Field(default_factory=StageDeployment, description="The SequenceBlock side.")
    decoder: StageDeployment = Field(default_factory=StageDeployment, description="The StreamableBlock side.")
    vocoder: StageDeployment = Field(default_factory=StageDeployment, description="The addon's own vocoder.")


def _default_vocoder() -> BlockSpecJson:
    return {"type": "GriffinLim"}


class AddonManifest(Strict):
    schema_version: Literal[1] = Field(description="Manifest schema version.")
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")] = Field(
        description="Model id, as clients name it."
    )
    description: str = Field("", description="One line for listings.")
    version: str = Field("0.1.0", description="Version of this addon's weights.")
    language: Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] = Field(description="BCP 47 tag.")
    mel: MelSettings = Field(description="Mel settings shared by the acoustic model and vocoder.")
    frontend: AnyFrontendConfig = Field(description="Text normalization, G2P and the phoneme-to-id map.")
    networks: dict[str, NetworkSpec] = Field(description="Exported networks by name.")
    stack: list[BlockSpecJson] = Field(
        min_length=1,
        description="Blocks from phoneme ids to a stream of frames: mel, or the model's own latent frames.",
    )
    vocoder: BlockSpecJson = Field(
        default_factory=_default_vocoder,
        description="The waveform stage: the stack's frames to audio (a universal vocoder for mel, or the addon's own).",
    )
    effects: list[BlockSpecJson] = Field(default_factory=list, description="Audio-to-audio blocks after the vocoder.")
    defaults: SynthesisDefaults = Field(default_factory=SynthesisDefaults, description="Request option defaults.")
    voices: dict[str, VoicePreset] = Field(default_factory=lambda: {"default": VoicePreset()}, description="Voices.")
    deployment: DeploymentHints = Field(default_factory=DeploymentHints, description="Serving hints per stage.")

    @model_validator(mode="after")
    def _check(self) -> AddonManifest:
        if "default" not in self.voices:
            raise ValueError('voices must include one called "default"')
        if not self.networks:
            raise ValueError("networks must list at least one network")
        files = [n.file for n in self.networks.values()]
        if len(set(files)) != len(files):
            raise ValueError("two networks share a file")
        return self

    @property
    def uses_own_vocoder(self) -> bool:
        """Whether the vocoder is the addon's own network (else a shared one: Griffin-Lim or a universal vocoder)."""
        return self.vocoder.get("type") not in SHARED_VOCODERS


def read_manifest(directory: Path) -> AddonManifest:
    """Read and fully check ``directory/addon.json``; raise :class:`AddonError` naming the field."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise AddonError(f"{directory}: not an addon (no {MANIFEST_NAME})")
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AddonError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(raw, dict) and raw.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise AddonError(
            f"{path}: schema_version {raw.get('schema_version')!r} is not supported (this Chorus reads {SCHEMA_VERSION})"
        )
    try:
        manifest = AddonManifest.model_validate(raw)
    except ValidationError as exc:
        raise AddonError(f"{path}: {format_validation_error(exc)}") from None
    try:
        check_manifest(manifest)
    except StackError as exc:
        raise AddonError(f"{path}: {exc}") from None
    missing = [
        f"networks.{n}.file ({s.file})" for n, s in manifest.networks.items() if not (directory / s.file).is_file()
    ]
    if missing:
        raise AddonError(f"{path}: missing network file: {', '.join(missing)}")
    root = directory.resolve()
    for name, spec in manifest.networks.items():
        target = (directory / spec.file).resolve()
        if not target.is_relative_to(root):
            raise AddonError(
                f"{path}: networks.{name}.file ({spec.file}) resolves outside the addon directory, to {target} (refused)"
            )
    return _with_lexicon_files(manifest, directory, path)


def _with_lexicon_files(manifest: AddonManifest, directory: Path, path: Path) -> AddonManifest:
    """The manifest with the entries of its ``frontend.lexicon_files`` after its own (files inside
    the addon directory only)."""
    if not manifest.frontend.lexicon_files:
        return manifest
    from addons.text.pls import LexiconFileError, load_lexicon

    root = directory.resolve()
    entries = list(manifest.frontend.lexicon)
    for i, name in enumerate(manifest.frontend.lexicon_files):
        target = (directory / name).resolve()
        if not target.is_relative_to(root):
            raise AddonError(
                f"{path}: frontend.lexicon_files[{i}] ({name}) resolves outside the addon directory (refused)"
            )
        try:
            entries += load_lexicon(target)
        except LexiconFileError as exc:
            raise AddonError(f"{path}: frontend.lexicon_files[{i}]: {exc}") from None
    frontend = manifest.frontend.model_copy(update={"lexicon": entries})
    return manifest.model_copy(update={"frontend": frontend})


def memory_bytes() -> int:
    """Physical memory of this machine, in bytes (8 GiB where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def static_call_bytes(spec: NetworkSpec) -> int:
    """Bytes of the inputs and outputs of one static-context call of ``spec`` (batch 1)."""
    if spec.static_length is None:
        return 0
    total = 0
    for t in (*spec.inputs, *spec.outputs):
        size = 8 if t.dtype == "int64" else 4
        for axis, d in enumerate(t.shape):
            if axis == 1 and isinstance(d, str):
                size *= spec.static_length * (t.time_scale or 1)
            elif isinstance(d, int):
                size *= d
        total += size
    return total


def _check_sizes(manifest: AddonManifest) -> None:
    """Fixed sizes must fit this machine: a quarter of its memory for one call's tensors."""
    budget = memory_bytes() // 4
    for name, spec in manifest.networks.items():
        need = static_call_bytes(spec)
        if need > budget:
            raise StackError(
                f"networks.{name}",
                f"static_length {spec.static_length} makes one call need {need / 2**30:.1f} GiB of tensors, more "
                f"than this machine can give a call ({budget / 2**30:.1f} GiB, a quarter of its memory)",
            )


def check_manifest(manifest: AddonManifest) -> None:
    """Check the stack, vocoder and effects against the networks; raise :class:`StackError`."""
    _check_sizes(manifest)
    env = PlanEnv(frozenset({"phoneme_ids"}), None, manifest.networks)
    node = parse_stack(manifest.stack)
    env = plan_stack(node, env, (StreamKind.MEL, StreamKind.FRAMES))
    vocoder = parse_block(manifest.vocoder, Vocoder, "vocoder")
    env = vocoder.plan(env)
    if env.kind is not StreamKind.AUDIO:
        raise StackError("vocoder", "must turn the stack's frames into audio")
    for i, spec in enumerate(manifest.effects):
        env = parse_block(spec, ChunkwiseBlock, f"effects[{i}]").plan(env)
        if env.kind is not StreamKind.AUDIO:
            raise StackError(f"effects[{i}]", "effects must keep an audio stream")
