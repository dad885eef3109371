"""Child processes: the one place where edgeforge starts a process to run its own code.

`convert`, `check`, `bench` and `optimize` run each job here. Invariants:
- every job runs in a fresh process forked from a fork server that imported the heavy modules
  once, with a time limit; a crash or a hang costs that job only and becomes a `crashed` or
  `timed-out` result; results come back in the jobs' order;
- a child never runs the caller's `__main__` again, so a script without an
  `if __name__ == "__main__":` guard that calls `convert` runs once (see `_forkserver`);
- a child's output (Python's and the native libraries') goes to a log file that the parent
  reads once the child has ended and attaches, as `log`, only to a failed result; with
  `EDGEFORGE_VERBOSE=1` it passes through to the terminal instead;
- a failure's `detail` is one line naming the innermost real cause, not a message that points
  at output the user never saw;
- interrupts (issue 13, class 5): each child leads its own process group, so a Ctrl-C at the
  terminal reaches the parent alone; when the parent is interrupted (SIGINT, or SIGTERM, which
  `raise_on_sigterm` turns into `Interrupted`), it sends SIGTERM to every running child's
  group (a child unwinds on it, so a browser it started is closed), SIGKILL after a grace
  period, and, where the CLI made it a subreaper, kills what those children left behind;
  then the interrupt goes on up, for the CLI to report in one line.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeforge._limits import memory_budget
from edgeforge._progress import progress_bar
from edgeforge._quiet import capture_output, flush_native_streams, log_tail, real_cause, verbose
from edgeforge.errors import EdgeforgeError, file_system_error, first_line

__all__ = [
    "CHILD_PREFIX",
    "FAILED",
    "Interrupted",
    "adopt_orphans",
    "in_child",
    "inside_child",
    "raise_on_sigterm",
    "run_children",
]

Job = dict[str, Any]
Work = Callable[[Job], dict[str, Any]]

# Process names start with this; the fork server recognises its edgeforge children by it.
CHILD_PREFIX = "edgeforge-"
# Statuses of a job that went wrong (the others: done, or could not run on this machine).
FAILED = ("parity-failed", "unsupported", "crashed", "timed-out", "failed")


class Interrupted(BaseException):
    """SIGTERM (or another signal) arrived: like KeyboardInterrupt, not an error of the work."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_on_sigterm() -> Any:
    """From now on SIGTERM raises `Interrupted` in the main thread (cleanup runs), instead of
    ending the process at once with its children still running. Returns the handler it
    replaced (for `signal.signal`), or None off the main thread, where nothing changes."""

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals are the main thread's business
        return None


def adopt_orphans() -> None:
    """Make this process a child subreaper (Linux): what a child leaves behind when it dies
    (a browser in its own session) is re-parented here, so `_end` can find and end it."""
    global _adopting
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        _adopting = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
_adopting = False  # whether adopt_orphans made this process a subreaper


def run_children(
    work: Work, jobs: list[Job], timeout: float, parallel: int, label: str
) -> list[dict[str, Any]]:
    """Run `work(job)` for every job, each in a fresh process, at most `parallel` at a time;
    results come back in the jobs' order. A crash or a time-out becomes a result too."""
    context = _context([job["runtime"] for job in jobs])
    logs = Path(tempfile.mkdtemp(prefix="edgeforge-logs-"))
    pending = list(enumerate(jobs))
    running: dict[int, tuple[Any, Any, float]] = {}
    results: dict[int, dict[str, Any]] = {}
    try:
        with progress_bar(label, len(jobs)) as advance:
            while pending or running:
                while pending and len(running) < max(1, parallel):
                    index, job = pending.pop(0)
                    channel = context.Queue()
                    limits = {"memory": memory_budget(), "cpu": 4 * timeout}
                    process = context.Process(
                        target=_child_main,
                        args=(work, job | {"limits": limits}, channel, logs / f"{index}.log"),
                        name=f"{CHILD_PREFIX}{job['runtime']}",
                        daemon=True,
                    )
                    process.start()
                    running[index] = (process, channel, time.perf_counter())
                for index, (process, channel, started) in list(running.items()):
                    outcome = _collect(process, channel, started, timeout, jobs[index]["runtime"])
                    if outcome is not None:
                        results[index] = _with_log(outcome, logs / f"{index}.log")
                        del running[index]
                        advance()
                time.sleep(0.05)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): end every child before going on up
        _end([process for process, _, _ in running.values()])
        raise
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    return [results[i] for i in range(len(jobs))]


def in_child(work: Work, job: Job, timeout: float) -> dict[str, Any]:
    """One job in its own process (see `run_children`)."""
    return run_children(work, [job], timeout, 1, job["runtime"])[0]


def inside_child() -> bool:
    """True in an edgeforge child, whose limits already hold (work there never nests a second
    child), and in any daemonic process, which multiprocessing forbids to start children."""
    current = multiprocessing.current_process()
    return current.name.startswith(CHILD_PREFIX) or bool(current.daemon)


def _end(processes: list[Any], grace: float = 3.0) -> None:
    """SIGTERM each child's process group, SIGKILL what is left after `grace` seconds, then
    kill the orphans this (subreaper) process adopted from them."""
    # A second Ctrl-C while children are being ended waits until they are.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        for process in processes:
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            _signal_group(process.pid, signal.SIGKILL)
            process.join(1)
        # A killed child's own children reach this subreaper only as the kernel re-parents
        # them (a browser's helpers a little later than the browser), so look more than once.
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < _ORPHAN_QUIET:
            orphans = _orphans()
            if orphans:
                quiet_since = time.monotonic()
            for pid in orphans:
                _kill_orphan(pid)
            time.sleep(0.05)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_ORPHAN_QUIET = 0.3  # seconds without a new orphan before `_end` stops looking


def _kill_orphan(pid: int) -> None:
    with contextlib.suppress(OSError):
        if os.getpgid(pid) == pid:  # a browser leads its own session: end its helpers
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.waitpid(pid, 0)


def _signal_group(pid: int | None, signum: int) -> None:
    if pid is None:
        return
    with contextlib.suppress(OSError):
        os.killpg(pid, signum)  # the child leads its group (see _child_main)
    with contextlib.suppress(OSError):
        os.kill(pid, signum)  # in case it died before it could lead one


def _orphans() -> list[int]:
    """Processes re-parented to this one that are not multiprocessing's own helpers; none
    unless `adopt_orphans` made this a subreaper (a library caller's own children are not
    ours to end)."""
    if not _adopting:
        return []
    helpers = {p.pid for p in multiprocessing.active_children()}
    with contextlib.suppress(Exception):
        from multiprocessing import forkserver, resource_tracker

        helpers.add(forkserver._forkserver._forkserver_pid)  # type: ignore[attr-defined]
        helpers.add(resource_tracker._resource_tracker._pid)  # type: ignore[attr-defined]
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and int(entry.name) not in helpers:
            found.append(int(entry.name))
    return found


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
    if process.is_alive() and elapsed >= timeout:  # out of time: no grace period
        process.kill()
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


def _with_log(outcome: dict[str, Any], log: Path) -> dict[str, Any]:
    """A failed result carries the tail of what its child printed; a good one carries none
    (the child has ended, so the log is complete)."""
    if outcome.get("status") not in FAILED:
        return outcome
    tail = log_tail(log)
    if outcome["status"] == "crashed" and tail:  # the last words of a dying native library
        outcome["detail"] += f"; it last printed: {tail.splitlines()[-1][:300]}"
    return outcome | {"log": tail}


def _context(runtimes: list[str]):
    """Children fork from a clean server process that imported the heavy modules once, so a
    target costs its conversion, not another interpreter start (and never inherits the
    parent's threads, as a plain fork would). The server starts with the first call,
    preloading what that call's runtimes import; later calls share it. Its first preload,
    `edgeforge._forkserver`, quiets it and keeps its children off the caller's `__main__`."""
    context = multiprocessing.get_context("forkserver")
    modules = [m for name in runtimes for m in _RUNTIME_MODULES.get(name, ())]
    context.set_forkserver_preload([*_PRELOAD, *dict.fromkeys(modules)])
    return context


# Imported once in the fork server, in this order; a module that is not installed is skipped
# there. OpenVINO is not: importing it starts threads (since 2025.0), and a child forked from a
# multi-threaded process can deadlock (openvino issue 28944); one optimize run here hung its
# full time limit.
_PRELOAD = [
    "edgeforge._forkserver",
    "edgeforge.convert",
    "edgeforge.evaluate.parity",
    "numpy",
    "onnx",
    "onnxruntime",
]
_RUNTIME_MODULES = {
    "litert": ("torch", "litert_torch", "ai_edge_litert.interpreter"),
    "executorch": ("torch", "executorch.exir", "executorch.runtime"),
    "coreml": ("torch", "coremltools"),
    "onnx-bridge": ("torch",),  # edgeforge._onnx_bridge
}


def _child_main(work: Work, job: Job, results, log: Path) -> None:
    """In the child: run the job with its output captured; put exactly one result."""
    # Imported here, not above: the fork server imports this module (through _forkserver)
    # first, to quiet itself before its preloads, so the module's own imports stay light.
    from edgeforge._limits import MEMORY_ENV, apply_child_limits
    from edgeforge.runtimes import RuntimeUnavailable

    # Interrupts (issue 13): this child leads its own process group, which the parent signals
    # as a whole; SIGTERM unwinds it, so `with` blocks close what they opened (a browser).
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides, and sends SIGTERM
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Untrusted work (issue 13): the budget the parent had when it started this child. The
    # web runtime's Chromium reserves far more address space than it uses, so no RLIMIT_AS.
    limits = job.get("limits", {})
    if limits.get("memory"):  # the fork server's environment is as old as the server
        os.environ[MEMORY_ENV] = str(limits["memory"])
    apply_child_limits(
        limits.get("memory"), limits.get("cpu"), address_space=job["runtime"] != "web"
    )
    if not verbose():
        capture_output(log)
    try:
        outcome = work(job)
    except RuntimeUnavailable as exc:
        outcome = {"runtime": job["runtime"], "status": "not-installed", "detail": str(exc)}
    except EdgeforgeError as exc:
        outcome = {"runtime": job["runtime"], "status": "unsupported", "detail": _cause(exc, log)}
    except OSError as exc:  # a path the file system refuses is the user's to fix, in one line
        error = file_system_error(exc)
        status = "failed" if error is None else "unsupported"
        outcome = {"runtime": job["runtime"], "status": status, "detail": _cause(error or exc, log)}
    except Exception as exc:  # report the converter's own failure in one line
        outcome = {"runtime": job["runtime"], "status": "failed", "detail": _cause(exc, log)}
    results.put(outcome)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _cause(exc: BaseException, log: Path) -> str:
    """One line: our own message as it is; another library's exception as the innermost
    cause of its chain and where it was raised. Either way, a message that only points at
    output printed above gets the real cause from that output."""
    if isinstance(exc, EdgeforgeError):
        text = str(exc)
    else:
        innermost = exc
        while innermost.__cause__ is not None:
            innermost = innermost.__cause__
        frames = traceback.extract_tb(innermost.__traceback__)
        where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
        text = first_line(exc) + where
    flush_native_streams()
    return real_cause(text, log_tail(log, lines=400))
