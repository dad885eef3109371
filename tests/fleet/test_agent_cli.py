"""`edgeforge agent`, `agent status` and `agent predict` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from agent_harness import CLASS, expected
from fleet_agent_support import FleetServer, canary_feed, publish


def edgeforge(*argv: str) -> subprocess.CompletedProcess:
    code = "import sys; from edgeforge.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    from edgeforge.fleet.repository import Repository

    base = tmp_path_factory.mktemp("cli")
    repo = Repository.init(base / "repo")
    publish(repo, base / "work", 1, CLASS)
    server = FleetServer(repo)
    server.set_directive(CLASS, 1)
    state = base / "state"
    result = edgeforge(
        "agent", "--server", server.url, "--device-class", CLASS, "--state", str(state),
        "--root", str(repo.path / "metadata/1.root.json"), "--once", "--memory-limit", "512MB",
        "--json",
    )  # fmt: skip
    yield state, result
    server.close()


def test_agent_once_installs_and_reports_json(installed):
    _, result = installed
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["schema"] == "edgeforge.agent/1"
    assert data["step"]["online"] and data["status"]["committed"]["version"] == 1


def test_agent_status_text_and_json(installed):
    state, _ = installed
    text = edgeforge("agent", "status", "--state", str(state))
    assert text.returncode == 0, text.stderr
    assert "active     tiny version 1 (slot a)" in text.stdout
    data = json.loads(edgeforge("agent", "status", "--state", str(state), "--json").stdout)
    assert data["state"] == "idle" and data["active"]["version"] == 1
    assert [e["state"] for e in data["journal"]][-1] == "idle"


def test_agent_predict(installed, tmp_path):
    state, _ = installed
    np.savez(tmp_path / "in.npz", **canary_feed())
    result = edgeforge(
        "agent", "predict", "--state", str(state), "--input", str(tmp_path / "in.npz"),
        "--output", str(tmp_path / "out.npz"), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_allclose(out["y"], expected(1), rtol=1e-5)
    assert json.loads(result.stdout)["active"]["version"] == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["agent", "status", "--state", "/nonexistent/x"], "not an agent state folder"),
        (["agent", "predict", "--state", "{state}"], "needs --input"),
        (["agent", "predict", "--state", "{state}", "--input", "/etc/hostname"], "not a readable"),
        (["agent", "--state", "{tmp}/fresh", "--once"], "not enrolled yet"),
        (["agent", "--state", "{tmp}/m", "--server", "http://127.0.0.1:9", "--device-class",
          "x", "--memory-limit", "lots"], "does not parse"),
    ],
)  # fmt: skip
def test_agent_bad_input_is_one_line_exit_2(installed, tmp_path, argv, message):
    state, _ = installed
    argv = [a.format(state=state, tmp=tmp_path) for a in argv]
    result = edgeforge(*argv)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_agent_daemon_loop_installs_what_the_server_says(tmp_path):
    """`edgeforge agent` without --once: re-executes as the agent alone and keeps checking in."""
    import time

    from edgeforge.fleet import Agent
    from edgeforge.fleet.repository import Repository

    repo = Repository.init(tmp_path / "repo")
    publish(repo, tmp_path / "work", 1, CLASS)
    publish(repo, tmp_path / "work", 2, CLASS)
    server = FleetServer(repo)
    server.set_directive(CLASS, 1)
    state = tmp_path / "state"
    code = "import sys; from edgeforge.cli import main; sys.exit(main())"
    daemon = subprocess.Popen(
        [sys.executable, "-c", code, "agent", "--server", server.url, "--device-class", CLASS,
         "--state", str(state), "--root", str(repo.path / "metadata/1.root.json"),
         "--interval", "0.3", "--probe-count", "2"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for version in (1, 2):
            server.set_directive(CLASS, version)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and daemon.poll() is None:
                committed = Agent(state).status().committed
                if committed and committed["version"] == version:
                    break
                time.sleep(0.1)
            assert Agent(state).status().committed["version"] == version
        with open(f"/proc/{daemon.pid}/cmdline", "rb") as handle:
            assert b"edgeforge.fleet.agent" in handle.read()  # the slim process
    finally:
        daemon.kill()
        daemon.wait()
        server.close()


def test_one_agent_per_state_folder(installed):
    from edgeforge.fleet.agent._lock import exclusive

    state, _ = installed
    with exclusive(state / ".agent.lock"):
        result = edgeforge("agent", "--state", str(state), "--once")
    assert result.returncode == 2 and "another agent runs" in result.stderr
