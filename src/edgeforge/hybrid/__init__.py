"""Hybrid pipelines: a model cut between the device and the cloud (`split`), or a small model
on the device that escalates to a large one in the cloud when unsure (`cascade`)."""

from __future__ import annotations

from edgeforge.hybrid.cascade import CascadeResult, CascadeScore, cascade
from edgeforge.hybrid.network import CloudNodeTimes, NetworkLike, transfer_ms
from edgeforge.hybrid.split import Compression, PipelineCheck, Placement, SplitResult, split

__all__ = [
    "CascadeResult",
    "CascadeScore",
    "CloudNodeTimes",
    "Compression",
    "NetworkLike",
    "PipelineCheck",
    "Placement",
    "SplitResult",
    "cascade",
    "split",
    "transfer_ms",
]
