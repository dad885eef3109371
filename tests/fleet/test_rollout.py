"""Staged rollouts on the real server over real HTTP, on SQLite and PostgreSQL: waves behind
gates judged at a confidence bound, timeouts counted as failures, abort rolling back exactly the
devices that took the new version, late enrolment, pause/resume, one live rollout per model and
class, and a server killed mid-rollout that carries on."""

from __future__ import annotations

import json
import time

import pytest
from server_support import ADMIN, Device, Server, make_repository, postgres_schema

from edgeforge.cli import main
from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.db import sqlite_url
from edgeforge.fleet.server.gates import (
    GateSample,
    evaluate,
    median_ratio_bounds,
    parse_gate,
    parse_waves,
    wilson_bounds,
)
from edgeforge.fleet.server.rollouts import bucket_of

CLASSES = ["flow", "abort", "timeout", "conflict", "pause", "late", "restart"]
RELEASES = {"demo": {1: [*CLASSES, "v1-only"], 2: CLASSES}}


# ---------------------------------------------------------------- gates (no server)


def test_wilson_upper_bound_needs_a_sample_not_a_raw_percentage():
    # 0 failures in 20: the raw rate is 0%, but the 95% upper bound is about 12%
    low, high = wilson_bounds(0, 20)
    assert low == 0 and 0.11 < high < 0.13
    # 0 failures in 200 is what it takes to show a rate under 2%
    assert wilson_bounds(0, 200)[1] < 0.02
    # a 10% failure rate over 100 devices is shown above 5%
    assert wilson_bounds(10, 100)[0] > 0.05


def test_gate_waits_for_the_minimum_sample_and_fails_only_on_evidence():
    gate = parse_gate("failure_rate<2%")
    few = GateSample(
        decided=5, failed=5, pending=0, canary_runs=0, canary_passed=0, latency_ratios=[]
    )
    assert evaluate(gate, few, min_devices=20, confidence=0.95).status == "waiting"
    bad = GateSample(
        decided=20, failed=5, pending=3, canary_runs=0, canary_passed=0, latency_ratios=[]
    )
    assert evaluate(gate, bad, min_devices=20, confidence=0.95).status == "failed"
    small = GateSample(
        decided=20, failed=0, pending=0, canary_runs=0, canary_passed=0, latency_ratios=[]
    )
    assert evaluate(gate, small, min_devices=20, confidence=0.95).status == "unsure"
    big = GateSample(
        decided=300, failed=0, pending=0, canary_runs=0, canary_passed=0, latency_ratios=[]
    )
    assert evaluate(gate, big, min_devices=20, confidence=0.95).status == "passed"


def test_latency_gate_bounds_the_median_ratio():
    gate = parse_gate("latency_p95<+10%")
    same = GateSample(30, 0, 0, 0, 0, [1.0] * 30)
    assert evaluate(gate, same, min_devices=20, confidence=0.95).status == "passed"
    slower = GateSample(30, 0, 0, 0, 0, [1.5] * 30)
    assert evaluate(gate, slower, min_devices=20, confidence=0.95).status == "failed"
    assert median_ratio_bounds([1.0] * 4) == (0.0, float("inf"))  # too few to bound


@pytest.mark.parametrize(
    "text",
    ["failure_rate<<2%", "speed<2%", "failure_rate>2%", "canary_pass<99%", "failure_rate<200%", ""],
)
def test_gate_that_does_not_parse_is_one_line(text):
    with pytest.raises(EdgeforgeError):
        parse_gate(text)


@pytest.mark.parametrize("text", ["10%,1%,100%", "1%,10%", "0%,100%", "a,100%"])
def test_waves_must_grow_to_100_percent(text):
    with pytest.raises(EdgeforgeError):
        parse_waves(text)


# ---------------------------------------------------------------- rollouts over HTTP


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield sqlite_url(tmp_path_factory.mktemp("rollout-sqlite") / "fleet.db")
    else:
        with postgres_schema() as url:
            yield url


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repository(tmp_path_factory.mktemp("rollout-repo"), RELEASES)


@pytest.fixture(scope="module")
def server(repo, db_url):
    running = Server(repo, db_url).start()
    yield running
    running.stop()


def _fleet(server: Server, device_class: str, count: int, prefix: str = "") -> list[Device]:
    devices = []
    for i in range(count):
        device = Device(f"{device_class}{prefix}-{i:03d}", device_class, active=("demo", 1))
        assert device.enrol(server).status_code in (200, 201)
        # a healthy agent on version 1 reports its latency: the baseline of the latency gate
        health = {"kind": "health", "name": "demo", "version": 1, "ok": True}
        device.report(server, [{**health, "metrics": {"latency_p95_ms": 10.0}}])
        devices.append(device)
    return devices


def _start(server: Server, device_class: str, **options) -> dict:
    body = {"name": "demo", "version": 2, "device_class": device_class, **options}
    answer = server.admin("POST", "/v1/admin/rollouts", body)
    assert answer.status_code == 201, answer.text
    return answer.json()["rollouts"][0]


def _status(server: Server, rollout_id: int) -> dict:
    return server.admin("GET", f"/v1/admin/rollouts/{rollout_id}").json()


def _drive(server, devices, rollout_id, until, *, canary_ok=lambda d: True, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for device in devices:
            device.follow(server, canary_ok=canary_ok(device))
        status = _status(server, rollout_id)
        if until(status):
            return status
        time.sleep(0.25)  # the gate loop runs every 0.2 s
    raise AssertionError(
        f"rollout did not get there: {json.dumps(_status(server, rollout_id))[:2000]}"
    )


def _took(device: Device, version: int) -> bool:
    return any(d["action"] == "install" and d["version"] == version for d in device.seen)


def test_rollout_passes_each_wave_and_completes(server):
    devices = _fleet(server, "flow", 40)
    rollout = _start(
        server,
        "flow",
        waves="10%,50%,100%",
        gate="failure_rate<50%,canary_pass>=60%,latency_p95<+50%",
        min_devices=5,
    )
    # wave 1 reaches at least the minimum sample, not everyone
    status = _drive(
        server, devices, rollout["id"], lambda s: s["state"] != "running" or s["wave"] > 1
    )
    status = _drive(server, devices, rollout["id"], lambda s: s["state"] == "completed")
    events = [h["event"] for h in status["history"]]
    assert events.count("next wave") == 2 and events[-1] == "completed"
    for device in devices:
        device.follow(server)
    assert all(d.active == ("demo", 2) for d in devices)
    # wave assignment is deterministic: the first devices told were the lowest places
    places = {d.device_id: (bucket_of(d.device_id) - rollout["offset"]) % 1 for d in devices}
    first = sorted(places, key=places.get)[: rollout["min_devices"]]
    assert all(_took(next(d for d in devices if d.device_id == i), 2) for i in first)


def test_failed_gate_aborts_and_every_device_that_took_it_rolls_back(server):
    devices = _fleet(server, "abort", 40)
    failing = {d.device_id for i, d in enumerate(devices) if i % 2 == 0}
    rollout = _start(server, "abort", waves="10%,50%,100%", gate="failure_rate<20%", min_devices=5)
    status = _drive(
        server,
        devices,
        rollout["id"],
        lambda s: s["state"] == "aborted",
        canary_ok=lambda d: d.device_id not in failing,
    )
    assert "failure_rate<20%" in status["reason"]
    took = [d for d in devices if _took(d, 2) and d.device_id not in failing]
    never = [d for d in devices if not _took(d, 2)]
    assert took, "some devices committed version 2 before the gate aborted"
    assert never, "the abort came before every device was reached"
    for device in devices:
        device.follow(server)
    # within one check-in of the abort, each device that committed version 2 is told to go back
    for device in took:
        # (an install decided while the abort was being decided may still arrive first)
        after = [
            d
            for d in device.seen
            if d["issued_at"] >= status["finished_at"] and d["action"] != "install"
        ]
        assert (after[0]["action"], after[0]["version"]) == ("rollback", 1), device.seen
    stuck = [
        (d.device_id, d.active, [(x["action"], x["version"], x["rollout"]) for x in d.seen])
        for d in devices
        if d.active != ("demo", 1)
    ]
    assert not stuck
    # devices the rollout never reached were never told about version 2
    assert all(not _took(d, 2) for d in never)
    for device in devices:  # back on version 1: the rollback is done
        assert (device.checkin(server)["action"], device.active) == ("stay", ("demo", 1))
    final = _status(server, rollout["id"])
    assert final["devices"]["rollback_pending"] == 0


def test_device_that_does_not_report_in_time_counts_as_failed(server):
    devices = _fleet(server, "timeout", 10)
    rollout = _start(
        server,
        "timeout",
        waves="50%,100%",
        gate="failure_rate<50%",
        min_devices=3,
        report_timeout_s=1,
    )
    for device in devices:
        device.checkin(server)  # told to install, then silent
    deadline = time.monotonic() + 30
    status = _status(server, rollout["id"])
    while status["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.3)
        status = _status(server, rollout["id"])
    assert status["state"] == "aborted"
    assert status["devices"]["timeout"] >= 3 and status["devices"]["success"] == 0


def test_one_live_rollout_per_model_and_class_and_abort_is_always_possible(server, capsys):
    _fleet(server, "conflict", 3)
    first = _start(server, "conflict", min_devices=2)
    again = server.admin(
        "POST", "/v1/admin/rollouts", {"name": "demo", "version": 2, "device_class": "conflict"}
    )
    assert again.status_code == 409
    args = ["--server", server.url, "--token", ADMIN, "--json"]
    assert main(["rollout", "abort", str(first["id"]), *args]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "aborted"
    assert main(["rollout", "start", "demo@2", "--device-class", "conflict", *args]) == 0
    started = json.loads(capsys.readouterr().out)["rollouts"][0]
    assert main(["rollout", "pause", str(started["id"]), *args]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "paused"
    assert main(["rollout", "abort", str(started["id"]), *args]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "aborted"


@pytest.mark.parametrize(
    "argv, says",
    [
        (["demo@9"], "not in the repository"),
        (["demo@2", "--device-class", "v1-only"], "no variant for class"),
        (["demo@2", "--gate", "failure_rate<<1%"], "does not parse"),
        (["demo@2", "--waves", "50%,10%"], "waves must be increasing"),
        (["nameless"], "NAME@VERSION"),
    ],
)
def test_bad_rollout_is_one_line_and_exit_2(server, capsys, monkeypatch, argv, says):
    monkeypatch.setenv("EDGEFORGE_ADMIN_TOKEN", ADMIN)
    assert main(["rollout", "start", *argv, "--server", server.url]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_paused_rollout_tells_no_new_device_and_resumes(server):
    devices = _fleet(server, "pause", 20)
    rollout = _start(server, "pause", waves="25%,100%", gate="failure_rate<50%", min_devices=3)
    assert (
        server.admin("POST", f"/v1/admin/rollouts/{rollout['id']}/pause").json()["state"]
        == "paused"
    )
    for device in devices:
        device.follow(server)
    assert not any(_took(d, 2) for d in devices)
    assert (
        server.admin("POST", f"/v1/admin/rollouts/{rollout['id']}/resume").json()["state"]
        == "running"
    )
    status = _drive(server, devices, rollout["id"], lambda s: s["state"] == "completed")
    assert status["devices"]["success"] == 20


def test_devices_enrolling_mid_rollout_get_what_their_wave_says(server):
    _fleet(server, "late", 20)
    rollout = _start(server, "late", waves="30%,100%", gate="failure_rate<50%", min_devices=50)
    late = _fleet(server, "late", 20, prefix="-late")
    reach = _status(server, rollout["id"])["reach"]
    for device in late:
        directive = device.checkin(server)
        place = (bucket_of(device.device_id) - rollout["offset"]) % 1
        assert (directive["action"] == "install") == (place < reach), device.device_id
    server.admin("POST", f"/v1/admin/rollouts/{rollout['id']}/abort")


def test_restarted_server_resumes_the_rollout(repo, db_url):
    """The server is killed (kill -9) mid-rollout; a new one on the same database carries on."""
    first = Server(repo, db_url).start()
    try:
        devices = _fleet(first, "restart", 30)
        rollout = _start(first, "restart", waves="20%,100%", gate="failure_rate<50%", min_devices=5)
        status = _drive(first, devices, rollout["id"], lambda s: s["devices"]["success"] >= 5)
        told_before = status["devices"]["told"]
        assert status["state"] == "running" and told_before < 30
    finally:
        first.kill()
    second = Server(repo, db_url).start()
    try:
        status = _status(second, rollout["id"])
        assert status["state"] == "running" and status["devices"]["told"] == told_before
        status = _drive(second, devices, rollout["id"], lambda s: s["state"] == "completed")
        assert status["devices"]["success"] == 30
        for device in devices:
            device.follow(second)
        assert all(d.active == ("demo", 2) for d in devices)
    finally:
        second.stop()
