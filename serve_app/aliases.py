"""OpenAI's model and voice names, mapped onto Chorus models and voices.

Code written for OpenAI's speech API sends ``model="tts-1"`` and ``voice="alloy"``. So that it
works unchanged, the ingress maps those names: each OpenAI model name to a served model (by
default the default model), and each OpenAI voice name to a voice of the model the request
reaches (by default its ``default`` voice). A served model or voice with the very name always
wins over a mapping. The Serve config overrides any entry (``args.openai``)::

    openai:
      models: {tts-1: chorus-fast, tts-1-hd: chorus-taco}
      voices: {alloy: default, nova: fast}

The response says what was used (``X-Chorus-Model``, ``X-Chorus-Voice``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["OPENAI_MODELS", "OPENAI_VOICES", "Aliases", "OpenAINames"]

OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
DEFAULT_VOICE = "default"


class OpenAINames(BaseModel):
    """``args.openai`` of the Serve config: overrides of the default mapping."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Model name a client sends -> served Chorus model. Defaults: "
            f"{', '.join(OPENAI_MODELS)} -> the default model."
        ),
    )
    voices: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Voice name a client sends -> voice of the requested model (where that model has it; "
            f"else its '{DEFAULT_VOICE}' voice). Defaults: OpenAI's voices -> '{DEFAULT_VOICE}'."
        ),
    )


class Aliases(BaseModel):
    """The mapping the ingress applies, complete and checked against the served models."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[str, str] = Field(default_factory=dict)
    voices: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def build(cls, names: OpenAINames, served: Collection[str], default_model: str) -> Aliases:
        """Defaults overlaid with ``names``; a target that is not served is an error naming it."""
        models = {name: default_model for name in OPENAI_MODELS} | names.models
        for alias, target in names.models.items():
            if target not in served:
                raise ValueError(
                    f"openai.models.{alias}: model {target!r} is not served (served: {', '.join(sorted(served))})"
                )
        voices = {name: DEFAULT_VOICE for name in OPENAI_VOICES} | names.voices
        return cls(models={k: v for k, v in models.items() if k not in served}, voices=voices)

    def model(self, name: str) -> str:
        """The served model a request for ``name`` reaches (``name`` itself if not mapped)."""
        return self.models.get(name, name)

    def voice(self, name: str, voices: Mapping[str, object]) -> str:
        """The voice of a model (with ``voices``) a request for ``name`` gets (``name`` if not mapped)."""
        if name in voices or name not in self.voices:
            return name
        target = self.voices[name]
        return target if target in voices else DEFAULT_VOICE
