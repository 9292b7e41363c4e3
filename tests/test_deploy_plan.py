"""`chorus deploy plan CONFIG --cluster cluster.yaml`: where each deployment goes, before anything starts;
a config asking for what no node type offers is refused in one line naming the deployment and resource."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import chorus, run_cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_CONFIG = ROOT / "serve_app" / "serve_config.cluster.yaml"


def test_plan_prints_the_table_for_the_shipped_config() -> None:
    result = chorus("deploy", "plan", str(CLUSTER_CONFIG), "--cluster", str(ROOT / "cluster.yaml"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("deployment"))
    for column in ("replicas", "num_cpus", "num_gpus", "custom resources", "node type"):
        assert column in header
    rows = {line.split()[0]: line for line in lines if line.startswith(("ingress", "universal-", "chorus-"))}
    assert rows["ingress"].rstrip().endswith("head")
    assert rows["chorus-fast-decoder"].split()[1:4] == ["1-4", "(auto)", "0.25"]
    assert all(rows[n].rstrip().endswith("gpu_g5") for n in rows if n != "ingress")


def _variant(tmp_path: Path, deployments: dict[str, object]) -> Path:
    config = yaml.safe_load(CLUSTER_CONFIG.read_text())
    config["applications"][0]["args"]["deployments"].update(deployments)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("deployments", "expected"),
    [
        (
            {"chorus-fast-decoder": {"ray_actor_options": {"resources": {"tpu_node": 0.01}}}},
            "deployment chorus-fast-decoder asks for tpu_node 0.01: no node type offers tpu_node",
        ),
        (
            {"universal-vocoder": {"ray_actor_options": {"num_gpus": 2}}},
            "deployment universal-vocoder asks for more than one node offers: closest node type gpu_g5 lacks GPU 2 (has 1)",
        ),
        (
            {"chorus-taco-encoders": {"ray_actor_options": {"num_gpus": 0, "resources": {"neuron_cores": 4}}}},
            "deployment chorus-taco-encoders asks for more than one node offers: closest node type inf2 lacks neuron_cores 4",
        ),
        (
            {"chorus-fast-encoders": {"ray_actor_options": {"accelerator_type": "H100"}}},
            "deployment chorus-fast-encoders asks for accelerator_type:H100 0.001: no node type offers accelerator_type:H100",
        ),
        (
            {"ingress": {"ray_actor_options": {"num_cpus": 8}}},
            "deployment ingress asks for more than one node offers: closest node type head lacks CPU 8 (has 4)",
        ),
    ],
)
def test_plan_refuses_what_no_node_type_offers(tmp_path: Path, deployments: dict[str, object], expected: str) -> None:
    result = chorus("deploy", "plan", str(_variant(tmp_path, deployments)), "--cluster", str(ROOT / "cluster.yaml"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr


def test_plan_refuses_a_cluster_without_the_gpu_type(tmp_path: Path) -> None:
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    del cluster["available_node_types"]["gpu_g5"]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cluster))
    result = chorus("deploy", "plan", str(CLUSTER_CONFIG), "--cluster", str(path))
    assert result.returncode == 2 and "no node type offers GPU, gpu_node" in result.stderr, result.stderr


def test_plan_needs_no_ray_and_reads_no_missing_files(tmp_path: Path) -> None:
    """In a process of its own, as users run it, with no Ray cluster to ask."""
    result = run_cli("deploy", "plan", str(CLUSTER_CONFIG), "--cluster", str(tmp_path / "none.yaml"), timeout=120)
    assert result.returncode == 2 and "cannot read --cluster" in result.stderr and "Traceback" not in result.stderr
