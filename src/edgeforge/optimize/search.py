"""`optimize`: build the candidates that make sense for a device, measure each, keep the Pareto
front, and choose the best one that meets the user's limits.

What a caller can rely on:
- `--data` is split deterministically: the first `calibration` samples (in the folder's sorted
  order) calibrate int8-static recipes (the recipes read them through their `data` and
  `calibration_samples` options) and fine-tune prune/distill; every accuracy figure and every
  limit is judged on the rest, the held-out part, which no candidate has seen;
- candidates are, for each runtime the device lists that is installed here, every precision
  the runtime says it builds (`Runtime.precisions`), int8-static once per calibration method
  where the runtime takes that option, the ONNX clean-up pass before the ONNX-hub runtimes,
  and, when an int8-static candidate breaks `--max-accuracy-drop`, an ONNX Runtime candidate
  with its most harmful layers kept in float (`edgeforge.optimize.sensitivity`);
- builds run in child processes with a time limit (two at a time where there are cores); a
  converter that fails costs its candidate only. Latency here is measured one candidate at a
  time, never in parallel (parallel timing lies);
- a runtime that builds here but cannot run here (Core ML off macOS) is judged on size and the
  device estimate only: its accuracy is unmeasured, so it is never chosen under an accuracy
  limit;
- each candidate is cached under `out/candidates/<key>/`, the key being the source model's
  digest, the passes, the runtime and its tool versions, the recipe and the data's digest; a
  re-run reuses what did not change and marks it `cached`;
- a limit that nothing meets is a result (`chosen` None, `unmet` naming each limit and the
  closest candidate), not an error; every output file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge._io import write_json, write_text
from edgeforge._progress import track
from edgeforge.errors import EdgeforgeError
from edgeforge.evaluate.data import Samples, load_data
from edgeforge.model import Model
from edgeforge.optimize._accuracy import describe_task, score, task_of
from edgeforge.optimize._pareto import (
    Limits,
    broken_limits,
    choose,
    pareto_front,
    parse_bytes,
    parse_ms,
    parse_share,
)
from edgeforge.recipe import Recipe

__all__ = ["Candidate", "OptimizeResult", "optimize"]

DEFAULT_CALIBRATION = 64  # samples; never more than half of --data
_CACHE_VERSION = 1  # bump when what a cached candidate holds changes
_ALL_SAMPLES = 1 << 30
# Runtimes whose int8-static recipe takes `calibration_method`, for those that do not declare
# it themselves (a runtime may set a `calibration_methods` attribute).
_CALIBRATION_METHODS = {
    "onnxruntime": ("minmax", "entropy", "percentile"),
    "onnxruntime-mobile": ("minmax", "entropy", "percentile"),
}
_TORCH_PASSES = ("prune", "distill")
_MADE_BY = {"prune": "pruned", "distill": "distilled"}
_BUILT = ("evaluated", "built-not-run")


@dataclass
class Candidate:
    """One recipe on one runtime, with everything measured about it."""

    id: str  # "onnxruntime/int8-static-minmax", "pruned/onnxruntime/fp32"
    runtime: str
    precision: str
    recipe: dict[str, Any]
    model: str  # which model it was built from: "cleaned", "source", "pruned", "distilled"
    key: str  # cache key: out/candidates/<key>/
    status: str = "planned"  # evaluated | built-not-run | unsupported | failed | crashed | ...
    cached: bool = False
    detail: str = ""
    artifact: str | None = None
    size_bytes: int | None = None
    latency_here_ms: float | None = None  # measured here, p50 at batch 1
    device_latency_ms: float | None = None  # estimated on the device
    device_latency_band_ms: list[float] | None = None  # [low, high]
    memory_bytes: int | None = None
    memory_source: str = ""  # "measured here" or "estimated on the device"
    accuracy: dict[str, Any] | None = None  # `Score.to_dict()` on the held-out part
    accuracy_drop: float | None = None
    build_seconds: float | None = None
    on_front: bool = False
    dominated_by: str | None = None
    verdict: str = ""  # chosen | kept | dropped | failed
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OptimizeResult:
    model: str
    device: str
    out: str
    limits: dict[str, Any]
    data: dict[str, Any]  # folder, samples, calibration / held-out split, labels, task
    reference: dict[str, Any]  # the original model on the held-out part
    candidates: list[Candidate]
    chosen: str | None
    chosen_path: str | None
    unmet: list[dict[str, Any]]
    skipped: list[dict[str, str]]  # runtimes the device lists that were not tried, and why
    notes: list[str]
    report_path: str
    json_path: str
    seconds: float = 0.0

    @property
    def met(self) -> bool:
        return self.chosen is not None

    def candidate(self, candidate_id: str) -> Candidate:
        return next(c for c in self.candidates if c.id == candidate_id)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["candidates"] = [c.to_dict() for c in self.candidates]
        data["met"] = self.met
        return data


def optimize(
    source: Any,
    device: str,
    data: str | Path,
    *,
    out: str | Path = "edgeforge-optimize",
    max_accuracy_drop: str | float | None = None,
    max_size: str | int | None = None,
    max_latency: str | float | None = None,
    max_memory: str | int | None = None,
    runtimes: list[str] | None = None,
    precisions: list[str] | None = None,
    passes: tuple[str, ...] | list[str] = (),
    cleanup: bool = True,
    calibration_samples: int | None = None,
    timeout: float = 600,
    parallel: int | None = None,
    bench_runs: int = 30,
    example_inputs: Any = None,
    **load_options: Any,
) -> OptimizeResult:
    """Search the candidates for `device` on `data`; write `out/chosen/`, `out/optimize.json`
    and `out/report.html`. Limits: a share ('1%' or 0.01), bytes ('5MB'), milliseconds
    ('10ms', on the device, estimated) and bytes of peak memory."""
    from edgeforge._load import load
    from edgeforge.devices import get_device

    started = time.perf_counter()
    limits = Limits(
        parse_share(max_accuracy_drop),
        parse_bytes(max_size),
        parse_ms(max_latency),
        parse_bytes(max_memory),
    )
    unknown = sorted(set(passes) - {"cleanup", *_TORCH_PASSES})
    if unknown:
        raise EdgeforgeError(f"unknown pass {unknown[0]!r}; choose from prune, distill")
    target = get_device(device)
    out = Path(out)
    model = load(source, example_inputs, workdir=out / "source", **load_options)
    split = _Split.read(Path(data), model, calibration_samples)
    source_digest = _model_digest(model)
    notes: list[str] = []
    work = _Search(out, model, target, split, limits, source_digest, timeout, parallel, bench_runs)
    variants = work.variants(source, example_inputs, cleanup, tuple(passes), notes)
    plans, skipped = work.plan(variants, runtimes, precisions)
    work.evaluate(plans)
    work.sensitivity(plans, notes)
    rows = [c.to_dict() for c in plans if c.status in _BUILT]
    chosen, unmet = choose(rows, limits) if rows else (None, [_nothing_built()])
    _verdicts(plans, chosen, limits)
    chosen_path = _write_chosen(out, plans, chosen)
    result = OptimizeResult(
        model=model.provenance.source,
        device=target.id,
        out=str(out),
        limits={**limits.to_dict(), "latency_means": f"estimated on {target.id}"},
        data=split.describe(),
        reference=work.reference_summary(),
        candidates=plans,
        chosen=chosen,
        chosen_path=chosen_path,
        unmet=unmet,
        skipped=skipped,
        notes=notes + _standing_notes(),
        report_path=str(out / "report.html"),
        json_path=str(out / "optimize.json"),
    )
    result.seconds = round(time.perf_counter() - started, 2)
    _write_outputs(result)
    return result


# -- data --------------------------------------------------------------------------------------


@dataclass
class _Split:
    """--data read once, split into the calibration part and the held-out part."""

    folder: Path
    samples: Samples
    calibration: int
    labels_calibration: np.ndarray | None
    labels_held_out: np.ndarray | None
    digest: str

    @classmethod
    def read(cls, folder: Path, model: Model, calibration: int | None) -> _Split:
        samples = load_data(folder, model.inputs, limit=_ALL_SAMPLES)
        count = len(samples.feeds)
        if count < 2:
            raise EdgeforgeError(
                f"--data {folder}: {count} sample(s); optimize needs at least 2, the first part "
                "to calibrate and the rest to judge accuracy on"
            )
        if calibration is None:
            calibration = min(DEFAULT_CALIBRATION, count // 2)
        if not 1 <= calibration < count:
            raise EdgeforgeError(
                f"--calibration-samples {calibration}: give 1 to {count - 1} (--data holds "
                f"{count} samples; the rest are held out to judge accuracy)"
            )
        rows = [len(next(iter(feed.values()))) for feed in samples.feeds]
        labels = samples.labels
        if labels is not None and len(labels) != sum(rows):
            labels = None  # labels that do not line up with the samples cannot be trusted
            samples.notes.append(
                f"{len(samples.labels)} labels for {sum(rows)} samples: labels ignored"
            )
        cut = sum(rows[:calibration])
        return cls(
            folder,
            samples,
            calibration,
            None if labels is None else labels[:cut],
            None if labels is None else labels[cut:],
            _samples_digest(samples),
        )

    @property
    def held_out(self) -> list[dict[str, np.ndarray]]:
        return self.samples.feeds[self.calibration :]

    def describe(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "source": self.samples.source,
            "samples": len(self.samples.feeds),
            "calibration_samples": self.calibration,
            "held_out_samples": len(self.held_out),
            "labels": self.labels_held_out is not None,
            "split": f"the first {self.calibration} samples (sorted file order) calibrate and "
            "fine-tune; accuracy and every limit are judged on the other "
            f"{len(self.held_out)} (held out)",
            "digest": self.digest,
            "notes": list(self.samples.notes),
        }


def _samples_digest(samples: Samples) -> str:
    digest = hashlib.sha256()
    for feed in samples.feeds:
        for name in sorted(feed):
            array = np.ascontiguousarray(feed[name])
            digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
            digest.update(array.tobytes())
    if samples.labels is not None:
        digest.update(np.ascontiguousarray(samples.labels).tobytes())
    return digest.hexdigest()


def _model_digest(model: Model) -> str:
    from edgeforge.runtimes.base import model_sha256

    return model_sha256(model)


# -- the search --------------------------------------------------------------------------------


@dataclass
class _Variant:
    name: str  # cleaned | source | pruned | distilled
    passes: list[str]
    onnx_model: Model  # what the ONNX-hub runtimes build from
    torch_model: Model | None  # what the torch-hub runtimes build from (None: ONNX-only)
    runtimes: tuple[str, ...] | None = None  # None: every runtime of the device


class _Search:
    def __init__(self, out, model, device, split, limits, digest, timeout, parallel, runs):
        self.out = out
        self.model = model
        self.device = device
        self.split = split
        self.limits = limits
        self.digest = digest
        self.timeout = timeout
        self.parallel = parallel if parallel else (2 if (os.cpu_count() or 1) >= 2 else 1)
        self.bench_runs = runs
        self.profiles: dict[str, Any] = {}
        self.variant_of: dict[str, _Variant] = {}
        self.reference = self._reference_outputs()
        self.task = task_of(self.reference, split.labels_held_out)

    # -- reference -------------------------------------------------------------------------

    def _reference_outputs(self) -> list[dict[str, np.ndarray]]:
        """The original model in ONNX Runtime (fp32) on the held-out feeds."""
        from edgeforge.runtimes import get_runtime

        runtime = get_runtime("onnxruntime")
        with tempfile.TemporaryDirectory(prefix="edgeforge-optimize-") as scratch:
            artifact = runtime.build(self.model, Recipe(), Path(scratch) / "reference")
            with runtime.open(artifact) as session:
                return [session.run(feed) for feed in self.split.held_out]

    def reference_summary(self) -> dict[str, Any]:
        same = score(self.reference, self.reference, self.split.labels_held_out)
        return {
            "task": self.task,
            "task_means": describe_task(self.task),
            "metric": same.metric,
            "value": same.reference,
            "measured_with": "onnxruntime fp32 on the held-out part",
        }

    # -- model variants --------------------------------------------------------------------

    def variants(self, source, example_inputs, cleanup, passes, notes) -> list[_Variant]:
        onnx_model, applied = self.model, []
        if cleanup:
            onnx_model, applied = self._cleaned(notes), ["cleanup"]
        torch_model = self.model if self.model.torch_program is not None else None
        found = [_Variant("cleaned" if applied else "source", applied, onnx_model, torch_model)]
        for name in passes:
            if name in _TORCH_PASSES:
                made = self._torch_pass(name, source, example_inputs, notes)
                if made is not None:
                    found.append(_Variant(_MADE_BY[name], [name], made, None, ("onnxruntime",)))
        self.variant_of = {v.name: v for v in found}
        return found

    def _cleaned(self, notes: list[str]) -> Model:
        from edgeforge.passes.cleanup import cleanup

        folder = self.out / "passes" / f"cleanup-{self.digest[:16]}"
        try:
            return cleanup(self.model, workdir=folder).model
        except EdgeforgeError as exc:
            notes.append(f"ONNX clean-up skipped: {exc}")
            return self.model

    def _torch_pass(self, name, source, example_inputs, notes) -> Model | None:
        """The source pruned or distilled (cached under out/passes/), exported to ONNX."""
        from edgeforge._load import _is_torch_module, load
        from edgeforge._torch_export import load_factory

        key = _digest([self.digest, name, self.split.digest, self.split.calibration])[:16]
        folder = self.out / "passes" / f"{name}-{key}"
        record = folder / "pass.json"
        if record.is_file():
            return load(json.loads(record.read_text())["onnx"])
        if _is_torch_module(source):
            module, inputs, options = source, example_inputs, {}
        elif isinstance(source, str) and ":" in source and not Path(source).is_file():
            module, inputs, options = load_factory(source)
        else:
            notes.append(
                f"--passes {name} skipped: it needs a torch source (a module or a "
                "'package.module:factory' reference), not an ONNX file"
            )
            return None
        from edgeforge.passes.distill import distill
        from edgeforge.passes.prune import prune

        fine_tune = Samples(
            self.split.samples.feeds[: self.split.calibration],
            self.split.labels_calibration,
            f"the calibration part of --data {self.split.folder}",
        )
        if name == "prune":
            made = prune(module, inputs, ratio=0.5, data=fine_tune, epochs=3)
        else:
            made = distill(module, inputs, fine_tune, width=0.5, steps=300)
        options = dict(options or {})
        model = load(
            made.module,
            inputs,
            input_names=[t.name for t in self.model.inputs],
            output_names=[t.name for t in self.model.outputs],
            dynamic_axes=options.get("dynamic_axes"),
            workdir=folder,
        )
        write_json(record, {"onnx": str(model.onnx_path), "pass": made.to_dict()})
        notes.append(
            f"{name}: {'; '.join(made.notes) or 'done'} (fine-tuned on the calibration part)"
        )
        return model

    # -- candidates ------------------------------------------------------------------------

    def plan(self, variants, runtimes, precisions) -> tuple[list[Candidate], list[dict]]:
        from edgeforge.runtimes import get_runtime

        plans: list[Candidate] = []
        skipped: list[dict[str, str]] = []
        for variant in variants:
            for name in self.device.runtimes:
                if runtimes and name not in runtimes:
                    continue
                if variant.runtimes is not None and name not in variant.runtimes:
                    continue
                runtime = get_runtime(name)
                available = runtime.availability()
                if not available.installed:
                    if variant is variants[0]:
                        skipped.append({"runtime": name, "reason": available.reason})
                    continue
                model = variant.onnx_model if runtime.hub == "onnx" else variant.torch_model
                if model is None:
                    if variant is variants[0]:
                        skipped.append(
                            {
                                "runtime": name,
                                "reason": "converts from a torch.export program; this model "
                                "came as ONNX (load the torch module instead)",
                            }
                        )
                    continue
                wanted = list(runtime.precisions)
                if variant.name in ("pruned", "distilled"):
                    wanted = [p for p in wanted if p in ("fp32", "int8-static")]
                for precision in wanted:
                    if precisions and precision not in precisions:
                        continue
                    for suffix, options in self._recipes(runtime, precision):
                        plans.append(self._candidate(variant, runtime, precision, suffix, options))
        return plans, skipped

    def _recipes(self, runtime, precision) -> list[tuple[str, dict[str, Any]]]:
        if precision != "int8-static":
            return [("", {})]
        options = {"data": str(self.split.folder), "calibration_samples": self.split.calibration}
        methods = getattr(runtime, "calibration_methods", None) or _CALIBRATION_METHODS.get(
            runtime.name, ()
        )
        if not methods:
            return [("", options)]
        return [(f"-{m}", options | {"calibration_method": m}) for m in methods]

    def _candidate(self, variant, runtime, precision, suffix, options, extra=None) -> Candidate:
        prefix = "" if variant.name in ("cleaned", "source") else f"{variant.name}/"
        recipe = Recipe(precision, options).to_dict()
        key_recipe = {**recipe, "options": {**options, "data": self.split.digest}}
        if "data" not in options:
            key_recipe["options"].pop("data")
        key = _digest(
            [
                _CACHE_VERSION,
                self.digest,
                variant.passes,
                runtime.name,
                runtime.versions(),
                key_recipe,
                self.split.digest,
                self.split.calibration,
                self.bench_runs,
                extra,
            ]
        )[:20]
        return Candidate(
            id=f"{prefix}{runtime.name}/{precision}{suffix}",
            runtime=runtime.name,
            precision=precision,
            recipe=recipe,
            model=variant.name,
            key=key,
        )

    def _folder(self, candidate: Candidate) -> Path:
        return self.out / "candidates" / candidate.key

    # -- evaluation ------------------------------------------------------------------------

    def evaluate(self, plans: list[Candidate], sensitivity: dict[str, Any] | None = None):
        """Build and score what is not cached (children, in parallel), then measure latency
        here one at a time, then estimate on the device."""
        from edgeforge.convert import _run_children

        fresh = [c for c in plans if not self._from_cache(c)]
        jobs = [self._job(c, sensitivity) for c in fresh]
        if jobs:
            outcomes = _run_children(
                _build_and_score, jobs, self.timeout, self.parallel, "Building candidates"
            )
            for candidate, outcome in zip(fresh, outcomes, strict=True):
                _apply(candidate, outcome)
        measured = [c for c in fresh if c.status == "evaluated"]
        for candidate in track(measured, "Measuring latency here"):
            self._bench(candidate)
        for candidate in plans:
            self._estimate(candidate)
        for candidate in fresh:
            if candidate.status in (*_BUILT, "unsupported"):  # deterministic outcomes only
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
        if cached.get("status") in _BUILT and not (artifact and Path(artifact).is_dir()):
            return False
        for name in (
            "status",
            "detail",
            "artifact",
            "size_bytes",
            "latency_here_ms",
            "recipe",
            "accuracy",
            "accuracy_drop",
            "build_seconds",
            "notes",
        ):
            setattr(candidate, name, cached.get(name))
        candidate.notes = list(candidate.notes or [])
        candidate.cached = True
        if cached.get("memory_source") == "measured here":
            candidate.memory_bytes = cached.get("memory_bytes")
            candidate.memory_source = "measured here"
        return True

    def _job(self, candidate: Candidate, sensitivity: dict[str, Any] | None) -> dict[str, Any]:
        variant = self.variant_of[candidate.model]
        from edgeforge.runtimes import get_runtime

        hub = get_runtime(candidate.runtime).hub
        return {
            "runtime": candidate.runtime,
            "model": variant.onnx_model if hub == "onnx" else variant.torch_model,
            "recipe": candidate.recipe,
            "folder": str(self._folder(candidate) / "artifact"),
            "data": str(self.split.folder),
            "calibration": self.split.calibration,
            "reference": self.reference,
            "labels": self.split.labels_held_out,
            "calibration_labels": self.split.labels_calibration,
            "sensitivity": sensitivity,
        }

    def _bench(self, candidate: Candidate) -> None:
        from edgeforge.bench import bench

        try:
            result = bench(
                candidate.artifact,
                runtime=candidate.runtime,
                warmup=3,
                runs=self.bench_runs,
                repeats=1,
                data=self.split.folder,
                timeout=self.timeout,
            )
        except EdgeforgeError as exc:
            candidate.notes.append(f"latency here not measured: {exc}")
            return
        candidate.latency_here_ms = round(result.latency_ms["p50"], 4)
        candidate.memory_bytes = int(result.model_memory_mb * 1024 * 1024)
        candidate.memory_source = "measured here"

    def _estimate(self, candidate: Candidate) -> None:
        from edgeforge.estimator import estimate

        if candidate.status not in _BUILT:
            return
        profile = self._profile(candidate.model)
        compute = {"fp16": "fp16", "int8-dynamic": "int8", "int8-static": "int8"}.get(
            candidate.precision, "fp32"
        )
        try:
            found = estimate(profile, self.device, runtime=candidate.runtime, precision=compute)
        except EdgeforgeError as exc:
            candidate.notes.append(f"no estimate on {self.device.id}: {exc}")
            return
        candidate.device_latency_ms = round(found.latency_ms, 4)
        candidate.device_latency_band_ms = [
            round(found.latency_low_ms, 4),
            round(found.latency_high_ms, 4),
        ]
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

        if variant_name not in self.profiles:
            variant = self.variant_of[variant_name]
            self.profiles[variant_name] = inspect(variant.onnx_model)
        return self.profiles[variant_name]

    # -- sensitivity -----------------------------------------------------------------------

    def sensitivity(self, plans: list[Candidate], notes: list[str]) -> None:
        """When an int8-static candidate breaks the accuracy limit, try ONNX Runtime with the
        most harmful layers kept in float, tuned on the calibration part."""
        bound = self.limits.max_accuracy_drop
        if bound is None:
            return
        broken = [
            c
            for c in plans
            if c.precision == "int8-static"
            and c.model in ("cleaned", "source")
            and c.accuracy_drop is not None
            and c.accuracy_drop > bound
        ]
        if not broken:
            return
        ort = [
            c
            for c in plans
            if c.runtime == "onnxruntime"
            and c.precision == "int8-static"
            and c.model in ("cleaned", "source")
            and c.status == "evaluated"
        ]
        if not ort:
            notes.append(
                "an int8-static candidate breaks --max-accuracy-drop, but ONNX Runtime "
                "built no int8-static candidate here: no sensitivity candidate"
            )
            return
        try:
            from edgeforge.optimize import sensitivity  # noqa: F401 - from the ORT branch
        except ImportError:
            notes.append(
                "an int8-static candidate breaks --max-accuracy-drop; the sensitivity "
                "candidate (layers kept in float) needs edgeforge.optimize.sensitivity, "
                "which is not installed in this version"
            )
            return
        base = min(ort, key=lambda c: c.accuracy_drop if c.accuracy_drop is not None else 1e9)
        from edgeforge.runtimes import get_runtime

        variant = self.variant_of[base.model]
        options = dict(base.recipe["options"])
        method = options.get("calibration_method", "")
        job = {"limit": 1.0 - bound}
        candidate = self._candidate(
            variant,
            get_runtime("onnxruntime"),
            "int8-static",
            f"-{method}-sensitivity" if method else "-sensitivity",
            options,
            extra=job,
        )
        plans.append(candidate)
        self.evaluate([candidate], sensitivity=job)


# -- in the child ------------------------------------------------------------------------------


def _build_and_score(job: dict[str, Any]) -> dict[str, Any]:
    """Build one candidate, then run the held-out feeds through it and score the outputs."""
    from edgeforge.runtimes import get_runtime

    # Quantizers print progress on stdout; in this child it goes to stderr, so that the
    # parent's stdout carries only the result (`--json`).
    sys.stdout.flush()
    os.dup2(2, 1)

    runtime = get_runtime(job["runtime"])
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
    feeds = load_data(Path(job["data"]), model.inputs, limit=_ALL_SAMPLES).feeds
    with runtime.open(artifact) as session:
        outputs = [session.run(feed) for feed in feeds[job["calibration"] :]]
    found = score(outputs, job["reference"], job["labels"])
    return outcome | {"status": "evaluated", "accuracy": found.to_dict()}


def _sensitive_recipe(model: Model, recipe: Recipe, job: dict[str, Any]):
    from edgeforge.optimize.sensitivity import keep_float_until

    samples = load_data(Path(job["data"]), model.inputs, limit=job["calibration"])
    labels = job["calibration_labels"]
    samples.labels = labels

    def metric(reference, candidate) -> float:
        return 1.0 - score(candidate, reference, labels).drop

    found = keep_float_until(model, recipe, samples, metric, job["sensitivity"]["limit"])
    kept = len(found.excluded)
    notes = [
        f"sensitivity: {kept} node(s) kept in float, tuned on the calibration part "
        f"(1 - drop {found.metric_before:.4f} -> {found.metric_after:.4f}, target "
        f"{found.limit:.4f}, {found.quantize_runs} quantize runs)",
        *found.notes,
    ]
    return found.recipe, notes


# -- results -----------------------------------------------------------------------------------


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


def _verdicts(plans: list[Candidate], chosen: str | None, limits: Limits) -> None:
    rows = [c.to_dict() for c in plans if c.status in _BUILT]
    front = pareto_front(rows)
    by_id = {c.id: c for c in plans}
    for candidate in plans:
        if candidate.status not in _BUILT:
            candidate.verdict = "failed"
            candidate.reason = f"{candidate.status}: {candidate.detail}"
            continue
        candidate.dominated_by = front[candidate.id]
        candidate.on_front = candidate.dominated_by is None
        broken = broken_limits(candidate.to_dict(), limits)
        if candidate.id == chosen:
            candidate.verdict = "chosen"
            candidate.reason = "meets every limit with the lowest latency on the device"
        elif broken:
            candidate.verdict = "dropped"
            candidate.reason = "breaks " + "; ".join(broken)
        elif candidate.on_front:
            candidate.verdict = "kept"
            candidate.reason = "on the Pareto front and within the limits"
            if chosen:
                candidate.reason += f"; not chosen: {chosen} is faster on the device (or as fast "
                candidate.reason += "and smaller)"
        else:
            candidate.verdict = "dropped"
            other = by_id[candidate.dominated_by]
            candidate.reason = (
                f"dominated by {other.id} (no larger, no slower on the device, no less "
                "accurate, and better in one)"
            )


def _nothing_built() -> dict[str, Any]:
    return {
        "limit": "all",
        "flag": "any candidate",
        "bound": None,
        "closest": None,
        "closest_value": None,
        "text": "no candidate was built: see each candidate's reason and the skipped runtimes",
    }


def _write_chosen(out: Path, plans: list[Candidate], chosen: str | None) -> str | None:
    """Copy the chosen artifact to out/chosen/ (replacing an older choice) atomically."""
    target = out / "chosen"
    if chosen is None:
        if target.exists():
            shutil.rmtree(target)
        return None
    candidate = next(c for c in plans if c.id == chosen)
    staging = Path(tempfile.mkdtemp(prefix=".chosen-", dir=out))
    try:
        shutil.copytree(candidate.artifact, staging / "artifact")
        write_json(staging / "artifact" / "candidate.json", candidate.to_dict())
        if target.exists():
            shutil.rmtree(target)
        (staging / "artifact").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    from edgeforge.runtimes import Artifact

    return str(Artifact.load(target).path)


def _write_outputs(result: OptimizeResult) -> None:
    from edgeforge.report.html import render_html

    data = result.to_dict()
    html = render_html({"optimize": data}, title=f"edgeforge optimize: {result.device}")
    write_json(Path(result.json_path), data)
    write_text(Path(result.report_path), html)


def _standing_notes() -> list[str]:
    return [
        "latency on the device is the roofline estimate (int8-dynamic and int8-static computed "
        "as int8, fp16 as fp16, int4-weight as fp32 compute with int4 weight bytes); latency "
        "here is measured on this machine, one candidate at a time",
        "memory is the model's share of the measuring process's peak here where the candidate "
        "ran here, else the estimate of weights plus peak activations on the device",
    ]


def _digest(parts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
