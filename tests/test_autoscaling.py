"""Autoscaling on load (busy share of replicas), and the deployment option layers build_app applies."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from serve_app import autoscaling
from serve_app.autoscaling import POLICY_FUNCTION, TARGET_BUSY, BusyMeter, desired_replicas, load_policy
from tests.helpers import Clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(autoscaling.time, "monotonic", c)
    return c


def test_busy_share_counts_overlapping_work_once(clock: Clock) -> None:
    meter = BusyMeter()
    clock.now += 1.0  # idle
    meter.enter()
    clock.now += 0.5
    meter.enter()  # a second stream's work overlaps the first's
    clock.now += 0.5
    meter.leave()
    meter.leave()
    clock.now += 2.0  # idle
    assert meter.report() == pytest.approx(1.0 / 4.0)
    meter.enter()  # work in progress counts up to the report, and on into the next window
    clock.now += 1.0
    assert meter.report() == pytest.approx(1.0)
    clock.now += 1.0
    meter.leave()
    clock.now += 1.0
    assert meter.report() == pytest.approx(0.5)


def test_replicas_follow_the_summed_busy_share() -> None:
    assert desired_replicas({}, 3) == 3  # no report yet: keep
    assert desired_replicas({"a": 0.9, "b": 0.9}, 2) == pytest.approx(1.8 / TARGET_BUSY)
    assert desired_replicas({"a": 0.05, "b": 0.0}, 2) == 1.0
    ctx = SimpleNamespace(aggregated_metrics={"busy": {"r1": 0.95, "r2": 0.85}}, current_num_replicas=2)
    replicas, state = load_policy(ctx)
    assert replicas > 2 and state == {}


def test_replicas_report_busy_share_through_serve() -> None:
    from serve_app.deployments import _Replica

    replica = _Replica()
    replica._timed(time.sleep, 0.05)
    stats = replica.record_autoscaling_stats()
    assert set(stats) == {"busy", "streams"} and 0 < stats["busy"] <= 1


def _app_options(application: Any) -> dict[str, dict[str, Any]]:
    """Deployment name -> options, for every deployment bound in the graph."""
    found: dict[str, dict[str, Any]] = {}

    def visit(node: Any) -> None:
        deployment = getattr(node, "_bound_deployment", None)
        if deployment is None:
            return
        found[deployment.name] = {
            "ray_actor_options": deployment.ray_actor_options,
            "autoscaling_config": deployment._deployment_config.autoscaling_config,
            "num_replicas": deployment._deployment_config.num_replicas,
            "max_ongoing_requests": deployment.max_ongoing_requests,
            "init_args": deployment._replica_config.init_args,
        }
        for arg in list(deployment._replica_config.init_args) + list(deployment._replica_config.init_kwargs.values()):
            for item in arg.values() if isinstance(arg, dict) else [arg]:
                for sub in item if isinstance(item, tuple) else [item]:
                    visit(sub)

    visit(application)
    return found


def test_hints_and_overrides_keep_the_default_cpus_and_decoders_scale_on_load(
    fixture_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serve_app.app import AppArgs, build_app

    args = AppArgs(
        addons=[str(fixture_dir / "tiny-fast")],
        deployments={
            "tiny-fast-decoder": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4}},
            "tiny-fast-encoders": {
                "ray_actor_options": {"resources": {"gpu_node": 0.01}},
                "autoscaling_config": {"min_replicas": 1, "max_replicas": 2},
            },
            "universal-vocoder": {"autoscaling_config": {"max_replicas": 3, "policy": "requests"}},
        },
    )
    options = _app_options(build_app(args))
    assert set(options) == {"ingress", "tiny-fast-encoders", "tiny-fast-decoder", "universal-vocoder"}
    enc = options["tiny-fast-encoders"]
    assert enc["ray_actor_options"]["num_cpus"] == 0.25  # the code default survives a resources-only override
    assert enc["ray_actor_options"]["resources"] == {"gpu_node": 0.01}
    assert enc["autoscaling_config"].policy.policy_function != POLICY_FUNCTION  # Ray's own, by default
    dec = options["tiny-fast-decoder"]
    assert dec["autoscaling_config"].policy.policy_function == POLICY_FUNCTION
    assert dec["autoscaling_config"].max_replicas == 4
    voc = options["universal-vocoder"]
    assert voc["autoscaling_config"].policy.policy_function != POLICY_FUNCTION  # asked for requests
    assert options["ingress"]["ray_actor_options"]["num_cpus"] == 0.25


def test_stage_nice_reaches_every_stage_replica_and_lowers_its_priority(fixture_dir: Path) -> None:
    """AppArgs.stage_nice is each stage's last constructor argument (not the ingress's), and a
    replica given it lowers its own process's priority by that much (0: left as it started)."""
    import os

    from serve_app.app import AppArgs, build_app
    from serve_app.deployments import EncodersDeployment

    options = _app_options(build_app(AppArgs(addons=[str(fixture_dir / "tiny-fast")], stage_nice=5)))
    at = {"tiny-fast-encoders": -1, "tiny-fast-decoder": -2, "universal-vocoder": -1}  # then the decoder's fused flag
    assert {name for name in options if name in at and options[name]["init_args"][at[name]] == 5} == set(at)
    assert 5 not in options["ingress"]["init_args"]
    plain = _app_options(build_app(AppArgs(addons=[str(fixture_dir / "tiny-fast")])))
    assert all(plain[name]["init_args"][i] == 0 for name, i in at.items())

    lower = EncodersDeployment.func_or_class._lower_priority
    for nice in (0, 5):
        before = os.nice(0)
        pid = os.fork()
        if pid == 0:  # the child lowers its own priority and reports it by exit status
            lower(nice)
            os._exit(os.nice(0) - before)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == min(nice, 19 - before), nice


def test_fused_vocoder_binds_no_vocoder_deployment(fixture_dir: Path) -> None:
    """AppArgs.fused_vocoder: the decoder replicas get the vocoder (their last argument), no
    vocoder deployment is bound, and options for one are refused by name; a list fuses only the
    models it names."""
    from serve_app.app import AppArgs, build_app

    addons = [str(fixture_dir / "tiny-universal"), str(fixture_dir / "tiny-neural")]
    options = _app_options(build_app(AppArgs(addons=addons, fused_vocoder=True)))
    assert set(options) == {
        "ingress",
        *(f"{m}-{s}" for m in ("tiny-universal", "tiny-neural") for s in ("encoders", "decoder")),
    }
    assert all(options[f"{m}-decoder"]["init_args"][-1] is True for m in ("tiny-universal", "tiny-neural"))
    plain = _app_options(build_app(AppArgs(addons=addons)))
    assert {"universal-vocoder", "tiny-neural-vocoder"} <= set(plain)
    assert plain["tiny-neural-decoder"]["init_args"][-1] is False
    with pytest.raises(ValueError, match="fused_vocoder"):
        build_app(AppArgs(addons=addons, fused_vocoder=True, deployments={"universal-vocoder": {"num_replicas": 2}}))
    # Per model: tiny-neural fused, tiny-universal still on the shared vocoder deployment.
    some = _app_options(build_app(AppArgs(addons=addons, fused_vocoder=["tiny-neural"])))
    assert "universal-vocoder" in some and "tiny-neural-vocoder" not in some
    assert some["tiny-neural-decoder"]["init_args"][-1] is True
    assert some["tiny-universal-decoder"]["init_args"][-1] is False
    with pytest.raises(ValueError, match="tiny-neural-vocoder"):
        build_app(AppArgs(addons=addons, fused_vocoder=["tiny-neural"], deployments={"tiny-neural-vocoder": {}}))
    with pytest.raises(ValueError, match="unknown models"):
        build_app(AppArgs(addons=addons, fused_vocoder=["nobody"]))
