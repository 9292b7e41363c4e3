"""Voice families: many voices of one shape served from one pool of multiplexed replicas."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import addons
from addons.engine.families import RESIDENT_FACTOR, VOICE_OVERHEAD_BYTES, scan_folder, signature, voices_per_replica
from tests.expect import in_process_pcm
from tests.helpers import run_cli
from tests.shared_ray import serve_apps

pytestmark = [pytest.mark.ray, pytest.mark.shared_ray, pytest.mark.slow]

TEXT = "One pool of replicas. Many voices in it, each loaded when a listener asks."


def _copy_voice(source: Path, target: Path, name: str) -> Path:
    """``source``'s addon as ``name`` in ``target`` (network files hard-linked)."""
    shutil.copytree(source, target, copy_function=os.link)
    manifest = json.loads((target / "addon.json").read_text())
    manifest["name"] = name
    (target / "addon.json").unlink()  # a file of its own, not the linked one
    (target / "addon.json").write_text(json.dumps(manifest))
    return target


@pytest.fixture(scope="module")
def voices(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three copies of tiny-piper under other names, a Piper pair to import on the way
    in, and two broken voices (a truncated network, a manifest that is not JSON)."""
    folder = tmp_path_factory.mktemp("voices") / "tinies"
    folder.mkdir()
    for name in ("tiny-a", "tiny-b", "tiny-c"):
        _copy_voice(fixture_dir / "tiny-piper", folder / name, name)
    broken = _copy_voice(fixture_dir / "tiny-piper", folder / "tiny-truncated", "tiny-truncated")
    front = broken / "front.onnx"
    data = front.read_bytes()
    front.unlink()  # a new file, not the linked one
    front.write_bytes(data[: len(data) // 3])
    (folder / "tiny-garbled").mkdir()
    (folder / "tiny-garbled" / "addon.json").write_text("{not json")
    sources = fixture_dir / "piper-sources"
    for suffix in (".onnx", ".onnx.json"):
        shutil.copy(sources / f"en_US-tiny-medium{suffix}", folder / f"en_US-tiny-medium{suffix}")
    return folder


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHORUS_IMPORT_CACHE", str(tmp_path_factory.getbasetemp() / "import-cache"))


def test_folder_scan_groups_voices_and_refuses_broken_ones_by_name(voices: Path) -> None:
    scan = scan_folder(voices)
    assert [f.name for f in scan.families] == ["tinies"]
    assert sorted(scan.families[0].members) == ["en_us-tiny-medium", "tiny-a", "tiny-b", "tiny-c"]
    refused = {r.name: r.reason for r in scan.refused}
    assert sorted(refused) == ["tiny-garbled", "tiny-truncated"]
    assert "front.onnx" in refused["tiny-truncated"]
    assert "not valid JSON" in refused["tiny-garbled"]
    imported = scan.families[0].members["en_us-tiny-medium"]
    assert imported.parent == Path(os.environ["CHORUS_IMPORT_CACHE"])
    assert addons.read_manifest(imported).name == "en_us-tiny-medium"


def test_piper_pairs_of_one_content_are_imported_once(voices: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pairs"
    folder.mkdir()
    for stem in ("en_US-one-medium", "en_US-two-medium"):
        for suffix in (".onnx", ".onnx.json"):
            shutil.copy(voices / f"en_US-tiny-medium{suffix}", folder / f"{stem}{suffix}")
    (folder / "en_US-lonely-medium.onnx").write_bytes(b"no config beside me")
    cache = tmp_path / "cache"
    scan = scan_folder(folder, cache)
    members = scan.families[0].members
    assert sorted(members) == ["en_us-one-medium", "en_us-two-medium"]
    one, two = (members[n] / "front.onnx" for n in sorted(members))
    assert one.stat().st_ino == two.stat().st_ino  # the second name shares the first import's files
    assert [(r.name, "no Piper config" in r.reason) for r in scan.refused] == [("en_US-lonely-medium", True)]
    again = scan_folder(folder, cache)  # a second start imports nothing: the same directories
    assert again.families[0].members == members


def test_voices_of_other_shapes_form_their_own_family(voices: Path, fixture_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    _copy_voice(fixture_dir / "tiny-piper", folder / "one", "one")
    _copy_voice(fixture_dir / "tiny-piper", folder / "two", "two")
    _copy_voice(fixture_dir / "tiny-piper-multi", folder / "multi", "multi")
    scan = scan_folder(folder, tmp_path / "cache", family="voices")
    assert [(f.name, sorted(f.members)) for f in scan.families] == [("voices", ["one", "two"]), ("voices-2", ["multi"])]
    same = [addons.read_manifest(folder / n) for n in ("one", "two")]
    assert signature(same[0]) == signature(same[1]) != signature(addons.read_manifest(folder / "multi"))


def test_voices_per_replica_follows_the_memory_each_needs() -> None:
    need = 56 << 20
    per_voice = need * RESIDENT_FACTOR + VOICE_OVERHEAD_BYTES
    assert voices_per_replica(need, math.ceil(4 * per_voice), 50) == 4
    assert voices_per_replica(need, math.ceil(4 * per_voice) - 1, 50) == 3
    assert voices_per_replica(need, 1 << 20, 50) == 1  # never none
    assert voices_per_replica(0, 1 << 30, 7) == 7  # never more than the family


def test_resolve_plans_one_set_of_deployments_for_the_family(voices: Path, fixture_dir: Path) -> None:
    from serve_app.app import AppArgs, resolve

    args = AppArgs(
        addons=[str(fixture_dir / "tiny-fast")],
        families=[{"voices_dir": str(voices), "voices_per_replica": 2}],
    )
    resolved = resolve(args)
    (plan,) = resolved.families
    assert plan.name == "tinies" and plan.caps == {"encoders": 2, "decoder": 2, "vocoder": 2}
    assert sorted(r.name for r in plan.refused) == ["tiny-garbled", "tiny-truncated"]
    assert {"tinies-encoders", "tinies-decoder", "tinies-vocoder"} <= set(resolved.options)
    assert not any(name.startswith("tiny-a") for name in resolved.options)  # no graph per voice


def test_resolve_caps_from_memory_and_refuses_taken_names(voices: Path, fixture_dir: Path, tmp_path: Path) -> None:
    from serve_app.app import AppArgs, resolve

    clash = tmp_path / "clash"
    clash.mkdir()
    _copy_voice(fixture_dir / "tiny-piper", clash / "tiny-fast", "tiny-fast")  # the addon's name
    _copy_voice(fixture_dir / "tiny-piper", clash / "fresh", "fresh")
    args = AppArgs(
        addons=[str(fixture_dir / "tiny-fast")], families=[{"voices_dir": str(clash), "replica_memory_mb": 16}]
    )
    (plan,) = resolve(args).families
    assert sorted(plan.family.members) == ["fresh"]
    assert [r.name for r in plan.refused] == ["tiny-fast"]
    front = (clash / "fresh" / "front.onnx").stat().st_size
    assert plan.caps["encoders"] == voices_per_replica(front, 16 << 20, 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no voice can be served"):
        resolve(AppArgs(addons=[str(fixture_dir / "tiny-fast")], families=[{"voices_dir": str(empty)}]))


def test_cli_refuses_a_missing_voices_dir(tmp_path: Path) -> None:
    done = run_cli("serve", "--voices-dir", str(tmp_path / "nowhere"), "--port", "0")
    assert done.returncode == 2
    assert "--voices-dir" in done.stderr and "no such folder" in done.stderr
    assert "Traceback" not in done.stderr


# -- served ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family_server(voices: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The family served with one voice per replica (every change of voice on a replica is a load)."""
    from serve_app.app import AppArgs, build_app

    os.environ["CHORUS_IMPORT_CACHE"] = str(tmp_path_factory.getbasetemp() / "import-cache")
    # a fifth voice, good at the start, whose files turn bad while the others serve
    _copy_voice(voices / "tiny-a", voices / "tiny-spare", "tiny-spare")
    args = AppArgs(
        families=[{"voices_dir": str(voices), "voices_per_replica": 1}],
        families_only=True,
        deployments={"tinies-decoder": {"num_replicas": 2}},
        admission=False,
    )
    try:
        with serve_apps((build_app(args), "family", "/")) as url:
            yield url
    finally:
        shutil.rmtree(voices / "tiny-spare", ignore_errors=True)


def _speech(url: str, model: str, text: str = TEXT) -> httpx.Response:
    body = {"model": model, "input": text, "response_format": "pcm", "sample_rate": "native"}
    return httpx.post(f"{url}/v1/audio/speech", json=body, timeout=120)


def _in_process(directory: Path, text: str = TEXT) -> bytes:
    return in_process_pcm(directory, text).tobytes()


def test_every_voice_of_the_family_answers_as_in_process(family_server: str, voices: Path) -> None:
    models = httpx.get(f"{family_server}/v1/models", timeout=30).json()["data"]
    listed = {m["id"]: m["family"] for m in models}
    assert listed == {v: "tinies" for v in ("en_us-tiny-medium", "tiny-a", "tiny-b", "tiny-c", "tiny-spare")}
    want = _in_process(voices / "tiny-a")
    for model in ("tiny-a", "tiny-b", "tiny-c", "en_us-tiny-medium", "tiny-a"):  # each switch loads a voice
        got = _speech(family_server, model)
        assert got.status_code == 200, got.text
        assert got.headers["X-Chorus-Model"] == model
        assert got.content == want  # copies of one voice: one audio, to the bit, HTTP as in process
    from ray import serve

    encoders = serve.get_deployment_handle("tinies-encoders", app_name="family")
    held = encoders.voices.remote().result()
    assert len(held["held"]) == 1  # the cap: one voice per replica, the others evicted
    assert held["loads"] >= 5
    assert held["alive"] == 1  # and the evicted ones are gone from memory, not only from the list


def test_the_family_as_model_and_a_voice_of_it_as_voice(family_server: str, voices: Path) -> None:
    """OpenAI clients pick voices by ``voice``: the family's name as the model, a voice of it as the voice."""
    body = {"model": "tinies", "voice": "tiny-b", "input": TEXT, "response_format": "pcm", "sample_rate": "native"}
    got = httpx.post(f"{family_server}/v1/audio/speech", json=body, timeout=120)
    assert got.status_code == 200, got.text
    assert got.headers["X-Chorus-Model"] == "tiny-b" and got.headers["X-Chorus-Voice"] == "default"
    assert got.content == _in_process(voices / "tiny-a")
    wrong = httpx.post(f"{family_server}/v1/audio/speech", json={**body, "voice": "alloy"}, timeout=30)
    assert wrong.status_code == 404
    error = wrong.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "voice family" in error["message"] and "tiny-b" in error["message"]


def test_concurrent_voices_on_few_replicas_all_complete(family_server: str, voices: Path) -> None:
    want = _in_process(voices / "tiny-a")
    results: dict[str, Any] = {}

    def listen(model: str) -> None:
        try:
            results[model] = _speech(family_server, model)
        except BaseException as exc:
            results[model] = exc

    names = ["tiny-a", "tiny-b", "tiny-c", "en_us-tiny-medium"]
    threads = [threading.Thread(target=listen, args=(m,)) for m in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    for model in names:
        response = results[model]
        assert isinstance(response, httpx.Response), repr(response)
        assert response.status_code == 200, response.text
        assert response.content == want


def test_a_voice_whose_files_turn_bad_is_refused_by_name_and_others_serve(family_server: str, voices: Path) -> None:
    front = voices / "tiny-spare" / "front.onnx"
    data = front.read_bytes()
    front.unlink()
    front.write_bytes(data[:100])
    for _ in range(2):  # not held anywhere (one voice per replica, others asked since): it must load, and fails
        bad = _speech(family_server, "tiny-spare")
        assert bad.status_code == 503, bad.text
        error = bad.json()["error"]
        assert error["code"] == "voice_unavailable" and error["param"] == "model"
        assert "tiny-spare" in error["message"] and "front.onnx" in error["message"]
        assert "Traceback" not in bad.text
    assert _speech(family_server, "tiny-b").status_code == 200


def test_killed_family_decoder_replica_leaves_streams_whole(family_server: str, voices: Path) -> None:
    from ray import serve

    long_text = " ".join([TEXT] * 4)  # eight sentences: the streams are under way when a busy replica dies
    want = _in_process(voices / "tiny-a", long_text)
    decoder = serve.get_deployment_handle("tinies-decoder", app_name="family")
    results: list[Any] = []

    def listen(model: str) -> None:
        try:
            results.append(_speech(family_server, model, long_text))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=listen, args=(m,)) for m in ("tiny-a", "tiny-b", "tiny-a", "tiny-c")]
    for t in threads:
        t.start()
    deadline, victim = time.monotonic() + 60, None
    while victim is None and time.monotonic() < deadline:
        stats = decoder.stats.remote().result()
        if stats["active"]:
            victim = int(stats["pid"])
        time.sleep(0.01)
    assert victim is not None, "no decoder replica was busy"
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join(timeout=180)
    assert len(results) == 4
    for response in results:
        assert isinstance(response, httpx.Response), repr(response)
        assert response.status_code == 200, response.text
        assert response.content == want  # resumed on the other replica (loading the voice there): whole
