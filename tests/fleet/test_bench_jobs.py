"""Benchmark jobs on the user's own devices: `edgeforge bench NAME@VERSION --on DEVICE|CLASS
--server URL` against the real server (`edgeforge serve`, SQLite) and a real agent (`edgeforge
agent --accept-jobs` in a subprocess, or in-process) over loopback HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from fleet_agent_support import NAME, publish
from server_support import ADMIN, ENROLL, HTTP, Server

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet import Agent
from edgeforge.fleet import jobs as fleet_jobs

CLASS = "cls-farm"
CATALOGUED = "raspberry-pi-5"  # a device class named after its catalogue device


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    from edgeforge.fleet.repository import Repository

    base = tmp_path_factory.mktemp("bench-jobs")
    repo = Repository.init(base / "repo")
    publish(repo, base / "work", 1, CLASS)
    publish(repo, base / "work", 1, CATALOGUED)
    server = Server(repo.path, f"sqlite:///{base / 'fleet.db'}").start()
    yield server, repo, base
    server.stop()


def agent_for(farm, device_id: str, device_class: str = CLASS) -> Agent:
    server, repo, base = farm
    agent = Agent(
        base / device_id, server=server.url, device_class=device_class, device_id=device_id,
        token=ENROLL, root=repo.path / "metadata" / "1.root.json", accept_jobs=True,
    )  # fmt: skip
    agent.enrol()
    return agent


@pytest.mark.slow
def test_bench_on_device_cli_real_agent_daemon_result_names_device_and_csv_calibrates(
    farm, tmp_path, monkeypatch, capsys
):
    server, repo, base = farm
    state = base / "daemon-1"
    command = [
        sys.executable, "-c", "import sys; from edgeforge.cli import main; sys.exit(main())",
        "agent", "--server", server.url, "--device-class", CLASS, "--device-id", "farm-1",
        "--state", str(state), "--root", str(repo.path / "metadata" / "1.root.json"),
        "--token", ENROLL, "--interval", "0.3", "--accept-jobs",
    ]  # fmt: skip
    daemon = subprocess.Popen(command, env=os.environ.copy(), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while (
            not (state / "device.json").exists()
            or "director_key" not in (state / "device.json").read_text()
        ):
            assert time.monotonic() < deadline and daemon.poll() is None
            time.sleep(0.1)
        from edgeforge.cli import main

        monkeypatch.setenv("EDGEFORGE_ADMIN_TOKEN", ADMIN)
        rows = tmp_path / "mine.csv"
        argv = ["bench", f"{NAME}@1", "--on", "farm-1", "--server", server.url, "--warmup", "3",
                "--runs", "25", "--timeout", "60", "--csv", str(rows), "--json"]  # fmt: skip
        assert main(argv) == 0
    finally:
        daemon.kill()
        daemon.wait()
    out = json.loads(capsys.readouterr().out)
    result = out.get("result", out)
    assert result["device"] == "farm-1"
    assert result["model"] == f"{NAME}@1" and result["runtime"] == "onnxruntime"
    assert result["runs"] == 25 and result["warmup"] == 3
    lat = result["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["max"]
    assert result["settings"]["device_class"] == CLASS
    assert not (state / "jobs" / "1").exists()  # the scratch copy is gone; slots untouched
    assert not (state / "active.json").exists()

    from edgeforge.estimator.published import read_rows

    (row,) = read_rows(rows)
    assert row.device == CLASS and row.model == NAME and row.batch == 1
    assert row.latency_ms == pytest.approx(lat["p50"], rel=1e-3)
    assert "farm-1" in row.source


def test_bench_on_class_is_claimed_once_and_measured_in_process(farm):
    server, _, _ = farm
    first, second = agent_for(farm, "farm-c1"), agent_for(farm, "farm-c2")
    job = fleet_jobs.queue(server.url, f"{NAME}@1", CLASS, token=ADMIN, warmup=1, runs=5)
    assert job["state"] == "queued" and job["target"] == "class"
    taken = [a.step().get("job") for a in (first, second)]
    assert taken == [{"id": job["id"], "ok": True}, None]  # the first to ask, only
    done = fleet_jobs.wait(server.url, job["id"], token=ADMIN, timeout=30)
    assert done["state"] == "done", done
    result = fleet_jobs.bench_result(done)
    assert result.device == "farm-c1" and result.runs == 5


def test_rows_from_a_catalogued_class_map_to_the_catalogue_device(farm, tmp_path):
    from edgeforge.estimator.published import read_rows

    server, _, _ = farm
    pi = agent_for(farm, "pi-kitchen", CATALOGUED)
    job = fleet_jobs.queue(server.url, f"{NAME}@1", "pi-kitchen", token=ADMIN, warmup=1, runs=5)
    assert pi.step()["job"] == {"id": job["id"], "ok": True}
    result = fleet_jobs.bench_result(fleet_jobs.wait(server.url, job["id"], token=ADMIN))
    fleet_jobs.append_csv(tmp_path / "rows.csv", result)
    fleet_jobs.append_csv(tmp_path / "rows.csv", result)  # appends; one header
    rows = read_rows(tmp_path / "rows.csv")
    assert len(rows) == 2 and rows[0].device_id == "raspberry-pi-5" and rows[0].unit == "cpu"
    # "tiny" is no zoo architecture: calibrate says so for this row rather than guessing
    assert "zoo architecture" in (rows[0].reason or "")


def test_job_for_an_unknown_device_or_unreleased_version_is_refused(farm):
    server, _, _ = farm
    agent_for(farm, "farm-r1")
    with pytest.raises(EdgeforgeError, match="no enrolled device"):
        fleet_jobs.queue(server.url, f"{NAME}@1", "nobody", token=ADMIN)
    with pytest.raises(EdgeforgeError, match="has no variant"):
        fleet_jobs.queue(server.url, f"{NAME}@9", "farm-r1", token=ADMIN)
    with pytest.raises(EdgeforgeError, match="401"):
        fleet_jobs.queue(server.url, f"{NAME}@1", "farm-r1", token="wrong")
    with pytest.raises(EdgeforgeError, match="NAME@VERSION"):
        fleet_jobs.parse_model_ref("model.onnx")


def test_a_device_cannot_take_or_report_another_devices_job(farm):
    server, _, _ = farm
    owner, other = agent_for(farm, "farm-o1"), agent_for(farm, "farm-o2", "cls-other")
    job = fleet_jobs.queue(server.url, f"{NAME}@1", "farm-o1", token=ADMIN, warmup=0, runs=1)
    client = other._client(other._device())
    status, _, _ = client.request(
        "POST", "/v1/jobs/next", {}, key=other._key(), device_id="farm-o2"
    )
    assert status == 204  # not its job, not its class
    status, _, _ = client.request(
        "POST", f"/v1/jobs/{job['id']}/result", {"ok": True, "result": {"latency_ms": {}}},
        key=other._key(), device_id="farm-o2",
    )  # fmt: skip
    assert status == 404
    unsigned = HTTP.post(f"{server.url}/v1/jobs/next", content=b"{}")
    assert unsigned.status_code == 401
    assert owner.step()["job"] == {"id": job["id"], "ok": True}
    assert fleet_jobs.wait(server.url, job["id"], token=ADMIN)["result"]["device_id"] == "farm-o1"


def test_the_daemon_runs_a_job_without_importing_numpy(farm):
    """The idle-RSS goal: a job is fetched and timed in children; the daemon stays numpy-free."""
    server, _, _ = farm
    agent = agent_for(farm, "farm-lean")
    job = fleet_jobs.queue(server.url, f"{NAME}@1", "farm-lean", token=ADMIN, warmup=1, runs=3)
    code = (
        "import sys; from edgeforge.fleet import Agent;"
        f"step = Agent({str(agent.state)!r}, accept_jobs=True).step();"
        f"assert step['job'] == {{'id': {job['id']}, 'ok': True}}, step;"
        "bad = [m for m in ('numpy', 'datasketches', 'onnxruntime') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert fleet_jobs.wait(server.url, job["id"], token=ADMIN)["state"] == "done"


@pytest.mark.slow
def test_jobs_on_postgresql(tmp_path):
    """The 0004_jobs migration and a claim on PostgreSQL (a fresh schema, dropped after)."""
    from server_support import postgres_schema

    from edgeforge.fleet.repository import Repository

    repo = Repository.init(tmp_path / "repo")
    publish(repo, tmp_path / "work", 1, CLASS)
    with postgres_schema() as url:
        server = Server(repo.path, url).start()
        try:
            agent = Agent(
                tmp_path / "pg-1", server=server.url, device_class=CLASS, device_id="pg-1",
                token=ENROLL, root=repo.path / "metadata" / "1.root.json", accept_jobs=True,
            )  # fmt: skip
            agent.enrol()
            job = fleet_jobs.queue(server.url, f"{NAME}@1", CLASS, token=ADMIN, warmup=0, runs=2)
            assert agent.step()["job"] == {"id": job["id"], "ok": True}
            done = fleet_jobs.wait(server.url, job["id"], token=ADMIN)
            assert done["result"]["device_id"] == "pg-1" and done["result"]["runs"] == 2
        finally:
            server.stop()


def test_bench_on_bad_input_exits_2_in_one_line(monkeypatch, capsys):
    from edgeforge.cli import main

    monkeypatch.setenv("EDGEFORGE_ADMIN_TOKEN", ADMIN)
    assert main(["bench", f"{NAME}@1", "--on", "farm-1"]) == 2  # no --server
    assert main(["bench", "model.onnx", "--on", "farm-1", "--server", "http://x"]) == 2
    assert main(["bench", f"{NAME}@1", "--on", "farm-1", "--server", "http://127.0.0.1:9"]) == 2
    monkeypatch.delenv("EDGEFORGE_ADMIN_TOKEN")
    assert main(["bench", f"{NAME}@1", "--on", "farm-1", "--server", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    for needle in ("--server", "NAME@VERSION", "does not answer", "EDGEFORGE_ADMIN_TOKEN"):
        assert needle in err
