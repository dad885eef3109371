"""`bench`: latency, throughput, memory and size of a model in a runtime, measured here.

Every measurement runs in a fresh child process, so one model never taints the next: load
time, first inference, then latency after warm-up as percentiles, throughput per batch size,
and the top layers by time from the runtime's own profiler (ONNX Runtime's, OpenVINO's
performance counters). Memory is the child's peak, and that peak less what the child held
before loading the model (children fork from a server that has the runtimes' libraries
loaded). The run is repeated `repeats` times and the spread of the medians is reported; a
spread over 10% says the figures cannot be trusted. Timing lives here and in `bench/`, never
in tests.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge._load import load
from edgeforge.errors import EdgeforgeError
from edgeforge.evaluate.data import load_data, synthesize
from edgeforge.model import TensorSpec
from edgeforge.recipe import Recipe
from edgeforge.runtimes import Artifact, get_runtime

__all__ = ["BenchResult", "bench"]

UNSTABLE_SPREAD = 0.10  # relative spread of the repeated medians above which we warn


@dataclass
class BenchResult:
    model: str
    runtime: str
    artifact: str
    artifact_bytes: int
    threads: int | None
    warmup: int
    runs: int
    repeats: int
    inputs: str
    load_ms: float
    first_inference_ms: float
    latency_ms: dict[str, float]  # p50, p90, p99, mean, std, min, max (batch 1 or the first)
    median_spread: float  # (max - min) / mean of the repeats' medians
    throughput: list[dict[str, float]]  # batch, p50 ms, items per second
    peak_rss_mb: float  # the measuring process's peak resident memory
    model_memory_mb: float  # that peak minus what the process held before loading the model
    top_layers: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # What the session was configured with, as the runtime reports it: threads, and for
    # OpenVINO the inference precision asked for and the one the compiled model computes in.
    settings: dict[str, Any] = field(default_factory=dict)
    # The fleet device that measured it (`bench --on`); None when measured here.
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def bench(
    source: Any,
    *,
    runtime: str = "onnxruntime",
    threads: int | None = None,
    inference_precision: str | None = None,
    warmup: int = 10,
    runs: int = 50,
    repeats: int = 3,
    batches: tuple[int, ...] = (1,),
    data: str | Path | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    timeout: float = 600,
    **load_options: Any,
) -> BenchResult:
    """Measure `source` (a model, or an artifact folder) in `runtime` on this machine.

    Inputs come from `data`, else are synthesised at `shapes` (input name -> full shape; it
    must keep the input's rank and fixed sizes) with the remaining dynamic axes at defaults.
    `inference_precision`: OpenVINO's INFERENCE_PRECISION_HINT for the timed session ("f32",
    "bf16", "f16", or "default" for OpenVINO's own choice); other runtimes ignore it."""
    from edgeforge._children import run_children

    if warmup < 0 or runs < 1 or repeats < 1 or not batches or min(batches) < 1:
        raise EdgeforgeError("--warmup >= 0, --runs >= 1, --repeats >= 1 and batches >= 1")
    if not 0 < timeout < 10**7:  # NaN fails too
        raise EdgeforgeError(f"--timeout {timeout}: give seconds > 0, e.g. --timeout 600")
    with tempfile.TemporaryDirectory(prefix="edgeforge-bench-") as scratch:
        artifact, model = _artifact(source, runtime, Path(scratch), load_options)
        if data:
            samples = load_data(Path(data), artifact.inputs, limit=1)
        else:  # the last synthesised sample: realistic, with the shortest real part
            samples = synthesize(model, _pinned(artifact.inputs, shapes or {}), count=5)
        feeds = samples.feeds[-1]
        job = {
            "runtime": artifact.runtime,
            "folder": str(artifact.folder),
            "threads": threads,
            "inference_precision": inference_precision,
            "warmup": warmup,
            "runs": runs,
            "batches": list(batches),
            "feeds": feeds,
        }
        # The first repeat also runs the runtime's profiler, after its timed runs.
        jobs = [job | {"profile": index == 0} for index in range(repeats)]
        outcomes = run_children(_measure, jobs, timeout, 1, "Benchmarking")
        failed = [o for o in outcomes if "latencies" not in o]
        if failed:
            raise EdgeforgeError(
                f"benchmark on {artifact.runtime} did not finish: {failed[0].get('detail')}"
            )
        label = model.provenance.source if model else artifact.manifest.source
        persisted = model is None  # an artifact folder the user gave, not a build in scratch
        shapes_used = ", ".join(
            f"{name} {'x'.join(map(str, array.shape))} {array.dtype}"
            for name, array in feeds.items()
        )
        described = f"{samples.source}: {shapes_used}"
        return _summarise(artifact, label, described, job, outcomes, persisted)


def _artifact(source, runtime: str, scratch: Path, load_options) -> tuple[Artifact, Any]:
    """(artifact, model): an artifact folder as it is (model None), else the model built."""
    if isinstance(source, (str, Path)) and (Path(source) / "manifest.json").is_file():
        return Artifact.load(Path(source)), None
    model = load(source, **load_options)
    return get_runtime(runtime).build(model, Recipe(), scratch / runtime), model


def _pinned(
    specs: tuple[TensorSpec, ...], shapes: dict[str, tuple[int, ...]]
) -> tuple[TensorSpec, ...]:
    """`specs` with the `shapes` given for some inputs (see `analysis._shapes.pinned_specs`)."""
    from edgeforge.analysis._shapes import pinned_specs

    return pinned_specs(specs, shapes)


def _batched(feeds: dict[str, np.ndarray], specs: tuple[TensorSpec, ...], batch: int):
    """The feeds repeated along a dynamic first axis; None when the batch axis is fixed."""
    if batch == 1:
        return feeds
    out = {}
    for spec in specs:
        array = feeds[spec.name]
        if spec.shape is None or not spec.shape or isinstance(spec.shape[0], int):
            return None
        out[spec.name] = np.repeat(array[:1], batch, axis=0)
    return out


def _measure(job: dict[str, Any]) -> dict[str, Any]:
    """In the child: load, first run, warm-up, timed runs per batch; peak memory."""
    runtime = get_runtime(job["runtime"])
    runtime.threads = job["threads"]
    if job.get("inference_precision") is not None and hasattr(runtime, "inference_precision"):
        runtime.inference_precision = job["inference_precision"]
    artifact = Artifact.load(Path(job["folder"]))
    feeds = job["feeds"]
    baseline_kb = _resident_kb("VmRSS")
    started = time.perf_counter()
    session = runtime.open(artifact)
    load_ms = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    session.run(feeds)
    first_ms = (time.perf_counter() - started) * 1e3
    latencies: dict[str, list[float]] = {}
    for batch in job["batches"]:
        batched = _batched(feeds, artifact.inputs, batch)
        if batched is None:
            continue
        for _ in range(job["warmup"]):
            session.run(batched)
        times = []
        for _ in range(job["runs"]):
            tick = time.perf_counter()
            session.run(batched)
            times.append((time.perf_counter() - tick) * 1e3)
        latencies[str(batch)] = times
    settings = {"threads": job["threads"]}
    for name in ("inference_precision", "effective_precision"):
        if hasattr(session, name):
            settings[name] = getattr(session, name)
    session.close()
    peak_kb = _resident_kb("VmHWM")  # before the profiler opens a session of its own
    profiler = _PROFILERS.get(artifact.manifest.format) if job.get("profile") else None
    top_layers = profiler(artifact, feeds, job["threads"]) if profiler else []
    return {
        "runtime": job["runtime"],
        "status": "measured",
        "load_ms": load_ms,
        "first_ms": first_ms,
        "latencies": latencies,
        "peak_rss_kb": peak_kb,
        "baseline_rss_kb": baseline_kb,
        "top_layers": top_layers,
        "settings": settings,
    }


def _resident_kb(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak; starts afresh in a new process) in kB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _summarise(artifact, label, described, job, outcomes, persisted) -> BenchResult:
    batches = [b for b in job["batches"] if str(b) in outcomes[0]["latencies"]]
    first = str(batches[0])
    pooled = [t for o in outcomes for t in o["latencies"][first]]
    medians = [statistics.median(o["latencies"][first]) for o in outcomes]
    spread = (max(medians) - min(medians)) / statistics.mean(medians) if medians else 0.0
    warnings = []
    if len(outcomes) > 1 and spread > UNSTABLE_SPREAD:
        warnings.append(
            f"the medians of {len(outcomes)} repeats differ by {spread:.0%} (> "
            f"{UNSTABLE_SPREAD:.0%}): the machine is busy or throttling; do not trust these "
            "figures, close other work and run again"
        )
    skipped = [b for b in job["batches"] if b not in batches]
    if skipped:
        warnings.append(f"batch sizes {skipped} skipped: the artifact's batch axis is fixed")
    throughput = []
    for batch in batches:
        p50 = float(np.median([t for o in outcomes for t in o["latencies"][str(batch)]]))
        throughput.append({"batch": batch, "p50_ms": p50, "items_per_s": 1e3 * batch / p50})
    return BenchResult(
        model=label,
        runtime=artifact.runtime,
        artifact=str(artifact.path) if persisted else f"{artifact.runtime} build for this run",
        artifact_bytes=artifact.size_bytes() - (artifact.folder / "manifest.json").stat().st_size,
        threads=job["threads"],
        warmup=job["warmup"],
        runs=job["runs"],
        repeats=len(outcomes),
        inputs=described,
        load_ms=statistics.median(o["load_ms"] for o in outcomes),
        first_inference_ms=statistics.median(o["first_ms"] for o in outcomes),
        latency_ms=_percentiles(pooled),
        median_spread=spread,
        throughput=throughput,
        peak_rss_mb=max(o["peak_rss_kb"] for o in outcomes) / 1024,
        model_memory_mb=max(o["peak_rss_kb"] - o["baseline_rss_kb"] for o in outcomes) / 1024,
        top_layers=outcomes[0]["top_layers"],
        warnings=warnings,
        settings=outcomes[0].get("settings", {}),
    )


def _percentiles(times: list[float]) -> dict[str, float]:
    values = np.asarray(times)
    return {
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _ort_profile(artifact: Artifact, feeds, threads: int | None, runs: int = 20) -> list[dict]:
    """Top layers by time from ONNX Runtime's own profiler (node events, summed over runs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    if threads:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="edgeforge-profile-") as folder:
        options.profile_file_prefix = str(Path(folder) / "ort")
        session = ort.InferenceSession(
            str(artifact.path), options, providers=["CPUExecutionProvider"]
        )
        for _ in range(runs):
            session.run(None, feeds)
        trace = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, dict[str, Any]] = {}
    for event in trace:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        name = event["name"].removesuffix("_kernel_time")
        entry = totals.setdefault(
            name, {"node": name, "op_type": event.get("args", {}).get("op_name", ""), "us": 0}
        )
        entry["us"] += event.get("dur", 0)
    return _ranked(totals, runs)


def _openvino_profile(artifact: Artifact, feeds, threads: int | None, runs: int = 20) -> list[dict]:
    """Top layers by time from OpenVINO's performance counters (executed nodes only)."""
    import openvino as ov

    config: dict[str, Any] = {"PERF_COUNT": "YES", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(artifact.path), "CPU", config)
    request = compiled.create_infer_request()
    values = [feeds[t.name] for t in artifact.inputs]  # the IR keeps the source's input order
    totals: dict[str, dict[str, Any]] = {}
    for _ in range(runs):
        request.infer(values)
        for info in request.profiling_info:
            if info.status != info.Status.EXECUTED:
                continue
            entry = totals.setdefault(
                info.node_name, {"node": info.node_name, "op_type": info.node_type, "us": 0.0}
            )
            entry["us"] += info.real_time.total_seconds() * 1e6
    return _ranked(totals, runs)


def _ranked(totals: dict[str, dict[str, Any]], runs: int) -> list[dict[str, Any]]:
    total = sum(e["us"] for e in totals.values()) or 1
    ranked = sorted(totals.values(), key=lambda e: -e["us"])[:10]
    return [
        {
            "node": e["node"],
            "op_type": e["op_type"],
            "ms": e["us"] / runs / 1e3,
            "share": e["us"] / total,
        }
        for e in ranked
    ]


_PROFILERS = {"onnx": _ort_profile, "openvino-ir": _openvino_profile}
