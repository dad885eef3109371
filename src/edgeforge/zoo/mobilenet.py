"""MobileNet V1, V2 and V3 (Howard et al. 2017, Sandler et al. 2018, Howard et al. 2019).

V2 and V3 follow torchvision's layouts exactly (same parameter counts); V1, which torchvision
lacks, follows Table 1 of its paper (width 1.0, resolution 224).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgeforge.zoo._blocks import ConvBNAct, SqueezeExcite, make_divisible

__all__ = [
    "MobileNetV1",
    "MobileNetV2",
    "MobileNetV3",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
]


# -- V1 ----------------------------------------------------------------------------------------


class MobileNetV1(nn.Module):
    """A 3x3 stem, then 13 depthwise-separable blocks (depthwise 3x3 + pointwise 1x1)."""

    # (output channels, stride) of each depthwise-separable block, Table 1 of the paper.
    BLOCKS = (
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        *((512, 1),) * 5,
        (1024, 2),
        (1024, 1),
    )

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()

        # The paper's width multiplier (alpha) as TF-Slim applies it: int(channels * alpha),
        # at least 8. Width 1.0 is the network of Table 1, unchanged.
        def width(channels: int) -> int:
            return max(int(channels * width_mult), 8)

        channels = width(32)
        layers: list[nn.Module] = [ConvBNAct(3, channels, 3, 2)]
        for out_channels, stride in self.BLOCKS:
            out_channels = width(out_channels)
            layers += [
                ConvBNAct(channels, channels, 3, stride, groups=channels),
                ConvBNAct(channels, out_channels, 1),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v1(num_classes: int = 1000, width_mult: float = 1.0) -> MobileNetV1:
    return MobileNetV1(num_classes, width_mult)


# -- V2 ----------------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """Expand 1x1 (ReLU6), depthwise 3x3 (ReLU6), linear projection 1x1; residual when the
    shape is kept."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_residual = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden, 1, activation=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
            ConvBNAct(hidden, oup, 1, activation=None),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, first stride s), Table 2 of the paper.
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        channels = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNAct(3, channels, 3, 2, activation=nn.ReLU6)]
        for t, c, n, s in self.SETTINGS:
            out_channels = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t))
                channels = out_channels
        layers.append(ConvBNAct(channels, last, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult)


# -- V3 ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bneck:
    """One row of Tables 1 and 2 of the V3 paper."""

    inp: int
    kernel: int
    expanded: int
    out: int
    squeeze_excite: bool
    hard_swish: bool
    stride: int


def _v3_large() -> tuple[list[_Bneck], int]:
    b = _Bneck
    re, hs = False, True
    return [
        b(16, 3, 16, 16, False, re, 1),
        b(16, 3, 64, 24, False, re, 2),
        b(24, 3, 72, 24, False, re, 1),
        b(24, 5, 72, 40, True, re, 2),
        b(40, 5, 120, 40, True, re, 1),
        b(40, 5, 120, 40, True, re, 1),
        b(40, 3, 240, 80, False, hs, 2),
        b(80, 3, 200, 80, False, hs, 1),
        b(80, 3, 184, 80, False, hs, 1),
        b(80, 3, 184, 80, False, hs, 1),
        b(80, 3, 480, 112, True, hs, 1),
        b(112, 3, 672, 112, True, hs, 1),
        b(112, 5, 672, 160, True, hs, 2),
        b(160, 5, 960, 160, True, hs, 1),
        b(160, 5, 960, 160, True, hs, 1),
    ], 1280


def _v3_small() -> tuple[list[_Bneck], int]:
    b = _Bneck
    re, hs = False, True
    return [
        b(16, 3, 16, 16, True, re, 2),
        b(16, 3, 72, 24, False, re, 2),
        b(24, 3, 88, 24, False, re, 1),
        b(24, 5, 96, 40, True, hs, 2),
        b(40, 5, 240, 40, True, hs, 1),
        b(40, 5, 240, 40, True, hs, 1),
        b(40, 5, 120, 48, True, hs, 1),
        b(48, 5, 144, 48, True, hs, 1),
        b(48, 5, 288, 96, True, hs, 2),
        b(96, 5, 576, 96, True, hs, 1),
        b(96, 5, 576, 96, True, hs, 1),
    ], 1024


class InvertedResidualV3(nn.Module):
    def __init__(self, cfg: _Bneck) -> None:
        super().__init__()
        act: Callable[[], nn.Module] = nn.Hardswish if cfg.hard_swish else nn.ReLU
        self.use_residual = cfg.stride == 1 and cfg.inp == cfg.out
        layers: list[nn.Module] = []
        if cfg.expanded != cfg.inp:
            layers.append(ConvBNAct(cfg.inp, cfg.expanded, 1, activation=act, bn_eps=1e-3))
        layers.append(
            ConvBNAct(
                cfg.expanded,
                cfg.expanded,
                cfg.kernel,
                cfg.stride,
                groups=cfg.expanded,
                activation=act,
                bn_eps=1e-3,
            )
        )
        if cfg.squeeze_excite:
            squeezed = make_divisible(cfg.expanded // 4)
            layers.append(SqueezeExcite(cfg.expanded, squeezed, gate=nn.Hardsigmoid))
        layers.append(ConvBNAct(cfg.expanded, cfg.out, 1, activation=None, bn_eps=1e-3))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNetV3(nn.Module):
    def __init__(self, blocks: list[_Bneck], last_channel: int, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            ConvBNAct(3, blocks[0].inp, 3, 2, activation=nn.Hardswish, bn_eps=1e-3)
        ]
        layers += [InvertedResidualV3(cfg) for cfg in blocks]
        last_conv = 6 * blocks[-1].out
        layers.append(ConvBNAct(blocks[-1].out, last_conv, 1, activation=nn.Hardswish, bn_eps=1e-3))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel),
            nn.Hardswish(),
            nn.Dropout(0.2),
            nn.Linear(last_channel, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v3_large(num_classes: int = 1000) -> MobileNetV3:
    return MobileNetV3(*_v3_large(), num_classes=num_classes)


def mobilenet_v3_small(num_classes: int = 1000) -> MobileNetV3:
    return MobileNetV3(*_v3_small(), num_classes=num_classes)
