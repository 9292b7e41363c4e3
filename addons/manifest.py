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
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from addons.ipa import ESPEAK_MNEMONICS, ipa_to_espeak
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

__all__ = [
    "SCHEMA_VERSION",
    "AddonError",
    "AddonManifest",
    "DeploymentHints",
    "FrontendConfig",
    "PiperFrontendConfig",
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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LexiconEntry(Strict):
    """A pronunciation override: a word said as given phonemes, or read as another text.

    Its messages say what is wrong with the entry; whoever holds a list of them (a request's
    ``lexicon``, a lexicon file) names the entry."""

    grapheme: str = Field(
        min_length=1, max_length=64, pattern=r"^\S+$", description="The word as written (one word, no spaces)."
    )
    phonemes: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=ESPEAK_MNEMONICS.pattern,
        description=(
            "Its phonemes as espeak-ng mnemonics (printable ASCII, the voice's inventory), e.g. \"t@m'A:toU\"; "
            "or IPA with alphabet 'ipa', e.g. \"təˈmɑːtoʊ\"."
        ),
    )
    alias: str | None = Field(None, min_length=1, max_length=200, description="Or: the text to read instead.")
    case_sensitive: bool = Field(False, description='Match the word\'s case exactly ("US" but not "us").')
    alphabet: Literal["x-espeak", "ipa"] = Field(
        "x-espeak",
        description="How 'phonemes' are written: espeak-ng mnemonics, or IPA (mapped to mnemonics when read).",
    )
    ipa: str | None = Field(
        None,
        max_length=200,
        description="The IPA as written, where the entry was given in IPA (voices that read IPA, such as "
        "Piper's, take it as it is); set when the entry is read.",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_ipa(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("alphabet") == "ipa" and isinstance(data.get("phonemes"), str):
            try:
                mnemonics = ipa_to_espeak(data["phonemes"])
            except ValueError as exc:
                raise ValueError(f"phonemes {data['phonemes']!r} (alphabet 'ipa'): {exc}") from None
            return {**data, "phonemes": mnemonics, "alphabet": "x-espeak", "ipa": data["phonemes"]}
        return data

    @field_validator("grapheme", mode="before")
    @classmethod
    def _one_word(cls, value: Any) -> Any:
        if isinstance(value, str) and value and any(ch.isspace() for ch in value):
            raise ValueError(f"one word without spaces, got {value!r} (give each word an entry of its own)")
        return value

    @field_validator("phonemes", mode="before")
    @classmethod
    def _mnemonics(cls, value: Any) -> Any:
        if isinstance(value, str) and value and not ESPEAK_MNEMONICS.match(value):
            bad = next(ch for ch in value if not ESPEAK_MNEMONICS.match(ch))
            raise ValueError(
                f"{value!r} has {bad!r} (U+{ord(bad):04X}), which espeak-ng mnemonics (printable ASCII without "
                "[ or ]) never have; for IPA, give alphabet 'ipa'"
            )
        return value

    @model_validator(mode="after")
    def _one(self) -> LexiconEntry:
        if (self.phonemes is None) == (self.alias is None):
            raise ValueError("give exactly one of phonemes or alias")
        return self


class _TextSettings(Strict):
    """What every text front end takes: its espeak-ng voice, the sentence bound, the lexicons."""

    voice: str = Field("en-us", min_length=1, description="espeak-ng voice used for G2P.")
    max_sentence_phonemes: int = Field(
        400, ge=8, description="Sentences with more phonemes (ids) than this are split at word boundaries."
    )
    lexicon: list[LexiconEntry] = Field(
        default_factory=list, max_length=10_000, description="The addon's pronunciation overrides."
    )
    lexicon_files: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="More of them in files of the addon directory: PLS (.pls, .xml) or a JSON list (.json).",
    )


class FrontendConfig(_TextSettings):
    """Text to phoneme ids. Id 0 is padding; ``phonemes[i]`` has id ``i + 1``."""

    type: Literal["espeak"] = Field("espeak", description="G2P engine: espeak-ng phoneme events.")
    phonemes: tuple[str, ...] = Field(min_length=1, description="Phoneme inventory, in id order (ids start at 1).")

    @field_validator("phonemes")
    @classmethod
    def _unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        dupes = sorted({p for p in v if v.count(p) > 1})
        if dupes:
            raise ValueError(f"duplicate phonemes: {', '.join(dupes)}")
        return v


class PiperFrontendConfig(_TextSettings):
    """Text to phoneme ids as Piper's espeak voices read them: espeak-ng IPA per clause, the clause's
    punctuation kept, codepoints split by NFD, then ``^ _ p1 _ p2 _ ... pn _ $`` through the voice's
    ``phoneme_id_map`` (its ``.onnx.json``)."""

    type: Literal["piper"] = Field(description="Piper's front end: espeak-ng IPA and the voice's id map.")
    phoneme_id_map: dict[str, list[int]] = Field(
        description="Each phoneme (one codepoint, or a cluster) -> its ids, as in the voice's .onnx.json."
    )

    @field_validator("phoneme_id_map")
    @classmethod
    def _map(cls, v: dict[str, list[int]]) -> dict[str, list[int]]:
        missing = [p for p in ("_", "^", "$") if p not in v]
        if missing:
            raise ValueError(f"phoneme_id_map lacks {', '.join(repr(p) for p in missing)} (pad, start and end)")
        bad = sorted(p for p, ids in v.items() if not ids or any(i < 0 for i in ids))
        if bad:
            raise ValueError(f"phoneme_id_map entries need one or more ids >= 0: {', '.join(map(repr, bad[:5]))}")
        return v

    @property
    def phonemes(self) -> tuple[str, ...]:
        """The symbols the voice knows."""
        return tuple(self.phoneme_id_map)

    @property
    def symbols(self) -> int:
        """One more than the largest id (the size of the model's embedding, at least)."""
        return 1 + max(i for ids in self.phoneme_id_map.values() for i in ids)


def _frontend_type(value: Any) -> str:
    return str(value.get("type", "espeak") if isinstance(value, dict) else getattr(value, "type", "espeak"))


AnyFrontendConfig = Annotated[
    Annotated[FrontendConfig, Tag("espeak")] | Annotated[PiperFrontendConfig, Tag("piper")],
    Discriminator(_frontend_type),
]


class SynthesisDefaults(Strict):
    """Per-request options and their defaults; a request may override each."""

    speed: float = Field(1.0, ge=0.25, le=4.0, description="Speaking rate multiplier (2.0 = twice as fast).")


class VoicePreset(Strict):
    description: str = Field("", description="What this voice sounds like.")
    speed: float | None = Field(None, ge=0.25, le=4.0, description="Speed for this voice, unless the request sets one.")
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
    from addons.pls import LexiconFileError, load_lexicon

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


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        path = list(err["loc"])
        if len(path) > 1 and path[0] == "frontend" and path[1] in ("espeak", "piper"):
            del path[1]  # the tag of the frontend's kind, not a field anyone wrote
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


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
