"""The real agent against the real fleet server (`edgeforge serve` in a subprocess, SQLite):
200 devices in two classes, a rollout where one class's version 2 fails its canary on the
devices.

Every device is the real `Agent` (its own state folder, key, slots and journal; real signed
HTTP to the real server; the TUF client fetching into a slot; the canary and the health probe
run in child processes held to a budget). What makes 200 of them affordable on two cores is how
their children start: forked from one warm process that imported numpy, onnxruntime and the
TUF client once (`_spawn.ForkServer`, what `edgeforge fleet simulate` uses), instead of a fresh
interpreter each (half a second of start-up per download, canary and probe)."""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
import pytest
from agent_harness import expected
from fleet_agent_support import NAME, canary_feed, publish
from server_support import ENROLL, Server

from edgeforge.fleet import Agent
from edgeforge.fleet.agent import verify_slot
from edgeforge.fleet.agent._spawn import ForkServer

GOOD, BAD = "cls-good", "cls-bad"
PER_CLASS = 100


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from edgeforge.fleet.repository import Repository

    base = tmp_path_factory.mktemp("agent-server")
    repo = Repository.init(base / "repo")
    # 200 devices on two shared cores: the probe's budget must allow for a busy machine.
    budget = {"latency_budget_ms": 5000.0}
    for device_class in (GOOD, BAD):
        publish(repo, base / "work", 1, device_class, **budget)
    publish(repo, base / "work", 2, GOOD, **budget)
    publish(repo, base / "work", 2, BAD, wrong_reference=True, **budget)  # fails everywhere
    server = Server(repo.path, f"sqlite:///{base / 'fleet.db'}").start()
    launcher = ForkServer()
    agents = [
        Agent(
            base / f"{device_class}-{i:03d}",
            server=server.url,
            device_class=device_class,
            device_id=f"{device_class}-{i:03d}",
            token=ENROLL,
            root=repo.path / "metadata" / "1.root.json",
            probe_count=2,
            launcher=launcher,
        )
        for device_class in (GOOD, BAD)
        for i in range(PER_CLASS)
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        yield server, agents, pool
    server.stop()


def working_version(agent: Agent) -> int:
    """The version of the active model, whose slot holds every file with its signed hash."""
    active = agent.status().active
    assert active is not None, f"{agent.state.name}: no active model"
    index = verify_slot(agent.state / "slots" / active["slot"])
    assert index is not None, f"{agent.state.name}: active slot {active['slot']} half-written"
    assert (index["name"], index["version"]) == (NAME, active["version"]), agent.state.name
    return int(active["version"])


def step(agent: Agent) -> None:
    """One check-in (and whatever it asks); a device that had a model still has a working one."""
    had = agent.status().committed
    agent.step()
    if had:
        working_version(agent)


def drive(server, agents, pool, rollouts, done, timeout=120.0) -> list[dict]:
    """Rounds in which every device checks in once (eight at a time) until `done(statuses)`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        list(pool.map(step, agents))
        statuses = [server.admin("GET", f"/v1/admin/rollouts/{r}").json() for r in rollouts]
        if done(statuses):
            return statuses
        time.sleep(0.3)  # the server's gates run every 0.2 s
    raise AssertionError(f"rollouts did not finish: {statuses}")


def start(server, version, device_class, **options):
    body = {"name": NAME, "version": version, "device_class": device_class, **options}
    answer = server.admin("POST", "/v1/admin/rollouts", body)
    assert answer.status_code == 201, answer.text
    return answer.json()["rollouts"][0]["id"]


def versions_tried(agent: Agent) -> set[int]:
    return {int(e["version"]) for e in agent.journal.entries() if e["state"] == "downloading"}


@pytest.mark.slow
def test_bad_canary_class_aborts_and_rolls_back_other_class_completes(fleet):
    server, agents, pool = fleet
    lenient = {"gate": "failure_rate<50%", "confidence": 0.9}
    first = [start(server, 1, c, waves="100%", min_devices=10, **lenient) for c in (GOOD, BAD)]
    drive(server, agents, pool, first, lambda s: all(x["state"] == "completed" for x in s))
    assert [a.state.name for a in agents if a.status().committed is None] == []
    assert {working_version(a) for a in agents} == {1}

    # The first wave is a fifth of each class (about 20 devices): at 90 % confidence, 20 clean
    # installs bound the failure rate under 20 %, and 20 failed canaries put it far above.
    gate = {"gate": "failure_rate<20%,canary_pass>=80%", "confidence": 0.9}
    second = [start(server, 2, c, waves="20%,100%", min_devices=8, **gate) for c in (GOOD, BAD)]
    statuses = drive(
        server, agents, pool, second,
        lambda s: s[0]["state"] == "completed" and s[1]["state"] == "aborted",
    )  # fmt: skip
    assert statuses[1]["state"] == "aborted"
    assert statuses[1]["wave"] == 1, statuses[1]  # the first wave's gate stopped it

    list(pool.map(step, agents))  # one more check-in after the abort
    bad = [a for a in agents if a.status().device_class == BAD]
    for agent in agents:
        status = agent.status()
        want = 2 if status.device_class == GOOD else 1
        assert status.active["version"] == status.committed["version"] == want, agent.state
        assert working_version(agent) == want
    refused = [a for a in bad if f"{NAME}@2" in a.status().failed]
    assert refused, "no device of the bad class ever tried version 2"
    assert len(refused) < len(bad) // 2, "the first wave should not have reached the whole class"
    # Devices the first wave did not reach never downloaded version 2.
    assert all(2 not in versions_tried(a) for a in bad if a not in refused)
    # Each device's active model predicts what its version computes.
    for agent in agents[:: PER_CLASS // 5]:
        got = Agent(agent.state).predict(canary_feed())["y"]
        np.testing.assert_allclose(got, expected(working_version(agent)), rtol=1e-5)
