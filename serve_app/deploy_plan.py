"""``chorus deploy plan``: a Serve config file placed on a cluster's node types before anything starts.

Apart from :mod:`serve_app.placement` because it reads configs and resolves applications
(:mod:`serve_app.app`), which themselves place their deployments through that module.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from serve_app.app import AppArgs, resolve
from serve_app.placement import NODE_TAGS, PlanRow, node_types, plan
from serve_app.server import read_config

__all__ = ["plan_config"]


def plan_config(config_path: Path, cluster_path: Path) -> list[tuple[str, list[PlanRow], list[str]]]:
    """``chorus deploy plan``: each application of a Serve config file resolved as on a cluster (addon
    hints, stages, deployments merged; nothing dropped) and placed on ``cluster_path``'s node types.
    Raises ValueError (PlacementError) with one line naming the problem."""
    try:
        cluster = yaml.safe_load(cluster_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read --cluster {cluster_path}: {exc}") from None
    types = node_types(cluster)
    if not types:
        raise ValueError(f"--cluster {cluster_path}: no available_node_types")
    plans = []
    for app in read_config(config_path).applications:
        args = AppArgs.model_validate(app.args)
        notes = []
        if args.placement != "cluster":
            notes.append(
                f"placement {args.placement}: on a cluster whose nodes carry no {'/'.join(NODE_TAGS)} tag, requests "
                "its running nodes lack are dropped; `placement: cluster` keeps them as planned here"
            )
        resolved = resolve(args.model_copy(update={"placement": "cluster"}))
        rows = plan(resolved.options, types)
        on_head = [
            r.deployment
            for r in rows
            if r.deployment != "ingress" and any(t.head for t in types if t.name in r.node_types)
        ]
        if on_head:
            notes.append(
                f"may run on the head node: {', '.join(on_head)} (ask for a worker type's tag to keep them off)"
            )
        plans.append((app.name, rows, notes))
    return plans
