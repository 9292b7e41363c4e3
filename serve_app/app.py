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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from ray.serve import Application

import addons
from addons.engine.families import Family, Refusal, scan_folder, stage_bytes, voices_per_replica
from addons.formats.manifest import AddonError, AddonManifest, StageDeployment
from addons.text.config import LexiconEntry
from addons.text.pls import LexiconFileError, load_lexicon
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
from serve_app.families import FamilyDecoder, FamilyEncoders, FamilyVocoder
from serve_app.http import API_KEYS_ENV, HttpPolicy, key_digests
from serve_app.ingress import Ingress, ModelInfo
from serve_app.options import DeploymentOptions, merge_deployment_options

__all__ = ["AppArgs", "FamilyArgs", "FamilyPlan", "Resolved", "build_app", "resolve"]

logger = logging.getLogger("chorus.placement")
Stage = Literal["encoders", "decoder", "vocoder"]

# The decorated classes are Deployments at run time; mypy sees the plain classes.
_ENCODERS: Any = EncodersDeployment
_DECODER: Any = DecoderDeployment
_VOCODER: Any = VocoderDeployment
_INGRESS: Any = Ingress
_FAMILY: dict[str, Any] = {"encoders": FamilyEncoders, "decoder": FamilyDecoder, "vocoder": FamilyVocoder}

UNIVERSAL_VOCODER = "universal-vocoder"
INGRESS = "ingress"
DECODER_REPLICAS = 2  # by default, where the cluster has room: a lost replica never takes a model down
# Ingress slots beyond the admission limit, so that refusals (and /health, /v1/models) reach the
# replica and get its JSON 503 instead of queueing in Ray's proxy.
INGRESS_HEADROOM = 32
# A family voice's load time as admission allows for it: this, plus its network bytes at this rate
# (joe's 63 MB loaded in 0.9 s on this 2-core machine; the allowance is twice that, for a busy replica).
COLD_START_S = 0.5
LOAD_BYTES_PER_S = 50e6


class FamilyArgs(BaseModel):
    """A folder of voices served as one family (``AppArgs.families``; ``chorus serve --voices-dir``)."""

    model_config = ConfigDict(extra="forbid")

    voices_dir: str = Field(
        description=(
            "Folder of voices: addon directories and Piper X.onnx + X.onnx.json pairs (imported on the way in, "
            "into $CHORUS_IMPORT_CACHE or ~/.cache/chorus/imported). Voices of one shape form one family."
        )
    )
    name: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,47}$",
        description="The family's name, its deployments' prefix (default: the folder's name).",
    )
    voices_per_replica: int | None = Field(
        None, ge=1, description="Voices each replica holds at most, every stage; default: from replica_memory_mb."
    )
    replica_memory_mb: int = Field(
        1024,
        ge=16,
        description=(
            "Memory a replica may give its voices, MB: each stage's cap is this over what one voice of the family "
            "needs there (its network files times addons.engine.families.RESIDENT_FACTOR, plus a little), at most the family."
        ),
    )


class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (the ``args`` of a Serve config file's application)."""

    model_config = ConfigDict(extra="forbid")

    addons: list[str] = Field(
        default_factory=list,
        description="Addon names or directories; empty = every installed addon (unless families only, below).",
    )
    families_only: bool = Field(
        False, description="Serve the families alone: no installed addon unless named in addons."
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

    families: list[FamilyArgs] = Field(
        default_factory=list,
        description=(
            "Folders of voices each served as a family: one set of deployments (<family>-encoders, -decoder, "
            "-vocoder) whose replicas load the voices requests name and evict the least recently used."
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
class FamilyPlan:
    """One voice family as served: its members, each stage's cap (voices per replica) and the voices
    of its folder that were refused (name and reason)."""

    family: Family
    manifests: dict[str, AddonManifest]
    caps: dict[str, int]
    refused: tuple[Refusal, ...] = ()

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def own_vocoder(self) -> bool:
        return next(iter(self.manifests.values())).uses_own_vocoder

    def deployment(self, stage: str) -> str:
        return f"{self.name}-{stage}"


@dataclass(frozen=True)
class Resolved:
    """What :func:`build_app` decides before binding anything: the addons served, the voice families,
    which models' decoders vocode, the addons sharing the universal vocoder, and every deployment's
    merged options."""

    found: list[tuple[Path, AddonManifest]]
    fused: set[str]
    shared: dict[str, str]
    options: dict[str, dict[str, Any]]
    families: list[FamilyPlan] = field(default_factory=list)


def _plan_families(args: AppArgs, taken: set[str]) -> list[FamilyPlan]:
    """Scan each folder of ``args.families``; a voice whose name is ``taken`` (by an addon served alone)
    or is another family's is refused by name, as is one that fails its checks."""
    taken = set(taken)
    plans: list[FamilyPlan] = []
    for fargs in args.families:
        folder = Path(fargs.voices_dir).expanduser()
        try:
            scan = scan_folder(folder, family=fargs.name)
        except AddonError as exc:
            raise ValueError(f"families: {exc}") from None
        refused, start = list(scan.refused), len(plans)
        for family in scan.families:
            if family.name in taken or any(p.name == family.name for p in plans):
                raise ValueError(f"families: the family name {family.name!r} is taken; name it (families[].name)")
            members: dict[str, Path] = {}
            for voice, directory in family.members.items():
                if voice in taken:
                    refused.append(Refusal(voice, "its model name is served already (an addon or another family)"))
                else:
                    members[voice] = directory
            if not members:
                continue
            taken.update(members)
            manifests = {voice: addons.read_manifest(directory) for voice, directory in members.items()}
            sizes = [stage_bytes(manifests[v], d) for v, d in members.items()]
            budget = fargs.replica_memory_mb << 20
            caps = {
                stage: fargs.voices_per_replica
                or voices_per_replica(max(s[stage] for s in sizes), budget, len(members))
                for stage in ("encoders", "decoder", "vocoder")
            }
            plans.append(FamilyPlan(replace(family, members=members), manifests, caps))
        for refusal in refused:
            logger.warning("families: voice %s not served: %s", refusal.name, refusal.reason)
        if len(plans) == start:
            detail = "; ".join(f"{r.name}: {r.reason}" for r in refused) or "it holds none"
            raise ValueError(f"families: {folder}: no voice can be served ({detail})")
        plans[start] = replace(plans[start], refused=tuple(refused))
    return plans


def resolve(args: AppArgs | dict[str, Any] | None = None) -> Resolved:
    """Validate ``args`` against the installed addons and merge every deployment's options."""
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    if args.families_only and not args.families:
        raise ValueError("families_only without families: nothing to serve")
    found = _resolve_addons(args.addons) if args.addons or not args.families_only else []
    if args.addons:  # named addons come first: a family voice of the same name is refused
        families = _plan_families(args, {m.name for _, m in found})
    else:  # every installed addon, less those served as family voices (a voices folder on the addon path)
        families = _plan_families(args, set())
        members = {v for plan in families for v in plan.family.members}
        found = [(d, m) for d, m in found if m.name not in members]
    names = {m.name for _, m in found}
    voices = {v: plan for plan in families for v in plan.family.members}
    known = {INGRESS, UNIVERSAL_VOCODER} | {f"{n}-{s}" for n in names for s in ("encoders", "decoder", "vocoder")}
    known |= {plan.deployment(s) for plan in families for s in ("encoders", "decoder", "vocoder")}
    unknown = sorted(set(args.deployments) - known)
    if unknown:
        raise ValueError(f"deployments has unknown names {unknown} (known: {', '.join(sorted(known))})")
    strangers = sorted(set(args.lexicons) - names - set(voices) - {"*"})
    if strangers:
        raise ValueError(
            f"lexicons names unknown models {strangers} (served: {', '.join(sorted(names | set(voices)))}, or '*')"
        )
    fused = _fused_models(args.fused_vocoder, names | {plan.name for plan in families})
    shared = {m.name: str(d) for d, m in found if not m.uses_own_vocoder and m.name not in fused}
    for plan in families:
        if not plan.own_vocoder and plan.name not in fused:
            shared.update({v: str(d) for v, d in plan.family.members.items()})
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
    for plan in families:
        hints = next(iter(plan.manifests.values())).deployment
        kinds: tuple[tuple[Stage, StageDeployment], ...] = (
            ("encoders", hints.encoders),
            ("decoder", hints.decoder),
            ("vocoder", hints.vocoder),
        )
        for stage, hint in kinds:
            if stage == "vocoder" and (not plan.own_vocoder or plan.name in fused):
                continue
            options[plan.deployment(stage)] = _options(args, plan.deployment(stage), stage, hint, offer)
    decoders = [f"{m.name}-decoder" for _, m in found] + [plan.deployment("decoder") for plan in families]
    _add_decoder_replicas(options, decoders)
    return Resolved(found, fused, shared, options, families)


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
    for plan in resolved.families:
        _bind_family(args, plan, options, plan.name in fused, universal, models, handles)
    default_model = addons.DEFAULT_ADDON if addons.DEFAULT_ADDON in models else next(iter(models))
    aliases = Aliases.build(args.openai, models, default_model)
    ingress = _INGRESS.options(name=INGRESS, **options[INGRESS])
    return ingress.bind(models, handles, _http_policy(args), aliases)


def _bind_family(
    args: AppArgs,
    plan: FamilyPlan,
    options: dict[str, dict[str, Any]],
    fused: bool,
    universal: Any,
    models: dict[str, ModelInfo],
    handles: dict[str, tuple[Any, Any, Any]],
) -> None:
    """One family's deployments, shared by all its voices (the ingress names the voice per request)."""
    members = {v: str(d) for v, d in plan.family.members.items()}
    hints = next(iter(plan.manifests.values())).deployment
    caps, name = plan.caps, plan.deployment
    enc = _FAMILY["encoders"].options(name=name("encoders"), **options[name("encoders")])
    encoders = enc.bind(members, caps["encoders"], hints.encoders.context or args.context, args.device, args.stage_nice)
    dec = _FAMILY["decoder"].options(name=name("decoder"), **options[name("decoder")])
    decoder_cap = min(caps["decoder"], caps["vocoder"]) if fused else caps["decoder"]
    decoder = dec.bind(
        members,
        decoder_cap,
        hints.decoder.context or args.context,
        args.device,
        args.batching,
        args.stage_nice,
        fused,
    )
    if fused:
        vocoder = decoder
    elif plan.own_vocoder:
        voc = _FAMILY["vocoder"].options(name=name("vocoder"), **options[name("vocoder")])
        vocoder = voc.bind(members, caps["vocoder"], args.device, args.batching, args.stage_nice)
    else:
        vocoder = universal
    capacity = caps["encoders"] * placement.replicas(options[name("encoders")])
    for voice, manifest in plan.manifests.items():
        handles[voice] = (encoders, decoder, vocoder)
        info = ModelInfo.of(manifest, _server_lexicon(args.lexicons, voice))
        cold = COLD_START_S + sum(stage_bytes(manifest, plan.family.members[voice]).values()) / LOAD_BYTES_PER_S
        models[voice] = replace(
            info, fused_vocoder=fused, family=plan.name, family_capacity=capacity, cold_start_s=cold
        )


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
