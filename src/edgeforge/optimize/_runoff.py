"""The runoff: on `this-machine`, the fastest candidates that meet the accuracy limit timed
again side by side, so that the choice between near-equal candidates is not decided by when
each happened to be measured.

Why: `Builder` measures candidates one after another, each in its own child. On a machine
shared with other processes, a burst of load during one candidate's turn makes it look slower
than one measured a minute later (an ONNX Runtime session with 2 threads runs ~3x slower while
another process holds one of 2 cores); between candidates a few per cent apart, the order of
measurement then decided.

What a caller can rely on:
- `contenders` picks, among the built candidates measured here whose accuracy drop is within
  `max_drop` (all measured ones without a limit), the `count` fastest by their first
  measurement, and those within `margin` of the fastest beyond them, at most `limit`;
- `runoff` opens every contender in one child process with its deployment settings
  (`_deploy.deployment`, as `Builder` timed it) and runs them interleaved run by run (each
  contender runs right after every other one equally often: `balanced_sequence`), so each
  meets the same load; each contender's `latency_here_ms` becomes the fastest contender's
  first measurement times its runoff median's ratio to the fastest runoff median (so the
  runoff decides the order among the contenders, and the fastest contender keeps the lowest
  latency of all: a candidate outside the runoff, slower when first measured, never overtakes
  it); the first measurement and the runoff median are kept (a note,
  `timed_with["runoff_median_ms"]`), and `timed_with["runoff"]` names the contenders;
- a runoff that fails (a child crash, a time-out) changes nothing and says so in `notes`.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeforge.optimize._deploy import deployment
from edgeforge.optimize._plan import BUILT, Candidate

if TYPE_CHECKING:
    from edgeforge.devices import Device

__all__ = ["balanced_sequence", "contenders", "runoff"]

DEFAULT_COUNT = 3
DEFAULT_LIMIT = 5
DEFAULT_MARGIN = 0.25  # candidates within 25% of the fastest stay in the runoff


def contenders(
    candidates: list[Candidate],
    max_drop: float | None,
    count: int = DEFAULT_COUNT,
    limit: int = DEFAULT_LIMIT,
    margin: float = DEFAULT_MARGIN,
) -> list[Candidate]:
    """The candidates worth timing side by side (see the module docstring)."""
    measured = [
        c
        for c in candidates
        if c.status in BUILT
        and c.latency_here_ms is not None
        and c.artifact
        and (max_drop is None or (c.accuracy_drop is not None and c.accuracy_drop <= max_drop))
    ]
    measured.sort(key=lambda c: c.latency_here_ms)
    if len(measured) < 2:
        return []
    fastest = measured[0].latency_here_ms
    near = [c for c in measured[count:] if c.latency_here_ms <= fastest * (1 + margin)]
    return (measured[:count] + near)[:limit]


def balanced_sequence(count: int) -> list[int]:
    """An order in which to run `count` sessions in turns, repeated as often as wanted, in which
    every session runs right after every other one exactly once per repetition (the wrap-around
    from its end to its start included): an Eulerian circuit over all ordered pairs (Hierholzer's
    algorithm); each session runs `count - 1` times per repetition.

    Why not rounds in a rotating order: rotating keeps each session's predecessor, and what ran
    just before matters. OpenVINO's worker threads stay busy for a while after a run (and an
    ONNX Runtime pool spins after its run unless told to stop), which slows whatever runs next
    on a 2-core machine: the digits CNN's ONNX file, opened twice in ONNX Runtime in one
    process, ran 1.5-1.7x slower (medians) in the session placed right after an OpenVINO
    session than in the one placed after the other (1-minute load average 16). With a rotating
    order, the session placed after an OpenVINO one paid that in every round but one. (Rounds
    in a balanced Latin square still leave the step from one round to the next unbalanced.)"""
    if count < 2:
        return list(range(count))
    unused = {node: [n for n in range(count) if n != node] for node in range(count)}
    stack, circuit = [0], []
    while stack:
        if unused[stack[-1]]:
            stack.append(unused[stack[-1]].pop())
        else:
            circuit.append(stack.pop())
    return circuit[::-1][:-1]  # the circuit ends where it starts: the repetition closes it


def runoff(
    chosen: list[Candidate],
    device: Device,
    feeds: dict[str, Any],
    rounds: int,
    timeout: float,
    notes: list[str],
) -> None:
    """Time `chosen` side by side in one child and take the medians (changes them in place)."""
    from edgeforge._children import run_children

    if len(chosen) < 2:
        return
    job = {
        "runtime": chosen[0].runtime,
        "runtimes": [c.runtime for c in chosen],
        "artifacts": [c.artifact for c in chosen],
        "settings": [deployment(c.runtime, c.precision, device) for c in chosen],
        "feeds": feeds,
        "rounds": rounds,
        "seconds": timeout / 2,  # the child stops adding rounds after this
    }
    outcome = run_children(_interleaved, [job], timeout, 1, "Timing the fastest side by side")[0]
    if outcome.get("status") != "measured":
        notes.append(
            f"runoff of {', '.join(c.id for c in chosen)} not measured "
            f"({outcome.get('status')}: {outcome.get('detail', '')}); first measurements kept"
        )
        return
    ids = [c.id for c in chosen]
    medians = [statistics.median(times) for times in outcome["times"]]
    # Anchored to the fastest first measurement, so that the finalists stay comparable with
    # the candidates outside the runoff (measured alone, under whatever load there was then).
    anchor = min(c.latency_here_ms for c in chosen)
    best = min(medians)
    for candidate, median in zip(chosen, medians, strict=True):
        scaled = round(anchor * median / best, 4)
        candidate.notes.append(
            f"latency here {scaled} ms: {median / best:.3f}x the fastest of the runoff "
            f"(median {median:.4g} ms over runs interleaved with "
            f"{', '.join(i for i in ids if i != candidate.id)}) times the fastest first "
            f"measurement, {anchor} ms; first measured alone: {candidate.latency_here_ms} ms"
        )
        candidate.latency_here_ms = scaled
        candidate.timed_with = {
            **candidate.timed_with,
            "runoff": ids,
            "runoff_median_ms": round(median, 4),
        }
    notes.append(
        f"runoff: {', '.join(ids)} timed side by side, {len(outcome['times'][0])} interleaved "
        "runs each; their latency here is the fastest first measurement times their runoff "
        "ratio to the runoff's fastest"
    )


def _interleaved(job: dict[str, Any]) -> dict[str, Any]:
    """In the child: open every artifact, warm each, then run them in turns."""
    from edgeforge.runtimes import Artifact, get_runtime

    runs = []
    for name, folder, settings in zip(
        job["runtimes"], job["artifacts"], job["settings"], strict=True
    ):
        runtime = get_runtime(name)
        runtime.threads = settings["threads"]
        if settings.get("inference_precision") is not None and hasattr(
            runtime, "inference_precision"
        ):
            runtime.inference_precision = settings["inference_precision"]
        runs.append(runtime.open(Artifact.load(Path(folder))))
    feeds = job["feeds"]
    for session in runs:
        for _ in range(3):
            session.run(feeds)
    times: list[list[float]] = [[] for _ in runs]
    sequence = balanced_sequence(len(runs))
    each = len(runs) - 1  # runs of each contender per repetition of the sequence
    started = time.perf_counter()
    for i in range(-(-job["rounds"] // each)):  # `rounds` runs each, in whole repetitions
        if i * each >= 5 and time.perf_counter() - started > job["seconds"]:
            break
        for index in sequence:
            tick = time.perf_counter()
            runs[index].run(feeds)
            times[index].append((time.perf_counter() - tick) * 1e3)
    for session in runs:
        session.close()
    return {"runtime": job["runtime"], "status": "measured", "times": times}
