"""Turn torch modules plus a stack into an addon directory (``addon.json`` + ``.pt2`` files).

Networks are saved as ``torch.export`` ExportedPrograms: graph plus parameters, loaded without
unpickling any code. Every export is reloaded and checked against the eager module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from addons.formats.manifest import MANIFEST_NAME, SCHEMA_VERSION, AddonError, AddonManifest, check_manifest
from addons.formats.netfile import load_program
from blocks import NetworkSpec, StackError, TensorSpec

__all__ = ["NetworkExport", "export_addon", "export_network"]


@dataclass
class NetworkExport:
    """A module to export and the signature it is declared with."""

    module: nn.Module
    role: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    receptive_field: int | None = None
    static_length: int | None = None

    def spec(self, file: str) -> NetworkSpec:
        return NetworkSpec(
            file=file,
            role=self.role,
            inputs=tuple(self.inputs),
            outputs=tuple(self.outputs),
            receptive_field=self.receptive_field,
            static_length=self.static_length,
        )


def export_addon(
    directory: str | Path, networks: dict[str, NetworkExport], tolerance: float = 1e-4, **manifest: Any
) -> Path:
    """Write an addon to ``directory``.

    ``manifest`` holds the other :class:`~addons.formats.manifest.AddonManifest` fields (``name``,
    ``language``, ``frontend``, ``stack``, ...). The manifest is checked before anything is
    exported, and each exported network is reloaded and compared with eager within ``tolerance``.
    """
    out = Path(directory)
    specs = {name: net.spec(f"{name}.pt2") for name, net in networks.items()}
    try:
        model = AddonManifest.model_validate({"schema_version": SCHEMA_VERSION, **manifest, "networks": specs})
        check_manifest(model)
    except StackError as exc:
        raise AddonError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    for name, net in networks.items():
        export_network(net, specs[name], out / specs[name].file, tolerance)
    (out / MANIFEST_NAME).write_text(json.dumps(model.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    return out


def _examples(spec: NetworkSpec, batch: int, length: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(length)
    args = []
    for t in spec.inputs:
        shape = [batch if d == "B" else length if isinstance(d, str) else d for d in t.shape]
        if t.name == "mask":
            args.append(torch.ones(shape))
        elif t.dtype == "int64":
            args.append(torch.ones(shape, dtype=torch.int64))
        else:
            args.append(torch.randn(shape, generator=gen) * 0.1)
    return tuple(args)


def export_network(net: NetworkExport, spec: NetworkSpec, path: Path, tolerance: float = 1e-4) -> None:
    """Export one network to ``path`` and check that the reloaded file matches eager within ``tolerance``."""
    module = net.module.eval()
    batch_dim, time_dim = Dim("B", min=1, max=256), Dim("T", min=1, max=65536)
    dynamic = tuple(
        {i: batch_dim if d == "B" else time_dim for i, d in enumerate(t.shape) if isinstance(d, str)} or None
        for t in spec.inputs
    )
    with torch.no_grad():
        program = torch.export.export(module, _examples(spec, 2, 17), dynamic_shapes=dynamic)
    torch.export.save(program, str(path))
    reloaded = load_program(path, spec).module()  # what Chorus will load: the checked reader
    check = _examples(spec, 1, 9)
    with torch.no_grad():
        want, got = module(*check), reloaded(*check)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, (tuple, list)) else (got,)
    for w, g, o in zip(want, got, spec.outputs, strict=True):
        err = float((w - g).abs().max()) if w.numel() else 0.0
        if err > tolerance:
            raise AddonError(f"{path.name}: output {o.name!r} differs from eager by {err:.2e} after export")
