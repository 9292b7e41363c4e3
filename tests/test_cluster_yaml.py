"""cluster.yaml is a valid Ray cluster-launcher config whose node types offer what the
Chorus deployments will ask for."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")
ray_autoscaler = pytest.importorskip("ray.autoscaler")

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
# NeuronCores per instance; Ray's own table is private (ray._private.accelerators.neuron).
NEURON_CORES = {"inf2.xlarge": 2, "inf2.8xlarge": 2, "inf2.24xlarge": 12, "inf2.48xlarge": 24}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def node_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return config["available_node_types"]


def test_matches_rays_schema(config: dict[str, Any]) -> None:
    schema_path = Path(ray_autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))


def test_passes_rays_own_validation(config: dict[str, Any]) -> None:
    """What `ray up` does before launching: fill in AWS defaults, then validate."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    util.validate_config(util.prepare_config(copy.deepcopy(config)))


def test_gpu_worker_type(config: dict[str, Any]) -> None:
    gpu = node_types(config)["gpu_g5"]
    assert gpu["node_config"]["InstanceType"].startswith("g5.")
    assert gpu["resources"]["GPU"] >= 1 and gpu["resources"]["gpu_node"] == 1


def test_inf2_worker_type_offers_its_neuron_cores(config: dict[str, Any]) -> None:
    inf2 = node_types(config)["inf2"]
    instance = inf2["node_config"]["InstanceType"]
    assert inf2["resources"]["neuron_cores"] == NEURON_CORES[instance]
    assert inf2["resources"]["inf2_node"] == 1


def test_workers_autoscale_within_the_cluster_bound(config: dict[str, Any]) -> None:
    workers = [t for name, t in node_types(config).items() if name != config["head_node_type"]]
    assert all(0 <= t["min_workers"] <= t["max_workers"] for t in workers)
    assert sum(t["max_workers"] for t in workers) <= config["max_workers"]


def test_every_node_installs_chorus_from_the_repo(config: dict[str, Any]) -> None:
    assert config["file_mounts"] == {"~/chorus": "."}
    command_lists = [config["setup_commands"]] + [
        t["worker_setup_commands"] for t in node_types(config).values() if "worker_setup_commands" in t
    ]
    for commands in command_lists:
        assert any("pip install" in c and "~/chorus" in c for c in commands), commands
