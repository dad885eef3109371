"""GoogLeNet / Inception v1 (Szegedy et al. 2014, Table 1), in torchvision's layout, without
the two auxiliary classifiers (they only exist in training).

As in torchvision, the "5x5" branch uses a 3x3 convolution (a quirk kept there for weight
compatibility); torchvision's published parameter and MAC counts are for this layout.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeforge.zoo._blocks import ConvBNAct

__all__ = ["GoogLeNet", "Inception", "googlenet"]


def _conv(inp: int, out: int, kernel: int, stride: int = 1) -> ConvBNAct:
    return ConvBNAct(inp, out, kernel, stride, bn_eps=1e-3)


class Inception(nn.Module):
    def __init__(
        self,
        inp: int,
        ch1x1: int,
        ch3x3_reduce: int,
        ch3x3: int,
        ch5x5_reduce: int,
        ch5x5: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.branch1 = _conv(inp, ch1x1, 1)
        self.branch2 = nn.Sequential(_conv(inp, ch3x3_reduce, 1), _conv(ch3x3_reduce, ch3x3, 3))
        self.branch3 = nn.Sequential(_conv(inp, ch5x5_reduce, 1), _conv(ch5x5_reduce, ch5x5, 3))
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, 1, 1, ceil_mode=True), _conv(inp, pool_proj, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([branch(x) for branch in branches], 1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv(3, 64, 7, 2),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            _conv(64, 64, 1),
            _conv(64, 192, 3),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Inception(192, 64, 96, 128, 16, 32, 32),
            Inception(256, 128, 128, 192, 32, 96, 64),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Inception(480, 192, 96, 208, 16, 48, 64),
            Inception(512, 160, 112, 224, 24, 64, 64),
            Inception(512, 128, 128, 256, 24, 64, 64),
            Inception(512, 112, 144, 288, 32, 64, 64),
            Inception(528, 256, 160, 320, 32, 128, 128),
            nn.MaxPool2d(2, 2, ceil_mode=True),
            Inception(832, 256, 160, 320, 32, 128, 128),
            Inception(832, 384, 192, 384, 48, 128, 128),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


def googlenet(num_classes: int = 1000) -> GoogLeNet:
    return GoogLeNet(num_classes)
