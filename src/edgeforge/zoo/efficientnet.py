"""EfficientNet-B0 (Tan & Le 2019, Table 1), in torchvision's layout."""

from __future__ import annotations

import torch
from torch import nn

from edgeforge.zoo._blocks import ConvBNAct, SqueezeExcite

__all__ = ["EfficientNet", "MBConv", "efficientnet_b0"]


class MBConv(nn.Module):
    """Expand 1x1, depthwise kxk, squeeze-excite (to a quarter of the block's *input*
    channels), linear projection; SiLU throughout."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        expanded = inp * expand_ratio
        self.use_residual = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if expanded != inp:
            layers.append(ConvBNAct(inp, expanded, 1, activation=nn.SiLU))
        layers += [
            ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, activation=nn.SiLU),
            SqueezeExcite(expanded, max(1, inp // 4), activation=nn.SiLU),
            ConvBNAct(expanded, out, 1, activation=None),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Stochastic depth only acts in training, so inference is a plain residual.
        return x + self.block(x) if self.use_residual else self.block(x)


class EfficientNet(nn.Module):
    # (expand ratio, kernel, first stride, input channels, output channels, layers), B0.
    STAGES = (
        (1, 3, 1, 32, 16, 1),
        (6, 3, 2, 16, 24, 2),
        (6, 5, 2, 24, 40, 2),
        (6, 3, 2, 40, 80, 3),
        (6, 5, 1, 80, 112, 3),
        (6, 5, 2, 112, 192, 4),
        (6, 3, 1, 192, 320, 1),
    )

    def __init__(self, num_classes: int = 1000, last_channel: int = 1280) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 32, 3, 2, activation=nn.SiLU)]
        for expand, kernel, stride, inp, out, repeats in self.STAGES:
            for i in range(repeats):
                layers.append(
                    MBConv(inp if i == 0 else out, out, kernel, stride if i == 0 else 1, expand)
                )
        layers.append(ConvBNAct(self.STAGES[-1][4], last_channel, 1, activation=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channel, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def efficientnet_b0(num_classes: int = 1000) -> EfficientNet:
    return EfficientNet(num_classes)
