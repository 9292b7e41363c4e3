"""The application builder: every addon as its own deployments behind one streaming ingress.

``serve_app:build_app`` is what a Serve config file's ``import_path`` points at; its ``args``
are validated by :class:`AppArgs`. For each addon it binds an encoders deployment (batched), a
decoder deployment (streaming mel) and, where the addon brings its own vocoder, a vocoder
deployment; addons that use the universal Griffin-Lim vocoder share one. Deployment names are
``<addon>-encoders``, ``<addon>-decoder``, ``<addon>-vocoder``, ``universal-vocoder`` and
``ingress``; ``AppArgs.deployments`` overrides options per name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from ray.serve import Application

import addons
from addons.manifest import AddonManifest, StageDeployment
from serve_app.deployments import DEFAULT_BATCHING, DecoderDeployment, EncodersDeployment, VocoderDeployment
from serve_app.http import API_KEYS_ENV, HttpPolicy, key_digests
from serve_app.ingress import Ingress, ModelInfo
from serve_app.options import DeploymentOptions, merge_deployment_options

__all__ = ["AppArgs", "build_app"]

# The decorated classes are Deployments at run time; mypy sees the plain classes.
_ENCODERS: Any = EncodersDeployment
_DECODER: Any = DecoderDeployment
_VOCODER: Any = VocoderDeployment
_INGRESS: Any = Ingress

UNIVERSAL_VOCODER = "universal-vocoder"
INGRESS = "ingress"
DECODER_REPLICAS = 2  # by default, where the cluster has room: a lost replica never takes a model down
DECODER_CPUS = 0.25  # the decoder deployment's num_cpus unless options say otherwise
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
        default_factory=dict, description="Options per deployment name, merged over the addon's hints."
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
    max_body_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest request body accepted, bytes; a larger one gets 413 unread."
    )
    max_concurrent_streams: int = Field(
        64, ge=1, description="Speech requests in flight per ingress replica; the next gets 503 with Retry-After."
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description=(
            "API keys accepted as 'Authorization: Bearer <key>', or their digests as 'sha256:<hex>'; "
            f"${API_KEYS_ENV} (comma-separated) adds more. None at all: no authentication."
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


def _options(args: AppArgs, name: str, hint: StageDeployment | None) -> dict[str, Any]:
    hints = hint.model_dump(exclude_none=True, exclude={"context"}) if hint else None
    return merge_deployment_options(None, hints, args.deployments.get(name))


def _decoder_options(args: AppArgs, name: str, hint: StageDeployment) -> dict[str, Any]:
    """A decoder runs two replicas by default, so that a lost one never makes its model unavailable
    (streams resume on the other, see :mod:`serve_app.streams`), unless the cluster has no room for two."""
    options = _options(args, name, hint)
    if "num_replicas" in options or "autoscaling_config" in options:
        return options
    replicas = DECODER_REPLICAS if _room_for(DECODER_REPLICAS, options.get("ray_actor_options", {})) else 1
    return merge_deployment_options({"num_replicas": replicas}, options)


def _room_for(replicas: int, actor_options: dict[str, Any]) -> bool:
    """Whether the running cluster (if this process is connected to one) holds ``replicas`` of this shape."""
    import ray

    if not ray.is_initialized():
        return True  # building a config offline: the cluster decides (pending replicas are reported)
    total = ray.cluster_resources()
    need = {
        "CPU": actor_options.get("num_cpus", DECODER_CPUS),
        "GPU": actor_options.get("num_gpus", 0),
        **actor_options.get("resources", {}),
    }
    return all(replicas * amount <= total.get(key, 0) for key, amount in need.items() if amount)


def build_app(args: AppArgs | dict[str, Any] | None = None) -> Application:
    """Bind the deployment graph for the requested addons (see the module docstring)."""
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    found = _resolve_addons(args.addons)
    names = {m.name for _, m in found}
    known = {INGRESS, UNIVERSAL_VOCODER} | {f"{n}-{s}" for n in names for s in ("encoders", "decoder", "vocoder")}
    unknown = sorted(set(args.deployments) - known)
    if unknown:
        raise ValueError(f"deployments has unknown names {unknown} (known: {', '.join(sorted(known))})")
    shared = {m.name: str(d) for d, m in found if not m.uses_own_vocoder}
    universal = (
        _VOCODER.options(name=UNIVERSAL_VOCODER, **_options(args, UNIVERSAL_VOCODER, None)).bind(
            shared, args.device, args.batching
        )
        if shared
        else None
    )
    models: dict[str, ModelInfo] = {}
    handles: dict[str, tuple[Any, Any, Any]] = {}
    for directory, m in found:
        hints = m.deployment
        context = hints.encoders.context or args.context
        enc = _ENCODERS.options(name=f"{m.name}-encoders", **_options(args, f"{m.name}-encoders", hints.encoders))
        dec = _DECODER.options(name=f"{m.name}-decoder", **_decoder_options(args, f"{m.name}-decoder", hints.decoder))
        if m.uses_own_vocoder:
            voc = _VOCODER.options(name=f"{m.name}-vocoder", **_options(args, f"{m.name}-vocoder", hints.vocoder))
            vocoder = voc.bind({m.name: str(directory)}, args.device, args.batching)
        else:
            vocoder = universal
        handles[m.name] = (
            enc.bind(str(directory), context, args.device),
            dec.bind(str(directory), hints.decoder.context or args.context, args.device, args.batching),
            vocoder,
        )
        models[m.name] = ModelInfo.of(m)
    ingress_defaults = {"max_ongoing_requests": args.max_concurrent_streams + INGRESS_HEADROOM}
    ingress_options = merge_deployment_options(ingress_defaults, None, args.deployments.get(INGRESS))
    ingress = _INGRESS.options(name=INGRESS, **ingress_options)
    return ingress.bind(models, handles, _http_policy(args))


def _http_policy(args: AppArgs) -> HttpPolicy:
    """The ingress's HTTP limits; API keys (from args and the environment of this process) as digests only."""
    keys = [k.get_secret_value() for k in args.api_keys] + os.environ.get(API_KEYS_ENV, "").split(",")
    return HttpPolicy(
        max_body_bytes=args.max_body_bytes,
        max_concurrent_streams=args.max_concurrent_streams,
        api_key_digests=key_digests(keys),
    )
