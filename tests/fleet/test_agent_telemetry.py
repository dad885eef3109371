"""Agent-side telemetry against the real fleet server (`edgeforge serve`, SQLite, real HTTP):
the application's predict() summarises into spooled windows; the daemon (which never imports
numpy) uploads them with its next report and forgets them once the server took them; no byte of
an input reaches the server."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from fleet_agent_support import NAME, publish
from server_support import ENROLL, Server

from edgeforge.fleet import Agent
from edgeforge.fleet.telemetry import PAYLOAD_SIZE, decode_window

CLASS = "cls-tel"
# A recognisable input: the marker values sit inside the clip ranges, so only the absence of
# raw inputs (not clipping) keeps them off the wire.
MARKER = np.array([0.1234567, -0.7654321, 0.3141592, 0.2718281, -0.1414213, 0.5772156,
                   -0.6931471, 0.4142135], dtype=np.float32).reshape(1, 8)  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A server and a device whose daemon installed and committed version 1."""
    from edgeforge.fleet.repository import Repository

    base = tmp_path_factory.mktemp("agent-telemetry")
    repo = Repository.init(base / "repo")
    publish(repo, base / "work", 1, CLASS)
    db = base / "fleet.db"
    server = Server(repo.path, f"sqlite:///{db}").start()
    daemon = Agent(
        base / "device",
        server=server.url,
        device_class=CLASS,
        device_id="tel-1",
        token=ENROLL,
        root=repo.path / "metadata" / "1.root.json",
        probe_count=2,
    )
    daemon.enrol()
    body = {"name": NAME, "version": 1, "device_class": CLASS, "waves": "100%", "min_devices": 1}
    assert server.admin("POST", "/v1/admin/rollouts", body).status_code == 201
    deadline = time.monotonic() + 60
    while (daemon.status().committed or {}).get("version") != 1:
        assert time.monotonic() < deadline, daemon.status()
        daemon.step()
    yield server, daemon, db
    server.stop()


def stored(db) -> tuple[list[dict], list[bytes]]:
    """What the server stored from devices: the windows (id, payload) in arrival order, and
    every stored row of the tables devices write to, as bytes."""
    with sqlite3.connect(db) as conn:
        bodies = [
            {"id": r[0], "payload": r[1]}
            for r in conn.execute("SELECT window_id, payload FROM fleet_windows ORDER BY rowid")
        ]
        rows = [
            repr(r).encode()
            for table in ("fleet_windows", "fleet_telemetry", "fleet_events", "fleet_devices")
            for r in conn.execute(f"SELECT * FROM {table}")
        ]
    return bodies, rows


def test_predict_window_is_uploaded_with_next_report_stored_and_acked(installed):
    _, daemon, db = installed
    app = Agent(daemon.state)  # the application process's handle on the same state folder
    for _ in range(20):
        app.predict({"x": MARKER})
    assert app.flush_telemetry() == 1
    spool = daemon.state / "telemetry" / "spool"
    assert len(list(spool.glob("*.win"))) == 1
    assert daemon._telemetry is None  # the daemon summarised nothing itself
    assert daemon.status().telemetry == {"spooled": 1, "bytes": PAYLOAD_SIZE}

    before, _ = stored(db)
    daemon.step()  # check-in, then the report carries the window
    assert list(spool.glob("*.win")) == []  # acked: the server answered 202
    assert daemon.status().telemetry == {"spooled": 0, "bytes": 0}
    bodies, _ = stored(db)
    new = bodies[len(before) :]
    assert len(new) == 1 and set(new[0]) == {"id", "payload"}
    summary = decode_window(new[0]["payload"])
    assert (summary.name, summary.version, summary.device_class) == (NAME, 1, CLASS)
    assert summary.counters["rows"] == summary.counters["calls"] == 20
    # the daemon's canary and health outcomes reached the application's window
    assert summary.counters["canary_pass"] == 1 and summary.counters["health_pass"] == 1
    assert summary.sketches["latency_ms"].n == 20


def _send_marked(installed) -> list[bytes]:
    """Two rounds of marked inputs (at two scales) through predict and the daemon's reports;
    returns every stored byte string (decoded payloads, telemetry bodies, event rows)."""
    _, daemon, db = installed
    app = Agent(daemon.state)
    sizes = []
    for scale in (1.0, 1000.0):  # payload sizes do not depend on the inputs
        for _ in range(7):
            app.predict({"x": MARKER * scale})
        app.flush_telemetry()
        sizes += [p.stat().st_size for p in (daemon.state / "telemetry" / "spool").glob("*.win")]
        daemon.step()
    assert sizes and set(sizes) == {PAYLOAD_SIZE}
    bodies, rows = stored(db)
    wire = [base64.b64decode(b["payload"]) for b in bodies] + rows
    return wire + [json.dumps(b).encode() for b in bodies]


def test_marked_input_tensor_never_reaches_the_server(installed):
    wire = _send_marked(installed)
    needles = [MARKER.tobytes(), (MARKER * 1000).tobytes(), MARKER.astype(np.float64).tobytes()]
    for blob in wire:
        for needle in needles:
            assert needle not in blob


def test_no_single_input_value_reaches_the_server(installed):
    """A small window's quantile sketch keeps every value it saw: a tabular input is therefore
    summarised by each row's mean and spread, never by a feature's own value."""
    wire = _send_marked(installed)
    needles = []
    for value in MARKER.ravel():
        needles += [np.float32(value).tobytes(), np.float64(value).tobytes()]
        needles += [f"{float(value):.6f}".encode()]
    for blob in wire:
        for needle in needles:
            assert needle not in blob, needle


def test_report_refused_keeps_windows_spooled(installed, tmp_path):
    _, daemon, _ = installed
    app = Agent(daemon.state)
    app.predict({"x": MARKER})
    app.flush_telemetry()
    spool = daemon.state / "telemetry" / "spool"
    pending = sorted(spool.glob("*.win"))
    assert pending
    offline = Agent(daemon.state)
    offline._client = lambda device: __import__(  # a server that went away
        "edgeforge.fleet.agent._http", fromlist=["ServerClient"]
    ).ServerClient("http://127.0.0.1:9")
    assert offline.step()["online"] is False
    assert sorted(spool.glob("*.win")) == pending
    daemon.step()
    assert list(spool.glob("*.win")) == []


def test_daemon_side_imports_neither_numpy_nor_datasketches():
    code = (
        "import sys; import edgeforge.fleet.agent, edgeforge.fleet.agent._uploads;"
        "from edgeforge.fleet.agent._agent import Agent;"
        "bad = [m for m in ('numpy', 'datasketches', 'torch') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_telemetry_that_cannot_write_never_breaks_predict(installed, tmp_path, capsys):
    import shutil

    _, daemon, _ = installed
    state = tmp_path / "device"
    shutil.copytree(daemon.state, state, ignore=shutil.ignore_patterns(".agent.lock"))
    shutil.rmtree(state / "telemetry", ignore_errors=True)
    (state / "telemetry").write_text("not a folder")  # mkdir of the spool fails
    app = Agent(state)
    for _ in range(3):
        assert app.predict({"x": MARKER})["y"].shape == (1, 8)
    assert app.flush_telemetry() == 0
    assert "telemetry off in this process" in capsys.readouterr().err


def test_a_window_the_server_refuses_never_blocks_the_reports(installed):
    """A spooled file that does not decode (the server answers 422 to its report) is dropped
    after being tried alone; the events and the good windows behind it still arrive."""
    _, daemon, db = installed
    app = Agent(daemon.state)
    app.predict({"x": MARKER})
    app.flush_telemetry()
    spool = daemon.state / "telemetry" / "spool"
    (spool / f"{0:020d}-{'f' * 32}.win").write_bytes(b"EFTW not a window")  # sorts first
    daemon._event("error", None, None, False, "marker event")
    before, _ = stored(db)
    daemon.step()
    assert list(spool.glob("*.win")) == []
    bodies, _ = stored(db)
    assert len(bodies) == len(before) + 1  # the good window
    with sqlite3.connect(db) as conn:
        details = [r[0] for r in conn.execute("SELECT detail FROM fleet_events")]
    assert "marker event" in details
    assert any("telemetry window" in d and "refused" in d for d in details)
