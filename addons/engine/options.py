"""The request options, declared once: what a request may ask of a voice, with its type, range,
default ("the voice decides" where unset) and description.

The HTTP body (``serve_app.schemas.SpeechRequest``), the WebSocket's ``open`` message
(``serve_app.realtime``), the CLI (``chorus synth``) and the Python API (``Voice.stream``) take
these fields from :func:`option` rather than declaring their own. :func:`resolve_options`
checks them against a voice once and resolves each against the voice preset and the addon's
defaults; what it returns is what every stage receives, served encoders included. A refusal is an
:class:`OptionError` that names the field it is about.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from addons.formats.manifest import AddonManifest
from addons.text.config import format_validation_error
from addons.text.frontend import TextError
from addons.text.pls import LexiconInput
from blocks.tempo import MAX_SPEED, MIN_SPEED

__all__ = [
    "MAX_REQUEST_LEXICON",
    "MAX_SEED",
    "OPTION_FIELDS",
    "InputFormat",
    "OptionError",
    "ResolvedOptions",
    "Seed",
    "Speed",
    "SynthesisOptions",
    "option",
    "resolve_options",
]

MAX_SEED = 2**32 - 1
#: Pronunciation overrides one request may carry (the addon's own lexicon has no such bound).
MAX_REQUEST_LEXICON = 100
Speed = Annotated[float, Field(ge=MIN_SPEED, le=MAX_SPEED)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
InputFormat = Literal["text", "ssml"]


class OptionError(TextError):
    """Request options a voice refuses; ``param`` is the field at fault, ``code`` what kind of refusal."""

    def __init__(self, message: str, param: str, code: str = "invalid_option") -> None:
        super().__init__(message)
        self.param, self.code = param, code


class SynthesisOptions(BaseModel):
    """Per-request options; unset fields fall back to the voice preset, then the addon defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    voice: str = Field("default", min_length=1, description="One of the model's voices (speakers).")
    speed: Speed | None = Field(
        None,
        description=(
            f"Speaking rate factor, {MIN_SPEED:g} to {MAX_SPEED:g}. Unset: the voice's own speed (a preset may "
            "have one), else the model's default (1.0 for the bundled voices)."
        ),
    )
    lexicon: LexiconInput = Field(
        default_factory=list,
        max_length=MAX_REQUEST_LEXICON,
        description=(
            "Pronunciation overrides for this request, before the server's and the model's own: each a "
            "'grapheme' (one word, matched without edge punctuation, case-blind unless 'case_sensitive') said "
            "as 'phonemes' (espeak-ng mnemonics of the voice's inventory, or IPA with 'alphabet': 'ipa') or "
            "read as an 'alias'. Or a W3C PLS document as one string (docs/ssml.md). At most "
            f"{MAX_REQUEST_LEXICON} entries; any problem with them is a 400 'invalid_lexicon' naming the entry."
        ),
    )
    normalize: bool = Field(
        True,
        description=(
            "Read money ($3.50), times (10:00), dates, units (5 km) and abbreviations as words; false reads "
            "them as espeak-ng does."
        ),
    )
    input_format: InputFormat = Field(
        "text",
        description=(
            "'text' (default), or 'ssml': the input is an SSML document (the subset in docs/ssml.md; an input "
            "whose root is <speak> is read as SSML either way). Bad or unsupported markup is a 400 "
            "'invalid_ssml' naming the tag and its line and column; markup is never read aloud."
        ),
    )
    seed: Seed | None = Field(
        None,
        description=(
            "For models that draw noise (VITS voices such as Piper's): which draw, so the same request gives the "
            "same audio; unset: 0. Other models ignore it."
        ),
    )


#: Each option's declaration: one type, range, default and description everywhere.
OPTION_FIELDS: dict[str, FieldInfo] = dict(SynthesisOptions.model_fields)


def option(name: str) -> Any:
    """Option ``name``'s declaration, as the field of another request schema that carries it:
    ``speed: Speed | None = option("speed")``."""
    return OPTION_FIELDS[name]


@dataclasses.dataclass(frozen=True, eq=False)
class ResolvedOptions(Mapping[str, Any]):
    """A request's options resolved against one voice: what every stage receives (served
    encoders included), frozen, plain data (it crosses processes as it is).

    Fields are typed (``options.speed``); as a mapping it holds the values a stage may read
    (``speed``, ``voice``, ``gain_db`` always; ``speaker``, ``seed``, ``lexicon``, ``normalize``,
    ``input_format`` where they differ from the default), so ``options.get("speed", 1.0)`` and an
    equal plain dict compare equal. :meth:`replace` gives a changed copy (an SSML part's rate).
    """

    voice: str = "default"
    speed: float = 1.0
    gain_db: float = 0.0
    speaker: int | None = None
    seed: int = 0
    lexicon: tuple[dict[str, Any], ...] = ()
    normalize: bool = True
    input_format: str = "text"

    def _items(self) -> dict[str, Any]:
        items: dict[str, Any] = {"speed": self.speed, "voice": self.voice, "gain_db": self.gain_db}
        if self.speaker is not None:
            items["speaker"] = self.speaker
        if self.seed:
            items["seed"] = self.seed
        if self.lexicon:
            items["lexicon"] = list(self.lexicon)
        if not self.normalize:
            items["normalize"] = False
        if self.input_format != "text":
            items["input_format"] = self.input_format
        return items

    def __getitem__(self, key: str) -> Any:
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        return f"ResolvedOptions({self._items()!r})"

    def replace(self, **changes: Any) -> ResolvedOptions:
        """A copy with ``changes`` (``lexicon`` as any sequence of entries)."""
        if "lexicon" in changes:
            changes["lexicon"] = tuple(changes["lexicon"])
        return dataclasses.replace(self, **changes)


def resolve_options(manifest: AddonManifest, **options: Any) -> tuple[SynthesisOptions, ResolvedOptions]:
    """Validate request options against an addon; return them and the values blocks see
    (request value, else the voice preset's, else the addon default). Needs no networks.
    Raises :class:`OptionError` naming the field at fault.
    """
    try:
        opts = SynthesisOptions(**options)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"]
        raise OptionError(format_validation_error(exc), str(first[0]) if first else "options") from None
    if opts.voice not in manifest.voices:
        raise OptionError(
            f'unknown voice "{opts.voice}" (known: {", ".join(sorted(manifest.voices))})', "voice", "voice_not_found"
        )
    preset = manifest.voices[opts.voice]
    speed = (
        opts.speed if opts.speed is not None else preset.speed if preset.speed is not None else manifest.defaults.speed
    )
    resolved = ResolvedOptions(
        voice=opts.voice,
        speed=float(speed),
        gain_db=float(preset.gain_db),
        speaker=preset.speaker,
        seed=opts.seed or 0,
        lexicon=tuple(entry.model_dump() for entry in opts.lexicon),
        normalize=opts.normalize,
        input_format=opts.input_format,
    )
    return opts, resolved
