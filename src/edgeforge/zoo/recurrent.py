"""LSTM and GRU sequence classifiers over float features (e.g. 40 filterbank features per
audio frame): the recurrent cell's state after the last frame goes to a linear head."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["RecurrentClassifier", "gru_classifier", "lstm_classifier", "recurrent_macs"]

_GATES = {"lstm": 4, "gru": 3}


class RecurrentClassifier(nn.Module):
    """Takes (batch, time, features) float32; returns (batch, num_classes) logits."""

    def __init__(
        self,
        cell: Literal["lstm", "gru"],
        features: int = 40,
        hidden: int = 128,
        layers: int = 2,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        recurrent = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = recurrent(features, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.rnn(frames)
        return self.head(outputs[:, -1])


def lstm_classifier(
    features: int = 40, hidden: int = 128, layers: int = 2, num_classes: int = 10
) -> RecurrentClassifier:
    return RecurrentClassifier("lstm", features, hidden, layers, num_classes)


def gru_classifier(
    features: int = 40, hidden: int = 128, layers: int = 2, num_classes: int = 10
) -> RecurrentClassifier:
    return RecurrentClassifier("gru", features, hidden, layers, num_classes)


def recurrent_macs(
    cell: Literal["lstm", "gru"],
    time: int,
    features: int = 40,
    hidden: int = 128,
    layers: int = 2,
    num_classes: int = 10,
) -> int:
    """Multiply-accumulates per sequence: each step multiplies the input and the previous
    state by every gate's weights; then the head."""
    gates = _GATES[cell]
    first = gates * hidden * (features + hidden)
    others = gates * hidden * (hidden + hidden)
    return time * (first + (layers - 1) * others) + hidden * num_classes
