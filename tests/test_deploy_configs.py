"""The shipped deployment files agree with each other, before anything starts: addon hints, the Serve
configs, cluster.yaml, the KubeRay RayService and the Dockerfile (which cannot be built here)."""

from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app import deploy_plan, placement

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"
CONFIGS = {
    name: ROOT / "serve_app" / f"{name}.yaml"
    for name in ("serve_config", "serve_config.cluster", "serve_config.inferentia")
}
RAYSERVICE = ROOT / "serve_app" / "deploy" / "rayservice.yaml"
DOCKERFILE = ROOT / "serve_app" / "deploy" / "Dockerfile"
STAGES = ("encoders", "decoder")


def _yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _types() -> dict[str, placement.NodeType]:
    return {t.name: t for t in placement.node_types(_yaml(CLUSTER))}


def _plan(config: Path) -> dict[str, tuple[str, ...]]:
    [(_, rows, _)] = deploy_plan.plan_config(config, CLUSTER)
    return {r.deployment: r.node_types for r in rows}


@pytest.mark.parametrize("addon", ["chorus-fast", "chorus-taco"])
def test_bundled_hints_are_the_shipped_gpu_stages(addon: str) -> None:
    hints = json.loads((ROOT / "addons" / "bundled" / addon / "addon.json").read_text())["deployment"]
    for stage in STAGES:
        assert hints[stage]["ray_actor_options"] == placement.SHIPPED_GPU_STAGES[stage]
        assert hints[stage]["context"] is None  # the Serve config's context decides (static on Inferentia)


def test_imported_piper_voices_get_the_same_hints(fixture_dir: Path) -> None:
    for manifest in fixture_dir.glob("*/addon.json"):
        data = json.loads(manifest.read_text())
        if "Piper voice" not in data["description"]:
            continue
        for stage in (*STAGES, "vocoder"):  # a Piper voice brings its own waveform stage
            assert data["deployment"][stage]["ray_actor_options"] == placement.SHIPPED_GPU_STAGES[stage]


def test_cluster_config_puts_every_stage_on_the_gpu_type_and_the_ingress_on_the_head() -> None:
    args = _yaml(CONFIGS["serve_config.cluster"])["applications"][0]["args"]
    assert args["placement"] == "cluster"
    for stage, options in args["stages"].items():
        assert options["ray_actor_options"] == placement.SHIPPED_GPU_STAGES[stage]
    where = _plan(CONFIGS["serve_config.cluster"])
    assert where.pop("ingress") == ("head",)
    assert where and all(types == ("gpu_g5",) for types in where.values()), where
    assert {"universal-vocoder", "chorus-fast-decoder", "chorus-taco-encoders"} <= set(where)


def test_inferentia_config_puts_the_acoustic_models_on_inf2() -> None:
    where = _plan(CONFIGS["serve_config.inferentia"])
    assert where.pop("ingress") == ("head",) and where.pop("universal-vocoder") == ("gpu_g5",)
    assert where and all(types == ("inf2",) for types in where.values()), where
    args = _yaml(CONFIGS["serve_config.inferentia"])["applications"][0]["args"]
    assert args["context"] == "static"
    for stage in STAGES:  # whole NeuronCores, within what one inf2 node has
        cores = args["stages"][stage]["ray_actor_options"]["resources"]["neuron_cores"]
        assert cores == int(cores) and cores <= _types()["inf2"].resources["neuron_cores"]


def test_cluster_yaml_tags_every_node_type_and_keeps_stages_off_the_head() -> None:
    types = _types()
    assert types["head"].head and types["head"].resources[placement.HEAD_TAG] == 1
    assert types["gpu_g5"].resources[placement.GPU_TAG] == 1 and types["gpu_g5"].resources["GPU"] == 1
    assert types["gpu_g5"].resources["accelerator_type:A10G"] == 1  # what EC2 reports for g5
    assert types["inf2"].resources[placement.NEURON_TAG] == 1
    for stage in placement.SHIPPED_GPU_STAGES.values():
        assert types["head"].lacks(placement.need({"ray_actor_options": stage}))


def test_local_config_plans_with_the_addons_hints() -> None:
    where = _plan(CONFIGS["serve_config"])
    assert where["chorus-fast-decoder"] == ("gpu_g5",)  # placement auto keeps hints on a tagged cluster


def test_one_machine_drops_the_hints_it_cannot_satisfy_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    from serve_app.app import AppArgs, resolve

    with caplog.at_level(logging.WARNING, logger="chorus.placement"):
        local = resolve(AppArgs(addons=["chorus-fast"])).options  # no Ray connected: built for this machine
    if placement.local_offer().get("GPU"):
        pytest.skip("this machine has a GPU: the hints' num_gpus stay")
    assert all(not o["ray_actor_options"].get("num_gpus") for o in local.values())
    assert all(not o["ray_actor_options"].get("resources") for o in local.values())
    assert "chorus-fast-decoder: this machine offers no num_gpus 0.25, gpu_node 0.01" in caplog.text
    kept = resolve(AppArgs(addons=["chorus-fast"], placement="cluster")).options
    assert kept["chorus-fast-decoder"]["ray_actor_options"] == placement.SHIPPED_GPU_STAGES["decoder"]
    explicit = {"chorus-fast-encoders": {"ray_actor_options": {"resources": {"gpu_node": 0.01}}}}
    assert resolve(AppArgs(addons=["chorus-fast"], deployments=explicit)).options["chorus-fast-encoders"][
        "ray_actor_options"
    ]["resources"] == {"gpu_node": 0.01}  # what the config asks for itself stays, under auto
    stripped = resolve(AppArgs(addons=["chorus-fast"], deployments=explicit, placement="local")).options
    assert not stripped["chorus-fast-encoders"]["ray_actor_options"]["resources"]


@pytest.mark.parametrize(
    ("actor", "message"),
    [
        ({"num_gpus": 0.25, "resources": {"neuron_cores": 1}}, "one kind"),
        ({"num_gpus": 1.5}, "whole GPUs only"),
        ({"num_gpus": 0, "accelerator_type": "A10G"}, "needs num_gpus"),
    ],
)
def test_mixed_or_unschedulable_requests_are_refused_by_name(actor: dict[str, Any], message: str) -> None:
    from serve_app.app import AppArgs, resolve

    args = AppArgs(
        addons=["chorus-fast"], placement="cluster", deployments={"chorus-fast-decoder": {"ray_actor_options": actor}}
    )
    with pytest.raises(placement.PlacementError, match=f"chorus-fast-decoder: .*{message}"):
        resolve(args)


def test_rayservice_serves_the_cluster_config_on_the_same_images_and_resources() -> None:
    service = _yaml(RAYSERVICE)
    assert service["kind"] == "RayService"
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == _yaml(CONFIGS["serve_config.cluster"])
    cluster = service["spec"]["rayClusterConfig"]
    import ray

    assert cluster["rayVersion"] == ray.__version__
    config = _yaml(CLUSTER)
    images = {config["docker"]["image"], config["available_node_types"]["inf2"]["docker"]["worker_image"]}
    head = cluster["headGroupSpec"]
    groups = {"head": head, **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}
    names = {"head": "head", "gpu-g5": "gpu_g5", "inf2": "inf2"}
    types = _types()
    for group_name, group in groups.items():
        node = types[names[group_name]]
        custom = json.loads(yaml.safe_load(group["rayStartParams"]["resources"]))
        assert custom == {k: v for k, v in node.resources.items() if k not in ("CPU", "GPU") and ":" not in k}
        assert float(group["rayStartParams"].get("num-gpus", 0)) == node.resources.get("GPU", 0)
        [container] = group["template"]["spec"]["containers"]
        assert container["image"].split(":")[0] in {i.split(":")[0] for i in images}
        if group_name != "head":
            assert group["maxReplicas"] == config["available_node_types"][names[group_name]]["max_workers"]


def _docker_steps() -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile step, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            steps.append((instruction.upper(), " ".join(rest.split())))
    return steps


def test_dockerfile_installs_with_the_makefile() -> None:
    steps = _docker_steps()
    makefile = (ROOT / "Makefile").read_text()
    base = [a for i, a in steps if i == "ARG" and a.startswith("BASE=")]
    assert base and base[0].startswith("BASE=python:3.11-"), base  # the venv's Python minor, on every node
    runs = [a for i, a in steps if i == "RUN"]
    [install] = [r for r in runs if "make install" in r]
    assert 'TORCH="${TORCH}"' in install
    default_torch = re.search(r"^TORCH := (\S+)", makefile, re.M)
    assert default_torch and f"TORCH={default_torch.group(1)}" in [a for i, a in steps if i == "ARG"]
    copied = " ".join(a for i, a in steps if i == "COPY" and steps.index((i, a)) < steps.index(("RUN", install)))
    for needed in ("pyproject.toml", "Makefile", "blocks", "addons", "serve_app"):
        assert needed in copied  # everything `pip install -e .` of the Makefile reads
    apt = next(r for r in runs if "apt-get install" in r)
    assert "make" in shlex.split(apt)
    assert any("ray[serve,default]==" in r and "boto3" in r for r in runs)  # the launcher's head needs both
    assert any("chorus-venv" in r for r in runs)  # cluster.yaml's commands use ~/chorus-venv
    workdir = next(a for i, a in steps if i == "WORKDIR")
    venv = re.search(r"^VENV := (\S+)", makefile, re.M)
    assert venv and f"{workdir}/{venv.group(1)}" in " ".join(runs)


def test_cluster_yaml_runs_the_image_and_its_venv() -> None:
    config = _yaml(CLUSTER)
    assert config["docker"]["image"] and config["docker"]["container_name"]
    commands = config["setup_commands"] + config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("~/chorus-venv/bin/" in c for c in commands if "pip" in c or "ray " in c)


@pytest.mark.parametrize("path", [*CONFIGS.values(), CLUSTER, RAYSERVICE])
def test_every_yaml_parses_and_every_config_builds_offline(path: Path) -> None:
    data = _yaml(path)
    assert isinstance(data, dict)
    if path in CONFIGS.values():
        from ray.serve.schema import ServeDeploySchema

        ServeDeploySchema.model_validate(data)  # what `serve deploy` checks first
