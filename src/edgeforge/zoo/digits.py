"""A small CNN trained on scikit-learn's bundled 8x8 digits (no download needed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgeforge._progress import track

__all__ = ["DigitsCNN", "DigitsData", "digits_data", "train_digits_cnn"]


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU x2, pooling and a linear head: 1x8x8 images to 10 logits."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class DigitsData:
    train_x: np.ndarray  # (N, 1, 8, 8) float32 in [0, 1]
    train_y: np.ndarray  # (N,) int64
    test_x: np.ndarray
    test_y: np.ndarray


def digits_data(seed: int = 0, test_share: float = 0.25) -> DigitsData:
    """The 1797 digits, scaled to [0, 1], split reproducibly into train and test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * (1 - test_share))
    train, test = order[:cut], order[cut:]
    return DigitsData(x[train], y[train], x[test], y[test])


def train_digits_cnn(epochs: int = 8, seed: int = 0) -> tuple[DigitsCNN, DigitsData, float]:
    """Train for a few seconds; returns the model (eval mode), the data and test accuracy."""
    torch.manual_seed(seed)
    data = digits_data(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    generator = torch.Generator().manual_seed(seed)
    for _ in track(range(epochs), "Training the digits CNN"):
        model.train()
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(data.test_x)).argmax(1).numpy()
    return model, data, float((predicted == data.test_y).mean())
