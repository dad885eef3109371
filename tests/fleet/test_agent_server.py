"""The real agent against the real fleet server (`edgeforge serve` in a subprocess, SQLite):
a rollout in two classes where one class's version 2 fails its canary on the devices."""

from __future__ import annotations

import time

import pytest
from agent_harness import assert_working_model
from fleet_agent_support import NAME, publish
from server_support import ENROLL, Server

from edgeforge.fleet import Agent

GOOD, BAD = "cls-good", "cls-bad"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from edgeforge.fleet.repository import Repository

    base = tmp_path_factory.mktemp("agent-server")
    repo = Repository.init(base / "repo")
    for device_class in (GOOD, BAD):
        publish(repo, base / "work", 1, device_class)
    publish(repo, base / "work", 2, GOOD)
    publish(repo, base / "work", 2, BAD, wrong_reference=True)  # fails on every device
    server = Server(repo.path, f"sqlite:///{base / 'fleet.db'}").start()
    agents = [
        Agent(
            base / f"{device_class}-{i}",
            server=server.url,
            device_class=device_class,
            device_id=f"{device_class}-{i}",
            token=ENROLL,
            root=repo.path / "metadata" / "1.root.json",
            probe_count=2,
        )
        for device_class in (GOOD, BAD)
        for i in range(4)
    ]
    yield server, agents
    server.stop()


def drive(server, agents, rollouts, done, timeout=120.0):
    """Every agent checks in (and acts) in turn until `done(statuses)`; after every step every
    device that ever had a model still has a working, fully written one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for agent in agents:
            had = agent.status().committed
            agent.step()
            if had:
                assert_working_model(agent.state)
        statuses = [server.admin("GET", f"/v1/admin/rollouts/{r}").json() for r in rollouts]
        if done(statuses):
            return statuses
        time.sleep(0.2)
    raise AssertionError(f"rollouts did not finish: {statuses}")


def start(server, version, device_class, **options):
    body = {"name": NAME, "version": version, "device_class": device_class, **options}
    answer = server.admin("POST", "/v1/admin/rollouts", body)
    assert answer.status_code == 201, answer.text
    return answer.json()["rollouts"][0]["id"]


@pytest.mark.slow
def test_bad_canary_class_aborts_and_rolls_back_other_class_completes(fleet):
    server, agents = fleet
    # Four devices per class: the gates' one-sided bounds are taken at 60 % confidence, or such
    # a small sample could never show anything (the server's own tests cover the bounds).
    lenient = {"gate": "failure_rate<50%", "confidence": 0.6}
    first = [start(server, 1, c, waves="100%", min_devices=1, **lenient) for c in (GOOD, BAD)]
    drive(server, agents, first, lambda s: all(x["state"] == "completed" for x in s))
    assert all(a.status().committed["version"] == 1 for a in agents)

    gate = {"gate": "failure_rate<20%,canary_pass>=80%", "confidence": 0.6}
    second = [start(server, 2, c, waves="50%,100%", min_devices=2, **gate) for c in (GOOD, BAD)]
    statuses = drive(
        server, agents, second,
        lambda s: s[0]["state"] == "completed" and s[1]["state"] == "aborted",
    )  # fmt: skip
    assert statuses[1]["state"] == "aborted"
    for agent in agents:
        agent.step()  # one more check-in after the abort
        status = agent.status()
        want = 2 if status.device_class == GOOD else 1
        assert status.active["version"] == status.committed["version"] == want, agent.state
        assert assert_working_model(agent.state) == want
    bad = [a for a in agents if a.status().device_class == BAD]
    refused = [a for a in bad if f"{NAME}@2" in a.status().failed]
    assert refused, "no device of the bad class ever tried version 2"
    assert len(refused) < len(bad), "the first wave should not have reached every device"
