"""`verify`: does a converted or shrunk model still compute what its reference computes?

Both are fed the same inputs (from `--data`: every sample unless `max_samples` draws fewer, with
a fixed seed and stratified by class; images preprocessed as `preprocess` says, recorded in the
result; else synthesised by each input's role: `edgeforge.evaluate.synthesis`); every output
is compared with precision-dependent tolerances; when they part, the first diverging layer is
named; with labels, the task metric is reported for both, and a reference near chance is
said to be (a gate on it proves nothing). The candidate is an artifact folder
written by `convert` (any runtime) or an `.onnx` file (run in ONNX Runtime).

Robustness (issue 18): the extremes no real user sends (an all-zero attention mask, token ids
at the vocabulary's bounds, constant 0/1/-1/8 signals) run as their own, labelled section,
`Verification.robustness`, one input at a time. Their outcome never changes `passed`, the
verdict's PASS/FAIL or the exit code: those depend on the realistic samples (or `--data`)
alone. Where the candidate parts from the reference on an extreme, the section names the input,
the value, what was seen (NaN where the reference gives numbers, or the error) and why a
runtime may differ there. It runs when the samples are synthesised (no `--data`); quantized
candidates skip it (they clip extremes by design).

Trust boundary (issue 13): the reference is loaded and the candidate's manifest and signature
checked in the calling process (static checks only); everything that reads `--data` or runs
either model happens in one child process (`edgeforge._children.in_child`) held to the memory
budget and `timeout`. A model that loops on its inputs, a runtime that crashes or a sample that
exhausts the budget ends that child, and the caller gets one line (`EdgeforgeError`), never a
hang. Inside an edgeforge child already (`convert` verifies in its own), the work runs where
it is: that child's limits hold, and no second child is nested. The result is the same object
either way.
"""

from __future__ import annotations

import datetime as _dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge._children import in_child, inside_child
from edgeforge._limits import time_limit
from edgeforge._load import load
from edgeforge._progress import track
from edgeforge.errors import EdgeforgeError, first_line
from edgeforge.evaluate.compare import (
    OutputComparison,
    Tolerance,
    chance_level,
    compare,
    tolerance_for,
)
from edgeforge.evaluate.data import Preprocess, Samples, load_data, synthesize
from edgeforge.evaluate.localize import Divergence, first_divergence, reference_intermediates
from edgeforge.evaluate.synthesis import EdgeCase, edge_samples
from edgeforge.model import Model, TensorSpec
from edgeforge.runtimes import Artifact, Manifest, get_runtime

__all__ = ["EdgeResult", "Robustness", "Verification", "open_candidate", "verify"]

QUANTIZED_SAMPLES = 32  # synthesised samples for int8/int4 candidates
_FINDINGS = ("differs", "non-finite-candidate", "non-finite-reference", "error")


@dataclass
class EdgeResult:
    """One extreme input, run on both models: `status` is agrees, both-non-finite (the model
    itself is undefined there, on both), differs, non-finite-candidate, non-finite-reference
    or error (the candidate's runtime refused it)."""

    input: str
    value: str
    status: str
    detail: str
    why: str
    max_abs: float | None = None
    cosine: float | None = None

    @property
    def finding(self) -> bool:
        return self.status in _FINDINGS

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "value": self.value,
            "status": self.status,
            "finding": self.finding,
            "detail": self.detail,
            "why": self.why,
            "max_abs": _finite(self.max_abs) if self.max_abs is not None else None,
            "cosine": _finite(self.cosine) if self.cosine is not None else None,
        }


@dataclass
class Robustness:
    """The robustness section: edge inputs, reported apart from the verdict."""

    cases: list[EdgeResult] = field(default_factory=list)
    note: str = ""  # why it did not run, when it did not

    @property
    def findings(self) -> list[EdgeResult]:
        return [c for c in self.cases if c.finding]

    @property
    def summary(self) -> str:
        if not self.cases:
            return f"robustness: {self.note or 'no edge inputs'}"
        findings = self.findings
        if not findings:
            return f"robustness: all {len(self.cases)} edge inputs agree"
        named = ", ".join(f"{c.input} {c.value}" for c in findings)
        return (
            f"robustness: {len(findings)} of {len(self.cases)} edge inputs differ ({named}); "
            "a finding about extremes, not a conversion failure"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "passed": not self.findings,
            "note": self.note,
            "cases": [c.to_dict() for c in self.cases],
        }


@dataclass
class Verification:
    reference: str
    candidate: str
    runtime: str
    precision: str
    tolerance: Tolerance
    samples: int
    data: str
    outputs: list[OutputComparison]
    passed: bool
    divergence: Divergence | None = None
    task_metric: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    created: str = ""
    samples_available: int | None = None  # how many --data held (None: synthesised)
    preprocess: dict[str, Any] | None = None
    shapes: dict[str, list[int]] = field(default_factory=dict)  # --shape pins, {} when none
    robustness: Robustness | None = None  # never part of `passed` (module docstring)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    @property
    def verdict(self) -> str:
        """One line that explains the exit code (robustness findings are named, apart)."""
        aside = ""
        if self.robustness is not None and self.robustness.findings:
            aside = f" ({len(self.robustness.findings)} robustness finding(s) on edge inputs)"
        if self.passed:
            return (
                f"PASS (exit 0): every output within {self.precision} tolerance on "
                f"{self.samples} samples{aside}"
            )
        why = "; ".join(f"{o.name}: {o.reason}" for o in self.outputs if o.reason)
        if self.divergence is not None and self.divergence.found:
            why += f"; first diverges at {self.divergence.node} ({self.divergence.op_type})"
        return f"FAIL (exit 1): {why}{aside}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "reference": self.reference,
            "candidate": self.candidate,
            "runtime": self.runtime,
            "precision": self.precision,
            "tolerance": {k: _finite(v) for k, v in self.tolerance.to_dict().items()},
            "samples": self.samples,
            "samples_available": self.samples_available,
            "data": self.data,
            "preprocess": self.preprocess,
            "shapes": self.shapes,
            "passed": self.passed,
            "outputs": [o.to_dict() for o in self.outputs],
            "divergence": self.divergence.to_dict() if self.divergence else None,
            "task_metric": self.task_metric,
            "notes": self.notes,
            "robustness": self.robustness.to_dict() if self.robustness else None,
            "created": self.created,
        }


def open_candidate(candidate: str | Path | Artifact) -> Artifact:
    """An artifact folder (with manifest.json), or an .onnx file treated as one."""
    if isinstance(candidate, Artifact):
        return candidate
    path = Path(candidate)
    if path.is_dir():
        return Artifact.load(path)
    if path.is_file() and path.suffix.lower() == ".onnx":
        from edgeforge._onnx_file import open_onnx

        model = open_onnx(path)
        manifest = Manifest(
            runtime="onnxruntime",
            format="onnx",
            file=path.name,
            source=str(path),
            source_sha256="",
            recipe={"precision": "fp32", "options": {}},
            inputs=[t.to_dict() for t in model.inputs],
            outputs=[t.to_dict() for t in model.outputs],
            tools={},
            created="",
        )
        return Artifact(path.parent, manifest)
    raise EdgeforgeError(
        f"{path}: not an artifact folder or .onnx file; pass a folder written by "
        "`edgeforge convert` or an .onnx file"
    )


def verify(
    reference: Any,
    candidate: str | Path | Artifact,
    *,
    data: str | Path | None = None,
    precision: str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    min_cosine: float | None = None,
    localize: bool = True,
    max_samples: int | None = None,
    preprocess: Preprocess | str | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    timeout: float | None = None,
    isolate: bool | None = None,
    robustness: bool = True,
) -> Verification:
    """Compare `candidate` against `reference` (anything `edgeforge.load` takes), with the
    reference's inputs pinned to `shapes` where given (`edgeforge._pin.pin_shapes`): samples
    then take the pinned sizes.

    The comparison runs in a child process limited to `timeout` s (default: `--timeout`, else
    600) and the memory budget; `isolate=False` runs it here (None: in a child unless this is
    an edgeforge child already). `robustness=False` skips the edge-input section.
    """
    from edgeforge._pin import pin_shapes

    if timeout is not None and not 0 < timeout < 10**7:  # NaN fails too
        raise EdgeforgeError(f"--timeout {timeout}: give seconds > 0, e.g. --timeout 600")
    model = pin_shapes(load(reference), shapes)
    artifact = open_candidate(candidate)
    _check_signatures(model, artifact)
    specs = _input_specs(model, artifact)
    precision = precision or artifact.manifest.recipe.get("precision", "fp32")
    tolerance = tolerance_for(precision, rtol=rtol, atol=atol, min_cosine=min_cosine)
    if not data and (preprocess is not None or max_samples is not None):
        raise EdgeforgeError(
            "--preprocess and --max-samples read a --data folder; pass --data as well"
        )
    job = {
        "runtime": artifact.runtime,
        "model": model,
        "artifact": artifact,
        "specs": specs,
        "data": str(data) if data else None,
        "precision": precision,
        "tolerance": tolerance,
        "localize": localize,
        "max_samples": max_samples,
        "preprocess": Preprocess.parse(preprocess),
        "robustness": robustness,
    }
    if isolate is False or (isolate is None and inside_child()):
        return _compare(job)
    limit = timeout or time_limit()
    outcome = in_child(_compare_in_child, job, limit)
    if "verification" in outcome:
        return outcome["verification"]
    raise _failure(outcome, limit)


def _compare_in_child(job: dict[str, Any]) -> dict[str, Any]:
    """The child's work: the result travels back whole, so it is the same object either way."""
    try:
        verification = _compare(job)
    except MemoryError:  # a sample or an output past the budget (RLIMIT_AS)
        raise EdgeforgeError(
            "verify ran out of its memory budget; raise --memory-limit, or check the model "
            "and the --data samples"
        ) from None
    return {"runtime": job["runtime"], "status": "done", "verification": verification}


def _failure(outcome: dict[str, Any], limit: float) -> Exception:
    """What the caller raises for a child that returned no verification: one line."""
    status, detail = outcome.get("status"), outcome.get("detail", "")
    if status == "timed-out":
        return EdgeforgeError(
            f"verify did not finish within {limit:g} s (a model that loops on its inputs never "
            "does); raise --timeout if it is merely slow"
        )
    if status == "crashed":
        return EdgeforgeError(
            f"verify's process died: {detail}; the model crashed its runtime or ran past the "
            "memory budget (--memory-limit)"
        )
    if status in ("unsupported", "not-installed"):  # an EdgeforgeError in the child
        return EdgeforgeError(detail)
    return RuntimeError(f"verify failed: {detail}")  # a bug of ours: an internal error


def _compare(job: dict[str, Any]) -> Verification:
    """Read the samples, run both models on them and compare: the untrusted part of verify."""
    from edgeforge.runtimes.onnxruntime import ort_run, ort_session

    model: Model = job["model"]
    artifact: Artifact = job["artifact"]
    precision, tolerance, specs = job["precision"], job["tolerance"], job["specs"]
    # The artifact's own input shapes: some runtimes fix dynamic dimensions when they convert.
    if job["data"]:
        samples = load_data(
            Path(job["data"]),
            specs,
            limit=job["max_samples"],
            preprocess=job["preprocess"],
        )
    else:
        samples = _synthesize(model, specs, precision)
    runtime = get_runtime(artifact.runtime)
    reference_session = ort_session(model.onnx_path, "the reference")
    output_names = [t.name for t in model.outputs]
    expected: list[list[np.ndarray]] = [[] for _ in output_names]
    got: list[list[np.ndarray]] = [[] for _ in output_names]
    with runtime.open(artifact) as session:
        for feed in track(samples.feeds, f"Verifying on {artifact.runtime}"):
            values = ort_run(reference_session, output_names, feed, "the reference")
            for i, value in enumerate(values):
                expected[i].append(value)
            result = session.run(feed)
            for i, name in enumerate(output_names):
                got[i].append(result[name])
        robustness = None
        if job.get("robustness", True) and job["data"]:
            robustness = Robustness(
                note="not run: the samples came from --data (verify without --data to probe "
                "the synthesised extremes)"
            )
        elif job.get("robustness", True):
            robustness = _robustness(
                model, specs, precision, tolerance, output_names, reference_session, session
            )
    outputs = [compare(name, expected[i], got[i], tolerance) for i, name in enumerate(output_names)]
    passed = all(o.passed for o in outputs)
    result = Verification(
        reference=model.provenance.source,
        candidate=str(artifact.path),
        runtime=artifact.runtime,
        precision=precision,
        tolerance=tolerance,
        samples=len(samples.feeds),
        data=samples.source,
        outputs=outputs,
        passed=passed,
        task_metric=_task_metric(samples, expected[0], got[0]),
        notes=list(samples.notes),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        samples_available=samples.available,
        preprocess=samples.preprocess,
        shapes={name: list(shape) for name, shape in model.pinned.items()},
        robustness=robustness,
    )
    if result.task_metric and result.task_metric["metric"] == "top-1 accuracy":
        note = chance_level(result.task_metric["reference"], samples.labels)
        result.task_metric["near_chance"] = note is not None
        if note:
            result.notes.append(note)
    if not passed and job["localize"]:
        try:
            result.divergence = _localize(
                model, artifact, runtime, samples, expected, got, tolerance
            )
        except EdgeforgeError as exc:  # the verdict stands without the layer that parts
            result.divergence = Divergence(False, note=f"could not localize: {exc}")
    return result


def _input_specs(model: Model, artifact: Artifact) -> tuple[TensorSpec, ...]:
    """The artifact's inputs (some runtimes fix dynamic dims when they convert), each dim the
    artifact leaves dynamic taken from the reference where it is fixed there (a --shape pin)."""
    ours = {spec.name: spec for spec in model.inputs}
    specs = []
    for spec in artifact.inputs:
        reference = ours.get(spec.name)
        if reference is None or reference.shape is None or spec.shape is None:
            specs.append(spec if reference is None or spec.shape is not None else reference)
            continue
        dims = tuple(
            theirs if not isinstance(mine, int) and isinstance(theirs, int) else mine
            for mine, theirs in zip(spec.shape, reference.shape, strict=True)
        )
        specs.append(TensorSpec(spec.name, spec.dtype, dims))
    return tuple(specs)


def _synthesize(model: Model, specs: tuple[TensorSpec, ...], precision: str) -> Samples:
    """Realistic samples by input role; a quantized model is judged on agreement, so on
    more of them, enough for a steady agreement."""
    if not precision.startswith(("int8", "int4")):
        return synthesize(model, specs)
    samples = synthesize(model, specs, count=QUANTIZED_SAMPLES)
    samples.notes.append(
        f"{precision}: judged on {QUANTIZED_SAMPLES} synthesised samples; pass --data with "
        "representative inputs for a verdict that means something"
    )
    return samples


def _robustness(
    model: Model,
    specs: tuple[TensorSpec, ...],
    precision: str,
    tolerance: Tolerance,
    output_names: list[str],
    reference_session: Any,
    session: Any,
) -> Robustness:
    """Both models on each edge input (`edge_samples`); never raises for what the candidate
    does there: a refusal is an `error` case."""
    from edgeforge.runtimes.onnxruntime import ort_run

    if precision.startswith(("int8", "int4")):
        return Robustness(
            note=f"not run: a {precision} model clips extreme inputs to its calibrated ranges "
            "by design"
        )
    try:
        feeds, cases = edge_samples(model, specs)
    except Exception as exc:  # the section is optional: it never costs the verdict
        return Robustness(note=f"not run: no edge inputs for this signature ({first_line(exc)})")
    results = []
    for feed, case in zip(feeds, cases, strict=True):
        try:
            want = ort_run(reference_session, output_names, feed, "the reference")
        except EdgeforgeError as exc:  # the source itself refuses this extreme
            results.append(_edge(case, "reference-error", f"the reference refuses it: {exc}"))
            continue
        try:
            got = session.run(feed)
            have = [np.asarray(got[name]) for name in output_names]
        except MemoryError:
            raise
        except Exception as exc:  # a runtime refusing an extreme input is the finding
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            results.append(
                _edge(case, "error", f"the candidate fails: {type(exc).__name__}: {first}")
            )
            continue
        results.append(_edge_result(case, output_names, want, have, tolerance))
    return Robustness(results)


def _edge(case: EdgeCase, status: str, detail: str, **metrics: float) -> EdgeResult:
    return EdgeResult(case.input, case.value, status, detail, case.why, **metrics)


def _edge_result(
    case: EdgeCase,
    names: list[str],
    want: list[np.ndarray],
    have: list[np.ndarray],
    tolerance: Tolerance,
) -> EdgeResult:
    """Classify one edge case: NaN/inf on either side first, then the usual tolerances."""
    want_finite = all(np.isfinite(np.asarray(w, dtype=np.float64)).all() for w in want)
    have_finite = all(np.isfinite(np.asarray(h, dtype=np.float64)).all() for h in have)
    if not want_finite and not have_finite:
        return _edge(case, "both-non-finite", "both give NaN or inf: the model is undefined here")
    if not have_finite:
        bad = [n for n, h in zip(names, have, strict=True) if not np.isfinite(h).all()]
        return _edge(
            case,
            "non-finite-candidate",
            f"the candidate gives NaN or inf in {', '.join(bad)} where the reference gives numbers",
        )
    if not want_finite:
        return _edge(
            case,
            "non-finite-reference",
            "the reference gives NaN or inf where the candidate does not",
        )
    try:
        outputs = [
            compare(n, [w], [h], tolerance) for n, w, h in zip(names, want, have, strict=True)
        ]
    except EdgeforgeError as exc:
        return _edge(case, "error", str(exc))
    worst = min(outputs, key=lambda o: o.cosine)
    metrics = {"max_abs": max(o.max_abs for o in outputs), "cosine": worst.cosine}
    if all(o.passed for o in outputs):
        return _edge(case, "agrees", "within tolerance", **metrics)
    reasons = "; ".join(f"{o.name}: {o.reason}" for o in outputs if o.reason)
    return _edge(case, "differs", reasons, **metrics)


def _localize(model, artifact, runtime, samples, expected, got, tolerance) -> Divergence:
    worst = int(
        np.argmax([np.max(np.abs(e - g)) for e, g in zip(expected[0], got[0], strict=True)])
    )
    feed = samples.feeds[worst]
    with tempfile.TemporaryDirectory(prefix="edgeforge-localize-") as scratch:
        order, reference_values = reference_intermediates(model, feed, Path(scratch))
        names = [tensor for tensor, _, _ in order]
        candidate_values = runtime.intermediates(artifact, feed, names, Path(scratch))
    if not candidate_values:
        return Divergence(
            False,
            note=f"{artifact.runtime} cannot expose intermediate tensors under their ONNX names"
            + (" (it converts from a torch program)" if runtime.hub == "torch" else ""),
        )
    return first_divergence(order, reference_values, candidate_values, tolerance)


def _check_signatures(model: Model, artifact: Artifact) -> None:
    for kind, ours, theirs in (
        ("input", model.inputs, artifact.inputs),
        ("output", model.outputs, artifact.outputs),
    ):
        if [t.name for t in ours] != [t.name for t in theirs]:
            raise EdgeforgeError(
                f"the candidate's {kind}s {[t.name for t in theirs]} differ from the "
                f"reference's {[t.name for t in ours]}; verify a candidate built from this model"
            )
        for a, b in zip(ours, theirs, strict=True):
            if a.dtype != b.dtype or not _shapes_agree(a, b):
                raise EdgeforgeError(
                    f"{kind} {a.name!r} is {a.dtype} {list(a.shape or [])} in the reference but "
                    f"{b.dtype} {list(b.shape or [])} in the candidate"
                )


def _shapes_agree(a: TensorSpec, b: TensorSpec) -> bool:
    if a.shape is None or b.shape is None:
        return True
    if len(a.shape) != len(b.shape):
        return False
    return all(
        not (isinstance(x, int) and isinstance(y, int)) or x == y
        for x, y in zip(a.shape, b.shape, strict=True)
    )


def _task_metric(samples: Samples, expected, got) -> dict[str, Any] | None:
    if samples.labels is None:
        return None
    labels = np.asarray(samples.labels)
    reference = np.concatenate(expected)
    candidate = np.concatenate(got)
    if labels.dtype.kind in "iu" and reference.ndim == 2 and reference.shape[1] > 1:
        return {
            "metric": "top-1 accuracy",
            "reference": float(np.mean(reference.argmax(1) == labels)),
            "candidate": float(np.mean(candidate.argmax(1) == labels)),
        }
    return {
        "metric": "mean absolute error",
        "reference": float(np.mean(np.abs(reference.reshape(labels.shape) - labels))),
        "candidate": float(np.mean(np.abs(candidate.reshape(labels.shape) - labels))),
    }


def _finite(value: float) -> float | str:
    return value if np.isfinite(value) else "inf"
