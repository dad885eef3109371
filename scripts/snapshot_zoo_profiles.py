"""Rewrite the zoo profiles shipped for torch-less `calibrate` (`estimator/_zoo_snapshot.py`).

For every zoo architecture the shipped published rows name: build it in torch, `inspect` it, and
write its `to_dict()` into `src/edgeforge/estimator/data/zoo_profiles.json` and its exported
graph, weights removed, into `src/edgeforge/estimator/data/zoo_graphs/<name>.onnx`. Run after a
change to the zoo, the exporter or the cost rules (`tests/test_packaging.py` says when):

    .venv/bin/python scripts/snapshot_zoo_profiles.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import onnx

import edgeforge
from edgeforge._api import published_rows
from edgeforge.estimator._zoo_snapshot import GRAPHS, PROFILES
from edgeforge.estimator.published import read_rows
from edgeforge.zoo import catalog


def weightless(path: Path) -> onnx.ModelProto:
    """The graph at `path` with every initializer's data removed (names, dtypes, dims kept)."""
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        kept = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        tensor.CopyFrom(kept)
    return proto


def main() -> None:
    rows = read_rows(published_rows())
    names = sorted({r.architecture for r in rows if r.mapped and r.architecture})
    GRAPHS.mkdir(parents=True, exist_ok=True)
    profiles = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            module, inputs, options = catalog.build(name)
            profile = edgeforge.inspect(module, inputs, workdir=Path(scratch) / name, **options)
            onnx.save(weightless(Path(profile.model["path"])), str(GRAPHS / f"{name}.onnx"))
            data = profile.to_dict()
            # Paths into this run's scratch folder mean nothing elsewhere: `from_dict` points
            # the profile at the shipped graph instead.
            data["model"].update(path=None, onnx_path=None, torch_program=None)
            data["seconds"] = 0.0
            profiles[name] = data
            print(f"{name}: {len(profile.nodes)} nodes, {profile.macs / 1e9:.3f} GMACs")
    snapshot = {
        "schema": 1,
        "made_by": "scripts/snapshot_zoo_profiles.py",
        "spellings": catalog._SPELLINGS,
        "profiles": profiles,
    }
    PROFILES.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"wrote {PROFILES} and {GRAPHS}/")


if __name__ == "__main__":
    main()
