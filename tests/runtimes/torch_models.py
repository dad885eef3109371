"""Small torch modules and helpers shared by the tests of the runtimes that convert from torch."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import edgeforge

__all__ = ["CumulativeSum", "Determinant", "TwoInputs", "load_module", "max_error"]


class TwoInputs(nn.Module):
    """A float and an int64 input, a float and an int64 output: pins order and widths."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 4)

    def forward(self, features: torch.Tensor, steps: torch.Tensor):
        scores = self.linear(features) * steps.unsqueeze(-1).float()
        return scores, scores.argmax(-1)


class Determinant(nn.Module):
    """Exports to ONNX (Det) and runs in ONNX Runtime, but has no core-ATen decomposition:
    exir refuses it and litert-torch has no lowering for it (nor for torch.unique)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.det(x) + 1


class CumulativeSum(nn.Module):
    """cumsum converts and runs, but neither XNNPACK delegate (LiteRT's, ExecuTorch's) takes
    it: it stays on the runtime's own CPU kernels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, 1) * 2


def two_inputs() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    return TwoInputs().eval(), (torch.randn(3, 6), torch.tensor([1, 2, 3]))


def two_input_model(folder) -> edgeforge.Model:
    module, example = two_inputs()
    return edgeforge.load(
        module,
        example,
        input_names=["features", "steps"],
        output_names=["scores", "best"],
        workdir=folder,
    )


def load_module(module: nn.Module, example: torch.Tensor, folder) -> edgeforge.Model:
    return edgeforge.load(module.eval(), example, workdir=folder)


def max_error(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max abs error, the bound it must stay under: 1e-4 scaled to the outputs' size)."""
    error = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    return error, 1e-4 * max(1.0, float(np.abs(want).max()))
