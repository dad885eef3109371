"""ShuffleNet V2 1.0x (Ma et al. 2018, Table 5), in torchvision's layout."""

from __future__ import annotations

import torch
from torch import nn

from edgeforge.zoo._blocks import ConvBNAct

__all__ = ["ShuffleNetV2", "shufflenet_v2_x1_0"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    # -1 for the batch keeps the reshape valid for any batch size once exported.
    _, channels, height, width = x.shape
    x = x.reshape(-1, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(-1, channels, height, width)


class ShuffleUnit(nn.Module):
    """Stride 1: split the channels, transform one half, concatenate, shuffle.
    Stride 2: transform two copies of the input (one per branch), concatenate, shuffle."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                ConvBNAct(inp, inp, 3, stride, groups=inp, activation=None),
                ConvBNAct(inp, half, 1),
            )
        self.branch2 = nn.Sequential(
            ConvBNAct(inp if stride > 1 else half, half, 1),
            ConvBNAct(half, half, 3, stride, groups=half, activation=None),
            ConvBNAct(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, changed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(changed)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(
        self,
        repeats: tuple[int, ...] = (4, 8, 4),
        channels: tuple[int, ...] = (24, 116, 232, 464, 1024),
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(3, channels[0], 3, 2), nn.MaxPool2d(3, 2, 1))
        units: list[nn.Module] = []
        inp = channels[0]
        for count, out in zip(repeats, channels[1:-1], strict=True):
            units.append(ShuffleUnit(inp, out, 2))
            units += [ShuffleUnit(out, out, 1) for _ in range(count - 1)]
            inp = out
        self.stages = nn.Sequential(*units)
        self.conv5 = ConvBNAct(inp, channels[-1], 1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stages(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def shufflenet_v2_x1_0(num_classes: int = 1000) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes=num_classes)
