"""Placement proven on a cluster: a local multi-node Ray whose nodes offer what cluster.yaml's node types
declare (a CPU head, GPU-tagged and Inferentia-tagged workers), the shipped Serve config files deployed
as `serve deploy` does, and every replica's node checked. Fake GPUs and NeuronCores drive scheduling
only: the replicas run on CPU (device "auto" falls back to it when torch sees no CUDA)."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serve_app.server import free_port
from tests import shared_ray

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
cluster_utils = pytest.importorskip("ray.cluster_utils")

ROOT = Path(__file__).resolve().parents[1]
GPU_STAGE = {"ray_actor_options": {"num_cpus": 0.1, "num_gpus": 0.25, "resources": {"gpu_node": 0.01}}}
INF2_STAGE = {"ray_actor_options": {"num_cpus": 0.1, "resources": {"neuron_cores": 1}}, "context": "static"}
BUNDLED_HINTS = json.loads((ROOT / "addons" / "bundled" / "chorus-fast" / "addon.json").read_text())["deployment"]


def _hints(encoders: dict[str, Any], decoder: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        m["deployment"] = {"encoders": encoders, "decoder": decoder}

    return edit


def _bundled_hints(m: dict[str, Any]) -> None:
    """The fixture addon with the hints the bundled voices ship (its own vocoder's too)."""
    m["deployment"] = {**copy.deepcopy(BUNDLED_HINTS), "vocoder": copy.deepcopy(BUNDLED_HINTS["decoder"])}


PORT = free_port()


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """node id -> cluster.yaml node type; each node offers what its type declares (two GPU nodes: what
    the autoscaler would start for the fixture models' GPU shares). Serve's one HTTP proxy listens on
    PORT: the fake nodes share one address, so EveryNode's proxies would share one port."""
    types = yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"]

    def args(name: str) -> dict[str, Any]:
        resources = dict(types[name]["resources"])
        return {
            "num_cpus": resources.pop("CPU"),
            "num_gpus": resources.pop("GPU", 0),
            "resources": resources,
            "include_log_monitor": False,  # no log goes to this driver: four nodes' tailers saved
        }

    shared_ray.stop()  # a cluster of its own: the session's shared Ray is not it
    c = cluster_utils.Cluster(initialize_head=True, head_node_args={**args("head"), "include_dashboard": False})
    nodes = {c.head_node.node_id: "head"}
    for name in ("gpu_g5", "gpu_g5", "inf2"):
        nodes[c.add_node(**args(name)).node_id] = name
    try:
        ray.init(address=c.address, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": PORT}, proxy_location="HeadOnly")
        yield nodes
    finally:
        serve.shutdown()
        ray.shutdown()
        c.shutdown()


def _replica_nodes(app: str) -> dict[str, list[str]]:
    """deployment -> the node id of each of its live replicas."""
    found: dict[str, list[str]] = {}
    for actor in ray._private.state.actors().values():
        kind, _, rest = actor["ActorClassName"].partition(":")
        if kind == "ServeReplica" and actor["State"] == "ALIVE" and rest.startswith(f"{app}:"):
            found.setdefault(rest.split(":", 1)[1], []).append(actor["Address"]["NodeID"])
    return found


def _deploy_file(config: Path, addons: list[str]) -> None:
    """`serve deploy` of the shipped file, but for the addons (the fixtures) and the one HTTP proxy."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load(config.read_text())
    data["proxy_location"] = "HeadOnly"
    data["http_options"] = {"host": "127.0.0.1", "port": PORT}
    for app in data["applications"]:
        app["args"]["addons"] = addons
    serve_start().deploy_apps(ServeDeploySchema.model_validate(data))
    deadline = time.monotonic() + 300
    while (status := serve.status().applications.get("chorus")) is None or status.status != "RUNNING":
        assert status is None or status.status in ("NOT_STARTED", "DEPLOYING"), status
        assert time.monotonic() < deadline, "the application never became RUNNING"
        time.sleep(1)


def _speaks(model: str) -> None:
    response = httpx.post(
        f"http://127.0.0.1:{PORT}/v1/audio/speech",
        json={"model": model, "input": "Placed.", "response_format": "wav"},
        timeout=120,
    )
    assert response.status_code == 200 and response.content[:4] == b"RIFF" and len(response.content) > 1000


def test_replicas_land_on_the_nodes_the_addon_names(cluster: dict[str, str], edit_addon: Callable[..., Path]) -> None:
    from serve_app.app import AppArgs, build_app

    # one addon whose two stages name different node types: each stage's hint is its own
    taco = edit_addon("tiny-taco", _hints(encoders=GPU_STAGE, decoder=INF2_STAGE))
    one = {"num_replicas": 1}  # placement is the point, not the second decoder replica (tests/test_serve_faults.py)
    serve.run(
        build_app(AppArgs(addons=[str(taco)], deployments={"tiny-taco-decoder": one})),
        name="placed",
        route_prefix="/placed",
    )
    by_type = {dep: {cluster[n] for n in nodes} for dep, nodes in _replica_nodes("placed").items()}
    assert by_type["tiny-taco-encoders"] == {"gpu_g5"}
    assert by_type["tiny-taco-decoder"] == {"inf2"}
    serve.delete("placed")


def test_the_shipped_cluster_config_puts_every_stage_on_gpu_nodes(
    cluster: dict[str, str], edit_addon: Callable[..., Path]
) -> None:
    # one of each kind of stage (tiny-taco's are placed by the next test and the first)
    addons = [str(edit_addon(name, _bundled_hints)) for name in ("tiny-fast", "tiny-neural")]
    _deploy_file(ROOT / "serve_app" / "serve_config.cluster.yaml", addons)
    try:
        placed = _replica_nodes("chorus")
        assert {dep: sorted({cluster[n] for n in nodes}) for dep, nodes in placed.items()} == {
            "ingress": ["head"],
            "universal-vocoder": ["gpu_g5"],
            "tiny-neural-vocoder": ["gpu_g5"],  # an addon's own waveform stage too
            **{f"{m}-{s}": ["gpu_g5"] for m in ("tiny-fast", "tiny-neural") for s in ("encoders", "decoder")},
        }
        assert all(len(nodes) == 1 for nodes in placed.values())  # the config's starting replica counts
        _speaks("tiny-fast")
        _speaks("tiny-neural")
    finally:
        serve.delete("chorus")


def test_the_inferentia_config_puts_the_acoustic_models_on_the_inf2_node(
    cluster: dict[str, str], edit_addon: Callable[..., Path]
) -> None:
    taco = str(edit_addon("tiny-taco", _bundled_hints))  # GPU hints, overridden by the config's stages
    _deploy_file(ROOT / "serve_app" / "serve_config.inferentia.yaml", [taco])
    try:
        placed = {dep: sorted({cluster[n] for n in nodes}) for dep, nodes in _replica_nodes("chorus").items()}
        assert placed == {
            "ingress": ["head"],
            "universal-vocoder": ["gpu_g5"],
            "tiny-taco-encoders": ["inf2"],
            "tiny-taco-decoder": ["inf2"],
        }
        _speaks("tiny-taco")
    finally:
        serve.delete("chorus")
