"""`convert` and `check`: every target built, loaded, run and retested, each in its own process.

Invariants:
- each target runs in a child process with a time limit, so a converter that crashes or hangs
  costs that target only; the others' results stand;
- "built" is not "works": an artifact counts as verified only after it was loaded in its
  runtime and its outputs matched the source's (see `edgeforge.evaluate.verify`);
- a target that cannot run here (Core ML off macOS, TensorRT without a GPU, a runtime not
  installed) is reported with the reason, never silently skipped.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeforge._children import FAILED, run_children
from edgeforge._io import guard_output
from edgeforge._load import load
from edgeforge._onnx_bridge import bridged_for
from edgeforge.errors import EdgeforgeError
from edgeforge.model import Model
from edgeforge.recipe import Recipe
from edgeforge.runtimes import get_runtime, runtime_names
from edgeforge.runtimes.base import record_verification, settle_artifact

__all__ = ["CheckReport", "Conversion", "TargetResult", "check", "convert", "parse_targets"]

# What a status means, for tables and reports.
STATUSES = {
    "verified": "built, loaded, run and matched the source",
    "parity-failed": "built and ran, but its outputs differ from the source",
    "built-not-run": "built and validated, but this machine cannot execute it",
    "not-installed": "the runtime is not installed here",
    "unsupported": "the converter refused the model",
    "crashed": "the converter crashed",
    "timed-out": "the converter ran past the time limit",
    "failed": "an unexpected error",
}


@dataclass
class TargetResult:
    runtime: str
    status: str
    detail: str = ""
    artifact: str | None = None
    size_bytes: int | None = None
    seconds: float = 0.0
    verification: dict[str, Any] | None = None
    log: str = ""  # the tail of what the child printed, kept only when it failed

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, meaning=STATUSES.get(self.status, ""))


@dataclass
class Conversion:
    """The targets' results and one verdict on them.

    The verdict passes (exit code 0) when every target that can run here verified: a target
    this machine cannot execute (`built-not-run`) or whose runtime is not installed
    (`not-installed`) is named with the reason but fails nothing, unless it is `required`.
    It fails (exit code 1) when a target failed, a required one did not verify, or nothing
    could even be built."""

    source: str
    out: str
    precision: str
    targets: list[TargetResult] = field(default_factory=list)
    required: list[str] = field(default_factory=list)
    shapes: dict[str, list[int]] = field(default_factory=dict)  # --shape pins, {} when none
    # what verification (and int8-static calibration) read: folder, max_samples, preprocess
    data: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self._problems() == [] else 1

    @property
    def all_verified(self) -> bool:
        """Every target verified, or built and validated where it cannot run here."""
        return all(t.status in ("verified", "built-not-run") for t in self.targets)

    @property
    def verdict(self) -> str:
        """One line that explains the exit code."""
        problems = self._problems()
        verified = [t.runtime for t in self.targets if t.status == "verified"]
        facts = [f"{len(verified)} of {len(self.targets)} targets verified"]
        facts += _named(self.targets, "built-not-run", "built but not run here")
        facts += _named(self.targets, "not-installed", "not available here")
        head = "FAIL" if problems else "PASS"
        return f"{head} (exit {self.exit_code}): " + "; ".join([*problems, *facts])

    def _problems(self) -> list[str]:
        """Why the conversion fails, one phrase each; [] when it passes."""
        problems = [f"{t.runtime} {t.status}" for t in self.targets if t.status in FAILED]
        unmet = [
            f"{t.runtime} ({t.status}: {_reason(t.detail)})"
            for t in self.targets
            if t.runtime in self.required and t.status != "verified" and t.status not in FAILED
        ]
        if unmet:
            problems.append(f"required but not verified: {', '.join(unmet)}")
        if self.targets and all(t.status == "not-installed" for t in self.targets):
            problems.append("no target's runtime is installed here, so nothing was built")
        return problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "out": self.out,
            "precision": self.precision,
            "required": self.required,
            "shapes": self.shapes,
            "data": self.data,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "targets": [t.to_dict() for t in self.targets],
        }


@dataclass
class CheckReport:
    """What each runtime said about a model. Findings are advice, not failures: the exit
    code is 1 only when a runtime's check itself did not finish (it crashed, timed out)."""

    source: str
    findings: list[dict[str, Any]]
    runtimes: dict[str, dict[str, Any]]  # name -> status, detail, seconds
    shapes: dict[str, list[int]] = field(default_factory=dict)  # --shape pins, {} when none

    @property
    def exit_code(self) -> int:
        return 1 if self._unfinished() else 0

    @property
    def verdict(self) -> str:
        """One line that explains the exit code."""
        checked = [n for n, r in self.runtimes.items() if r["status"] == "checked"]
        severities = sorted(Counter(f["severity"] for f in self.findings).items())
        by_severity = f" ({', '.join(f'{n} {s}' for s, n in severities)})" if severities else ""
        facts = [
            f"{len(checked)} of {len(self.runtimes)} runtimes checked",
            f"{len(self.findings)} finding(s){by_severity}",
        ]
        unavailable = [
            f"{name} ({_reason(r['detail'])})"
            for name, r in self.runtimes.items()
            if r["status"] == "not-installed"
        ]
        if unavailable:
            facts.append(f"not available here: {', '.join(unavailable)}")
        unfinished = self._unfinished()
        problems = [f"check did not finish on {', '.join(unfinished)}"] if unfinished else []
        head = "FAIL" if problems else "OK"
        return f"{head} (exit {self.exit_code}): " + "; ".join([*problems, *facts])

    def _unfinished(self) -> list[str]:
        return [f"{n} ({r['status']})" for n, r in self.runtimes.items() if r["status"] in FAILED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "shapes": self.shapes,
            "runtimes": self.runtimes,
            "findings": self.findings,
        }


def _named(targets: list[TargetResult], status: str, label: str) -> list[str]:
    """['label: a (reason), b (reason)'] for the targets with `status`, [] when none."""
    named = [f"{t.runtime} ({_reason(t.detail)})" for t in targets if t.status == status]
    return [f"{label}: {', '.join(named)}"] if named else []


def _reason(detail: str) -> str:
    """The first clause of a status detail, without the 'cannot run here' / 'runtime x'
    prefixes: 'Core ML runs only on macOS/iOS'."""
    text = detail.split(";")[0].strip()
    for prefix in ("cannot run here: ", "runtime "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    name, sep, rest = text.partition(": ")
    return rest if sep and " " not in name else text


def parse_targets(text: str | list[str]) -> list[str]:
    """'onnxruntime,openvino' or a list; 'all' means every registered runtime."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if names == ["all"]:
        return runtime_names()
    for name in names:
        get_runtime(name)  # an unknown name lists the valid ones
    if not names:
        raise EdgeforgeError("no runtime named; pass --to onnxruntime,openvino,... or --to all")
    return names


def _required(require: str | list[str] | None, targets: list[str]) -> list[str]:
    """The runtimes that must verify: valid names among the targets ('all': every target)."""
    if not require:
        return []
    names = targets if require in ("all", ["all"]) else parse_targets(require)
    missing = [name for name in names if name not in targets]
    if missing:
        raise EdgeforgeError(
            f"--require {','.join(missing)}: not among the targets ({','.join(targets)}); "
            "add it to --to or drop it from --require"
        )
    return names


def convert(
    source: Any,
    targets: str | list[str],
    out: str | Path,
    *,
    precision: str = "fp32",
    data: str | Path | None = None,
    options: dict[str, Any] | None = None,
    timeout: float = 600,
    parallel: int = 2,
    require: str | list[str] | None = None,
    force: bool = False,
    shapes: dict[str, tuple[int, ...]] | None = None,
    max_samples: int | None = None,
    preprocess: Any = None,
    executor: str = "local",
    task_cpus: float = 1,
    **load_options: Any,
) -> Conversion:
    """Build every target from `source` into `out/<runtime>/`, then load, run and verify it.

    `options` are the recipe's (see `edgeforge.recipe`); an int8-static recipe calibrates on
    `data` unless `options` name another folder. Up to `parallel` targets run at once, each in
    its own process limited to `timeout` s. `require` names targets that must verify here
    (see `Conversion.verdict`); the others may be unable to run on this machine.

    `shapes` pins input dims (`edgeforge._pin.pin_shapes`): ONNX-hub targets are built and
    verified at them; torch-hub targets convert the torch program, which keeps its own dims,
    and their detail says so. Verification reads `max_samples` of `data` (default: all) and
    turns images into inputs as `preprocess` says (a `Preprocess` or its text form); an
    int8-static recipe calibrates with the same preprocessing (the recipe's `preprocess`).

    `executor`: `local` child processes, or each target a Ray task of `task_cpus` CPUs that
    runs the same limited child on a cluster's node (`edgeforge._executor`)."""
    from edgeforge._executor import parse_executor, run_jobs
    from edgeforge._pin import pin_shapes
    from edgeforge.evaluate.data import Preprocess

    names = parse_targets(targets)
    required = _required(require, names)
    executor = parse_executor(executor, task_cpus)
    steps = Preprocess.parse(preprocess)
    if (steps is not None or max_samples is not None) and not data:
        raise EdgeforgeError(
            "--preprocess and --max-samples read a --data folder; pass --data as well"
        )
    if max_samples is not None and max_samples < 1:
        raise EdgeforgeError(f"--max-samples {max_samples}: give a count of 1 or more")
    calibration: dict[str, Any] = {}
    if data and precision == "int8-static":
        calibration = {"data": str(data)}
        if steps is not None:
            calibration["preprocess"] = steps.to_dict()
    recipe = Recipe(precision, {**calibration, **(options or {})})
    out = Path(out)
    for name in names:  # refuse before any work: out/<runtime>/ with the user's files in it
        guard_output(out / name, [source, data], force=force, folder=True)
    model = pin_shapes(load(source, workdir=out / "source", **load_options), shapes)
    model = bridged_for(model, [get_runtime(name).hub for name in names])  # once, not per child
    result = Conversion(
        model.provenance.source,
        str(out),
        precision,
        required=required,
        shapes={name: list(shape) for name, shape in model.pinned.items()},
        data=None
        if not data
        else {
            "folder": str(data),
            "max_samples": max_samples,
            "preprocess": steps.to_dict() if steps is not None else None,
        },
    )
    jobs = [
        {
            "model": model,
            "runtime": name,
            "recipe": recipe.to_dict(),
            "folder": str(out / name),
            "data": str(data) if data else None,
            "max_samples": max_samples,
            "preprocess": steps,
            "force": force,
        }
        for name in names
    ]
    started = time.time()
    try:
        outcomes = run_jobs(
            _convert_one, jobs, timeout, parallel, "Converting", executor, task_cpus
        )
    except BaseException:  # interrupted: no folder it left may look finished (issue 13)
        for name in names:
            settle_artifact(
                out / name, "interrupted", "interrupted before it was verified", started
            )
        raise
    result.targets = [TargetResult(**outcome) for outcome in outcomes]
    for target in result.targets:  # a child that died left its outcome unrecorded
        settle_artifact(out / target.runtime, target.status, target.detail, started)
    return result


def check(
    source: Any,
    runtimes: str | list[str],
    *,
    timeout: float = 600,
    parallel: int = 2,
    shapes: dict[str, tuple[int, ...]] | None = None,
    **load_options: Any,
) -> CheckReport:
    """What each runtime lacks, runs on a fallback, or trips over, for `source` (with its
    inputs pinned to `shapes`, where given; torch-hub runtimes check the torch program, which
    keeps its own dims, and say so)."""
    from edgeforge._pin import pin_shapes

    names = parse_targets(runtimes)
    model = pin_shapes(load(source, **load_options), shapes)
    model = bridged_for(model, [get_runtime(name).hub for name in names])
    findings: list[dict[str, Any]] = []
    status: dict[str, dict[str, Any]] = {}
    jobs = [{"model": model, "runtime": name} for name in names]
    for outcome in run_children(_check_one, jobs, timeout, parallel, "Checking"):
        findings += outcome.pop("findings", [])
        status[outcome["runtime"]] = outcome
    pinned = {name: list(shape) for name, shape in model.pinned.items()}
    return CheckReport(model.provenance.source, findings, status, shapes=pinned)


# -- the work of one child (see edgeforge._children) -------------------------------------------


def _convert_one(job: dict[str, Any]) -> dict[str, Any]:
    from edgeforge._pin import for_hub, torch_hub_note
    from edgeforge.evaluate.parity import verify

    model: Model = job["model"]
    runtime = get_runtime(job["runtime"])
    # A torch-hub runtime builds the torch program at its own dims (Runtime.build): verify it
    # against the model as loaded, and say that the pin did not apply.
    pin_note = f"; {torch_hub_note(model)}" if for_hub(model, runtime.hub) is not model else ""
    recipe = Recipe.from_dict(job["recipe"])
    artifact = runtime.build(model, recipe, Path(job["folder"]), force=job.get("force", False))
    outcome: dict[str, Any] = {
        "runtime": runtime.name,
        "artifact": str(artifact.path),
        "size_bytes": artifact.size_bytes(),
    }
    available = runtime.availability()
    if not available.can_execute:
        validate = getattr(runtime, "validate_without_running", None)
        problems = validate(artifact) if validate else []
        detail = f"cannot run here: {available.reason}"
        if validate:
            detail += "; signature validated" if not problems else f"; problems: {problems}"
        status = "built-not-run" if not problems else "failed"
        detail += pin_note
        record_verification(artifact, status, detail)
        return outcome | {"status": status, "detail": detail}
    verification = verify(
        for_hub(model, runtime.hub),
        artifact,
        data=job["data"],
        max_samples=job.get("max_samples"),
        preprocess=job.get("preprocess"),
    )
    worst = max(verification.outputs, key=lambda o: o.max_rel)
    detail = f"max abs error {worst.max_abs:.3g}, cosine {worst.cosine:.6f}"
    if not verification.passed:
        detail = "; ".join(o.reason for o in verification.outputs if o.reason)
        if verification.divergence and verification.divergence.found:
            d = verification.divergence
            detail += f"; first diverges at {d.node} ({d.op_type})"
    status = "verified" if verification.passed else "parity-failed"
    robustness = verification.robustness
    if robustness is not None and robustness.findings:  # said, but never the status (issue 18)
        detail += "; " + robustness.summary
    detail += pin_note
    record_verification(artifact, status, detail)
    return outcome | {
        "status": status,
        "detail": detail,
        "verification": verification.to_dict(),
    }


def _check_one(job: dict[str, Any]) -> dict[str, Any]:
    from edgeforge._pin import for_hub, torch_hub_note

    runtime = get_runtime(job["runtime"])
    available = runtime.availability()
    if not available.installed:
        return {"runtime": runtime.name, "status": "not-installed", "detail": available.reason}
    model = for_hub(job["model"], runtime.hub)
    findings = runtime.check(model)
    detail = f"{len(findings)} finding(s)"
    if model is not job["model"]:
        detail += f"; {torch_hub_note(job['model'])}"
    if not available.can_execute:
        detail += f"; cannot run here: {available.reason}"
    return {
        "runtime": runtime.name,
        "status": "checked",
        "detail": detail,
        "findings": [f.to_dict() for f in findings],
    }
