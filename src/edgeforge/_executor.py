"""Where `optimize`'s candidates and `convert`'s targets run: local child processes (the
default) or tasks on a Ray cluster.

What a caller can rely on:
- `parse_executor` accepts `local`, `ray` (the cluster `RAY_ADDRESS` or `ray start` on this
  machine names, else a Ray instance started here) and `ray://HOST:PORT` (a Ray client
  connection); anything else, or `ray` without Ray installed, is one `EdgeforgeError` line that
  says what to give or install, raised before any work;
- `run_jobs` returns one outcome per job, in the jobs' order, with the same fields whichever
  executor ran it: a crash or a time-out is an outcome, not an exception;
- on Ray each job is a task of its own (`task_cpus` CPUs, and the memory budget as its `memory`
  resource where `--memory-limit` was given) that runs the job in the same limited child
  process as the local executor does (`edgeforge._children.in_child`), so the untrusted-input
  limits hold on every node; see `edgeforge._ray` for what travels to the task and back.
"""

from __future__ import annotations

from typing import Any

from edgeforge.errors import EdgeforgeError

__all__ = ["LOCAL", "parse_executor", "run_jobs"]

LOCAL = "local"
RAY_INSTALL = "pip install 'edgeforge[ray]'"


def parse_executor(text: str | None, task_cpus: float = 1) -> str:
    """`local`, `ray` or `ray://HOST:PORT`, checked (and `task_cpus`, the CPUs of each Ray
    task); EdgeforgeError (one line) otherwise."""
    if not (isinstance(task_cpus, (int, float)) and 0 < task_cpus <= 1024):  # NaN fails too
        raise EdgeforgeError(f"--task-cpus {task_cpus!r}: give a number of CPUs > 0, e.g. 2")
    name = (text or LOCAL).strip()
    if name == LOCAL:
        return LOCAL
    if name != "ray" and not (name.startswith("ray://") and len(name) > len("ray://")):
        raise EdgeforgeError(
            f"--executor {text!r}: give local, ray, or ray://HOST:PORT (a Ray cluster's client "
            "address), e.g. --executor ray://head-node:10001"
        )
    try:
        import ray  # noqa: F401
    except ImportError:
        raise EdgeforgeError(
            f"--executor {name} needs Ray, which is not installed; install the extra: "
            f"{RAY_INSTALL} (or use --executor local)"
        ) from None
    return name


def run_jobs(
    work: Any,
    jobs: list[dict[str, Any]],
    timeout: float,
    parallel: int,
    label: str,
    executor: str = LOCAL,
    task_cpus: float = 1,
) -> list[dict[str, Any]]:
    """`work(job)` for every job on `executor`; outcomes in the jobs' order. Locally at most
    `parallel` at a time; on Ray as many as the cluster's resources allow."""
    if parse_executor(executor, task_cpus) == LOCAL:
        from edgeforge._children import run_children

        return run_children(work, jobs, timeout, parallel, label)
    from edgeforge._ray import run_on_ray

    return run_on_ray(work, jobs, timeout, label, executor, task_cpus)
