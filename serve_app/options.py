"""Deployment options: typed layers, merged once into ``Deployment.options(...)`` kwargs.

Three layers, later winning field by field: defaults from code, the addon's deployment
hints, then the per-deployment overrides given in the Serve config file's application
``args``. The result is complete: Ray's ``.options(ray_actor_options=...)`` and the
``deployments:`` section of a Serve config file replace ``ray_actor_options`` and
``autoscaling_config`` whole (a file that sets only ``num_gpus`` silently drops the
addon's ``resources`` and resets ``num_cpus`` to 1). Overrides therefore belong in our
``args``, where they merge, not in Ray's ``deployments:`` section.

Merge rules:

* Scalars: the last layer that sets a field wins.
* ``ray_actor_options``, ``autoscaling_config`` and ``backpressure_config``: merged
  field by field, except ``resources``, which is replaced whole because it names one
  placement (a Neuron hint plus a GPU override would otherwise ask for a node that
  has both).
* A fixed ``num_replicas`` and ``autoscaling_config`` exclude each other (Ray rejects
  both together): a layer setting one clears what earlier layers set for the other.
  ``num_replicas="auto"`` combines with ``autoscaling_config`` as Ray allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray.serve.config import AutoscalingConfig

__all__ = [
    "AutoscalingOptions",
    "BackpressureOptions",
    "DeploymentOptions",
    "RayActorOptions",
    "merge_deployment_options",
]

# Ray schedules these resources in whole units only (it sets NEURON_RT_VISIBLE_CORES).
_WHOLE_UNIT_RESOURCES = frozenset({"neuron_cores"})
_SPLIT_OUT_RESOURCES = {"CPU": "num_cpus", "GPU": "num_gpus"}
# Option groups merged field by field instead of replaced.
_NESTED = ("ray_actor_options", "autoscaling_config", "backpressure_config")


class _Layer(BaseModel):
    """A partial set of options: ``None`` means "this layer does not say"."""

    model_config = ConfigDict(extra="forbid")

    def set_fields(self) -> dict[str, Any]:
        """The fields this layer sets, nested models as dicts."""
        return self.model_dump(exclude_none=True)


class RayActorOptions(_Layer):
    """Resources one replica reserves (Ray's ``ray_actor_options``)."""

    num_cpus: float | None = Field(default=None, ge=0, description="CPUs per replica; fractions allowed.")
    num_gpus: float | None = Field(default=None, ge=0, description="GPUs per replica; fractions allowed.")
    resources: dict[str, float] | None = Field(
        default=None,
        description=(
            "Custom resources, e.g. {'neuron_cores': 1} or a node tag {'gpu_node': 0.01}. "
            "Replaced whole by a later layer. Avoid the 'node:' prefix: Ray uses it for "
            "node addresses."
        ),
    )
    accelerator_type: str | None = Field(
        default=None, description="Ray accelerator type, e.g. 'A10G' (needs num_gpus)."
    )
    memory: int | None = Field(default=None, gt=0, description="Heap memory to reserve, bytes.")

    @model_validator(mode="after")
    def _check_resources(self) -> RayActorOptions:
        """Reject what Ray would reject at deploy time, naming the key."""
        for name, amount in (self.resources or {}).items():
            if name in _SPLIT_OUT_RESOURCES:
                raise ValueError(f"resources[{name!r}]: use {_SPLIT_OUT_RESOURCES[name]} instead")
            if amount < 0:
                raise ValueError(f"resources[{name!r}] must be >= 0, got {amount}")
            if name in _WHOLE_UNIT_RESOURCES and amount != int(amount):
                raise ValueError(f"resources[{name!r}] must be a whole number, got {amount}")
        return self


class AutoscalingOptions(_Layer):
    """Ray Serve's ``autoscaling_config``; unset fields keep Ray's defaults."""

    min_replicas: int | None = Field(default=None, ge=0, description="Lower bound (Ray: 1).")
    max_replicas: int | None = Field(default=None, ge=1, description="Upper bound (Ray: 1).")
    initial_replicas: int | None = Field(default=None, ge=0, description="Replicas at deploy.")
    target_ongoing_requests: float | None = Field(
        default=None, gt=0, description="Ongoing requests per replica to aim for (Ray: 2)."
    )
    metrics_interval_s: float | None = Field(
        default=None, gt=0, description="How often handles and replicas push load to the controller, s (Ray: 10)."
    )
    look_back_period_s: float | None = Field(
        default=None, gt=0, description="Window the load is averaged over, s (Ray: 30)."
    )
    upscale_delay_s: float | None = Field(
        default=None, ge=0, description="Load must stay high this long before adding, s (Ray: 30)."
    )
    downscale_delay_s: float | None = Field(
        default=None, ge=0, description="Load must stay low this long before removing, s (Ray: 600)."
    )
    upscaling_factor: float | None = Field(default=None, gt=0, description="Multiplier on each upscaling decision.")
    downscaling_factor: float | None = Field(default=None, gt=0, description="Multiplier on each downscaling decision.")
    policy: Literal["load", "requests"] | None = Field(
        default=None,
        description=(
            "What to scale on: 'load', how busy the replicas are (serve_app.autoscaling; the default for "
            "decoders and vocoders), or 'requests', Ray's ongoing requests per replica (the default elsewhere)."
        ),
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> AutoscalingOptions:
        """min <= initial <= max among the bounds that are set."""
        bounds = [self.min_replicas, self.initial_replicas, self.max_replicas]
        known = [b for b in bounds if b is not None]
        if known != sorted(known):
            raise ValueError(
                "need min_replicas <= initial_replicas <= max_replicas, got "
                f"{self.min_replicas}, {self.initial_replicas}, {self.max_replicas}"
            )
        return self


class BackpressureOptions(_Layer):
    """What the HTTP proxy answers when this deployment's queue is full.

    Applies to requests the proxy routes to this deployment (the ingress); callers
    using a handle get ``BackPressureError`` instead and must map it themselves.
    """

    status_code: Literal[503, 429] | None = Field(default=None, description="503 (Ray's default) or 429.")
    retry_after_s: float | None = Field(default=None, ge=0, description="Retry-After header value, s (Ray: no header).")


class DeploymentOptions(_Layer):
    """One layer of options for one deployment (code defaults, addon hints or file)."""

    num_replicas: int | Literal["auto"] | None = Field(
        default=None, description="Fixed replica count, or 'auto' for Ray's autoscaling defaults."
    )
    autoscaling_config: AutoscalingOptions | None = Field(
        default=None, description="Autoscaling bounds and reaction times."
    )
    max_ongoing_requests: int | None = Field(
        default=None, ge=1, description="Requests one replica runs at once (Ray: 5); a stream holds one for its length."
    )
    max_queued_requests: int | None = Field(
        default=None,
        ge=-1,
        description="Requests a caller may queue for this deployment; -1 is unlimited (Ray's default).",
    )
    backpressure_config: BackpressureOptions | None = Field(
        default=None, description="HTTP answer to requests rejected by max_queued_requests."
    )
    ray_actor_options: RayActorOptions | None = Field(default=None, description="Resources one replica reserves.")
    health_check_period_s: float | None = Field(
        default=None, gt=0, description="Seconds between replica health checks."
    )
    graceful_shutdown_timeout_s: float | None = Field(
        default=None, ge=0, description="Seconds a stopping replica may finish its streams."
    )
    graceful_shutdown_wait_loop_s: float | None = Field(
        default=None, gt=0, description="Seconds between checks of a stopping replica's open requests."
    )

    @model_validator(mode="after")
    def _check_replicas(self) -> DeploymentOptions:
        """Ray's rules that a layer can break on its own."""
        if isinstance(self.num_replicas, int) and self.autoscaling_config is not None:
            raise ValueError("set either a fixed num_replicas or autoscaling_config, not both")
        if self.max_queued_requests == 0:
            raise ValueError("max_queued_requests must be -1 (unlimited) or positive")
        return self


LayerInput = DeploymentOptions | Mapping[str, Any] | None


def _parse(layer_name: str, layer: LayerInput) -> dict[str, Any]:
    """Validate one layer; errors say which layer was wrong."""
    if layer is None:
        return {}
    if isinstance(layer, DeploymentOptions):
        return layer.set_fields()
    try:
        return DeploymentOptions.model_validate(dict(layer)).set_fields()
    except ValidationError as exc:
        raise ValueError(f"{layer_name} deployment options are invalid:\n{exc}") from exc


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Apply one layer on top of the merged result so far (see module rules)."""
    merged = dict(base)
    if isinstance(top.get("num_replicas"), int):
        merged.pop("autoscaling_config", None)
    if "autoscaling_config" in top and isinstance(merged.get("num_replicas"), int):
        merged.pop("num_replicas")
    for key, value in top.items():
        if key in _NESTED:
            merged[key] = {**merged.get(key, {}), **value}  # "resources" is replaced whole
        else:
            merged[key] = value
    return merged


def merge_deployment_options(
    defaults: LayerInput = None, hints: LayerInput = None, overrides: LayerInput = None
) -> dict[str, Any]:
    """Merge code defaults, addon hints and file overrides into ``.options()`` kwargs.

    Each layer is a ``DeploymentOptions`` or a plain mapping validated as one. The
    merged result is validated again (bounds can conflict across layers) and returned
    as plain dicts, holding only what some layer set, so Ray's defaults fill the rest.
    """
    merged: dict[str, Any] = {}
    for name, layer in (("default", defaults), ("addon hint", hints), ("override", overrides)):
        merged = _overlay(merged, _parse(name, layer))
    result = _parse("merged", merged)
    if "autoscaling_config" in result:
        _check_with_ray_defaults(result["autoscaling_config"])
    return result


def _check_with_ray_defaults(config: dict[str, Any]) -> None:
    """Unset bounds take Ray's defaults (max_replicas=1), so let Ray judge the whole."""
    try:
        AutoscalingConfig(**{k: v for k, v in config.items() if k != "policy"})  # ours: see serve_app.app
    except ValidationError as exc:
        raise ValueError(f"merged autoscaling_config is invalid:\n{exc}") from exc
