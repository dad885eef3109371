"""Building and measuring `optimize`'s candidates, and the per-candidate cache.

What a caller can rely on:
- the reference is the original model in ONNX Runtime (fp32) on the held-out feeds; every
  candidate's accuracy is scored against it (and the labels, where there are any);
- builds run in child processes with a time limit, `parallel` at a time (two where there are
  cores), or each in a Ray task that runs the same limited child (`executor`); a converter
  that fails, crashes or runs out of time costs its candidate only, whose status then says so;
- a runtime that builds here but cannot run here (Core ML off macOS) leaves its candidate
  "built-not-run": size and the device estimate, no accuracy, no latency here;
- latency here is measured one candidate at a time, never in parallel (parallel timing lies),
  with the settings the candidate will run with on the device (`_deploy.deployment`: the
  device's thread count, OpenVINO's inference precision for the recipe), which the candidate
  records in `timed_with`; its accuracy is scored with the same inference precision;
- every built candidate gets the device estimate, at the precision its recipe computes in on
  that device (`compute_precision`); on `this-machine` a candidate measured here takes its
  measurement as its device latency (the estimate stays in `estimated_ms`): the measurement
  decides, not the estimate; memory is measured here where the candidate
  ran here, else estimated on the device;
- a candidate whose outcome is deterministic (built, or unsupported) is cached as
  `out/candidates/<key>/result.json`; a cached built candidate whose artifact folder is gone is
  rebuilt; a reused one is marked `cached`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeforge._io import write_json
from edgeforge._progress import track
from edgeforge.errors import EdgeforgeError
from edgeforge.evaluate.compare import chance_level
from edgeforge.evaluate.data import Samples
from edgeforge.model import Model
from edgeforge.optimize._accuracy import describe_task, judge_for, score
from edgeforge.optimize._data import Split
from edgeforge.optimize._deploy import deployment, has_bf16
from edgeforge.optimize._plan import BUILT, Candidate, Variant
from edgeforge.recipe import Recipe

if TYPE_CHECKING:
    from edgeforge.devices import Device

__all__ = ["Builder", "compute_precision", "reference_outputs", "reference_summary"]

THIS_MACHINE_ID = "this-machine"
# Convolutions' share of a model's operations above which int8-dynamic buys no int8 speed:
# dynamic quantization turns a Conv into ConvInteger, which ONNX Runtime runs without the
# int8 GEMM kernels (measured: bench/results/ort_int8_resnet50.json).
_CONV_HEAVY = 0.5


def compute_precision(precision: str, profile: Any, device: Device) -> tuple[str, str]:
    """(the estimator's precision for a recipe on `device`, why it differs from the obvious
    one or ''): int8-dynamic on a conv-heavy model computes at fp32 speed, bf16 computes at
    the 16-bit rate only where the device has bf16 arithmetic, fp16 at the fp16 rate only where
    the unit states an fp16 peak."""
    if precision == "int8-dynamic":
        share = _conv_share(profile)
        if share > _CONV_HEAVY:
            return "fp32", (
                f"int8-dynamic estimated at fp32 speed: convolutions are {share:.0%} of the "
                "operations and dynamic quantization runs them as ConvInteger, without int8 "
                "GEMM kernels"
            )
        return "int8", ""
    if precision == "int8-static":
        return "int8", ""
    if precision == "bf16":
        if has_bf16(device):
            return "fp16", "bf16 estimated at the 16-bit rate (the device has bf16 arithmetic)"
        return "fp32", "bf16 estimated at fp32 speed: the device has no bf16 arithmetic"
    if precision == "fp16":
        if not any("fp16" in unit.peak for unit in device.compute):
            return "fp32", "fp16 estimated at fp32 speed: the device states no fp16 arithmetic"
        return "fp16", ""
    return "fp32", ""


def _conv_share(profile: Any) -> float:
    total = conv = 0.0
    for node in getattr(profile, "nodes", ()):
        ops = float(getattr(node, "flops", 0) or 0)
        total += ops
        if node.op_type in ("Conv", "ConvTranspose"):
            conv += ops
    return conv / total if total else 0.0


def reference_outputs(model: Model, split: Split) -> list[dict[str, np.ndarray]]:
    """The original model in ONNX Runtime (fp32) on the held-out feeds."""
    from edgeforge.runtimes import get_runtime

    runtime = get_runtime("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="edgeforge-optimize-") as scratch:
        artifact = runtime.build(model, Recipe(), Path(scratch) / "reference")
        with runtime.open(artifact) as session:
            return [session.run(feed) for feed in split.held_out]


def reference_summary(
    reference: list[dict[str, np.ndarray]], split: Split, metric: Any = None
) -> dict[str, Any]:
    """What judged the candidates and why, the original's own value, and whether that value is
    within reach of chance (an accuracy gate on a chance-level model proves nothing)."""
    judge = judge_for(reference, split.labels_held_out, metric)
    task = judge.task
    same = score(reference, reference, split.labels_held_out, feeds=split.held_out, metric=metric)
    summary = {
        "task": task,
        "task_means": describe_task(task),
        "metric": same.metric,
        "output": judge.output,
        "why": judge.why,
        "value": same.reference,
        "measured_with": "onnxruntime fp32 on the held-out part",
        "near_chance": None,
    }
    if judge.task == "classification":
        found = chance_level(same.reference or 0.0, split.labels_held_out)
        summary["near_chance"] = found
    return summary


class Builder:
    """Builds, scores and measures candidates for one device and split, through the cache."""

    def __init__(
        self,
        out: Path,
        device: Device,
        split: Split,
        reference: list[dict[str, np.ndarray]],
        variants: list[Variant],
        timeout: float,
        parallel: int | None,
        bench_runs: int,
        metric: Any = None,
        calibration_folder: Path | None = None,
        *,
        executor: str = "local",
        task_cpus: float = 1,
    ):
        self.out = out
        self.metric = metric
        self.calibration_folder = calibration_folder
        self.device = device
        self.split = split
        self.reference = reference
        self.variant_of = {v.name: v for v in variants}
        self.timeout = timeout
        self.parallel = parallel if parallel else (2 if (os.cpu_count() or 1) >= 2 else 1)
        self.bench_runs = bench_runs
        self.profiles: dict[str, Any] = {}
        self.executor = executor
        self.task_cpus = task_cpus

    def _folder(self, candidate: Candidate) -> Path:
        return self.out / "candidates" / candidate.key

    def evaluate(self, plans: list[Candidate], sensitivity: dict[str, Any] | None = None):
        """Build and score what is not cached (children, in parallel), then measure latency
        here one at a time, then estimate on the device."""
        from edgeforge._executor import run_jobs

        fresh = [c for c in plans if not self._from_cache(c)]
        jobs = [self._job(c, sensitivity) for c in fresh]
        if jobs:
            outcomes = run_jobs(
                _build_and_score,
                jobs,
                self.timeout,
                self.parallel,
                "Building candidates",
                self.executor,
                self.task_cpus,
            )
            for candidate, outcome in zip(fresh, outcomes, strict=True):
                _apply(candidate, outcome)
        measured = [c for c in fresh if c.status == "evaluated"]
        for candidate in track(measured, "Measuring latency here"):
            self._bench(candidate)
        for candidate in plans:
            self._estimate(candidate)
        for candidate in fresh:
            if candidate.status in (*BUILT, "unsupported"):  # deterministic outcomes only
                write_json(self._folder(candidate) / "result.json", candidate.to_dict())

    def _from_cache(self, candidate: Candidate) -> bool:
        record = self._folder(candidate) / "result.json"
        if not record.is_file():
            return False
        try:
            cached = json.loads(record.read_text())
        except ValueError:
            return False
        artifact = cached.get("artifact")
        if cached.get("status") in BUILT and not (artifact and Path(artifact).is_dir()):
            return False
        for name in (
            "status",
            "detail",
            "artifact",
            "size_bytes",
            "latency_here_ms",
            "recipe",
            "timed_with",
            "accuracy",
            "accuracy_drop",
            "build_seconds",
            "notes",
        ):
            setattr(candidate, name, cached.get(name))
        candidate.notes = list(candidate.notes or [])
        candidate.timed_with = dict(candidate.timed_with or {})
        candidate.cached = True
        if cached.get("memory_source") == "measured here":
            candidate.memory_bytes = cached.get("memory_bytes")
            candidate.memory_source = "measured here"
        return True

    def _job(self, candidate: Candidate, sensitivity: dict[str, Any] | None) -> dict[str, Any]:
        variant = self.variant_of[candidate.model]
        from edgeforge.runtimes import get_runtime

        hub = get_runtime(candidate.runtime).hub
        deployed = deployment(candidate.runtime, candidate.precision, self.device)
        return {
            "inference_precision": deployed["inference_precision"],
            "runtime": candidate.runtime,
            "model": variant.onnx_model if hub == "onnx" else variant.torch_model,
            "recipe": candidate.recipe,
            "folder": str(self._folder(candidate) / "artifact"),
            "feeds": self.split.held_out,
            "calibration_feeds": self.split.calibration_feeds,
            "metric": self.metric,
            "reference": self.reference,
            "labels": self.split.labels_held_out,
            "calibration_labels": self.split.labels_calibration,
            "sensitivity": sensitivity,
        }

    def _bench(self, candidate: Candidate) -> None:
        from edgeforge.bench import bench

        deployed = deployment(candidate.runtime, candidate.precision, self.device)
        try:
            result = bench(
                candidate.artifact,
                runtime=candidate.runtime,
                threads=deployed["threads"],
                inference_precision=deployed["inference_precision"],
                warmup=3,
                runs=self.bench_runs,
                repeats=1,
                data=self.calibration_folder or self.split.folder,
                timeout=self.timeout,
            )
        except EdgeforgeError as exc:
            candidate.notes.append(f"latency here not measured: {exc}")
            return
        candidate.latency_here_ms = round(result.latency_ms["p50"], 4)
        candidate.timed_with = dict(result.settings)
        candidate.memory_bytes = int(result.model_memory_mb * 1024 * 1024)
        candidate.memory_source = "measured here"

    def _estimate(self, candidate: Candidate) -> None:
        from edgeforge.estimator import estimate

        if candidate.status not in BUILT:
            return
        profile = self._profile(candidate.model)
        compute, why = compute_precision(candidate.precision, profile, self.device)
        if why and why not in candidate.notes:
            candidate.notes.append(why)
        try:
            found = estimate(profile, self.device, runtime=candidate.runtime, precision=compute)
        except EdgeforgeError as exc:
            candidate.notes.append(f"no estimate on {self.device.id}: {exc}")
            found = None
        if found is not None:
            candidate.estimated_ms = round(found.latency_ms, 4)
            candidate.device_latency_ms = candidate.estimated_ms
            candidate.device_latency_band_ms = [
                round(found.latency_low_ms, 4),
                round(found.latency_high_ms, 4),
            ]
            candidate.device_latency_source = f"estimated on {self.device.id}"
        if self.device.id == THIS_MACHINE_ID and candidate.latency_here_ms is not None:
            # The target is where we measure: the measurement decides, not the estimate.
            candidate.device_latency_ms = candidate.latency_here_ms
            candidate.device_latency_band_ms = [candidate.latency_here_ms] * 2
            candidate.device_latency_source = "measured here"
        if found is None:
            return
        peak = found.peak_memory_bytes
        if candidate.precision == "int4-weight":
            int4_weights = found.weight_bytes // 8  # fp32 (4 bytes) -> int4 (half a byte)
            peak = peak - found.weight_bytes + int4_weights
            note = "estimate computes in fp32 (int4 weights are dequantized) with int4 weight bytes"
            if note not in candidate.notes:
                candidate.notes.append(note)
        if candidate.memory_source != "measured here":
            candidate.memory_bytes = int(peak)
            candidate.memory_source = f"estimated on {self.device.id}"

    def _profile(self, variant_name: str) -> Any:
        from edgeforge.analysis import inspect

        if variant_name == "fused":  # the same computation as the first variant, unfused
            variant_name = next(iter(self.variant_of))
        if variant_name not in self.profiles:
            variant = self.variant_of[variant_name]
            self.profiles[variant_name] = inspect(variant.onnx_model)
        return self.profiles[variant_name]


# -- in the child ------------------------------------------------------------------------------


def _build_and_score(job: dict[str, Any]) -> dict[str, Any]:
    """Build one candidate, then run the held-out feeds through it and score the outputs."""
    from edgeforge.runtimes import get_runtime

    # Quantizers print progress on stdout; in this child it goes to stderr, so that the
    # parent's stdout carries only the result (`--json`).
    sys.stdout.flush()
    os.dup2(2, 1)

    runtime = get_runtime(job["runtime"])
    if job.get("inference_precision") is not None and hasattr(runtime, "inference_precision"):
        runtime.inference_precision = job["inference_precision"]  # score what will be timed
    model: Model = job["model"]
    recipe = Recipe.from_dict(job["recipe"])
    notes: list[str] = []
    if job.get("sensitivity"):
        recipe, notes = _sensitive_recipe(model, recipe, job)
    artifact = runtime.build(model, recipe, Path(job["folder"]))
    manifest_bytes = (artifact.folder / "manifest.json").stat().st_size
    outcome: dict[str, Any] = {
        "runtime": runtime.name,
        "status": "built-not-run",
        "artifact": str(artifact.folder),
        "size_bytes": artifact.size_bytes() - manifest_bytes,
        "recipe": recipe.to_dict(),
        "notes": [*notes, *artifact.manifest.notes],
        "detail": "",
    }
    available = runtime.availability()
    if not available.can_execute:
        outcome["detail"] = (
            f"cannot run here ({available.reason}): accuracy and latency here unmeasured"
        )
        return outcome
    feeds = job["feeds"]
    with runtime.open(artifact) as session:
        outputs = [session.run(feed) for feed in feeds]
    found = score(outputs, job["reference"], job["labels"], feeds=feeds, metric=job["metric"])
    return outcome | {"status": "evaluated", "accuracy": found.to_dict()}


def _sensitive_recipe(model: Model, recipe: Recipe, job: dict[str, Any]):
    from edgeforge.optimize.sensitivity import keep_float_until

    feeds = job["calibration_feeds"]
    labels = job["calibration_labels"]
    samples = Samples(feeds, labels, "the calibration part of --data")

    def metric(reference, candidate) -> float:
        return 1.0 - score(candidate, reference, labels, feeds=feeds, metric=job["metric"]).drop

    found = keep_float_until(model, recipe, samples, metric, job["sensitivity"]["limit"])
    kept = len(found.excluded)
    notes = [
        f"sensitivity: {kept} node(s) kept in float, tuned on the calibration part "
        f"(1 - drop {found.metric_before:.4f} -> {found.metric_after:.4f}, target "
        f"{found.limit:.4f}, {found.quantize_runs} quantize runs)",
        *found.notes,
    ]
    return found.recipe, notes


# -- back in the parent ------------------------------------------------------------------------


def _apply(candidate: Candidate, outcome: dict[str, Any]) -> None:
    candidate.status = outcome.get("status", "failed")
    candidate.detail = outcome.get("detail", "")
    candidate.artifact = outcome.get("artifact")
    candidate.size_bytes = outcome.get("size_bytes")
    candidate.build_seconds = outcome.get("seconds")
    candidate.notes = list(outcome.get("notes", []))
    if outcome.get("recipe"):
        candidate.recipe = outcome["recipe"]
    if outcome.get("accuracy"):
        candidate.accuracy = outcome["accuracy"]
        candidate.accuracy_drop = outcome["accuracy"]["drop"]
