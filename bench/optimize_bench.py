"""What each recipe buys against fp32, per runtime, on three architectures.

For a CNN trained on scikit-learn's digits (labelled data: top-1 accuracy), the zoo's
transformer encoder and ResNet-18 at 224x224 (random weights, random inputs: agreement with
the original), `optimize` builds every recipe the laptop's ONNX-hub runtimes take; this script
writes, per recipe, the size ratio and the latency ratio (measured here) against the same
runtime's fp32 build, and the accuracy change (drop, held-out part), to
bench/results/optimize.json.

    .venv/bin/python bench/optimize_bench.py [--out DIR] [--runtimes onnxruntime,openvino]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import edgeforge
from edgeforge.optimize.search import optimize
from edgeforge.zoo import catalog, train_digits_cnn

RESULTS = Path(__file__).resolve().parent / "results" / "optimize.json"


def _digits(work: Path, epochs: int = 8) -> tuple[Path, Path]:
    """The digits CNN (trained here) as ONNX, and its test split as a data folder."""
    module, data, _ = train_digits_cnn(epochs=epochs, seed=0)
    model = edgeforge.load(
        module,
        torch.from_numpy(data.test_x[:1]),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}},
        workdir=work / "digits",
    )
    folder = work / "digits-data"
    folder.mkdir()
    np.save(folder / "image.npy", data.test_x)
    np.save(folder / "labels.npy", data.test_y)
    return model.onnx_path, folder


def _zoo(name: str, work: Path, samples: int) -> tuple[Path, Path]:
    module, inputs, options = catalog.build(name)
    model = edgeforge.load(module, inputs, workdir=work / name, **options)
    folder = work / f"{name}-data"
    folder.mkdir()
    generator = torch.Generator().manual_seed(1)
    for spec in model.inputs:
        shape = [1 if not isinstance(d, int) else d for d in spec.shape]
        example = inputs[spec.name] if isinstance(inputs, dict) else inputs
        example = example[0] if isinstance(example, tuple) else example
        shape = [samples, *example.shape[1:]]
        if spec.dtype.startswith("int"):
            high = int(example.max()) + 1
            array = torch.randint(0, max(high, 2), shape, generator=generator).numpy()
        else:
            array = torch.randn(shape, generator=generator).numpy()
        np.save(folder / f"{spec.name}.npy", array.astype(spec.dtype))
    return model.onnx_path, folder


def _ratios(result) -> list[dict]:
    fp32 = {
        c.runtime: c for c in result.candidates if c.precision == "fp32" and c.model != "pruned"
    }
    rows = []
    for c in result.candidates:
        base = fp32.get(c.runtime)
        row = {
            "candidate": c.id,
            "status": c.status,
            "size_bytes": c.size_bytes,
            "latency_here_ms": c.latency_here_ms,
            "device_latency_ms": c.device_latency_ms,
            "accuracy_drop": c.accuracy_drop,
        }
        if base and c.size_bytes and base.size_bytes:
            row["size_ratio"] = round(c.size_bytes / base.size_bytes, 4)
        if base and c.latency_here_ms and base.latency_here_ms:
            row["latency_ratio_here"] = round(c.latency_here_ms / base.latency_here_ms, 4)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="optimize output folders (default: temporary)")
    parser.add_argument("--runtimes", default="onnxruntime,openvino")
    parser.add_argument("--device", default="laptop-cpu")
    args = parser.parse_args()
    runtimes = args.runtimes.split(",")
    with tempfile.TemporaryDirectory(prefix="edgeforge-optimize-bench-") as scratch:
        work = args.out or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        models = {
            "digits_cnn": _digits(work),
            "transformer_encoder": _zoo("transformer_encoder", work, 96),
            "resnet18_224": _zoo("resnet18", work, 48),
        }
        report = {"device": args.device, "runtimes": runtimes, "architectures": {}}
        for name, (onnx_path, folder) in models.items():
            started = time.perf_counter()
            result = optimize(
                onnx_path,
                args.device,
                folder,
                out=work / f"{name}-out",
                runtimes=runtimes,
                bench_runs=30,
            )
            report["architectures"][name] = {
                "task": result.reference["task"],
                "reference": result.reference["value"],
                "split": result.data["split"],
                "seconds": round(time.perf_counter() - started, 1),
                "recipes": _ratios(result),
            }
            print(
                f"{name}: {len(result.candidates)} candidates in "
                f"{report['architectures'][name]['seconds']} s"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
