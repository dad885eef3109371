"""Faults during a download: a disk that fills, a server that goes away mid-file."""

from __future__ import annotations

import contextlib
import subprocess
import uuid

import pytest
from agent_harness import CLASS, assert_working_model
from fleet_agent_support import FleetServer, publish

from edgeforge.fleet import Agent


@pytest.fixture
def repo(tmp_path):
    from edgeforge.fleet.repository import Repository

    repository = Repository.init(tmp_path / "repo")
    publish(repository, tmp_path / "work", 1, CLASS)
    publish(repository, tmp_path / "work", 2, CLASS, pad=400_000)
    return repository


@pytest.fixture
def server(repo):
    fleet = FleetServer(repo)
    yield fleet
    fleet.close()


def make_agent(state, server, repo):
    return Agent(
        state, server=server.url, device_class=CLASS, root=repo.path / "metadata/1.root.json",
        probe_count=3,
    )  # fmt: skip


@contextlib.contextmanager
def small_disk(path, size: str):
    """A real file system of `size` (tmpfs); needs the right to mount (root), else skip."""
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", f"edgeforge-{uuid.uuid4().hex[:8]}", path],
        capture_output=True,
    )
    if result.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def test_disk_full_during_download_keeps_active_model_and_reports(tmp_path, repo, server):
    """The 400 kB release does not fit in what is left of a 1 MB disk: the download fails
    cleanly, the partial file is removed, v1 keeps running and the server hears why."""
    with small_disk(tmp_path / "disk", "1m") as disk:
        agent = make_agent(disk / "state", server, repo)
        server.set_directive(CLASS, 1)
        agent.step()
        free = subprocess.run(["df", "--output=avail", "-B1", disk], capture_output=True)
        available = int(free.stdout.split()[-1])
        (disk / "filler").write_bytes(b"\0" * max(0, available - 150_000))
        server.set_directive(CLASS, 2)
        result = agent.step()
        assert result["online"] and result["state"] == "idle"
        assert assert_working_model(disk / "state") == 1
        download = [e for e in server.reports if e["kind"] == "download" and e["version"] == 2]
        assert download and not download[0]["ok"]
        assert "disk full" in download[0]["detail"]
        assert not list((disk / "state" / "partial").iterdir())  # space given back
        assert not (disk / "state" / "slots" / "b").exists()
        (disk / "filler").unlink()  # space again: the next check-in installs it
        agent.step()
        assert assert_working_model(disk / "state") == 2


def test_server_gone_mid_download_then_resume(tmp_path, repo, server):
    """The connection drops after 100 kB of the model: the agent keeps v1, reports, and the next
    check-in resumes with an HTTP Range from the persisted offset (not from byte 0)."""
    agent = make_agent(tmp_path / "state", server, repo)
    server.set_directive(CLASS, 1)
    agent.step()
    server.set_directive(CLASS, 2)
    server.drop_after = 100_000
    agent.step()
    assert assert_working_model(tmp_path / "state") == 1
    failed = [e for e in server.reports if e["kind"] == "download" and e["version"] == 2]
    assert failed and not failed[0]["ok"]
    pending = agent.status().downloads
    assert list(pending.values()) == [100_000]
    agent.step()
    assert "bytes=100000-" in server.ranges
    assert list(agent.last_download["resumed_from"].values()) == [100_000]
    assert assert_working_model(tmp_path / "state") == 2
    assert agent.status().downloads == {}


def test_server_gone_entirely_mid_download(tmp_path, repo, server):
    """The server goes away (connection refused) while the agent is offline: inference goes on."""
    agent = make_agent(tmp_path / "state", server, repo)
    server.set_directive(CLASS, 1)
    agent.step()
    server.close()
    assert agent.step()["online"] is False
    assert assert_working_model(tmp_path / "state") == 1
