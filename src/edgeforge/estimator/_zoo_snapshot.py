"""Profiles of the zoo architectures the published rows name, shipped so that `calibrate` works
without torch (the base install).

`calibrate` maps each published row's model name to a zoo architecture (`zoo.catalog.lookup`)
and estimates it from that architecture's `inspect` profile, built in torch and exported
(`calibration.zoo_profiles`); the zoo imports torch. Without torch, `architecture_of` maps names
with the catalogue's spelling index and `preload` puts these snapshots in `zoo_profiles`' cache:
`data/zoo_profiles.json` holds the index and each profile's `to_dict()`, and
`data/zoo_graphs/<name>.onnx` the exported graph without its weights (the estimator reads the
graph for depthwise convs and fused epilogues; weights are never read).

Invariants: a snapshot equals a fresh build's profile except timings and paths (checked by
`tests/test_packaging.py`, with torch); `scripts/snapshot_zoo_profiles.py` rewrites both after a
change to the zoo, the exporter or the cost rules. Where torch is installed the fresh build is
used, so a stale snapshot can only affect a torch-less install.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from edgeforge.analysis import Profile
from edgeforge.analysis._memory import ActivationMemory
from edgeforge.analysis._shapes import AssumedDim
from edgeforge.analysis.profile import NodeProfile

__all__ = ["GRAPHS", "PROFILES", "architecture_of", "from_dict", "preload", "torch_missing"]

_DATA = Path(__file__).with_name("data")
PROFILES = _DATA / "zoo_profiles.json"
GRAPHS = _DATA / "zoo_graphs"


def from_dict(data: dict[str, Any], graph: Path) -> Profile:
    """A `Profile` from its `to_dict()`, profiling `graph` (the weightless exported graph)."""
    memory = data["activation_memory"]
    return Profile(
        model={**data["model"], "path": str(graph), "onnx_path": str(graph)},
        ir_version=data["ir_version"],
        opsets=data["opsets"],
        inputs=data["inputs"],
        outputs=data["outputs"],
        assumed_dims=[AssumedDim(**a) for a in data["assumed_dims"]],
        weights=data["weights"],
        macs=data["macs"],
        flops=data["flops"],
        by_op_type=data["by_op_type"],
        by_category=data["by_category"],
        nodes=[NodeProfile(**n) for n in data["nodes"]],
        not_counted=data["not_counted"],
        activation_memory=ActivationMemory(
            peak_bytes=memory["peak_bytes"],
            peak_node=memory["peak_node"],
            live_at_peak=[(t["tensor"], t["bytes"]) for t in memory["live_at_peak"]],
            timeline=memory["timeline_bytes"],
            unknown_tensors=memory["unknown_tensors"],
        ),
        op_census=data["op_census"],
        seconds=data.get("seconds", 0.0),
        notes=data.get("notes", []),
    )


@functools.cache
def torch_missing() -> bool:
    """Whether this install lacks torch (the base install), so the snapshots stand in."""
    return importlib.util.find_spec("torch") is None


@functools.cache
def _snapshot() -> dict[str, Any]:
    return json.loads(PROFILES.read_text())


def architecture_of(name: str) -> str | None:
    """The canonical zoo architecture a model name or alias means (as `catalog.lookup` reads
    it: case, spaces, '_', '.' and '-' ignored), or None."""
    return _snapshot()["spellings"].get(re.sub(r"[\s_.\-]", "", name.lower()))


def load() -> dict[str, Profile]:
    """Every shipped snapshot by architecture name."""
    return {
        name: from_dict(data, GRAPHS / f"{name}.onnx")
        for name, data in _snapshot()["profiles"].items()
    }


def preload() -> list[str]:
    """Put the snapshots in `calibration.zoo_profiles`' cache (those not built already); returns
    the architectures added."""
    from edgeforge.estimator import calibration

    added = []
    for name, profile in load().items():
        if name not in calibration._PROFILES:
            calibration._PROFILES[name] = profile
            added.append(name)
    return added
