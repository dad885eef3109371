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

import contextlib
import multiprocessing
import queue
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeforge._io import guard_output
from edgeforge._limits import apply_child_limits
from edgeforge._load import load
from edgeforge._progress import progress_bar
from edgeforge.errors import EdgeforgeError
from edgeforge.model import Model
from edgeforge.recipe import Recipe
from edgeforge.runtimes import RuntimeUnavailable, get_runtime, runtime_names
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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, meaning=STATUSES.get(self.status, ""))


@dataclass
class Conversion:
    source: str
    out: str
    precision: str
    targets: list[TargetResult] = field(default_factory=list)

    @property
    def all_verified(self) -> bool:
        return all(t.status in ("verified", "built-not-run") for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "out": self.out,
            "precision": self.precision,
            "targets": [t.to_dict() for t in self.targets],
        }


@dataclass
class CheckReport:
    source: str
    findings: list[dict[str, Any]]
    runtimes: dict[str, dict[str, Any]]  # name -> status, detail, seconds

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "runtimes": self.runtimes, "findings": self.findings}


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
    force: bool = False,
    **load_options: Any,
) -> Conversion:
    """Build every target from `source` into `out/<runtime>/`, then load, run and verify it.

    `options` are the recipe's (see `edgeforge.recipe`); an int8-static recipe calibrates on
    `data` unless `options` name another folder. Up to `parallel` targets run at once, each in
    its own process limited to `timeout` s."""
    names = parse_targets(targets)
    calibration = {"data": str(data)} if data and precision == "int8-static" else {}
    recipe = Recipe(precision, {**calibration, **(options or {})})
    out = Path(out)
    for name in names:  # refuse before any work: out/<runtime>/ with the user's files in it
        guard_output(out / name, [source, data], force=force, folder=True)
    model = load(source, workdir=out / "source", **load_options)
    result = Conversion(model.provenance.source, str(out), precision)
    jobs = [
        {
            "model": model,
            "runtime": name,
            "recipe": recipe.to_dict(),
            "folder": str(out / name),
            "data": str(data) if data else None,
            "force": force,
        }
        for name in names
    ]
    started = time.time()
    outcomes = _run_children(_convert_one, jobs, timeout, parallel, "Converting")
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
    **load_options: Any,
) -> CheckReport:
    """What each runtime lacks, runs on a fallback, or trips over, for `source`."""
    names = parse_targets(runtimes)
    model = load(source, **load_options)
    findings: list[dict[str, Any]] = []
    status: dict[str, dict[str, Any]] = {}
    jobs = [{"model": model, "runtime": name} for name in names]
    for outcome in _run_children(_check_one, jobs, timeout, parallel, "Checking"):
        findings += outcome.pop("findings", [])
        status[outcome["runtime"]] = outcome
    return CheckReport(model.provenance.source, findings, status)


# -- child processes ---------------------------------------------------------------------------


def _run_children(
    work, jobs: list[dict[str, Any]], timeout: float, parallel: int, label: str
) -> list[dict[str, Any]]:
    """Run `work(job)` for every job, each in a fresh process, at most `parallel` at a time;
    results come back in the jobs' order. A crash or a time-out becomes a result too."""
    context = _context([job["runtime"] for job in jobs])
    pending = list(enumerate(jobs))
    running: dict[int, tuple[Any, Any, float]] = {}
    results: dict[int, dict[str, Any]] = {}
    with progress_bar(label, len(jobs)) as advance:
        while pending or running:
            while pending and len(running) < max(1, parallel):
                index, job = pending.pop(0)
                channel = context.Queue()
                process = context.Process(
                    target=_child_main, args=(work, job, channel), daemon=True
                )
                process.start()
                running[index] = (process, channel, time.perf_counter())
            for index, (process, channel, started) in list(running.items()):
                outcome = _collect(process, channel, started, timeout, jobs[index]["runtime"])
                if outcome is not None:
                    results[index] = outcome
                    del running[index]
                    advance()
            time.sleep(0.05)
    return [results[i] for i in range(len(jobs))]


def _in_child(work, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One job in its own process (see `_run_children`)."""
    return _run_children(work, [job], timeout, 1, job["runtime"])[0]


def _collect(process, channel, started: float, timeout: float, runtime: str):
    """The child's result if it is done (or dead, or out of time), else None."""
    elapsed = time.perf_counter() - started
    outcome = None
    with contextlib.suppress(queue.Empty):
        outcome = channel.get_nowait()
    if outcome is None and process.is_alive() and elapsed < timeout:
        return None
    if outcome is None and not process.is_alive():  # died; take a last look at the channel
        with contextlib.suppress(queue.Empty):
            outcome = channel.get(timeout=1)
    process.join(timeout=10)
    if process.is_alive():
        process.kill()
        process.join()
    if outcome is None:
        timed_out = elapsed >= timeout
        outcome = {
            "runtime": runtime,
            "status": "timed-out" if timed_out else "crashed",
            "detail": f"no result after {timeout:g} s"
            if timed_out
            else f"the process died (exit code {process.exitcode})",
        }
    return outcome | {"seconds": round(time.perf_counter() - started, 2)}


def _context(runtimes: list[str]):
    """Children fork from a clean server process that imported the heavy modules once, so a
    target costs its conversion, not another interpreter start (and never inherits the
    parent's threads, as a plain fork would). The server starts with the first call,
    preloading what that call's runtimes import; later calls share it."""
    context = multiprocessing.get_context("forkserver")
    modules = [m for name in runtimes for m in _RUNTIME_MODULES.get(name, ())]
    context.set_forkserver_preload([*_PRELOAD, *dict.fromkeys(modules)])
    return context


# Imported once in the fork server; a module that is not installed is skipped there. OpenVINO
# is not: importing it starts threads (since 2025.0), and a child forked from a multi-threaded
# process can deadlock (openvino issue 28944); one optimize run here hung its full time limit.
_PRELOAD = ["edgeforge.convert", "edgeforge.evaluate.parity", "numpy", "onnx", "onnxruntime"]
_RUNTIME_MODULES = {
    "litert": ("torch", "litert_torch", "ai_edge_litert.interpreter"),
    "executorch": ("torch", "executorch.exir", "executorch.runtime"),
    "coreml": ("torch", "coremltools"),
}


def _child_main(work, job: dict[str, Any], results) -> None:
    apply_child_limits(address_space=job["runtime"] != "web")  # untrusted work (issue 13)
    try:
        outcome = work(job)
    except RuntimeUnavailable as exc:
        outcome = {"runtime": job["runtime"], "status": "not-installed", "detail": str(exc)}
    except EdgeforgeError as exc:
        outcome = {"runtime": job["runtime"], "status": "unsupported", "detail": str(exc)}
    except Exception as exc:  # report the converter's own failure in one line
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        first = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ""
        outcome = {
            "runtime": job["runtime"],
            "status": "failed",
            "detail": f"{type(exc).__name__}: {first} (at {where})",
        }
    results.put(outcome)


def _convert_one(job: dict[str, Any]) -> dict[str, Any]:
    from edgeforge.evaluate.parity import verify

    model: Model = job["model"]
    runtime = get_runtime(job["runtime"])
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
        record_verification(artifact, status, detail)
        return outcome | {"status": status, "detail": detail}
    verification = verify(model, artifact, data=job["data"])
    worst = max(verification.outputs, key=lambda o: o.max_rel)
    detail = f"max abs error {worst.max_abs:.3g}, cosine {worst.cosine:.6f}"
    if not verification.passed:
        detail = "; ".join(o.reason for o in verification.outputs if o.reason)
        if verification.divergence and verification.divergence.found:
            d = verification.divergence
            detail += f"; first diverges at {d.node} ({d.op_type})"
    status = "verified" if verification.passed else "parity-failed"
    record_verification(artifact, status, detail)
    return outcome | {
        "status": status,
        "detail": detail,
        "verification": verification.to_dict(),
    }


def _check_one(job: dict[str, Any]) -> dict[str, Any]:
    runtime = get_runtime(job["runtime"])
    available = runtime.availability()
    if not available.installed:
        return {"runtime": runtime.name, "status": "not-installed", "detail": available.reason}
    findings = runtime.check(job["model"])
    detail = f"{len(findings)} finding(s)"
    if not available.can_execute:
        detail += f"; cannot run here: {available.reason}"
    return {
        "runtime": runtime.name,
        "status": "checked",
        "detail": detail,
        "findings": [f.to_dict() for f in findings],
    }
