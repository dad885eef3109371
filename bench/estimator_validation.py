"""How good are the estimates? Median absolute percentage error and the share within +-25%.

Two parts:
- published rows held out from the fit (edge_benchmarks.csv as shipped in the package, split by a
  hash of architecture and device), or every row of `--rows FILE` (any CSV in that format, e.g. new
  measurements, all of which are validation rows), reported per device and overall;
- this machine: `estimate` on the device `this-machine` against `bench` (ONNX Runtime, measured
  here) over the zoo's architectures, CNNs and a transformer.

    .venv/bin/python bench/estimator_validation.py [--rows FILE] [--json] [--skip-here]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from edgeforge._api import published_rows
from edgeforge.analysis import inspect
from edgeforge.bench import bench
from edgeforge.devices import get_device
from edgeforge.estimator import calibrate, estimate, validate_file
from edgeforge.zoo import catalog

SHARED_ROWS = published_rows()  # shipped in the package (estimator/data/), so any folder works
HERE = [
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "squeezenet1_1",
    "shufflenet_v2_x1_0",
    "resnet18",
    "resnet50",
    "googlenet",
    "transformer_encoder",
]


def this_machine(recalibrate: bool = False) -> dict:
    from edgeforge.devices._this_machine import read_calibration
    from edgeforge.devices._this_machine import this_machine as host_device
    from edgeforge.estimator.here import calibrate_here

    if recalibrate or read_calibration() is None:
        print("calibrating this machine (edgeforge calibrate --here)...")
        calibrate_here()
    host_device.cache_clear()
    device = get_device("this-machine")
    rows, errors = [], []
    for name in HERE:
        module, inputs, options = catalog.build(name)
        profile = inspect(module, inputs, **options)
        predicted = estimate(profile, device, runtime="onnxruntime").latency_ms
        # Measure at the shapes the estimate assumed (bench alone would pick its own defaults
        # for dynamic axes, e.g. 16 tokens where inspect assumed 128), three times, the median.
        measured = bench(
            profile.model["path"], runs=30, warmup=5, repeats=3, shapes=profile.input_shapes()
        ).latency_ms["p50"]
        error = abs(predicted - measured) / measured
        errors.append(error)
        rows.append(
            {
                "architecture": name,
                "estimate_ms": predicted,
                "measured_ms": measured,
                "abs_pct_error": 100 * error,
            }
        )
        print(
            f"{name:22s} estimate {predicted:8.2f} ms  measured {measured:8.2f} ms  "
            f"error {100 * error:5.1f}%"
        )
    return {
        "rows": rows,
        "median_abs_pct_error": 100 * statistics.median(errors),
        "within_25pct": sum(e <= 0.25 for e in errors) / len(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, help="validate every row of this CSV")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    parser.add_argument("--skip-here", action="store_true", help="skip this machine's part")
    parser.add_argument(
        "--recalibrate", action="store_true", help="rerun `calibrate --here` even if stored"
    )
    parser.add_argument(
        "--skip-published", action="store_true", help="skip the published rows' part"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/estimator_validation.json"))
    args = parser.parse_args()
    result: dict = {}
    if args.rows:
        result["published"] = validate_file(args.rows)
    elif not args.skip_published:
        result["published"] = calibrate(SHARED_ROWS)[1]
    if not args.skip_here:
        result["this_machine"] = this_machine(args.recalibrate)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return
    if "published" in result:
        published = result["published"]
        print(f"published rows: {published['overall']}")
        for device, summary in published["by_device"].items():
            print(f"  {device:24s} {summary}")
        print(f"rows it could not map: {len(published.get('unmapped', []))}")
    if "this_machine" in result:
        here = result["this_machine"]
        print(
            f"this machine: median abs error {here['median_abs_pct_error']:.1f}%, "
            f"within 25%: {here['within_25pct']:.0%}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
