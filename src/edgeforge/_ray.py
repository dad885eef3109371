"""Jobs as Ray tasks: the one place where edgeforge touches a Ray cluster (see `_executor`).

Invariants a caller can rely on:
- a job travels whole to its task, and so do the files it reads: its `model` (the ONNX file, its
  external data, the torch program, and the same for the model as loaded before `--shape`
  pinned it), the `data` path and the recipe's `data` option. Each is packed once per run into
  Ray's object store and unpacked into a scratch folder on the worker, and the job's paths are
  rewritten to those copies: a worker needs no file system shared with the caller;
- the task runs the job in `edgeforge._children.in_child`: a fresh process held to the memory
  budget, the CPU time and the wall time, exactly as a local job is (issue 13's limits hold
  on every node); the budget is the caller's `--memory-limit` where given (then also the task's
  Ray `memory` resource, so the scheduler places it where that much is free), else the
  worker node's own default (half its RAM);
- the folder the job writes (`folder`) comes back packed and replaces the caller's folder of
  that name, and the outcome's paths into the worker's scratch folder are rewritten to it: the
  caller then holds exactly what a local run leaves (the result cache included);
- a task on a node whose edgeforge version is not the caller's fails its job in one line (the
  cache key names the caller's tool versions, so a result built elsewhere must match them);
- a task that Ray itself loses (a node gone, a worker killed) is a `crashed` outcome; an
  interrupt here (Ctrl-C, SIGTERM) cancels every task, which ends its child as a local
  interrupt does, and goes on up; joining Ray leaves this process's signal handlers as they
  were (`ray.init` would put its own on SIGTERM).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shutil
import signal
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeforge._progress import progress_bar
from edgeforge.errors import EdgeforgeError, first_line

__all__ = ["run_on_ray"]

Job = dict[str, Any]

# Ray's own log lines and the workers' output stay off the caller's terminal: `--json` output
# is the caller's stdout alone, and a child's output comes back in its outcome's `log`.
_INIT_OPTIONS = {"log_to_driver": False, "logging_level": "WARNING"}


def run_on_ray(
    work: Any, jobs: list[Job], timeout: float, label: str, executor: str, task_cpus: float = 1
) -> list[dict[str, Any]]:
    """`work(job)` for every job, each a Ray task; outcomes in the jobs' order."""
    import ray

    from edgeforge import __version__
    from edgeforge._limits import MEMORY_ENV, TIMEOUT_ENV

    _connect(ray, executor)
    memory = os.environ.get(MEMORY_ENV)
    limits = {name: os.environ[name] for name in (MEMORY_ENV, TIMEOUT_ENV) if name in os.environ}
    options: dict[str, Any] = {"num_cpus": task_cpus, "max_retries": 1}
    if memory:
        options["memory"] = int(memory)
    task = ray.remote(_task).options(**options)
    shipped: dict[str, Any] = {}
    refs = []
    for job in jobs:
        inputs = {key: _ship(ray, shipped, key, path) for key, path in _inputs(job).items()}
        refs.append(task.remote(work, job, inputs, timeout, limits, __version__))
    index_of = {ref: i for i, ref in enumerate(refs)}
    results: dict[int, dict[str, Any]] = {}
    try:
        with progress_bar(label, len(jobs)) as advance:
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in done:
                    index = index_of[ref]
                    results[index] = _receive(ray, ref, jobs[index])
                    advance()
    except BaseException:  # interrupted: end every task's child, then go on up
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        raise
    return [results[i] for i in range(len(jobs))]


def init_keeping_signals(ray: Any, **options: Any) -> None:
    """`ray.init(**options)`, then this process's SIGINT and SIGTERM handlers as they were:
    Ray installs its own SIGTERM handler (a bare `sys.exit`), which would replace edgeforge's
    (an interrupt ends every child, then the command, with one line and 128 + the signal)."""
    signals = (signal.SIGINT, signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()  # where handlers can be set
    kept = {signum: signal.getsignal(signum) for signum in signals} if in_main else {}
    try:
        ray.init(**options)
    finally:
        for signum, handler in kept.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(signum, handler)


def _connect(ray: Any, executor: str) -> None:
    """Join the cluster `executor` names, unless this process already joined one (a caller that
    called `ray.init` itself keeps its own settings)."""
    if ray.is_initialized():
        return
    address = None if executor == "ray" else executor
    # A Ray instance started here for this run needs no dashboard; a client connection
    # (ray://) passes its options on to the cluster's own ray.init, so it gets only ours.
    extra = {"include_dashboard": False} if address is None else {}
    try:
        init_keeping_signals(ray, address=address, **_INIT_OPTIONS, **extra)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EdgeforgeError(
            f"--executor {executor}: could not join the Ray cluster ({first_line(exc)[:200]}); "
            "check the address and that the cluster runs the same Ray version"
        ) from exc


# -- what travels: the files a job reads --------------------------------------------------------


def _inputs(job: Job) -> dict[str, Path]:
    """key -> a path on this machine, for every file or folder the job reads."""
    found: dict[str, Path] = {}
    model = job.get("model")
    while model is not None:
        found[_model_key(model)] = Path(model.onnx_path)
        model = model.unpinned
    for path in (job.get("data"), ((job.get("recipe") or {}).get("options") or {}).get("data")):
        if path and Path(path).exists():
            found[f"path:{Path(path).resolve()}"] = Path(path)
    return found


def _model_key(model: Any) -> str:
    return f"model:{Path(model.onnx_path).resolve()}:{model.torch_program}"


def _ship(ray: Any, shipped: dict[str, Any], key: str, path: Path) -> Any:
    """The object-store reference to `key`'s packed files, packed and put once per run."""
    if key not in shipped:
        model = key.startswith("model:")
        shipped[key] = ray.put(_pack_model(path, key) if model else _pack([(path, path.name)]))
    return shipped[key]


def _pack_model(onnx_path: Path, key: str) -> bytes:
    """The ONNX file and its external data (their layout kept), and the torch program."""
    import onnx

    from edgeforge._onnx_file import external_data_files

    graph = onnx.load(str(onnx_path), load_external_data=False)
    external = external_data_files(graph, onnx_path.parent)
    members = [(onnx_path, f"onnx/{onnx_path.name}")]
    members += [(file, f"onnx/{location}") for location, file in external.items()]
    program = key.rsplit(":", 1)[1]
    if program != "None":
        members.append((Path(program), f"program/{Path(program).name}"))
    return _pack(members)


def _pack(members: list[tuple[Path, str]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        for path, name in members:
            archive.add(str(path), arcname=name)
    return buffer.getvalue()


def _unpack(packed: bytes, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as archive:
        archive.extractall(into, filter="data")  # refuses links and paths that leave `into`
    return into


# -- on the worker ------------------------------------------------------------------------------


def _task(
    work: Any,
    job: Job,
    inputs: dict[str, Any],
    timeout: float,
    limits: dict[str, str],
    caller_version: str,
) -> tuple[dict[str, Any], bytes | None]:
    """Run one job on this worker in a limited child; (outcome, the folder it wrote, packed),
    both saying the caller's paths."""
    import ray

    from edgeforge import __version__
    from edgeforge._children import in_child

    if __version__ != caller_version:
        detail = (
            f"the Ray worker has edgeforge {__version__}, the caller {caller_version}; install "
            "the same version on every node"
        )
        return {"runtime": job["runtime"], "status": "failed", "detail": detail}, None
    scratch = Path(tempfile.mkdtemp(prefix="edgeforge-ray-"))
    try:
        local, renames = _localize(job, {key: ray.get(ref) for key, ref in inputs.items()}, scratch)
        with _caller_limits(limits):
            outcome = _rewritten(in_child(work, local, timeout), renames)
        if not local.get("folder") or not Path(local["folder"]).exists():
            return outcome, None
        folder = Path(local["folder"])
        manifest = folder / "manifest.json"  # names the inputs it was built from
        if manifest.is_file():
            manifest.write_text(_rewritten(manifest.read_text(), renames))
        return outcome, _pack([(folder, folder.name)])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _localize(job: Job, inputs: dict[str, bytes], scratch: Path) -> tuple[Job, dict[str, str]]:
    """The job with its paths pointing at the unpacked copies under `scratch`, and each such
    path -> the caller's path it stands for (to say the caller's paths in what comes back)."""
    job = dict(job)
    renames: dict[str, str] = {}
    unpacked = {
        key: _unpack(packed, scratch / "inputs" / str(n))
        for n, (key, packed) in enumerate(inputs.items())
    }
    if job.get("model") is not None:
        job["model"] = _local_model(job["model"], unpacked, renames)
    if job.get("data"):
        job["data"] = _local_path(job["data"], unpacked, renames)
    options = (job.get("recipe") or {}).get("options") or {}
    if options.get("data"):
        data = _local_path(options["data"], unpacked, renames)
        job["recipe"] = {**job["recipe"], "options": {**options, "data": data}}
    if job.get("folder"):
        local = str(scratch / "out" / Path(job["folder"]).name)
        renames[local] = job["folder"]
        job["folder"] = local
    return job, renames


def _local_model(model: Any, unpacked: dict[str, Path], renames: dict[str, str]) -> Any:
    root = unpacked[_model_key(model)]
    onnx_path = root / "onnx" / Path(model.onnx_path).name
    renames[str(onnx_path)] = str(model.onnx_path)
    program = model.torch_program
    if program is not None:
        renames[str(root / "program" / Path(program).name)] = str(program)
        program = root / "program" / Path(program).name
    unpinned = model.unpinned
    return dataclasses.replace(
        model,
        onnx_path=onnx_path,
        torch_program=program,
        unpinned=None if unpinned is None else _local_model(unpinned, unpacked, renames),
    )


def _local_path(path: str, unpacked: dict[str, Path], renames: dict[str, str]) -> str:
    key = f"path:{Path(path).resolve()}"
    if key not in unpacked:  # not on the caller's machine either: the job reports it
        return path
    local = str(unpacked[key] / Path(path).name)
    renames[local] = path
    return local


def _last_words(exc: BaseException) -> str:
    """The innermost cause in a Ray error's text (its last line that is not a traceback's
    underline), e.g. the worker's ModuleNotFoundError when edgeforge is missing there."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and set(line) - set("^~ ")]
    return lines[-1] if lines else first_line(exc)


def _rewritten(value: Any, renames: dict[str, str]) -> Any:
    """`value` with every worker path in it said as the caller's (longest first)."""
    if isinstance(value, str):
        for local in sorted(renames, key=len, reverse=True):
            value = value.replace(local, renames[local])
        return value
    if isinstance(value, dict):
        return {key: _rewritten(item, renames) for key, item in value.items()}
    if isinstance(value, list):
        return [_rewritten(item, renames) for item in value]
    return value


@contextlib.contextmanager
def _caller_limits(limits: dict[str, str]) -> Iterator[None]:
    """The caller's `--memory-limit` and `--timeout` in this worker's environment while its
    job runs (the child reads them, and so does work nested in it); a worker runs many jobs,
    of many callers, so what was there before comes back after."""
    from edgeforge._limits import MEMORY_ENV, TIMEOUT_ENV

    before = {name: os.environ.get(name) for name in (MEMORY_ENV, TIMEOUT_ENV)}
    for name in before:
        os.environ.pop(name, None)
    os.environ.update(limits)
    try:
        yield
    finally:
        for name, value in before.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


# -- back here ----------------------------------------------------------------------------------


def _receive(ray: Any, ref: Any, job: Job) -> dict[str, Any]:
    """The task's outcome, with the folder it wrote in place of the caller's folder of that
    name; a task Ray lost becomes a `crashed` outcome."""
    try:
        outcome, packed = ray.get(ref)
    except ray.exceptions.RayError as exc:
        return {
            "runtime": job["runtime"],
            "status": "crashed",
            "detail": f"the Ray task failed: {_last_words(exc)[:300]}",
        }
    if packed is not None and job.get("folder"):
        folder = Path(job["folder"])
        if folder.exists():  # a stale or partial build (the caller's guard_output vetted it)
            shutil.rmtree(folder)
        _unpack(packed, folder.parent)
    return outcome
