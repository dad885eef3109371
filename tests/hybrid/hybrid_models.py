"""Stand-ins and models the hybrid tests build themselves: a network with the fields of
edgeforge.decide's Network, a cloud-class Device with real T4 figures, and transformer_encoder's
layers over float frames."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeforge.devices import ComputeUnit, Device, Figure
from edgeforge.zoo import transformer_encoder


@dataclass(frozen=True)
class Link:
    """A stand-in with the fields of edgeforge.decide's Network."""

    name: str
    rtt_ms: float
    uplink_mbps: float
    downlink_mbps: float
    loss: float


def _figure(value: float) -> Figure:
    return Figure(value, "recalled", "NVIDIA T4 datasheet: 8.1 TFLOPS fp32, 320 GB/s")


CLOUD_T4 = Device(
    id="cloud-t4",
    name="Cloud server: NVIDIA T4",
    kind="host",
    aliases=(),
    runtimes=("onnxruntime",),
    ram_gb=_figure(16),
    memory_bandwidth_gbps=_figure(320),
    size_budget_mb=None,
    compute=(ComputeUnit("gpu", "NVIDIA T4", {"fp32": _figure(8100), "fp16": _figure(65000)}),),
)


class FeatureTransformer(nn.Module):
    """transformer_encoder's encoder and head over float frames (as speech and vision
    transformers take them): a linear projection replaces the token embedding."""

    def __init__(self, features: int = 1024, d_model: int = 256, layers: int = 6) -> None:
        super().__init__()
        body = transformer_encoder(d_model=d_model, layers=layers, max_seq=128)
        self.project = nn.Linear(features, d_model)
        self.positions, self.encoder, self.head = body.positions, body.encoder, body.head

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(frames.shape[1])
        x = self.project(frames) + self.positions(positions)
        return self.head(self.encoder(x).mean(1))
