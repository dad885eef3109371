"""kill -9 at every agent state, and at random moments: the device always keeps a working,
fully written model, and a restart ends consistent (the journal's last word is idle)."""

from __future__ import annotations

import contextlib
import random
import subprocess
import time

import pytest
from agent_harness import CLASS, assert_working_model, kill9, spawn, wait_paused
from fleet_agent_support import FleetServer, publish

from edgeforge.fleet import Agent


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from edgeforge.fleet.repository import Repository

    base = tmp_path_factory.mktemp("kill")
    repository = Repository.init(base / "repo")
    publish(repository, base / "work", 1, CLASS)
    publish(repository, base / "work", 2, CLASS, pad=20_000)
    publish(repository, base / "work", 3, CLASS, pad=40_000)
    publish(repository, base / "work", 4, CLASS, pad=30_000)
    return repository


@pytest.fixture
def server(repo):
    fleet = FleetServer(repo)
    yield fleet
    fleet.close()


def installed_v1(tmp_path, server, repo, *, then_v2: bool = False):
    state = tmp_path / "state"
    agent = Agent(
        state, server=server.url, device_class=CLASS, root=repo.path / "metadata/1.root.json",
        probe_count=3,
    )  # fmt: skip
    server.set_directive(CLASS, 1)
    agent.step()
    if then_v2:
        server.set_directive(CLASS, 2)
        agent.step()
    # A precondition, said as one: an install that failed here (a probe over its budget on a
    # loaded machine) would otherwise read as "no active model" after the kill.
    active = agent.status().active
    assert active and active["version"] == (2 if then_v2 else 1), agent.status()
    return state, agent


@pytest.mark.parametrize(
    "state_name",
    ["downloading", "staged", "canary", "activating", "probing", "committing", "rolling_back"],
)
def test_kill_at_each_state(tmp_path, server, repo, state_name):
    rolling_back = state_name == "rolling_back"
    state, _ = installed_v1(tmp_path, server, repo, then_v2=rolling_back)
    if rolling_back:
        server.set_directive(CLASS, 1, action="rollback")
    else:
        server.set_directive(CLASS, 2)
    agent = spawn(state, server, repo, pause_at=state_name)
    assert wait_paused(state, agent) == state_name
    kill9(agent)
    before = assert_working_model(state)
    assert before in (1, 2)
    if state_name == "downloading":
        pending = Agent(state).status().downloads
        assert pending and max(pending.values()) > 0, "no durable offset was persisted"
    restarted = spawn(state, server, repo)
    assert restarted.wait(timeout=120) == 0, restarted.stderr.read().decode()
    status = Agent(state).status()
    assert status.state == "idle"
    assert status.active == status.committed
    assert assert_working_model(state) == (1 if rolling_back else 2)
    if state_name == "downloading":
        assert any(not r.startswith("bytes=0-") for r in server.ranges), "download did not resume"


STATES = ("downloading", "staged", "canary", "activating", "probing", "committing", "idle")


def reach(state, agent, wanted: str, *, since: float, timeout: float = 20) -> None:
    """Wait until the agent journals `wanted` at or after `since` (or exits). Only the journal's
    tail is parsed (one run writes a handful of entries), so that polling every 5 ms does not
    take a core from the agent as the journal grows over a hundred runs."""
    journal = Agent(state).journal
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and agent.poll() is None:
        if any(e["state"] == wanted and e["at"] >= since for e in journal.entries(last=16)):
            return
        time.sleep(0.005)


def pause(agent, seconds: float) -> None:
    """Let the agent run for `seconds`, or until it exits (then there is nothing left to kill
    and nothing to wait for)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        agent.wait(timeout=seconds)


@pytest.mark.slow
def test_hundred_kills_at_random_moments(tmp_path, server, repo):
    state, _ = installed_v1(tmp_path, server, repo)
    rng = random.Random(15)
    kills = 0
    seen: dict[str, int] = {}  # journal state at the moment of each kill
    version = 1
    # A hundred runs cut about 55 short; a loaded machine slows the agent's start and cuts
    # fewer, so it runs on (to 160) until 55 were killed.
    for _ in range(160):
        if kills >= 55:
            break
        # Always some work: once the agent runs what it was told, tell it another version
        # (downloaded unless the other slot holds it), now and then as a rollback directive.
        status = Agent(state).status()
        if status.committed["version"] == version or f"tiny@{version}" in status.failed:
            version = rng.choice([v for v in (1, 2, 3, 4) if v != version])
            action = "rollback" if rng.random() < 0.2 else "install"
            server.set_directive(CLASS, version, action=action)
        since = time.time()
        agent = spawn(state, server, repo)
        if rng.random() < 0.5:
            pause(agent, rng.uniform(0.0, 1.3))  # the agent needs ~0.3 s to start, ~1 s to finish
        else:  # a random moment within a random state (the canary would get most kills)
            reach(state, agent, rng.choice(STATES), since=since)
            pause(agent, rng.uniform(0.0, 0.15))
        if agent.poll() is None:
            kills += 1
            kill9(agent)
            last = Agent(state).journal.last() or {"state": "idle"}
            seen[last["state"]] = seen.get(last["state"], 0) + 1
        kill9(agent)
        assert_working_model(state)
    print("kills by state:", seen)
    assert kills >= 50  # most runs were cut short somewhere
    assert len(seen) >= 3, seen  # and in several states
    final = spawn(state, server, repo)
    assert final.wait(timeout=120) == 0
    status = Agent(state).status()
    assert status.state == "idle" and status.active == status.committed
    assert_working_model(state)
