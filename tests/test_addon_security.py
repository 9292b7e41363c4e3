"""Loading an addon never runs code from it, and a broken addon is one clear line, never a traceback.

Each case plants a payload in one member of a real network archive. The payloads are live: the
test first shows that ``torch.export.load`` runs the ones it reaches (a marker file appears), then
that Chorus refuses the file, naming it, without the marker appearing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import addons
from addons.formats.netfile import NetworkFileError, check_expression, load_program
from tests.helpers import chorus

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates ``path``: proof that code from the file ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def _pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": _Payload(marker)}, buffer)
    return buffer.getvalue()


def _rewrite(src: Path, dst: Path, edit: Callable[[str, dict[str, bytes]], None]) -> None:
    """Copy the archive ``src`` to ``dst`` with ``edit(root, members)`` applied to its members."""
    with zipfile.ZipFile(src) as z:
        members = {info.filename: z.read(info) for info in z.infolist()}
    root = next(iter(members)).split("/", 1)[0]
    edit(root, members)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _json_edit(name: str, change: Callable[[Any], None]) -> Callable[[str, dict[str, bytes]], None]:
    def edit(root: str, members: dict[str, bytes]) -> None:
        doc = json.loads(members[f"{root}/{name}"])
        change(doc)
        members[f"{root}/{name}"] = json.dumps(doc).encode()

    return edit


def _pickled_weight(marker: Path) -> Callable[[str, dict[str, bytes]], None]:
    def edit(root: str, members: dict[str, bytes]) -> None:
        config_name = f"{root}/data/weights/model_weights_config.json"
        config = json.loads(members[config_name])
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        members[f"{root}/data/weights/{first['path_name']}"] = _pickle(marker)
        members[config_name] = json.dumps(config).encode()

    return edit


def _sample_inputs(marker: Path) -> Callable[[str, dict[str, bytes]], None]:
    def edit(root: str, members: dict[str, bytes]) -> None:
        members[f"{root}/data/sample_inputs/model.pt"] = _pickle(marker)

    return edit


def _constant(kind: str, marker: Path) -> Callable[[str, dict[str, bytes]], None]:
    def edit(root: str, members: dict[str, bytes]) -> None:
        config_name = f"{root}/data/constants/model_constants_config.json"
        config = json.loads(members[config_name])
        config["config"]["evil"] = {"path_name": f"{kind}0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        # opaque objects are read with pickle.loads, the others with torch.load
        payload = pickle.dumps(_Payload(marker)) if kind == "opaque_obj_" else _pickle(marker)
        members[f"{root}/data/constants/{kind}0"] = payload
        members[config_name] = json.dumps(config).encode()

    return edit


def _expression(marker: Path) -> Callable[[str, dict[str, bytes]], None]:
    code = f"__import__('builtins').open('{marker}', 'w')"

    def change(doc: Any) -> None:
        for value in doc["graph_module"]["graph"]["tensor_values"].values():
            for size in value["sizes"]:
                if "as_expr" in size:
                    size["as_expr"]["expr_str"] = code
                    return
        raise AssertionError("no symbolic size to plant in")

    return _json_edit("models/model.json", change)


def _target(marker: Path) -> Callable[[str, dict[str, bytes]], None]:
    def change(doc: Any) -> None:
        doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.serialization.pickle.loads"

    return _json_edit("models/model.json", change)


def _extra_member(marker: Path) -> Callable[[str, dict[str, bytes]], None]:
    def edit(root: str, members: dict[str, bytes]) -> None:
        members[f"{root}/extra/evil.pkl"] = _pickle(marker)

    return edit


# name -> (edit maker, does torch.export.load itself run the payload?)
PLANTED: dict[str, tuple[Callable[[Path], Callable[[str, dict[str, bytes]], None]], bool]] = {
    "pickled weight": (_pickled_weight, True),
    "sample inputs": (_sample_inputs, True),
    "custom-object constant": (lambda m: _constant("custom_obj_", m), False),
    "opaque-object constant": (lambda m: _constant("opaque_obj_", m), True),
    "pickled tensor constant": (lambda m: _constant("tensor_", m), True),
    "symbolic expression": (_expression, True),
    "call target": (_target, False),
    "extra member": (_extra_member, False),
}


@pytest.fixture
def planted(fixture_dir: Path, tmp_path: Path) -> Callable[[str], tuple[Path, Path, Path]]:
    """A copy of tiny-fast whose decoder.pt2 carries the named payload: (addon dir, file, marker)."""

    def make(case: str) -> tuple[Path, Path, Path]:
        addon = tmp_path / f"evil-{case.replace(' ', '-')}"
        shutil.copytree(fixture_dir / "tiny-fast", addon)
        marker = tmp_path / f"marker-{case.replace(' ', '-')}"
        network = addon / "decoder.pt2"
        _rewrite(fixture_dir / "tiny-fast" / "decoder.pt2", network, PLANTED[case][0](marker))
        return addon, network, marker

    return make


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_planted_payload_never_runs(planted: Callable[[str], tuple[Path, Path, Path]], case: str) -> None:
    addon, network, marker = planted(case)
    if PLANTED[case][1]:  # the payload is live: torch's own loader runs it
        with contextlib.suppress(Exception):
            torch.export.load(str(network)).module()
        assert marker.exists(), f"{case}: the planted payload should be live for torch.export.load"
        marker.unlink()
    manifest = addons.read_manifest(addon)
    with pytest.raises(addons.AddonError, match=r"decoder\.pt2: .*(refused|pickle|not)"):
        addons.Voice(manifest, addon)
    assert not marker.exists(), f"{case}: code from the addon ran while Chorus loaded it"


@pytest.mark.parametrize("case", ["sample inputs", "symbolic expression", "pickled weight"])
@pytest.mark.slow
def test_cli_refuses_planted_addon_in_one_line(
    planted: Callable[[str], tuple[Path, Path, Path]], tmp_path: Path, case: str
) -> None:
    addon, _, marker = planted(case)
    for args in (
        ["addon", "validate", str(addon)],
        ["synth", "--addon", str(addon), "--text", "Hi.", "--out", str(tmp_path / "o.wav")],
    ):
        result = chorus(*args)
        assert result.returncode == 2, result.stderr
        assert _one_error_line(result.stderr) and "decoder.pt2" in result.stderr
        assert not marker.exists()


def test_safe_loader_matches_torch_on_bundled_voices() -> None:
    for name in ("chorus-fast", "chorus-taco"):
        directory = addons.find_addon(name)
        manifest = addons.read_manifest(directory)
        for spec in manifest.networks.values():
            ours = load_program(directory / spec.file, spec, directory).module()
            theirs = torch.export.load(str(directory / spec.file)).module()
            ours_params = dict(ours.named_parameters())
            for key, value in theirs.named_parameters():
                assert torch.equal(ours_params[key], value), (name, key)


def test_a_file_loaded_again_gives_its_own_copy_and_changed_bytes_load_anew(fixture_dir: Path, tmp_path: Path) -> None:
    """Programs are cached by the bytes of their file: a second load is equal but not shared (what
    one caller does to its weights reaches no other), and a file whose bytes changed is read again."""
    addon = _copy(fixture_dir, tmp_path)
    spec = addons.read_manifest(addon).networks["decoder"]
    first = load_program(addon / "decoder.pt2", spec, addon)
    second = load_program(addon / "decoder.pt2", spec, addon)
    assert first is not second and first.state_dict.keys() == second.state_dict.keys()
    for key, value in first.state_dict.items():
        assert torch.equal(value, second.state_dict[key]) and value.data_ptr() != second.state_dict[key].data_ptr()
        value.data.add_(1.0)
    third = load_program(addon / "decoder.pt2", spec, addon)
    assert all(torch.equal(v, second.state_dict[k]) for k, v in third.state_dict.items())

    def halve_first_weight(root: str, members: dict[str, bytes]) -> None:
        name = f"{root}/data/weights/weight_0"
        members[name] = (torch.frombuffer(bytearray(members[name]), dtype=torch.float32) / 2).numpy().tobytes()

    _rewrite(fixture_dir / "tiny-fast" / "decoder.pt2", addon / "decoder.pt2", halve_first_weight)
    changed = load_program(addon / "decoder.pt2", spec, addon).state_dict
    differs = [k for k, v in changed.items() if not torch.equal(v, second.state_dict[k])]
    assert len(differs) == 1 and torch.equal(changed[differs[0]] * 2, second.state_dict[differs[0]])


@pytest.mark.parametrize(
    "expr",
    [
        "Symbol('s1', positive=True, integer=True)",
        "Mul(Integer(80), Symbol('s45', positive=True, integer=True))",
        "Max(1, FloorDiv(Symbol('s2', integer=True), Integer(2)))",
    ],
)
def test_shape_expressions_torch_writes_are_accepted(expr: str) -> None:
    check_expression(expr)


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        "Symbol('s1').__class__",
        "Symbol('os.system')",
        "Integer(lambda: 1)",
        "Symbol('s1', __globals__=True)",
        "[c for c in ()]",
        "eval('1')",
    ],
)
def test_shape_expressions_that_could_run_code_are_refused(expr: str) -> None:
    with pytest.raises(NetworkFileError):
        check_expression(expr)


# -- broken network files: one line, exit code 2 ------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serve_app.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "CHORUS_DEBUG"},
        timeout=120,
    )


def _one_error_line(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("chorus: error: ") and "Traceback" not in stderr


def _copy(fixture_dir: Path, tmp_path: Path, name: str = "tiny-fast") -> Path:
    target = tmp_path / f"{name}-copy"
    shutil.copytree(fixture_dir / name, target)
    return target


def _random_bytes(addon: Path) -> str:
    (addon / "decoder.pt2").write_bytes(os.urandom(4096))
    return r"decoder\.pt2: is not a torch\.export archive"


def _swapped(addon: Path) -> str:
    shutil.copy(addon / "text_encoder.pt2", addon / "decoder.pt2")
    return r"decoder\.pt2: .*(inputs|input 'frames'|right file)"


def _truncated(addon: Path) -> str:
    data = (addon / "decoder.pt2").read_bytes()
    (addon / "decoder.pt2").write_bytes(data[: len(data) // 2])
    return r"decoder\.pt2: "


def _symlink_outside(addon: Path) -> str:
    outside = addon.parent / "elsewhere.pt2"
    shutil.move(addon / "decoder.pt2", outside)
    (addon / "decoder.pt2").symlink_to(outside)
    return r"decoder\.pt2\) resolves outside the addon directory"


def _role(addon: Path) -> str:
    manifest = json.loads((addon / "addon.json").read_text())
    manifest["networks"]["decoder"]["role"] = "vocoder"
    (addon / "addon.json").write_text(json.dumps(manifest))
    return r'network "decoder" has role "vocoder", but Decoder runs a network with role "decoder"'


def _huge_static_length(addon: Path) -> str:
    manifest = json.loads((addon / "addon.json").read_text())
    manifest["networks"]["decoder"]["static_length"] = 10**12
    (addon / "addon.json").write_text(json.dumps(manifest))
    return r"static_length: Input should be less than or equal to 65536"


def _huge_static_tensors(addon: Path) -> str:
    manifest = json.loads((addon / "addon.json").read_text())
    manifest["networks"]["decoder"]["outputs"][0]["shape"] = ["B", "T", 10**9]
    (addon / "addon.json").write_text(json.dumps(manifest))
    return r"static_length \d+ makes one call need .* GiB of tensors, more than this machine"


BROKEN_FILES: dict[str, Callable[[Path], str]] = {
    "random bytes": _random_bytes,
    "swapped network": _swapped,
    "truncated archive": _truncated,
    "symlink outside": _symlink_outside,
    "decoder slot names a vocoder": _role,
    "static_length past any network": _huge_static_length,
    "static tensors larger than memory": _huge_static_tensors,
}


@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
@pytest.mark.slow
def test_broken_network_files_are_one_line_exit_2(fixture_dir: Path, tmp_path: Path, case: str) -> None:
    addon = _copy(fixture_dir, tmp_path)
    message = BROKEN_FILES[case](addon)
    for args in (
        ["addon", "validate", str(addon)],
        ["synth", "--addon", str(addon), "--text", "Hi.", "--out", str(tmp_path / "o.wav")],
    ):
        result = chorus(*args)
        assert result.returncode == 2, (case, args[0], result.stderr)
        assert _one_error_line(result.stderr), (case, result.stderr)
        assert re.search(message, result.stderr), (case, result.stderr)
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.slow
def test_a_process_of_its_own_refuses_in_one_line(
    planted: Callable[[str], tuple[Path, Path, Path]], fixture_dir: Path, tmp_path: Path
) -> None:
    """The cases above run the command in this process; here as a user's shell runs it, for a
    planted payload and a broken file."""
    evil, _, marker = planted("pickled weight")
    broken = _copy(fixture_dir, tmp_path)
    message = _truncated(broken)
    for args, pattern in (
        (["addon", "validate", str(evil)], r"decoder\.pt2: .*pickle"),
        (["synth", "--addon", str(broken), "--text", "Hi.", "--out", str(tmp_path / "o.wav")], message),
    ):
        result = _cli(*args)
        assert result.returncode == 2 and _one_error_line(result.stderr), result.stderr
        assert re.search(pattern, result.stderr), result.stderr
    assert not marker.exists() and not (tmp_path / "o.wav").exists()


def test_network_that_fails_at_run_time_names_the_network(fixture_dir: Path, tmp_path: Path) -> None:
    addon = _copy(fixture_dir, tmp_path)
    voice = addons.load(addon)
    runner = voice._load_network("decoder", torch.device("cpu"))
    from blocks import NetworkError

    with pytest.raises(NetworkError, match=r"network 'decoder' failed on frames \[1, 5, 3\]"):
        runner.call({"frames": torch.zeros(1, 5, 3), "mask": torch.ones(1, 5)})
