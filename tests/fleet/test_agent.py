"""The device agent, against a real TUF repository and a real fleet server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fleet_agent_support import NAME, FleetServer, canary_feed, publish

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet import Agent
from edgeforge.fleet.agent import verify_slot

CLASS = "linux-x86"


@pytest.fixture
def repo(tmp_path):
    from edgeforge.fleet.repository import Repository

    repository = Repository.init(tmp_path / "repo")
    publish(repository, tmp_path / "work", 1, CLASS)
    publish(repository, tmp_path / "work", 2, CLASS, pad=20_000)
    return repository


@pytest.fixture
def server(repo):
    fleet = FleetServer(repo)
    yield fleet
    fleet.close()


def make_agent(state, server, repo, **kwargs):
    return Agent(
        state, server=server.url, device_class=CLASS, root=repo.path / "metadata" / "1.root.json",
        **kwargs,
    )  # fmt: skip


def expected(version):
    return canary_feed()["x"] @ (np.arange(64, dtype=np.float32).reshape(8, 8) / 64.0 * version)


def test_install_commit_and_predict(tmp_path, repo, server):
    agent = make_agent(tmp_path / "state", server, repo)
    with pytest.raises(EdgeforgeError, match="no model is active"):
        agent.predict(canary_feed())
    server.set_directive(CLASS, 1)
    result = agent.step()
    assert result["online"] and result["state"] == "idle"
    status = agent.status()
    assert status.active == status.committed == {"slot": "a", "name": NAME, "version": 1}
    np.testing.assert_allclose(agent.predict(canary_feed())["y"], expected(1), rtol=1e-5)
    server.set_directive(CLASS, 2)
    agent.step()
    assert agent.status().committed["version"] == 2 and agent.status().active["slot"] == "b"
    np.testing.assert_allclose(agent.predict(canary_feed())["y"], expected(2), rtol=1e-5)
    kinds = [(e["kind"], e["version"], e["ok"]) for e in server.reports]
    for kind in ("download", "canary", "activate", "health", "commit"):
        assert (kind, 2, True) in kinds
    health = next(e for e in server.reports if e["kind"] == "health" and e["version"] == 2)
    assert health["metrics"]["latency_p95_ms"] > 0  # what the server's latency gate reads
    assert health["metrics"]["latency_count"] == 10
    states = [e["state"] for e in agent.journal.entries()]
    assert states[-7:] == ["downloading", "staged", "canary", "activating", "probing",
                           "committing", "idle"]  # fmt: skip
    # Fresh Agent object (what an application uses): predicts with the committed model.
    np.testing.assert_allclose(
        Agent(tmp_path / "state").predict(canary_feed())["y"], expected(2), rtol=1e-5
    )


def test_unchanged_directive_is_304_and_nothing_happens(tmp_path, repo, server):
    agent = make_agent(tmp_path / "state", server, repo)
    server.set_directive(CLASS, 1)
    agent.step()
    before = len(agent.journal.entries())
    agent.step()
    assert len(agent.journal.entries()) == before
    assert server.checkins[-1]["active"] == {"name": NAME, "version": 1}


def test_failed_canary_keeps_active_model_and_reports(tmp_path, repo, server):
    publish(repo, tmp_path / "work", 3, CLASS, wrong_reference=True)
    agent = make_agent(tmp_path / "state", server, repo)
    server.set_directive(CLASS, 1)
    agent.step()
    server.set_directive(CLASS, 3)
    agent.step()
    assert agent.status().active["version"] == 1
    canary = [e for e in server.reports if e["kind"] == "canary" and e["version"] == 3]
    assert canary and not canary[0]["ok"] and "differs from the reference" in canary[0]["detail"]
    agent.step()  # the same directive again: not retried, not re-reported
    assert len([e for e in server.reports if e["kind"] == "canary" and e["version"] == 3]) == 1


def test_canary_over_memory_limit_child_dies_agent_does_not(tmp_path, repo, server):
    """The artifact allocates ~1 GB when run; the budget is 200 MB: the child is killed by the
    resident-memory watch, the agent keeps its active model and reports why."""
    publish(repo, tmp_path / "work", 4, CLASS, bomb=True)
    agent = make_agent(tmp_path / "state", server, repo, memory_limit="200MB")
    server.set_directive(CLASS, 1)
    agent.step()
    server.set_directive(CLASS, 4)
    agent.step()
    assert agent.status().active["version"] == 1
    canary = next(e for e in server.reports if e["kind"] == "canary" and e["version"] == 4)
    assert not canary["ok"] and "over the 200 MB memory limit" in canary["detail"]


def test_canary_runtime_crash_child_dies_agent_does_not(tmp_path, repo, server):
    """The runtime dies of a signal in the middle of the canary (what a segfault looks like from
    outside; the test sends the SIGSEGV, as no shipped runtime crashes on demand): the agent
    reports the signal and keeps its active model."""
    import os
    import signal
    import threading
    import time

    publish(repo, tmp_path / "work", 5, CLASS, samples=20_000)  # a canary of a few seconds
    agent = make_agent(tmp_path / "state", server, repo, canary_timeout=60)
    server.set_directive(CLASS, 1)
    agent.step()
    server.set_directive(CLASS, 5)
    crashed: list[int] = []

    def crash_the_canary() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not crashed:
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"_child\x00canary" in cmdline and str(tmp_path).encode() in cmdline:
                    try:  # at once: on a quiet machine the canary may be done in half a second
                        os.kill(int(pid), signal.SIGSEGV)
                    except ProcessLookupError:
                        continue
                    crashed.append(int(pid))
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=crash_the_canary)
    killer.start()
    agent.step()
    killer.join()
    assert crashed
    assert agent.status().active["version"] == 1
    np.testing.assert_allclose(agent.predict(canary_feed())["y"], expected(1), rtol=1e-5)
    canary = next(e for e in server.reports if e["kind"] == "canary" and e["version"] == 5)
    assert not canary["ok"] and "killed by signal 11" in canary["detail"]


def test_forged_directive_refused(tmp_path, repo, server):
    """The attacker controls the server's answers but not the director key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    agent = make_agent(tmp_path / "state", server, repo)
    agent.enrol()
    forger = Ed25519PrivateKey.generate()
    server.repo = type("Forged", (), {
        "director_sign": staticmethod(forger.sign), "path": repo.path,
        "director_public_key": repo.director_public_key,
    })()  # fmt: skip
    server.set_directive(CLASS, 1)
    agent.step()
    assert agent.status().active is None
    assert any("directive refused" in e["detail"] for e in server.reports)


def test_offline_backoff_and_inference_goes_on(tmp_path, repo, server):
    agent = make_agent(tmp_path / "state", server, repo, interval=10)
    server.set_directive(CLASS, 1)
    agent.step()
    server.offline = True
    delays = []
    for _ in range(4):
        assert agent.step()["online"] is False
        delays.append(agent.next_delay())
    assert delays[0] >= 16 and delays[3] >= 128  # 10 s × 2^k, ±20 % jitter
    np.testing.assert_allclose(agent.predict(canary_feed())["y"], expected(1), rtol=1e-5)
    server.offline = False
    assert agent.step()["online"] and 8 <= agent.next_delay() <= 12


def test_import_boundary_no_torch_no_converter():
    code = (
        "import sys, edgeforge.fleet.agent, edgeforge.fleet;"
        "edgeforge.fleet.Agent;"
        "heavy=('torch','onnx','tensorflow','openvino','edgeforge.runtimes','edgeforge.convert',"
        "'edgeforge.optimize','edgeforge.passes','edgeforge._api');"
        "print(json.dumps([m for m in heavy if m in sys.modules]))"
    ).replace("import sys,", "import json, sys,")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_verify_slot_refuses_a_changed_file(tmp_path, repo, server):
    agent = make_agent(tmp_path / "state", server, repo)
    server.set_directive(CLASS, 1)
    agent.step()
    slot = tmp_path / "state" / "slots" / "a"
    assert verify_slot(slot) is not None
    (slot / "model.onnx").write_bytes(b"x")
    assert verify_slot(slot) is None


def test_offline_at_first_boot_keeps_trying_to_enrol(tmp_path):
    """No server yet (connection refused): the loop backs off and retries, it does not die."""
    delays: list[float] = []

    class Stop(Exception):
        pass

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 3:
            raise Stop

    agent = Agent(tmp_path / "state", server="http://127.0.0.1:9", device_class=CLASS, interval=1)
    with pytest.raises(Stop):
        agent.run(sleep=sleep)
    assert delays[0] < delays[1] < delays[2]  # 2, 4, 8 s (±20 %)
