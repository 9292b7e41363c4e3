"""The cheap per-call input check that replaces torch.export's symbolic one (addons.netfile.runnable)."""

from __future__ import annotations

import pytest
import torch

from addons.netfile import runnable


class _Add(torch.nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (x * 2 + 1) * mask[..., None]


@pytest.fixture(scope="module")
def program() -> torch.export.ExportedProgram:
    t = torch.export.Dim("T", min=2, max=16)
    args = (torch.randn(1, 5, 3), torch.ones(1, 5))
    return torch.export.export(_Add(), args, dynamic_shapes=({1: t}, {1: t}))


def test_same_results_as_the_exported_module(program: torch.export.ExportedProgram) -> None:
    x, mask = torch.randn(1, 9, 3), torch.ones(1, 9)
    assert torch.equal(runnable(program)(x, mask), program.module()(x, mask))


@pytest.mark.parametrize(
    ("x", "mask", "message"),
    [
        (torch.randn(1, 17, 3), torch.ones(1, 17), "axis 1 is 17; the network was exported for 2..16"),
        (torch.randn(1, 1, 3), torch.ones(1, 1), "axis 1 is 1; the network was exported for 2..16"),
        (torch.randn(1, 8, 3), torch.ones(1, 9), "axis 1 is 9, but"),
        (torch.randn(8, 3), torch.ones(1, 8), "must have 3 dims, got 2"),
        (torch.randn(1, 8, 4), torch.ones(1, 8), "axis 2 is 4; the network was exported for 3..3"),
    ],
)
def test_out_of_range_inputs_are_refused_clearly(
    program: torch.export.ExportedProgram, x: torch.Tensor, mask: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        runnable(program)(x, mask)
