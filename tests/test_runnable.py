"""The cheap per-call input check that replaces torch.export's symbolic one (addons.formats.netfile.runnable),
and the verified TorchScript trace that runs behind it (addons.formats.netfile.traced)."""

from __future__ import annotations

import pytest
import torch

from addons.formats.netfile import PROBE_SIZES, runnable, traced


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
@pytest.mark.parametrize("wrap", ["runnable", "traced"])
def test_out_of_range_inputs_are_refused_clearly(
    program: torch.export.ExportedProgram, x: torch.Tensor, mask: torch.Tensor, message: str, wrap: str
) -> None:
    network = runnable(program) if wrap == "runnable" else traced(program, runnable(program))
    for _ in range(2):  # refused again: only shapes that passed are remembered
        with pytest.raises(ValueError, match=message):
            network(x, mask)


def test_trace_runs_and_equals_the_module_at_every_size(program: torch.export.ExportedProgram) -> None:
    network = traced(program, runnable(program))
    assert not isinstance(network, torch.nn.Module)  # the trace was taken
    for size in (2, 5, 9, 16, 9):
        x, mask = torch.randn(1, size, 3), (torch.rand(1, size) > 0.5).float()
        assert torch.equal(network(x, mask), program.module()(x, mask))


def test_a_trace_that_differs_or_fails_is_not_used(
    program: torch.export.ExportedProgram, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = runnable(program)
    calls: list[int] = []

    def off_by_a_bit(*args: torch.Tensor) -> torch.Tensor:
        calls.append(args[0].shape[1])
        out = module(*args)
        return out if len(calls) < len(PROBE_SIZES) else out + 1e-3  # right on the first sizes only

    monkeypatch.setattr(torch.jit, "trace", lambda *_args, **_kw: off_by_a_bit)
    assert traced(program, module) is module
    assert len(calls) == len(PROBE_SIZES)  # every probe size was compared

    def broken(*_args: object, **_kw: object) -> None:
        raise RuntimeError("cannot trace this")

    monkeypatch.setattr(torch.jit, "trace", broken)
    assert traced(program, module) is module
