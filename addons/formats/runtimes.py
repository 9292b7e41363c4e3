"""The runtime layer: one loader for every network format an addon may declare.

A network's format (``NetworkSpec.runtime``: ``torch.export`` for ``.pt2``, ``onnx`` for ``.onnx``)
picks how it is read and run; blocks see one interface either way, a callable taking torch
tensors in the spec's input order and returning its outputs in order (``blocks.NetworkRunner``).
Both readers refuse a file that could run code or reach outside the addon, with one line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from addons.formats.netfile import executable, load_program, max_length
from addons.formats.onnxfile import check_onnx, load_onnx, read_onnx
from blocks import NetworkSpec

__all__ = ["check_network", "open_network"]


def check_network(path: Path, spec: NetworkSpec, directory: Path | None = None) -> int | None:
    """Read and check one network file against its spec, running nothing (raises
    ``NetworkFileError``); returns the longest sequence it was exported for, where it says."""
    if spec.runtime == "onnx":
        check_onnx(read_onnx(path, directory), spec)
        return None
    return max_length(load_program(path, spec, directory), spec)


def open_network(path: Path, spec: NetworkSpec, directory: Path | None, device: torch.device) -> Callable[..., Any]:
    """The network, checked, ready to call on ``device``."""
    if spec.runtime == "onnx":
        return load_onnx(path, spec, directory, device)
    return executable(load_program(path, spec, directory), device)
