"""`optimize --executor ray` against the local executor on the demo's digits CNN (issue 19).

The same search (ONNX Runtime and OpenVINO: fp32, int8-dynamic and int8-static with each
calibration method, a 1% accuracy limit, laptop-cpu) runs with local child processes, then as
Ray tasks on a local Ray instance of `--cpus` CPUs, each into a fresh folder; then once more
with the local executor into the Ray run's folder, to show that its cache is reused. Writes
the wall times, Ray's start-up time, whether the choice and every candidate's status, size and
accuracy drop agree, and the machine's load average, to bench/results/ray_executor.json.

A local Ray instance shares this machine's cores with the caller: the figure that matters for
a cluster is that the choice and the cache agree, not the wall time here.

    PYTHONPATH=src .venv/bin/python bench/ray_executor.py [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import optimize_bench  # the digits set-up; bench/ is on the path when run as a script

from edgeforge.optimize.search import optimize

RESULTS = Path(__file__).resolve().parent / "results" / "ray_executor.json"
SEARCH = {
    "runtimes": ["onnxruntime", "openvino"],
    "precisions": ["fp32", "int8-dynamic", "int8-static"],
    "bench_runs": 10,
    "max_accuracy_drop": "1%",
}


def _digits(work: Path) -> tuple[Path, Path]:
    return optimize_bench._digits(work, epochs=4)


def _timed(**options) -> tuple[object, float]:
    started = time.perf_counter()
    result = optimize(**options)
    return result, round(time.perf_counter() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory(prefix="edgeforge-ray-bench-") as scratch:
        work = Path(scratch)
        model, data = _digits(work)
        common = {"source": model, "device": "laptop-cpu", "data": data, **SEARCH}
        here, local_s = _timed(out=work / "local", **common)
        started = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        init_s = round(time.perf_counter() - started, 2)
        there, ray_s = _timed(out=work / "ray", executor="ray", **common)
        again, rerun_s = _timed(out=work / "ray", **common)
        ray.shutdown()
    twins = {c.id: c for c in here.candidates}
    same = [
        (c.status, c.size_bytes, c.accuracy_drop)
        == (twins[c.id].status, twins[c.id].size_bytes, twins[c.id].accuracy_drop)
        for c in there.candidates
    ]
    report = {
        "model": "digits CNN (the demo's), laptop-cpu, " + ", ".join(SEARCH["runtimes"]),
        "candidates": len(here.candidates),
        "chosen_local": here.chosen,
        "chosen_ray": there.chosen,
        "same_choice": here.chosen == there.chosen,
        "candidates_agreeing": f"{sum(same)} of {len(same)}",
        "local_s": local_s,
        "ray_init_s": init_s,
        "ray_s": ray_s,
        "local_rerun_on_ray_cache_s": rerun_s,
        "rerun_all_cached": all(
            c.cached for c in again.candidates if c.status in ("evaluated", "built-not-run")
        ),
        "ray_cpus": args.cpus,
        "machine_cpus": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 1),
        "ray_version": ray.__version__,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
