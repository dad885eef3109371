"""Shared fixtures of the agent's tests: a repository with two releases, the loopback server,
an agent in a child process (to kill), and the invariants every kill must leave standing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from fleet_agent_support import NAME, canary_feed

from edgeforge.fleet import Agent
from edgeforge.fleet.agent import verify_slot

CLASS = "linux-x86"
HERE = Path(__file__).parent

RUNNER = "import sys; from edgeforge.cli import main; sys.exit(main())"


def expected(version: int) -> np.ndarray:
    return canary_feed()["x"] @ (np.arange(64, dtype=np.float32).reshape(8, 8) / 64.0 * version)


def spawn(state: Path, server, repo, pause_at: str | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("EDGEFORGE_AGENT_PAUSE_AT", None)
    if pause_at:
        env["EDGEFORGE_AGENT_PAUSE_AT"] = pause_at
    root = repo.path / "metadata" / "1.root.json"
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, "agent", "--state", str(state), "--server", server.url,
         "--device-class", CLASS, "--root", str(root), "--once", "--probe-count", "3"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def kill9(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def wait_paused(state: Path, process: subprocess.Popen, timeout: float = 60) -> str:
    marker = state / "paused-at"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists():
            return marker.read_text()
        if process.poll() is not None:
            raise AssertionError(f"agent exited before pausing: {process.stderr.read().decode()}")
        time.sleep(0.02)
    raise AssertionError("agent never reached the pause point")


def assert_working_model(state: Path) -> int:
    """0 devices without a working model, 0 half-written active models: the active pointer names
    a slot whose files match their signed hashes, of the version it says, and it predicts."""
    agent = Agent(state)
    active = agent.status().active
    assert active is not None, "no active model"
    index = verify_slot(state / "slots" / active["slot"])
    assert index is not None, f"active slot {active['slot']} is half-written or tampered"
    assert (index["name"], index["version"]) == (NAME, active["version"])
    outputs = agent.predict(canary_feed())
    np.testing.assert_allclose(outputs["y"], expected(active["version"]), rtol=1e-5)
    return int(active["version"])
