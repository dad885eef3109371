"""`--executor ray`: candidates as tasks on a local Ray instance choose what local child processes
choose, leave the same cache, and stay held to the same limits inside the task."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgeforge._executor import run_jobs
from edgeforge._ray import init_keeping_signals
from edgeforge.cli import main
from edgeforge.convert import convert
from edgeforge.optimize.search import optimize
from edgeforge.runtimes import Artifact

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'edgeforge[ray]')")

HERE = Path(__file__).parent
# The digits CNN that plain int8 breaks: ONNX Runtime's float, int8-dynamic and int8-static.
SEARCH = {
    "runtimes": ["onnxruntime"],
    "precisions": ["fp32", "int8-dynamic", "int8-static"],
    "bench_runs": 5,
    "max_accuracy_drop": "1%",
}


_BEFORE_RAY: dict[int, object] = {}  # this process's handlers before the module's Ray started


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (two CPUs, no dashboard) for the module, never a cluster that
    `ray start` left on the machine; shut down after it. Its workers (and the children they
    start) can import this file's hostile jobs. Started as edgeforge starts one, keeping this
    process's signal handlers."""
    started = not ray.is_initialized()
    if started:
        path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
        _BEFORE_RAY.update({s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)})
        init_keeping_signals(
            ray,
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )
    yield ray
    if started:
        ray.shutdown()


def test_joining_ray_keeps_this_process_signal_handlers(local_ray):
    # ray.init alone puts its own handler on SIGTERM (a bare sys.exit), which would replace
    # edgeforge's: an interrupted `optimize --executor ray` would end without its one line
    # and exit code; and it had stayed in the test process after this module.
    if not _BEFORE_RAY:
        pytest.skip("Ray was started before this module, not by it")
    for signum, handler in _BEFORE_RAY.items():
        assert signal.getsignal(signum) is handler, signal.Signals(signum).name


@pytest.fixture(scope="module")
def both(local_ray, outlier_digits, digits_folder, tmp_path_factory):
    """The same search with the local executor and on Ray, into separate folders."""
    root = tmp_path_factory.mktemp("executors")
    here = optimize(outlier_digits, "laptop-cpu", digits_folder, out=root / "local", **SEARCH)
    there = optimize(
        outlier_digits, "laptop-cpu", digits_folder, out=root / "ray", executor="ray", **SEARCH
    )
    return here, there, root


@pytest.mark.slow
def test_ray_chooses_what_the_local_executor_chooses(both):
    here, there, root = both
    assert here.chosen is not None and there.chosen == here.chosen
    by_id = {c.id: c for c in here.candidates}
    assert [c.id for c in there.candidates] == [c.id for c in here.candidates]
    for candidate in there.candidates:
        twin = by_id[candidate.id]
        assert (candidate.status, candidate.verdict) == (twin.status, twin.verdict)
        assert candidate.size_bytes == twin.size_bytes
        assert candidate.accuracy_drop == pytest.approx(twin.accuracy_drop, abs=1e-9)
        # The artifact came back into this run's own cache folder, not a worker's scratch.
        assert candidate.artifact.startswith(str(root / "ray" / "candidates"))
    assert "edgeforge-ray-" not in (root / "ray" / "optimize.json").read_text()
    chosen = json.loads((root / "ray" / "chosen" / "manifest.json").read_text())
    assert "edgeforge-ray-" not in json.dumps(chosen)


@pytest.mark.slow
def test_a_ray_run_leaves_the_cache_a_local_rerun_reuses(both, outlier_digits, digits_folder):
    _, there, root = both
    again = optimize(outlier_digits, "laptop-cpu", digits_folder, out=root / "ray", **SEARCH)
    assert all(c.cached for c in again.candidates if c.status in ("evaluated", "built-not-run"))
    assert again.chosen == there.chosen


@pytest.mark.slow
def test_convert_builds_and_verifies_each_target_as_a_ray_task(local_ray, outlier_digits, tmp_path):
    out = tmp_path / "out"
    result = convert(outlier_digits, "onnxruntime,onnxruntime-mobile", out, executor="ray")
    assert [t.status for t in result.targets] == ["verified", "verified"]
    for target in result.targets:
        assert target.artifact.startswith(str(out / target.runtime) + "/")
        artifact = Artifact.load(out / target.runtime)  # the folder came back whole
        assert artifact.manifest.verification is not None
        assert "edgeforge-ray-" not in (out / target.runtime / "manifest.json").read_text()


def _allocates_far_past_the_budget(job):
    import numpy as np

    hog = np.ones(8 << 30, dtype=np.uint8)  # 8 GB, past the 1 GB budget and its slack
    return {"runtime": job["runtime"], "status": "verified", "detail": str(hog.size)}


def _never_returns(job):
    import time

    time.sleep(600)


def test_a_model_that_exhausts_memory_in_a_ray_task_costs_its_job_only(local_ray, monkeypatch):
    monkeypatch.setenv("EDGEFORGE_MEMORY_LIMIT", str(1 << 30))
    jobs = [{"runtime": "hog"}]
    (outcome,) = run_jobs(_allocates_far_past_the_budget, jobs, 60, 1, "hog", executor="ray")
    assert outcome["status"] == "failed" and "MemoryError" in outcome["detail"]


def test_a_hang_in_a_ray_task_times_out(local_ray):
    (outcome,) = run_jobs(_never_returns, [{"runtime": "hang"}], 2, 1, "hang", executor="ray")
    assert outcome["status"] == "timed-out"
    assert outcome["seconds"] < 30


def test_an_unknown_executor_is_one_line_and_exit_2(tmp_path, capsys):
    out = str(tmp_path / "out")
    code = main(["convert", "model.onnx", "--to", "onnxruntime", "--out", out, "--executor", "x"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "ray://HOST:PORT" in error


def test_without_ray_the_executor_says_how_to_install_it(tmp_path):
    """Ray hidden from the import system, as on an install without the extra; refused before
    the model is even read."""
    script = (
        "import sys; sys.modules['ray'] = None\n"
        "from edgeforge.cli import main\n"
        "sys.exit(main(['optimize', 'model.onnx', '--device', 'laptop-cpu', '--data', 'd', "
        f"'--out', {str(tmp_path / 'out')!r}, '--executor', 'ray']))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "edgeforge: error: --executor ray needs Ray, which is not installed; install the extra: "
        "pip install 'edgeforge[ray]' (or use --executor local)"
    ]
    assert not (tmp_path / "out").exists()  # refused before any work
