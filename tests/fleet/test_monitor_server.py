"""The monitor wired into the fleet server, on SQLite and PostgreSQL, over real HTTP: windows
decoded on arrival (a broken one refuses the report), aggregates and drift verdicts on the admin
API, alerts as rows, nothing about fewer than `--min-reporters` devices, the telemetry gate
metrics, and a rollout aborted on telemetry alone (its new version is slower on the devices)."""

from __future__ import annotations

import json
import time

import pytest
from monitor_support import publish_reference, send, windows
from server_support import Device, Server, make_repository, postgres_schema

from edgeforge.cli import main
from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.db import sqlite_url
from edgeforge.fleet.server.gates import GateSample, evaluate, parse_gate

MIN = 5  # --min-reporters of these servers


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"monitor-{request.param}")
    repo = make_repository(folder, {"cam": {1: ["pi"], 2: ["pi"]}, "kws": {1: ["mcu"]}})
    publish_reference(repo, "kws", 1, "mcu")
    if request.param == "sqlite":
        url = sqlite_url(folder / "fleet.db")
        running = Server(repo, url, "--min-reporters", str(MIN)).start()
        yield running
        running.stop()
    else:
        with postgres_schema() as url:
            running = Server(repo, url, "--min-reporters", str(MIN)).start()
            yield running
            running.stop()


def _enrol(server: Server, prefix: str, device_class: str, count: int) -> list[Device]:
    devices = [Device(f"{prefix}-{i:02d}", device_class) for i in range(count)]
    for d in devices:
        assert d.enrol(server).status_code == 201
    return devices


# ------------------------------------------------------------------ gates (no server)


def test_telemetry_gate_metrics_parse_and_stay_undecided_below_min_reporters():
    gate = parse_gate("latency_p95<+10%,confidence_p50>-5%,drift_psi<0.2")
    assert [str(c) for c in gate] == ["latency_p95<+10%", "confidence_p50>-5%", "drift_psi<0.2"]
    sample = GateSample(20, 0, 0, 0, 0, [])
    few = {"value": None, "reporters": 3, "enough": False}
    sample.telemetry = dict.fromkeys(("latency_p95", "confidence_p50", "drift_psi"), few)
    verdict = evaluate(gate, sample, min_devices=10, confidence=0.95)
    assert verdict.status == "unsure"  # undecided, not passed
    assert {c["result"] for c in verdict.conditions} == {"unsure"}
    sample.telemetry = {
        "latency_p95": {"value": 0.02, "reporters": 12, "enough": True},
        "confidence_p50": {"value": -0.01, "reporters": 12, "enough": True},
        "drift_psi": {"value": 0.05, "reporters": 12, "enough": True},
    }
    assert evaluate(gate, sample, min_devices=10, confidence=0.95).status == "passed"
    sample.telemetry["confidence_p50"]["value"] = -0.2
    verdict = evaluate(gate, sample, min_devices=10, confidence=0.95)
    assert verdict.status == "failed" and "confidence_p50" in verdict.reason
    for bad in ("drift_psi<20%", "confidence_p50<5%", "drift_psi>0.1"):
        with pytest.raises(EdgeforgeError, match=r"drift_psi|confidence_p50"):
            parse_gate(bad)


# ------------------------------------------------------------------ server


def test_a_broken_window_refuses_the_whole_report(server, tmp_path):
    (device,) = _enrol(server, f"broken-{tmp_path.name[-6:]}", "mcu", 1)
    good = windows(tmp_path, device, "kws", 1, latency_ms=5, seed=1)
    for bad in ([{"id": "x", "payload": "not base64!"}], [{"payload": "AAAA"}], [7]):
        response = send(server, device, [], good + bad)
        assert response.status_code == 422, response.text
    monitor = server.admin("GET", "/v1/admin/monitor?model=kws").json()
    assert all(v["reporters"] == 0 for v in monitor["versions"]) or not monitor["versions"]


def test_fewer_than_min_reporters_show_nothing_then_drift_raises_one_alert(server, tmp_path):
    devices = _enrol(server, "shift", "mcu", MIN + 2)
    first, rest = devices[: MIN - 1], devices[MIN - 1 :]
    for i, d in enumerate(first):
        entries = windows(tmp_path, d, "kws", 1, latency_ms=7, seed=10 + i, sharp=0.3, shift=2.0)
        assert send(server, d, [], entries).status_code == 202
        assert send(server, d, [], entries).status_code == 202  # resent: counted once
    # privacy: fewer than MIN devices: no figure, no chart, no day verdict, no alert
    monitor = server.admin("GET", "/v1/admin/monitor?model=kws").json()
    (row,) = monitor["versions"]
    assert row["reporters"] == MIN - 1 and not row["enough_reporters"]
    figures = {k: v for k, v in row.items() if k not in ("name", "version", "device_class")}
    for key in ("latency_p50", "latency_p95", "confidence_p50", "drift_psi", "rows", "windows"):
        assert figures[key] is None, key
    assert all(d["drift"] == "insufficient" and d["drift_psi"] is None for d in row["days"])
    assert server.admin("GET", "/v1/admin/alerts").json()["alerts"] == []
    page = server.admin("GET", "/dashboard/monitor?model=kws").text
    assert "Fewer than 5 devices have reported" in page and "<svg" not in page
    # the devices beyond the minimum: figures, a drift verdict against the release reference
    for i, d in enumerate(rest):
        entries = windows(tmp_path, d, "kws", 1, latency_ms=7, seed=50 + i, sharp=0.3, shift=2.0)
        assert send(server, d, [], entries).status_code == 202
    (row,) = server.admin("GET", "/v1/admin/monitor?model=kws").json()["versions"]
    assert row["reporters"] == MIN + 2 and row["latency_p95"] > 5
    assert row["drift"] == "drift" and row["drift_psi"] > 0.2
    alerts = server.admin("GET", "/v1/admin/alerts").json()["alerts"]
    again = server.admin("GET", "/v1/admin/alerts").json()["alerts"]
    assert [a["kind"] for a in alerts] == ["drift"] and len(again) == 1
    assert alerts[0]["name"] == "kws" and alerts[0]["device_class"] == "mcu"
    # the CLI reads the same
    assert _monitor_cli_agrees(server)


def _monitor_cli_agrees(server: Server) -> bool:
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(
            [
                "monitor",
                "--server",
                server.url,
                "--model",
                "kws",
                "--json",
                "--token",
                server.env["EDGEFORGE_ADMIN_TOKEN"],
            ]
        )
    data = json.loads(out.getvalue())
    assert code == 0 and data["versions"][0]["drift"] == "drift" and data["alerts"]
    out = io.StringIO()
    with redirect_stdout(out):
        main(["monitor", "--server", server.url, "--token", server.env["EDGEFORGE_ADMIN_TOKEN"]])
    assert "kws@1" in out.getvalue() and "alert drift" in out.getvalue()
    return True


def test_a_rollout_slower_on_the_devices_is_aborted_from_telemetry_alone(server, tmp_path):
    devices = _enrol(server, "slow", "pi", 12)
    for i, d in enumerate(devices):  # version 1 runs everywhere, at ~10 ms
        d.active = ("cam", 1)
        assert d.checkin(server)["action"] == "stay"
        entries = windows(tmp_path, d, "cam", 1, latency_ms=10, seed=100 + i)
        assert send(server, d, [], entries).status_code == 202
    started = server.admin(
        "POST",
        "/v1/admin/rollouts",
        {
            "name": "cam",
            "version": 2,
            "device_class": "pi",
            "waves": "50%,100%",
            "gate": "failure_rate<50%,latency_p95<+10%",
            "min_devices": MIN,
            "report_timeout_s": 600,
            "confidence": 0.95,
        },
    )
    assert started.status_code == 201, started.text
    rollout = started.json()["rollouts"][0]["id"]
    installed = []
    deadline = time.monotonic() + 60
    state = "running"
    while state == "running" and time.monotonic() < deadline:
        for i, d in enumerate(devices):
            directive = d.checkin(server)
            if directive["action"] == "install" and d.active != ("cam", 2):
                d.active = ("cam", 2)
                installed.append(d)
                now = time.time()
                # events carry no latency: the gate can only learn it from telemetry
                events = [
                    {"kind": k, "name": "cam", "version": 2, "ok": True, "at": now}
                    for k in ("download", "canary", "activate", "health", "commit")
                ]
                entries = windows(tmp_path, d, "cam", 2, latency_ms=25, seed=200 + i)
                assert send(server, d, events, entries).status_code == 202
        time.sleep(0.3)
        state = server.admin("GET", f"/v1/admin/rollouts/{rollout}").json()["state"]
    status = server.admin("GET", f"/v1/admin/rollouts/{rollout}").json()
    assert status["state"] == "aborted", status
    assert "latency_p95" in status["reason"] and "telemetry" in status["reason"]
    assert MIN <= len(installed) < len(devices)  # the first wave only
    for d in installed:
        directive = d.checkin(server)
        assert directive["action"] == "rollback" and directive["version"] == 1
    kinds = {a["kind"] for a in server.admin("GET", "/v1/admin/alerts").json()["alerts"]}
    assert "rollout-aborted" in kinds
