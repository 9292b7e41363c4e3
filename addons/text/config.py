"""What a text front end is configured with, as an addon's manifest declares it: the espeak-ng
and Piper front ends' settings and the pronunciation overrides (lexicon entries). The manifest
(:mod:`addons.formats.manifest`) embeds these; the text modules read them and nothing above them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from addons.text.ipa import ESPEAK_MNEMONICS, ipa_to_espeak

__all__ = [
    "AnyFrontendConfig",
    "FrontendConfig",
    "LexiconEntry",
    "PiperFrontendConfig",
    "Strict",
    "format_validation_error",
]


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
