"""Placement follows the addon's config: on a head, a GPU-tagged and an Inferentia-tagged node,
each addon's encoders and decoder replicas land where its deployment hints send them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
cluster_utils = pytest.importorskip("ray.cluster_utils")

GPU_STAGE = {"ray_actor_options": {"num_cpus": 0.1, "num_gpus": 0.25, "resources": {"gpu_node": 0.01}}}
INF2_STAGE = {"ray_actor_options": {"num_cpus": 0.1, "resources": {"neuron_cores": 1}}, "context": "static"}


def _hint(stage: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        m["deployment"] = {"encoders": stage, "decoder": stage}

    return edit


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    c = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    gpu = c.add_node(num_cpus=2, num_gpus=1, resources={"gpu_node": 1})
    inf2 = c.add_node(num_cpus=2, resources={"neuron_cores": 2, "inf2_node": 1})
    try:
        ray.init(address=c.address, log_to_driver=False)
        yield {"gpu": gpu.node_id, "inf2": inf2.node_id, "head": c.head_node.node_id}
    finally:
        serve.shutdown()
        ray.shutdown()
        c.shutdown()


def test_replicas_land_on_the_nodes_the_addon_names(cluster: dict[str, str], edit_addon: Callable[..., Path]) -> None:
    from serve_app.app import AppArgs, build_app

    fast = edit_addon("tiny-fast", _hint(GPU_STAGE))
    taco = edit_addon("tiny-taco", _hint(INF2_STAGE))
    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    one = {"num_replicas": 1}  # placement is the point, not the second decoder replica (tests/test_serve_faults.py)
    args = AppArgs(addons=[str(fast), str(taco)], deployments={"tiny-fast-decoder": one, "tiny-taco-decoder": one})
    serve.run(build_app(args), name="placed", route_prefix="/placed")

    def node_of(name: str) -> str:
        return serve.get_deployment_handle(name, app_name="placed").node_id.remote().result()

    assert node_of("tiny-fast-encoders") == cluster["gpu"]
    assert node_of("tiny-fast-decoder") == cluster["gpu"]
    assert node_of("tiny-taco-encoders") == cluster["inf2"]
    assert node_of("tiny-taco-decoder") == cluster["inf2"]
    serve.delete("placed")
