"""int8-static against fp32 in ONNX Runtime on a 224x224 CNN: size and p50 latency ratios.

Builds the artifacts with the `onnxruntime` runtime (the recipe defaults, then the settings
they were chosen over: int8 activations, per-tensor weights) and measures each with
`edgeforge.bench` (child processes, threads=2), the variants taking turns over several rounds.
Random weights and random calibration images: this measures speed and size, not accuracy.

    .venv/bin/python bench/ort_int8.py [--model resnet18] [--out bench/results/ort_int8.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

import edgeforge
from edgeforge.bench import bench
from edgeforge.recipe import Recipe
from edgeforge.runtimes import get_runtime
from edgeforge.zoo import resnet18, resnet50

VARIANTS = {
    "fp32": Recipe("fp32"),
    "int8-static (defaults: QDQ, uint8 act, per-channel)": Recipe(
        "int8-static", {"calibration_samples": 8}
    ),
    "int8-static, int8 activations": Recipe(
        "int8-static", {"calibration_samples": 8, "activation_type": "int8"}
    ),
    "int8-static, per-tensor weights": Recipe(
        "int8-static", {"calibration_samples": 8, "per_channel": False}
    ),
    "int8-dynamic": Recipe("int8-dynamic"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["resnet18", "resnet50"], default="resnet18")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/ort_int8.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    factory = {"resnet18": resnet18, "resnet50": resnet50}[args.model]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ort-int8-") as scratch:
        model = edgeforge.load(
            factory().eval(), torch.randn(1, 3, 224, 224), workdir=Path(scratch) / "model"
        )
        artifacts = [
            get_runtime("onnxruntime").build(model, recipe, Path(scratch) / str(index))
            for index, recipe in enumerate(VARIANTS.values())
        ]
        # Variants take turns, one child each per round, so that load from other processes
        # on this shared machine falls on all of them alike rather than on whichever ran last.
        p50s: list[list[float]] = [[] for _ in artifacts]
        for _ in range(args.rounds):
            for index, artifact in enumerate(artifacts):
                result = bench(artifact.folder, threads=args.threads, runs=30, repeats=1)
                p50s[index].append(result.latency_ms["p50"])
        for (label, recipe), artifact, times in zip(VARIANTS.items(), artifacts, p50s, strict=True):
            rows.append(
                {
                    "variant": label,
                    "recipe": recipe.to_dict(),
                    "bytes": artifact.path.stat().st_size,
                    "p50_ms": statistics.median(times),
                    "round_p50s_ms": times,
                }
            )
    fp32 = rows[0]
    for row in rows:
        row["size_ratio"] = fp32["bytes"] / row["bytes"]
        row["speedup_p50"] = fp32["p50_ms"] / row["p50_ms"]
    report = {
        "model": args.model,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "onnxruntime": _version("onnxruntime"),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(f"{row['variant']:55s} size {row['size_ratio']:.2f}x  p50 {row['speedup_p50']:.2f}x")


def _version(name: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(name)


if __name__ == "__main__":
    main()
