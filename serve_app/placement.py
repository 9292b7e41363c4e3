"""Where stage replicas run: the accelerator kinds Chorus places stages on, and the node types offering them.

One replica asks for one kind of processor:

- **CPU**: ``num_cpus`` only (fractions allowed).
- **CUDA GPU**: ``num_gpus`` (a fraction up to 1 shares one GPU between replicas, above 1 whole GPUs only),
  optionally ``accelerator_type`` (Ray's ``accelerator_type:<X>`` resource, e.g. ``A10G``).
- **AWS Inferentia / Trainium**: ``resources: {neuron_cores: N}``, whole numbers only (Ray sets
  ``NEURON_RT_VISIBLE_CORES``).

Each node type of ``cluster.yaml`` also carries a plain tag resource (``head_node``, ``gpu_node``,
``inf2_node``); a replica asks for :data:`TAG_SHARE` of one to land on that kind of node, so a CPU
replica meant for the head never lands on a GPU worker and no stage lands on the head.

Addon hints are suggestions: when the application is built for one machine (``chorus serve``, or a
local Ray without these tags), accelerators that machine lacks are dropped from the *hints* and a
warning names each (:func:`drop_unoffered`); what a Serve config asks for itself is kept as written.
:func:`plan` maps resolved deployment options onto a cluster-launcher config's node types, before
anything starts (``chorus deploy plan``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "GPU_TAG",
    "HEAD_TAG",
    "NEURON_TAG",
    "SHIPPED_GPU_STAGES",
    "STAGE_CPUS",
    "TAG_SHARE",
    "Kind",
    "NodeType",
    "PlacementError",
    "PlanRow",
    "check",
    "chorus_cluster",
    "cluster_offer",
    "cpu",
    "drop_unoffered",
    "format_plan",
    "gpu",
    "kind",
    "local_offer",
    "need",
    "neuron",
    "node_types",
    "plan",
    "replicas",
]

logger = logging.getLogger("chorus.placement")

Kind = Literal["cpu", "gpu", "neuron"]

NEURON_CORES = "neuron_cores"
HEAD_TAG = "head_node"
GPU_TAG = "gpu_node"
NEURON_TAG = "inf2_node"
NODE_TAGS = (HEAD_TAG, GPU_TAG, NEURON_TAG)
# A tag is a marker, not a capacity: 1/100 of one lets 100 replicas share a node.
TAG_SHARE = 0.01
ACCELERATOR_PREFIX = "accelerator_type:"
# Ray reserves this much of "accelerator_type:<X>" for a replica that names a type.
ACCELERATOR_TYPE_SHARE = 0.001
# The GPU model each EC2 family has, as the launcher reads it from EC2 and adds it as
# "accelerator_type:<X>" (ray/autoscaler/_private/aws/node_provider.py); only for planning offline.
EC2_GPU_TYPES = {"g4dn": "T4", "g5": "A10G", "g6": "L4", "g6e": "L40S", "p3": "V100", "p4d": "A100", "p5": "H100"}


class PlacementError(ValueError):
    """Options no node can satisfy, or that mix accelerator kinds; the message names the deployment."""


def cpu(num_cpus: float, tag: str | None = None) -> dict[str, Any]:
    """A CPU replica, pinned to the node type carrying ``tag`` if given."""
    return {"num_cpus": num_cpus, **({"resources": {tag: TAG_SHARE}} if tag else {})}


def gpu(share: float, num_cpus: float, accelerator_type: str | None = None) -> dict[str, Any]:
    """A replica on ``share`` of a CUDA GPU (a fraction up to 1, or whole GPUs) on a ``gpu_node``."""
    options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": share, "resources": {GPU_TAG: TAG_SHARE}}
    if accelerator_type:
        options["accelerator_type"] = accelerator_type
    return options


def neuron(cores: int, num_cpus: float) -> dict[str, Any]:
    """A replica on ``cores`` whole NeuronCores of an ``inf2_node`` (num_gpus 0 clears a GPU hint)."""
    return {"num_cpus": num_cpus, "num_gpus": 0, "resources": {NEURON_CORES: cores, NEURON_TAG: TAG_SHARE}}


# A stage replica's CPU share, whatever it runs on (serve_app.deployments.DEFAULTS starts from it):
# on one local machine, two models' stages and the ingress fit in 2 CPUs.
STAGE_CPUS = 0.25
# What the bundled addons' hints, the Piper importer's hints and serve_app/serve_config.cluster.yaml
# ask for per stage on cluster.yaml's g5.xlarge (one A10G, 4 vCPUs): one GPU node holds two models'
# encoders and decoders beside the universal vocoder; the autoscaler adds GPU nodes for more.
# tests/test_deploy_configs.py checks that the shipped files say exactly this.
SHIPPED_GPU_STAGES: dict[str, dict[str, Any]] = {
    "encoders": gpu(0.125, STAGE_CPUS),
    "decoder": gpu(0.25, STAGE_CPUS),
    "vocoder": gpu(0.25, STAGE_CPUS),
}


def kind(actor_options: Mapping[str, Any]) -> Kind:
    """The processor kind a replica with these ``ray_actor_options`` runs on."""
    if (actor_options.get("resources") or {}).get(NEURON_CORES):
        return "neuron"
    if actor_options.get("num_gpus"):
        return "gpu"
    return "cpu"


def check(name: str, actor_options: Mapping[str, Any]) -> None:
    """Refuse what mixes kinds or asks for a share Ray cannot schedule, naming the deployment."""
    gpus = float(actor_options.get("num_gpus") or 0)
    resources = actor_options.get("resources") or {}
    cores = resources.get(NEURON_CORES) or 0
    if gpus and cores:
        raise PlacementError(
            f"{name}: asks for num_gpus {gpus:g} and neuron_cores {cores:g}; a replica runs on one kind "
            "(set num_gpus: 0 where a Neuron override replaces a GPU hint)"
        )
    if gpus > 1 and gpus != int(gpus):
        raise PlacementError(f"{name}: num_gpus {gpus:g}: above 1, whole GPUs only")
    if cores and cores != int(cores):
        raise PlacementError(f"{name}: neuron_cores {cores:g}: whole NeuronCores only")
    if actor_options.get("accelerator_type") and not (gpus or cores):
        raise PlacementError(f"{name}: accelerator_type {actor_options['accelerator_type']!r} needs num_gpus")


def need(options: Mapping[str, Any]) -> dict[str, float]:
    """What one replica of a deployment reserves, as Ray resource names (CPU defaults to Ray's 1)."""
    actor = options.get("ray_actor_options") or {}
    wanted: dict[str, float] = {"CPU": float(actor.get("num_cpus", 1.0))}
    if actor.get("num_gpus"):
        wanted["GPU"] = float(actor["num_gpus"])
    if actor.get("accelerator_type"):
        wanted[ACCELERATOR_PREFIX + str(actor["accelerator_type"])] = ACCELERATOR_TYPE_SHARE
    wanted.update({k: float(v) for k, v in (actor.get("resources") or {}).items() if v})
    return wanted


def replicas(options: Mapping[str, Any]) -> int:
    """Replicas a deployment starts with."""
    if "autoscaling_config" in options:
        auto = options["autoscaling_config"]
        return int(auto.get("initial_replicas") or auto.get("min_replicas") or 1)
    count = options.get("num_replicas", 1)
    return count if isinstance(count, int) else 1


def drop_unoffered(actor_options: Mapping[str, Any], offered: Mapping[str, float]) -> tuple[dict[str, Any], list[str]]:
    """``actor_options`` without the accelerator requests ``offered`` (one machine's resources) cannot
    satisfy; returns the options kept and a phrase per request dropped. CPUs and memory stay."""
    kept = dict(actor_options)
    dropped: list[str] = []
    gpus = float(kept.get("num_gpus") or 0)
    if gpus and offered.get("GPU", 0.0) < gpus:
        dropped.append(f"num_gpus {gpus:g}")
        kept.pop("num_gpus")
    kind_name = kept.get("accelerator_type")
    if kind_name and ("num_gpus" not in kept or not offered.get(ACCELERATOR_PREFIX + str(kind_name))):
        dropped.append(f"accelerator_type {kind_name}")
        kept.pop("accelerator_type")
    resources = dict(kept.get("resources") or {})
    for key, amount in list(resources.items()):
        if amount and offered.get(key, 0.0) < amount:
            dropped.append(f"{key} {amount:g}")
            del resources[key]
    if "resources" in kept:
        kept["resources"] = resources
    return kept, dropped


def local_offer() -> dict[str, float]:
    """What a Ray started on this machine would offer: its CPUs and the accelerators Ray detects."""
    offered: dict[str, float] = {"CPU": float(os.cpu_count() or 1)}
    try:  # Ray's detection is private API; without it this machine offers CPUs only
        from ray._private.accelerators import get_accelerator_manager_for_resource

        for resource in ("GPU", NEURON_CORES):
            manager = get_accelerator_manager_for_resource(resource)
            count = manager.get_current_node_num_accelerators() if manager else 0
            if manager and count:
                offered[resource] = float(count)
                model = manager.get_current_node_accelerator_type()
                if model:
                    offered[ACCELERATOR_PREFIX + model] = 1.0
    except Exception as exc:  # detection is best effort
        logger.debug("accelerator detection failed: %s", exc)
    return offered


def _alive_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def cluster_offer() -> dict[str, float]:
    """The most of each resource one alive node of the connected Ray offers."""
    offered: dict[str, float] = {}
    for resources in _alive_nodes():
        for key, amount in resources.items():
            offered[key] = max(offered.get(key, 0.0), float(amount))
    return offered


def chorus_cluster() -> bool:
    """Whether the connected Ray is a cluster laid out for Chorus (some node carries a node-type tag)."""
    return any(tag in resources for resources in _alive_nodes() for tag in NODE_TAGS)


@dataclass(frozen=True)
class NodeType:
    """One ``available_node_types`` entry of a cluster-launcher config, with what one node offers."""

    name: str
    resources: dict[str, float]
    head: bool = False
    max_workers: int = 0

    def lacks(self, wanted: Mapping[str, float]) -> list[str]:
        """The resources one node of this type cannot give a replica asking for ``wanted``."""
        return [k for k, v in wanted.items() if v > self.resources.get(k, 0.0) + 1e-9]


def node_types(cluster: Mapping[str, Any]) -> list[NodeType]:
    """The node types of a parsed ``cluster.yaml``; GPU types also offer the ``accelerator_type:<X>``
    that EC2 reports for their instance family (unless the file declares one)."""
    head = cluster.get("head_node_type")
    types = []
    for name, spec in (cluster.get("available_node_types") or {}).items():
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        instance = str((spec.get("node_config") or {}).get("InstanceType", ""))
        family = instance.split(".")[0]
        declared = any(k.startswith(ACCELERATOR_PREFIX) for k in resources)
        if resources.get("GPU") and family in EC2_GPU_TYPES and not declared:
            resources[ACCELERATOR_PREFIX + EC2_GPU_TYPES[family]] = 1.0
        types.append(
            NodeType(name, resources, head=name == head, max_workers=0 if name == head else spec.get("max_workers", 0))
        )
    return types


@dataclass(frozen=True)
class PlanRow:
    """Where one deployment's replicas go."""

    deployment: str
    replicas: str
    num_cpus: float
    num_gpus: float
    resources: dict[str, float] = field(default_factory=dict)
    node_types: tuple[str, ...] = ()


def _replica_text(options: Mapping[str, Any]) -> str:
    auto = options.get("autoscaling_config")
    if auto is not None:
        return f"{auto.get('min_replicas', 1)}-{auto.get('max_replicas', 1)} (auto)"
    return str(options.get("num_replicas", 1))


def plan(options: Mapping[str, Mapping[str, Any]], types: list[NodeType]) -> list[PlanRow]:
    """Each deployment with the node types that can hold one of its replicas; :class:`PlacementError`
    naming the deployment and the missing resource when none can."""
    rows = []
    for name, opts in options.items():
        actor = opts.get("ray_actor_options") or {}
        check(name, actor)
        wanted = need(opts)
        fits = tuple(t.name for t in types if not t.lacks(wanted))
        if not fits:
            raise PlacementError(_refusal(name, wanted, types))
        rows.append(
            PlanRow(
                name,
                _replica_text(opts),
                wanted["CPU"],
                wanted.get("GPU", 0.0),
                {k: v for k, v in (actor.get("resources") or {}).items()},
                fits,
            )
        )
    return rows


def _refusal(name: str, wanted: Mapping[str, float], types: list[NodeType]) -> str:
    """One line: the deployment, and what the node type closest to fitting lacks."""
    offered_anywhere = {k for t in types for k in t.resources}
    missing = [k for k in wanted if k not in offered_anywhere]
    if missing:
        return f"deployment {name} asks for {', '.join(f'{k} {wanted[k]:g}' for k in missing)}: no node type offers {', '.join(missing)}"
    closest = min(types, key=lambda t: (sum(k not in t.resources for k in wanted), len(t.lacks(wanted))))
    short = ", ".join(f"{k} {wanted[k]:g} (has {closest.resources.get(k, 0.0):g})" for k in closest.lacks(wanted))
    return f"deployment {name} asks for more than one node offers: closest node type {closest.name} lacks {short}"


def format_plan(rows: list[PlanRow]) -> str:
    """The plan as an aligned table."""
    header = ("deployment", "replicas", "num_cpus", "num_gpus", "custom resources", "node type")
    body = [
        (
            r.deployment,
            r.replicas,
            f"{r.num_cpus:g}",
            f"{r.num_gpus:g}",
            ", ".join(f"{k}: {v:g}" for k, v in r.resources.items()) or "-",
            " | ".join(r.node_types),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in (header, *body)
    )
