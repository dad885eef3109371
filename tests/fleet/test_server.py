"""The fleet server over real HTTP (uvicorn in a subprocess) on SQLite and PostgreSQL: enrolment,
signed check-ins (replays refused, 304 when unchanged), reports, the repository with Range and
ETag, the admin token, body limits, and devices that cannot touch each other's rows."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import timedelta

import pytest
from server_support import ADMIN, ENROLL, HTTP, Device, Server, make_repository, postgres_schema

from edgeforge.fleet import protocol
from edgeforge.fleet.db import sqlite_url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"server-{request.param}")
    repo = make_repository(folder, {"demo": {1: ["cls-a"], 2: ["cls-a"]}})
    if request.param == "sqlite":
        running = Server(repo, sqlite_url(folder / "fleet.db")).start()
        yield running
        running.stop()
    else:
        with postgres_schema() as url:
            running = Server(repo, url).start()
            yield running
            running.stop()


def _device(name: str) -> Device:
    return Device(f"{name}-{time.monotonic_ns()}", "cls-a")


def test_enrol_is_idempotent_for_the_same_key_and_refuses_another(server):
    device = _device("enrol")
    first = device.enrol(server)
    assert first.status_code == 201
    assert first.json()["repo"] == "/repo"
    assert len(protocol.b64decode(first.json()["director_key"])) == 32
    assert device.enrol(server).status_code == 200
    impostor = Device(device.device_id, "cls-a")
    assert impostor.enrol(server).status_code == 409


def test_enrol_refuses_a_wrong_token_and_a_malformed_key(server):
    assert _device("token").enrol(server, token="wrong").status_code == 401
    body = {"device_id": "x1", "device_class": "cls-a", "public_key": "abc=", "token": ENROLL}
    assert HTTP.post(f"{server.url}/v1/enrol", json=body).status_code == 422
    body = {**body, "device_id": "../etc", "public_key": protocol.b64encode(b"k" * 32)}
    assert HTTP.post(f"{server.url}/v1/enrol", json=body).status_code == 422


def test_checkin_answers_a_directive_signed_by_the_director_key_and_304_when_unchanged(server):
    device = _device("etag")
    device.enrol(server)
    directive = device.checkin(server)
    assert directive["device_id"] == device.device_id
    assert directive["action"] == "stay"
    assert device.checkin(server, use_etag=True) is None  # unchanged: 304
    device.active = ("demo", 1)
    changed = device.checkin(server, use_etag=True)  # state changed: a new directive
    assert changed is not None and (changed["name"], changed["version"]) == ("demo", 1)


def test_replayed_request_is_refused(server):
    """The attacker records a device's signed check-in and sends it again."""
    device = _device("replay")
    device.enrol(server)
    body = json.dumps({"active": None, "staged": None, "state": "idle"}).encode()
    headers = protocol.sign_request(device.key, device.device_id, "POST", "/v1/checkin", body)
    first = HTTP.post(f"{server.url}/v1/checkin", content=body, headers=headers)
    again = HTTP.post(f"{server.url}/v1/checkin", content=body, headers=headers)
    assert first.status_code == 200
    assert again.status_code == 401 and "replay" in again.json()["error"]


def test_stale_timestamp_is_refused(server):
    """The attacker sends a request signed long ago (a nonce the server has since forgotten)."""
    device = _device("stale")
    device.enrol(server)
    body = b'{"active": null, "staged": null, "state": "idle"}'
    old = protocol.sign_request(
        device.key, device.device_id, "POST", "/v1/checkin", body, now=time.time() - 3600
    )
    assert HTTP.post(f"{server.url}/v1/checkin", content=body, headers=old).status_code == 401


def test_tampered_body_and_unknown_device_are_refused(server):
    """The attacker changes a signed body in flight, or signs as a device that never enrolled."""
    device = _device("tamper")
    device.enrol(server)
    body = b'{"active": null, "staged": null, "state": "idle"}'
    headers = protocol.sign_request(device.key, device.device_id, "POST", "/v1/checkin", body)
    forged = body.replace(b"idle", b"staged")
    assert HTTP.post(f"{server.url}/v1/checkin", content=forged, headers=headers).status_code == 401
    stranger = _device("stranger")
    headers = protocol.sign_request(stranger.key, stranger.device_id, "POST", "/v1/checkin", body)
    assert HTTP.post(f"{server.url}/v1/checkin", content=body, headers=headers).status_code == 401


def test_a_device_cannot_read_or_write_another_devices_rows(server):
    """The attacker holds device A's key and tries to act as device B: check in as B (to read
    B's directive or overwrite B's state) and report for B."""
    a, b = _device("victim-a"), _device("victim-b")
    a.enrol(server)
    b.enrol(server)
    b.active = ("demo", 1)
    b.checkin(server)
    body = json.dumps(
        {"active": {"name": "demo", "version": 99}, "staged": None, "state": "x"}
    ).encode()
    # A's key, B's id: the signature does not verify with B's key
    as_b = protocol.sign_request(a.key, b.device_id, "POST", "/v1/checkin", body)
    assert HTTP.post(f"{server.url}/v1/checkin", content=body, headers=as_b).status_code == 401
    report = json.dumps(
        {"events": [{"kind": "commit", "name": "demo", "version": 99, "ok": True}]}
    ).encode()
    as_b = protocol.sign_request(a.key, b.device_id, "POST", "/v1/report", report)
    assert HTTP.post(f"{server.url}/v1/report", content=report, headers=as_b).status_code == 401
    # A's own signed request with B's id swapped into the header after signing
    mine = protocol.sign_request(a.key, a.device_id, "POST", "/v1/checkin", body)
    mine[protocol.HEADER_DEVICE] = b.device_id
    assert HTTP.post(f"{server.url}/v1/checkin", content=body, headers=mine).status_code == 401
    # A's legitimate check-in touches only A's row
    a.active = ("demo", 2)
    a.checkin(server)
    rows = {d["device_id"]: d for d in server.admin("GET", "/v1/admin/devices").json()["devices"]}
    assert rows[b.device_id]["active"] == {"name": "demo", "version": 1}
    assert rows[b.device_id]["state"] == "idle"
    assert rows[a.device_id]["active"] == {"name": "demo", "version": 2}
    # the directive A gets names A, never B
    assert all(d["device_id"] == a.device_id for d in a.seen)


def test_report_is_accepted_and_malformed_events_are_refused(server):
    device = _device("report")
    device.enrol(server)
    ok = device.report(
        server, [{"kind": "health", "name": "demo", "version": 1, "ok": True, "metrics": {}}]
    )
    assert ok.status_code == 202 and ok.json() == {"accepted": 1}
    assert device.report(server, [{"kind": "reboot", "ok": True}]).status_code == 422
    assert device.report(server, [{"kind": "health", "ok": "yes"}]).status_code == 422


def test_oversized_bodies_are_refused_with_413(server):
    device = _device("big")
    device.enrol(server)
    big = json.dumps({"active": None, "staged": None, "state": "x" * 20000}).encode()
    assert device.signed(server, "/v1/checkin", big).status_code == 413
    huge = json.dumps({"events": [], "telemetry": ["x" * 400_000]}).encode()
    assert device.signed(server, "/v1/report", huge).status_code == 413
    # a body streamed without Content-Length is cut off at the limit too
    chunks = (b"x" * 4096 for _ in range(10))
    response = HTTP.post(f"{server.url}/v1/enrol", content=chunks)
    assert response.status_code == 413


def test_repository_is_served_with_etag_and_range(server):
    url = f"{server.url}/repo/metadata/1.root.json"
    full = HTTP.get(url)
    assert full.status_code == 200 and full.headers["etag"]
    assert HTTP.get(url, headers={"If-None-Match": full.headers["etag"]}).status_code == 304
    part = HTTP.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == full.content[10:20]
    targets = [p for p in (server.repo / "targets").rglob("*.json")]
    relative = targets[0].relative_to(server.repo / "targets").as_posix()
    served = HTTP.get(f"{server.url}/repo/targets/{relative}")
    assert served.status_code == 200 and served.content == targets[0].read_bytes()


def test_nothing_outside_metadata_and_targets_is_served(server):
    """The attacker asks for the registry database and the keys by path traversal."""
    for path in (
        "/repo/targets/../registry.db",
        "/repo/targets/%2e%2e/registry.db",
        "/repo/targets/..%2f..%2frepo-keys/online/director",
        "/repo/metadata/..%2frepository.json",
        "/repo/registry.db",
    ):
        assert HTTP.get(server.url + path).status_code == 404, path


def test_admin_api_needs_the_token(server):
    assert HTTP.get(f"{server.url}/v1/admin/devices").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert HTTP.get(f"{server.url}/v1/admin/rollouts", headers=wrong).status_code == 401
    right = {"Authorization": f"Bearer {ADMIN}"}
    assert HTTP.get(f"{server.url}/v1/admin/rollouts", headers=right).status_code == 200


def test_serve_refuses_a_repository_with_a_private_key_in_what_it_serves(tmp_path, capsys):
    from server_support import make_repository as make

    from edgeforge.cli import main

    repo = make(tmp_path, {"demo": {1: ["cls-a"]}})
    pem = next((tmp_path / "repo-keys").rglob("*.pem"))
    shutil.copy(pem, repo / "targets" / "oops.txt")
    code = main(
        ["serve", "--repo", str(repo), "--db", sqlite_url(tmp_path / "f.db"), "--port", "1"]
    )
    assert code == 2
    assert "private key" in capsys.readouterr().err


def test_tokens_are_generated_into_the_servers_folder_with_mode_0600(tmp_path):
    repo = make_repository(tmp_path, {"demo": {1: ["cls-a"]}})
    server = Server(
        repo,
        sqlite_url(tmp_path / "f.db"),
        env={"EDGEFORGE_ADMIN_TOKEN": "", "EDGEFORGE_ENROLL_TOKEN": ""},
    )
    server.start()
    try:
        token_file = tmp_path / "repo-server" / "admin-token"
        assert os.stat(token_file).st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        answer = HTTP.get(
            f"{server.url}/v1/admin/devices", headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 200
        assert os.stat(tmp_path / "repo-server" / "enroll-token").st_mode & 0o777 == 0o600
    finally:
        server.stop()


def test_timestamp_is_resigned_before_it_expires(tmp_path):
    repo = make_repository(
        tmp_path, {"demo": {1: ["cls-a"]}}, expiry={"timestamp": timedelta(hours=1)}
    )
    before = json.loads((repo / "metadata" / "timestamp.json").read_text())["signed"]["version"]
    server = Server(
        repo, sqlite_url(tmp_path / "f.db"), "--resign-within", "2h", "--resign-interval", "0.2s"
    )
    server.start()
    try:
        deadline = time.monotonic() + 20
        version = before
        while version == before and time.monotonic() < deadline:
            time.sleep(0.2)
            version = HTTP.get(f"{server.url}/repo/metadata/timestamp.json").json()["signed"][
                "version"
            ]
        assert version > before
    finally:
        server.stop()


def test_two_workers_share_one_postgresql_and_refuse_a_replay_across_them(tmp_path):
    """The attacker replays a check-in on a fresh connection, which may reach the other worker:
    the nonce lives in the database, so every worker refuses it."""
    import httpx

    repo = make_repository(tmp_path, {"demo": {1: ["cls-a"]}})
    with postgres_schema() as url:
        server = Server(repo, url, "--workers", "2").start()
        try:
            device = _device("workers")
            assert device.enrol(server).status_code == 201
            body = b'{"active": null, "staged": null, "state": "idle"}'
            codes = []
            for _ in range(6):
                headers = protocol.sign_request(
                    device.key, device.device_id, "POST", "/v1/checkin", body
                )
                with httpx.Client() as fresh:  # a new connection each time: either worker
                    first = fresh.post(f"{server.url}/v1/checkin", content=body, headers=headers)
                with httpx.Client() as fresh:
                    again = fresh.post(f"{server.url}/v1/checkin", content=body, headers=headers)
                codes.append((first.status_code, again.status_code))
            assert codes == [(200, 401)] * 6
        finally:
            server.stop()
