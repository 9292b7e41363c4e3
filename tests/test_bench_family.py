"""``chorus bench family``: its core on the tiny Piper fixture, one family of three copies, one Ray."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from serve_app.bench_family import (
    FamilyBenchResult,
    copy_voices,
    format_family,
    plan_family,
    replica_deployment,
    run_family,
    traffic,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # runs a Ray Serve of its own


def test_copies_share_the_network_files_and_have_names_of_their_own(fixture_dir: Path, tmp_path: Path) -> None:
    source = fixture_dir / "tiny-piper"
    names = copy_voices(source, tmp_path / "family", 3, "tiny")
    assert names == ["tiny-000", "tiny-001", "tiny-002"]
    for name in names:
        manifest = json.loads((tmp_path / "family" / name / "addon.json").read_text())
        assert manifest["name"] == name
        for spec in manifest["networks"].values():
            assert (tmp_path / "family" / name / spec["file"]).stat().st_ino == (source / spec["file"]).stat().st_ino
    assert json.loads((source / "addon.json").read_text())["name"] == "tiny-piper"  # the source untouched


def test_traffic_is_round_robin_or_a_seeded_zipf_draw() -> None:
    names = [f"v{i}" for i in range(10)]
    assert traffic(names, "uniform", 4, 0) == names  # every voice at least once
    assert traffic(names, "uniform", 12, 0) == names + names[:2]
    zipf = traffic(names, "zipf", 2000, 7)
    assert zipf == traffic(names, "zipf", 2000, 7)
    counts = Counter(zipf)
    assert counts["v0"] > counts["v1"] > counts["v4"] > counts.get("v9", 0)  # rank 1 the most asked
    assert 0.30 < counts["v0"] / len(zipf) < 0.45  # 1 / H(10, 1.1) = 0.38


def test_replicas_are_found_by_title_even_while_they_run_a_method() -> None:
    """Ray titles a replica by its deployment, plus the method while it runs one (a health check,
    a request): a memory reading taken then must still count it."""
    assert replica_deployment("ray::ServeReplica:chorus:family-decoder") == "family-decoder"
    assert replica_deployment("ray::ServeReplica:chorus:family-vocoder.check_health") == "family-vocoder"
    assert replica_deployment("ray::ServeReplica:chorus:v1.2-encoders.handle_request_streaming") == "v1.2-encoders"
    assert replica_deployment("ray::ServeReplica:chorus:v1.2-encoders") == "v1.2-encoders"
    assert replica_deployment("ray::ServeReplica:other:family-decoder") is None  # another app's
    assert replica_deployment("ray::ServeController") is None


@pytest.fixture
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHORUS_IMPORT_CACHE", str(tmp_path / "import-cache"))


@pytest.mark.usefixtures("_cache")
def test_a_family_of_three_on_cap_one_is_measured(fixture_dir: Path) -> None:
    plan = plan_family(str(fixture_dir / "tiny-piper"), [3], cap=1, requests=2, concurrency=2)
    result = run_family(replace(plan, baseline=False, admission=False))  # one server: the family alone
    assert isinstance(result, FamilyBenchResult)
    assert set(result.load_stages_s) == {"encoders", "decoder", "vocoder"} and result.load_s > 0
    (row,) = result.rows
    assert (row.system, row.voices, row.cap) == ("family", 3, 1)
    assert row.voices_answered == 3 and row.swept == 0 and not row.errors
    assert row.cold.n == 2 and row.cold.p50_ms >= 0 and row.cold.p99_ms >= row.cold.p50_ms
    assert row.warm.n == 2 and row.warm.p50_ms >= 0
    stages = {s.stage: s for s in row.stages}
    assert set(stages) == {"encoders", "decoder", "vocoder"}
    assert stages["encoders"].replicas == 1 and stages["decoder"].replicas == 2  # the defaults
    assert all(s.idle_mib > 0 and s.end_mib > 0 and s.per_voice_est_mib > 0 for s in stages.values())
    assert 0 < row.rss_idle_mib <= row.rss_peak_mib and row.rss_end_mib <= row.rss_peak_mib
    assert row.pss_end_mib > 0 and row.server_rss_mib > row.rss_end_mib
    # cap 1: each stage's bound is what it held at ready plus one voice per replica, the first
    # voice as measured (it carries the replica's working set), at least the estimate
    for s in stages.values():
        assert s.first_voice_mib >= s.per_voice_est_mib
        assert math.isclose(s.bound_mib, s.idle_mib + s.replicas * s.first_voice_mib)
    assert math.isclose(row.bound_mib, sum(s.bound_mib for s in stages.values()))
    uniform, zipf = row.traffic
    assert (uniform.pattern, uniform.requests, zipf.pattern, zipf.requests) == ("uniform", 3, "zipf", 2)
    for t in row.traffic:
        assert t.ok + t.refused == t.requests and t.ok > 0 and t.throughput > 0
    assert uniform.expected_cold == 3  # round robin over three voices, one held: every one a load
    (check,) = result.checks()
    assert check["voices"] == 3 and check["every_voice_answered"] is True
    assert math.isnan(check["warm_p50_over_single"])  # no single-voice baseline in this run
    json.dumps(result.as_dict())
    report = format_family(result)
    assert "family" in report and "uniform" in report and "zipf" in report
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _serves(p)], "a server outlived the bench"


def _serves(pid: str) -> bool:
    try:
        line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"chorus-bench-family-" in line
