"""Class 5 of issue 13: an interrupt ends everything edgeforge started, in one line.

Ctrl-C printed a 14-line multiprocessing traceback, SIGTERM exited silently with leaked
semaphores, and a killed web target left its headless Chromium running. Here a real `edgeforge`
process is interrupted once its children (and their browser) run: it exits 130 (SIGINT) or 143
(SIGTERM) with one line on stderr, no process it started survives, and no artifact folder it
left looks finished without having been verified.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeforge

SRC = str(Path(edgeforge.__file__).resolve().parents[1])


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _table() -> dict[int, tuple[int, str, bytes]]:
    """pid -> (parent pid, state, command line) of every process."""
    table = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(fields[1]), fields[0], (entry / "cmdline").read_bytes())
        except (OSError, IndexError, ValueError):
            continue
    return table


def _descendants(root: int) -> set[int]:
    table, found, frontier = _table(), set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _table()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


def _as_from_a_terminal() -> None:
    """In the command's process before it starts: Ctrl-C as a terminal's foreground job has it
    (default action, not blocked). A disposition or mask left by an earlier test in this
    process would be inherited, and Python installs its KeyboardInterrupt handler only over
    the default: with SIGINT ignored, the command rightly ran on to its end (exit 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


class _FinishedFirst(Exception):
    """The command ended before the signal could be sent (a loaded machine's timing)."""


def _interrupt(argv: list[str], signum: int, ready, cwd: Path) -> tuple[int, str, set[int]]:
    """Start `edgeforge argv`, wait for `ready(descendants)`, send `signum` to its process
    group (as a terminal's Ctrl-C does); (exit code, stderr, processes still alive)."""
    env = dict(os.environ, PYTHONPATH=SRC)
    process = subprocess.Popen(
        [sys.executable, "-m", "edgeforge.cli", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_as_from_a_terminal,
    )
    started, seen = time.monotonic(), set()
    while time.monotonic() - started < 120 and process.poll() is None:
        seen |= _descendants(process.pid)
        if ready(seen):
            break
        time.sleep(0.2)
    if process.poll() is not None:
        pytest.fail(f"it ended before it could be interrupted: {process.stderr.read().decode()}")
    time.sleep(0.5)
    seen |= _descendants(process.pid)
    if process.poll() is not None:  # the work was done first: there was nothing to interrupt
        raise _FinishedFirst(process.returncode, process.stderr.read().decode())
    os.killpg(process.pid, signum)
    _, err = process.communicate(timeout=60)
    time.sleep(1)
    return process.returncode, err.decode(), _alive(seen)


def _statuses(out: Path) -> dict[str, str]:
    """Each target's status as its manifest says, for a failure's message."""
    return {
        manifest.parent.name: json.loads(manifest.read_text()).get("status", "?")
        for manifest in out.glob("*/manifest.json")
    }


def _has(text: bytes):
    return lambda pids: any(text in _table().get(pid, (0, "", b""))[2] for pid in pids)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_convert_ends_children_and_browser(tmp_path: Path, signum, code) -> None:
    from edgeforge.runtimes._browser import blocker

    if blocker():
        pytest.skip(f"the web target cannot run here: {blocker()}")
    # Eight 512x512 MatMuls on 1,024 rows: seconds of work for the browser's wasm (5 s here),
    # so the signal lands while it verifies; IR version 10, which ONNX Runtime Web loads (it
    # refuses 14, and that refusal ended the command before the signal on a quick machine).
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array((rng.standard_normal((512, 512)) / 23).astype(np.float32), f"w{i}")
        for i in range(8)
    ]
    nodes = [
        helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}"])
        for i in range(8)
    ]
    nodes.append(helper.make_node("Relu", ["h8"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "matmuls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024, 512])],
        weights,
    )
    model = tmp_path / "m.onnx"
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 10
    onnx.save(proto, model)
    argv = ["convert", str(model), "--to", "web,onnxruntime", "--out", str(tmp_path / "out")]
    for attempt in range(3):  # the tiny model's conversion can end within the half second
        try:
            returncode, err, alive = _interrupt(argv, signum, _has(b"edgeforge-web-"), tmp_path)
            break
        except _FinishedFirst as early:
            if attempt == 2:
                pytest.fail(f"it ended (exit {early.args[0]}) before the signal: {early.args[1]}")
            shutil.rmtree(tmp_path / "out", ignore_errors=True)
    here = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, set()))
    assert returncode == code, (err, _statuses(tmp_path / "out"), here)
    assert err.count("\n") == 1 and err.startswith("edgeforge: interrupted"), err
    assert alive == set(), "a child, grandchild or browser survived"
    for manifest in (tmp_path / "out").glob("*/manifest.json"):
        verification = json.loads(manifest.read_text())["verification"]
        assert verification is not None, f"{manifest} looks finished but was never verified"


@pytest.mark.slow
def test_sigterm_during_looping_verify_ends_its_child(tmp_path: Path) -> None:
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c2"]), helper.make_node("Add", ["v", "v"], ["v2"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("c2", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v2", TensorProto.FLOAT, [1]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "cond", "v0"], ["y"], body=body)],
        "loop",
        [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [
            numpy_helper.from_array(np.array(True), "cond"),
            numpy_helper.from_array(np.ones(1, np.float32), "v0"),
        ],
    )
    model = _save(graph, tmp_path / "loop.onnx")
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "n.npy", np.array([1 << 40], np.int64))
    argv = ["verify", str(model), str(model), "--data", str(tmp_path / "data")]
    # ready once a forkserver child (the comparison) runs: three generations below the CLI
    returncode, err, alive = _interrupt(argv, signal.SIGTERM, lambda s: len(s) >= 3, tmp_path)
    assert returncode == 143
    assert err.count("\n") == 1 and err.startswith("edgeforge: interrupted (SIGTERM)"), err
    assert alive == set()
