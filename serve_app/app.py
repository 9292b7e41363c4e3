"""The application builder: every addon as its own deployments behind one streaming ingress.

``serve_app:build_app`` is what a Serve config file's ``import_path`` points at; its ``args``
are validated by :class:`AppArgs`. For each addon it binds an encoders deployment (batched), a
decoder deployment (streaming mel) and, where the addon brings its own vocoder, a vocoder
deployment; addons that use the universal Griffin-Lim vocoder share one. Deployment names are
``<addon>-encoders``, ``<addon>-decoder``, ``<addon>-vocoder``, ``universal-vocoder`` and
``ingress``; ``AppArgs.stages`` overrides options per stage kind (every model's), ``AppArgs.deployments``
per name. Where replicas run (CPU, GPU share, NeuronCores, node-type tags) is :mod:`serve_app.placement`'s:
``AppArgs.placement`` says whether the addons' accelerator hints are kept as written (a cluster) or
fitted to one machine (``chorus serve``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from ray.serve import Application

import addons
from addons.manifest import AddonManifest, LexiconEntry, StageDeployment
from addons.pls import LexiconFileError, load_lexicon
from serve_app import placement
from serve_app.aliases import Aliases, OpenAINames
from serve_app.autoscaling import POLICY_FUNCTION
from serve_app.deployments import (
    DEFAULT_BATCHING,
    DEFAULTS,
    STAGE_NICE,
    DecoderDeployment,
    EncodersDeployment,
    VocoderDeployment,
)
from serve_app.http import API_KEYS_ENV, HttpPolicy, key_digests
from serve_app.ingress import Ingress, ModelInfo
from serve_app.options import DeploymentOptions, merge_deployment_options

__all__ = ["AppArgs", "Resolved", "build_app", "resolve"]

logger = logging.getLogger("chorus.placement")
Stage = Literal["encoders", "decoder", "vocoder"]

# The decorated classes are Deployments at run time; mypy sees the plain classes.
_ENCODERS: Any = EncodersDeployment
_DECODER: Any = DecoderDeployment
_VOCODER: Any = VocoderDeployment
_INGRESS: Any = Ingress

UNIVERSAL_VOCODER = "universal-vocoder"
INGRESS = "ingress"
DECODER_REPLICAS = 2  # by default, where the cluster has room: a lost replica never takes a model down
# Ingress slots beyond the admission limit, so that refusals (and /health, /v1/models) reach the
# replica and get its JSON 503 instead of queueing in Ray's proxy.
INGRESS_HEADROOM = 32


class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (the ``args`` of a Serve config file's application)."""

    model_config = ConfigDict(extra="forbid")

    addons: list[str] = Field(
        default_factory=list, description="Addon names or directories; empty = every installed addon."
    )
    context: Literal["dynamic", "static"] = Field("dynamic", description="Default execution context.")
    device: str = Field("auto", description='Torch device in replicas: "auto" (CUDA if visible), "cpu", "cuda".')
    deployments: dict[str, DeploymentOptions] = Field(
        default_factory=dict, description="Options per deployment name, merged over the addon's hints and stages."
    )
    stages: dict[Stage, DeploymentOptions] = Field(
        default_factory=dict,
        description=(
            "Options for every model's stage of a kind (vocoder: the universal vocoder and each addon's own), "
            "merged over the addon's hints and under deployments: where a cluster config puts each stage."
        ),
    )
    placement: Literal["auto", "cluster", "local"] = Field(
        "auto",
        description=(
            "cluster: every accelerator request kept as written (the autoscaler adds the nodes offering them); "
            "local: requests this machine cannot satisfy (GPUs, NeuronCores, node tags) dropped, with a warning, "
            "from hints and config alike; auto: like local for the addons' hints only, when building for one "
            "machine (no Ray connected, as in chorus serve, or a Ray none of whose nodes carries a Chorus "
            "node-type tag), else like cluster."
        ),
    )
    batching: int = Field(
        DEFAULT_BATCHING,
        ge=0,
        le=256,
        description=(
            "Continuous batching: streams on one decoder or vocoder replica that share a forward pass, "
            "at most; 0 runs every stream alone (the static context never batches)."
        ),
    )
    stage_nice: int = Field(
        STAGE_NICE,
        ge=0,
        le=19,
        description=(
            "Stage replicas (encoders, decoder, vocoder) lower their CPU priority by this much (os.nice), so an "
            "ingress or HTTP proxy on the same node is not queued behind synthesis: refusals and first chunks "
            "go out at once. 0 (the default) leaves it: on a 2-core machine shared with its clients, 5 measured no "
            "faster refusals and slower first audio under a burst (docs/performance.md)."
        ),
    )
    fused_vocoder: bool | list[str] = Field(
        False,
        description=(
            "Each decoder replica also runs its model's vocoder and streams a sentence's audio in one call, "
            "instead of one vocoder call per mel chunk through the ingress: fewer hops per stream, but no "
            "vocoder deployment for that model (its decoder replicas load the vocoder, not shared) and the "
            "vocoder scales with the decoder. true: every model; a list: those models (docs/deploy.md)."
        ),
    )
    max_body_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest request body accepted, bytes; a larger one gets 413 unread."
    )
    max_concurrent_streams: int = Field(
        64, ge=1, description="Speech requests in flight per ingress replica; the next gets 503 with Retry-After."
    )
    admission: bool = Field(
        True,
        description=(
            "Admission control: refuse a new stream (503 at_capacity) while a model cannot serve it in real "
            "time; false admits every stream up to max_concurrent_streams (listeners may then stall)."
        ),
    )
    openai: OpenAINames = Field(
        default_factory=OpenAINames,
        description=(
            "OpenAI's model and voice names (tts-1, alloy, ...) mapped to served models and voices, over "
            "the defaults (every OpenAI model name -> the default model, every OpenAI voice -> 'default')."
        ),
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description=(
            "API keys accepted as 'Authorization: Bearer <key>', or their digests as 'sha256:<hex>'; "
            f"${API_KEYS_ENV} (comma-separated) adds more. None at all: no authentication."
        ),
    )

    lexicons: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "Server-wide pronunciation lexicons: model name (or '*' for every model) -> lexicon files, PLS "
            "(.pls, .xml) or a JSON list of entries (.json). Applied after a request's own entries and before "
            "the model's."
        ),
    )

    @field_validator("addons")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("addons are listed twice")
        return v


def _resolve_addons(names: list[str]) -> list[tuple[Path, AddonManifest]]:
    if not names:
        found = addons.list_addons()
        if not found:
            raise ValueError(f"no addons installed (searched {', '.join(map(str, addons.addon_dirs()))})")
        return found
    resolved = []
    for name in names:
        directory = addons.find_addon(name)
        resolved.append((directory, addons.read_manifest(directory)))
    taken = [m.name for _, m in resolved]
    if len(set(taken)) != len(taken):
        raise ValueError(f"two addons share a model name: {taken}")
    return resolved


def _options(
    args: AppArgs, name: str, stage: Stage, hint: StageDeployment | None, offer: dict[str, float] | None
) -> dict[str, Any]:
    hints = hint.model_dump(exclude_none=True, exclude={"context"}) if hint else None
    if hints and offer is not None and args.placement == "auto":
        hints = _fit(name, hints, offer, "its addon's hint")
    options = merge_deployment_options(
        merge_deployment_options(DEFAULTS[stage], hints, args.stages.get(stage)), None, args.deployments.get(name)
    )
    if offer is not None and args.placement == "local":
        options = _fit(name, options, offer, "the config")
    placement.check(name, options.get("ray_actor_options") or {})
    auto = options.get("autoscaling_config")
    if auto is not None:  # Chorus's policy names become Ray's policy function
        policy = auto.pop("policy", None) or ("load" if stage in ("decoder", "vocoder") else "requests")
        if policy == "load":
            auto["policy"] = {"policy_function": POLICY_FUNCTION}
    return options


def _fit(name: str, options: dict[str, Any], offer: dict[str, float], source: str) -> dict[str, Any]:
    """``options`` without the accelerator requests one machine (``offer``) cannot satisfy, saying so."""
    actor = options.get("ray_actor_options")
    if not actor:
        return options
    kept, dropped = placement.drop_unoffered(actor, offer)
    if dropped:
        logger.warning(
            "%s: this machine offers no %s asked for by %s; running on what it has (placement: cluster keeps them)",
            name,
            ", ".join(dropped),
            source,
        )
    return {**options, "ray_actor_options": kept}


def _offer(args: AppArgs) -> dict[str, float] | None:
    """The one machine's resources that requests are fitted to, or None where they are kept as written."""
    import ray

    if args.placement == "cluster":
        return None
    if not ray.is_initialized():
        return placement.local_offer()  # chorus serve builds before starting its Ray on this machine
    if args.placement == "auto" and placement.chorus_cluster():
        return None
    return placement.cluster_offer()


_replicas = placement.replicas
_need = placement.need


def _add_decoder_replicas(all_options: dict[str, dict[str, Any]], decoders: list[str]) -> None:
    """Give each decoder left at Ray's default a second replica, so that a lost one never makes its
    model unavailable (streams resume on the other, see :mod:`serve_app.streams`), while the
    running cluster (if this process is connected to one) has room for it beside everything else
    this application starts (totals over the cluster's nodes). Offline, the cluster decides."""
    import ray

    explicit = [d for d in decoders if "num_replicas" in all_options[d] or "autoscaling_config" in all_options[d]]
    if not ray.is_initialized():
        for name in set(decoders) - set(explicit):
            all_options[name] = merge_deployment_options(all_options[name], {"num_replicas": DECODER_REPLICAS})
        return
    total = ray.cluster_resources()
    used: dict[str, float] = {}
    for options in all_options.values():
        for key, amount in _need(options).items():
            used[key] = used.get(key, 0.0) + _replicas(options) * amount
    for name in decoders:
        if name in explicit:
            continue
        need = _need(all_options[name])
        extra = DECODER_REPLICAS - 1
        if all(used.get(k, 0.0) + extra * v <= total.get(k, 0.0) + 1e-9 for k, v in need.items() if v):
            for k, v in need.items():
                used[k] = used.get(k, 0.0) + extra * v
            all_options[name] = merge_deployment_options(all_options[name], {"num_replicas": DECODER_REPLICAS})


def _fused_models(fused: bool | list[str], names: set[str]) -> set[str]:
    """The models whose decoder replicas vocode (``AppArgs.fused_vocoder``)."""
    if isinstance(fused, bool):
        return set(names) if fused else set()
    strangers = sorted(set(fused) - names)
    if strangers:
        raise ValueError(f"fused_vocoder names unknown models {strangers} (served: {', '.join(sorted(names))})")
    return set(fused)


@dataclass(frozen=True)
class Resolved:
    """What :func:`build_app` decides before binding anything: the addons served, which models' decoders
    vocode, the addons sharing the universal vocoder, and every deployment's merged options."""

    found: list[tuple[Path, AddonManifest]]
    fused: set[str]
    shared: dict[str, str]
    options: dict[str, dict[str, Any]]


def resolve(args: AppArgs | dict[str, Any] | None = None) -> Resolved:
    """Validate ``args`` against the installed addons and merge every deployment's options."""
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    found = _resolve_addons(args.addons)
    names = {m.name for _, m in found}
    known = {INGRESS, UNIVERSAL_VOCODER} | {f"{n}-{s}" for n in names for s in ("encoders", "decoder", "vocoder")}
    unknown = sorted(set(args.deployments) - known)
    if unknown:
        raise ValueError(f"deployments has unknown names {unknown} (known: {', '.join(sorted(known))})")
    strangers = sorted(set(args.lexicons) - names - {"*"})
    if strangers:
        raise ValueError(f"lexicons names unknown models {strangers} (served: {', '.join(sorted(names))}, or '*')")
    fused = _fused_models(args.fused_vocoder, names)
    shared = {m.name: str(d) for d, m in found if not m.uses_own_vocoder and m.name not in fused}
    gone = sorted(
        n for n in args.deployments if n in {f"{m}-vocoder" for m in fused} or (n == UNIVERSAL_VOCODER and not shared)
    )
    if gone:
        raise ValueError(f"deployments names {gone}, but fused_vocoder runs those vocoders in the decoder replicas")
    offer = _offer(args)
    ingress_defaults = {**DEFAULTS["ingress"], "max_ongoing_requests": args.max_concurrent_streams + INGRESS_HEADROOM}
    options = {INGRESS: merge_deployment_options(ingress_defaults, None, args.deployments.get(INGRESS))}
    if offer is not None and args.placement == "local":
        options[INGRESS] = _fit(INGRESS, options[INGRESS], offer, "the config")
    placement.check(INGRESS, options[INGRESS].get("ray_actor_options") or {})
    if shared:
        options[UNIVERSAL_VOCODER] = _options(args, UNIVERSAL_VOCODER, "vocoder", None, offer)
    for _, m in found:
        hints = m.deployment
        options[f"{m.name}-encoders"] = _options(args, f"{m.name}-encoders", "encoders", hints.encoders, offer)
        options[f"{m.name}-decoder"] = _options(args, f"{m.name}-decoder", "decoder", hints.decoder, offer)
        if m.uses_own_vocoder and m.name not in fused:
            options[f"{m.name}-vocoder"] = _options(args, f"{m.name}-vocoder", "vocoder", hints.vocoder, offer)
    _add_decoder_replicas(options, [f"{m.name}-decoder" for _, m in found])
    return Resolved(found, fused, shared, options)


def build_app(args: AppArgs | dict[str, Any] | None = None) -> Application:
    """Bind the deployment graph for the requested addons (see the module docstring)."""
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    resolved = resolve(args)
    found, fused, shared, options = resolved.found, resolved.fused, resolved.shared, resolved.options

    universal = (
        _VOCODER.options(name=UNIVERSAL_VOCODER, **options[UNIVERSAL_VOCODER]).bind(
            shared, args.device, args.batching, args.stage_nice
        )
        if shared
        else None
    )
    models: dict[str, ModelInfo] = {}
    handles: dict[str, tuple[Any, Any, Any]] = {}
    for directory, m in found:
        hints = m.deployment
        context = hints.encoders.context or args.context
        enc = _ENCODERS.options(name=f"{m.name}-encoders", **options[f"{m.name}-encoders"])
        dec = _DECODER.options(name=f"{m.name}-decoder", **options[f"{m.name}-decoder"])
        decoder = dec.bind(
            str(directory),
            hints.decoder.context or args.context,
            args.device,
            args.batching,
            args.stage_nice,
            m.name in fused,
        )
        if m.name in fused:
            vocoder = decoder
        elif m.uses_own_vocoder:
            voc = _VOCODER.options(name=f"{m.name}-vocoder", **options[f"{m.name}-vocoder"])
            vocoder = voc.bind({m.name: str(directory)}, args.device, args.batching, args.stage_nice)
        else:
            vocoder = universal
        handles[m.name] = (enc.bind(str(directory), context, args.device, args.stage_nice), decoder, vocoder)
        info = ModelInfo.of(m, _server_lexicon(args.lexicons, m.name))
        models[m.name] = replace(info, fused_vocoder=m.name in fused)
    default_model = addons.loader.DEFAULT_ADDON if addons.loader.DEFAULT_ADDON in models else next(iter(models))
    aliases = Aliases.build(args.openai, models, default_model)
    ingress = _INGRESS.options(name=INGRESS, **options[INGRESS])
    return ingress.bind(models, handles, _http_policy(args), aliases)


def _server_lexicon(lexicons: dict[str, list[str]], model: str) -> list[LexiconEntry]:
    """The entries of the lexicon files named for ``model``, then those for every model ('*')."""
    entries: list[LexiconEntry] = []
    for path in (*lexicons.get(model, ()), *lexicons.get("*", ())):
        try:
            entries += load_lexicon(Path(path).expanduser())
        except LexiconFileError as exc:
            raise ValueError(f"lexicons: {exc}") from None
    return entries


def _http_policy(args: AppArgs) -> HttpPolicy:
    """The ingress's HTTP limits; API keys (from args and the environment of this process) as digests only."""
    keys = [k.get_secret_value() for k in args.api_keys] + os.environ.get(API_KEYS_ENV, "").split(",")
    return HttpPolicy(
        max_body_bytes=args.max_body_bytes,
        max_concurrent_streams=args.max_concurrent_streams,
        admission=args.admission,
        api_key_digests=key_digests(keys),
    )
