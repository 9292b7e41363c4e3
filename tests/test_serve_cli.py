"""`chorus serve` as a user runs it, and the repo's Serve config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.server import read_config
from tests.helpers import run_cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_repo_serve_config_builds(fixture_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serve_app.app import build_app

    monkeypatch.setenv("CHORUS_ADDON_PATH", str(fixture_dir))
    config = read_config(ROOT / "serve_app" / "serve_config.yaml")
    assert [a.import_path for a in config.applications] == ["serve_app:build_app"]
    for app in config.applications:
        build_app(app.args)  # binds the graph offline: validates args, addons and options


def test_bad_serve_config_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "serve.yaml"
    bad.write_text("applications:\n  - import_path: other:app\n")
    with pytest.raises(ValueError, match="chorus serve runs serve_app:build_app"):
        read_config(bad)
    result = run_cli("serve", "--config", str(bad), timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_local_serve_config_runs_the_bundled_gpu_hints_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """chorus serve --config serve_app/serve_config.yaml builds before its Ray starts: the bundled voices'
    GPU-node hints are dropped where this machine lacks them, so every replica can schedule here."""
    from serve_app.app import resolve
    from serve_app.placement import local_offer

    monkeypatch.delenv("CHORUS_ADDON_PATH", raising=False)
    [app] = read_config(ROOT / "serve_app" / "serve_config.yaml").applications
    offer = local_offer()
    for name, options in resolve(app.args).options.items():
        actor = options["ray_actor_options"]
        assert actor.get("num_gpus", 0) <= offer.get("GPU", 0), name
        assert all(offer.get(k, 0) >= v for k, v in (actor.get("resources") or {}).items()), name


def test_local_ray_offers_every_replica_a_cpu_token(fixture_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chorus serve sizes its Ray's logical CPUs so that every replica of every model schedules (a third
    model made `make serve` wait forever on 2 cores)."""
    from serve_app import placement
    from serve_app.app import resolve
    from serve_app.server import local_cpus

    monkeypatch.setenv("CHORUS_ADDON_PATH", str(fixture_dir))
    config = read_config(ROOT / "serve_app" / "serve_config.yaml")
    asked = sum(
        placement.replicas(o) * placement.need(o)["CPU"]
        for app in config.applications
        for o in resolve(app.args).options.values()
    )
    assert asked > 2  # the fixture folder alone asks for more than two cores' worth
    assert local_cpus(config) >= 2 * asked
