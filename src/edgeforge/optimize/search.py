"""`optimize`: build the candidates that make sense for a device, measure each, keep the Pareto
front, and choose the best one that meets the user's limits.

What a caller can rely on:
- `--data` (every sample, or `max_samples` drawn with a fixed seed, stratified by class) is
  split deterministically, stratified by class where there are labels (`_data.Split`): the
  calibration part is written under `out/data/` and calibrates int8-static recipes (through
  their `data` and `calibration_samples` options) and fine-tunes prune/distill; every accuracy
  figure and every limit is judged on the rest, the held-out part, which no candidate has seen;
  `data.calibration_files` and `data.holdout_files` name them;
- one metric judges every candidate, chosen from `metric`, the labels, or the output's nature
  (`_accuracy`); `reference.metric`, `reference.output` and `reference.why` say which and why,
  and a reference that is near chance on labelled data is said to be (`reference.near_chance`
  and a note);
- candidates are, for each runtime the device lists that is installed here, every precision
  the runtime says it builds (`Runtime.precisions`), int8-static once per calibration method
  where the runtime takes that option, the ONNX clean-up pass before the ONNX-hub runtimes,
  and, when an int8-static candidate breaks `--max-accuracy-drop`, an ONNX Runtime candidate
  with its most harmful layers kept in float (`edgeforge.optimize.sensitivity`);
- each candidate is timed and scored with the settings it will run with on the device (the
  device's thread count; OpenVINO's inference precision for its recipe: bf16 for bf16, the
  runtime's own default for the quantized recipes, f32 for fp32), recorded in its
  `timed_with`; for `this-machine` the measurement is the device latency the choice uses,
  for other devices the estimate at the precision the recipe computes in there;
- builds run in child processes with a time limit (two at a time where there are cores), or,
  with `executor="ray"`/`"ray://ADDRESS"`, each as a Ray task running the same limited child
  on a cluster's node (`edgeforge._ray`), with the same outcomes and the same cache; a
  converter that fails costs its candidate only. Latency here is measured one candidate at a
  time, never in parallel (parallel timing lies); on `this-machine` the fastest candidates
  within the accuracy limit are then timed again side by side, interleaved run by run, and
  their runoff medians decide (`_runoff`);
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

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeforge.errors import EdgeforgeError
from edgeforge.optimize._accuracy import check_metric
from edgeforge.optimize._build import Builder, reference_outputs, reference_summary
from edgeforge.optimize._data import Split
from edgeforge.optimize._pareto import (
    Limits,
    broken_limits,
    choose,
    pareto_front,
    parse_bytes,
    parse_ms,
    parse_share,
)
from edgeforge.optimize._plan import BUILT, TORCH_PASSES, Candidate, Planner
from edgeforge.optimize._report import write_chosen, write_outputs

__all__ = ["Candidate", "OptimizeResult", "optimize"]


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
    max_samples: int | None = None,
    preprocess: Any = None,
    metric: Any = None,
    timeout: float = 600,
    parallel: int | None = None,
    bench_runs: int = 30,
    example_inputs: Any = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    force: bool = False,
    executor: str = "local",
    task_cpus: float = 1,
    **load_options: Any,
) -> OptimizeResult:
    """Search the candidates for `device` on `data`; write `out/chosen/`, `out/optimize.json`
    and `out/report.html`. Limits: a share ('1%' or 0.01), bytes ('5MB'), milliseconds
    ('10ms', on the device, estimated) and bytes of peak memory. `preprocess`: a
    `evaluate.data.Preprocess` or its text form, for image folders; `metric`: one of
    `_accuracy.METRICS`, a 'module:function' / 'file.py:function', or a callable
    (reference outputs, candidate outputs) -> score, 1 meaning identical. `shapes` pins input
    dims (`edgeforge._pin.pin_shapes`) for every candidate built from the ONNX graph.
    `out/chosen/` is replaced only when edgeforge wrote it, unless `force`. `executor`:
    where the candidates are built and scored, `local` child processes or Ray tasks of
    `task_cpus` CPUs each (`edgeforge._executor`); latency here is measured here either way."""
    from edgeforge._executor import parse_executor
    from edgeforge._io import guard_output
    from edgeforge._load import load
    from edgeforge._pin import describe_shapes, pin_shapes
    from edgeforge.devices import get_device

    # Refused before any work: an out/chosen/ holding the user's files (issue 13).
    guard_output(Path(out) / "chosen", [source, data], force=force, folder=True)
    executor = parse_executor(executor, task_cpus)
    started = time.perf_counter()
    limits = Limits(
        parse_share(max_accuracy_drop),
        parse_bytes(max_size),
        parse_ms(max_latency),
        parse_bytes(max_memory),
    )
    check_metric(metric)
    unknown = sorted(set(passes) - {"cleanup", *TORCH_PASSES})
    if unknown:
        raise EdgeforgeError(f"unknown pass {unknown[0]!r}; choose from prune, distill")
    target = get_device(device)
    out = Path(out)
    model = pin_shapes(load(source, example_inputs, workdir=out / "source", **load_options), shapes)
    split = Split.read(Path(data), model, calibration_samples, max_samples, preprocess)
    calibration_folder = split.write_calibration(out)
    planner = Planner(out, model, target, split, bench_runs, calibration_folder, metric)
    reference = reference_outputs(model, split)
    summary = reference_summary(reference, split, metric)
    notes: list[str] = []
    if model.pinned:
        notes.append(
            f"inputs pinned with --shape {describe_shapes(model.pinned)}; runtimes that convert "
            "from the torch program, and pruned or distilled variants exported from torch, keep "
            "the torch program's own dims"
        )
    if summary["near_chance"]:
        notes.append(summary["near_chance"])
    variants = planner.variants(source, example_inputs, cleanup, tuple(passes), notes)
    plans, skipped = planner.plan(variants, runtimes, precisions)
    builder = Builder(
        out,
        target,
        split,
        reference,
        variants,
        timeout,
        parallel,
        bench_runs,
        metric,
        calibration_folder,
        executor=executor,
        task_cpus=task_cpus,
    )
    builder.evaluate(plans)
    kept_float = planner.sensitivity(plans, limits.max_accuracy_drop, notes)
    if kept_float is not None:
        candidate, job = kept_float
        plans.append(candidate)
        builder.evaluate([candidate], sensitivity=job)
    if target.id == "this-machine":
        from edgeforge.optimize._runoff import contenders, runoff

        finalists = contenders(plans, limits.max_accuracy_drop)
        runoff(finalists, target, split.held_out[0], 3 * bench_runs, timeout, notes)
        for candidate in finalists:
            builder._estimate(candidate)
    rows = [c.to_dict() for c in plans if c.status in BUILT]
    chosen, unmet = choose(rows, limits) if rows else (None, [_nothing_built()])
    _verdicts(plans, chosen, limits)
    chosen_path = write_chosen(out, plans, chosen)
    result = OptimizeResult(
        model=model.provenance.source,
        device=target.id,
        out=str(out),
        limits={**limits.to_dict(), "latency_means": _latency_means(target.id)},
        data=split.describe(),
        reference=summary,
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
    write_outputs(result)
    return result


# -- choice under the limits -------------------------------------------------------------------


def _verdicts(plans: list[Candidate], chosen: str | None, limits: Limits) -> None:
    rows = [c.to_dict() for c in plans if c.status in BUILT]
    front = pareto_front(rows)
    by_id = {c.id: c for c in plans}
    for candidate in plans:
        if candidate.status not in BUILT:
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


def _latency_means(device_id: str) -> str:
    if device_id == "this-machine":
        return "measured here with the deployment settings (the estimate where not measured)"
    return f"estimated on {device_id}"


def _standing_notes() -> list[str]:
    return [
        "latency on the device is measured here when the device is this machine, else the "
        "roofline estimate at the precision each recipe computes in there (int8-static as "
        "int8; int8-dynamic as int8, or fp32 on conv-heavy models; bf16 and fp16 at the "
        "16-bit rate only where the unit has that arithmetic; int4-weight as fp32 compute with "
        "int4 weight bytes); latency here is measured on this machine one candidate at a time, "
        "with the candidate's deployment settings (threads, OpenVINO inference precision: "
        "each candidate's timed_with)",
        "memory is the model's share of the measuring process's peak here where the candidate "
        "ran here, else the estimate of weights plus peak activations on the device",
    ]
