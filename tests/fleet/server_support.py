"""Helpers for the fleet server's tests: a repository with releases, the real server in a
subprocess on a loopback port, and devices that speak the real protocol over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeforge.fleet import protocol

ADMIN = "admin-token-for-tests-0123456789"
ENROLL = "enrol-token-for-tests-0123456789"
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# one client for every request: a new httpx client per request costs ~50 ms (its TLS context)
HTTP = httpx.Client(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_repository(folder: Path, releases: dict[str, dict[int, list[str]]], **init: Any) -> Path:
    """A TUF repository holding `NAME/VERSION/CLASS/variant.json` for each release given."""
    from edgeforge.fleet.repository import Repository

    repo = Repository.init(folder / "repo", **init)
    files: dict[str, Path] = {}
    custom: dict[str, dict] = {}
    source = folder / "variants"
    source.mkdir()
    for name, versions in releases.items():
        for version, classes in versions.items():
            for device_class in classes:
                index = {
                    "name": name,
                    "version": version,
                    "device_class": device_class,
                    "files": [],
                }
                local = source / f"{name}-{version}-{device_class}.json"
                local.write_text(json.dumps(index))
                path = f"{name}/{version}/{device_class}/variant.json"
                files[path] = local
                custom[path] = {
                    "edgeforge": {"name": name, "version": version, "device_class": device_class}
                }
    with repo.lock():
        repo.publish(files, custom)
    return repo.path


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A PostgreSQL URL working in a fresh schema, dropped afterwards."""
    import uuid

    import psycopg

    from edgeforge.fleet.db import dispose

    schema = f"edgeforge_server_{uuid.uuid4().hex[:12]}"
    plain = POSTGRES.replace("+psycopg", "")
    with psycopg.connect(plain, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        dispose(url)
        with psycopg.connect(plain, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


class Server:
    """`edgeforge serve` in a subprocess; `start()` waits until it answers."""

    def __init__(self, repo: Path, db: str, *extra: str, env: dict[str, str] | None = None) -> None:
        self.repo, self.db, self.extra = repo, db, extra
        self.env = {"EDGEFORGE_ADMIN_TOKEN": ADMIN, "EDGEFORGE_ENROLL_TOKEN": ENROLL, **(env or {})}
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Server:
        self.port = free_port()
        env = {**os.environ, **self.env}
        for name, value in self.env.items():
            if value == "":
                env.pop(name, None)
        argv = ["serve", "--repo", str(self.repo), "--db", self.db, "--port", str(self.port)]
        argv += ["--gate-interval", "0.2", *self.extra]
        self.log = self.repo.parent / f"serve-{self.port}.log"
        code = f"from edgeforge.cli import main; raise SystemExit(main({argv!r}))"
        with open(self.log, "wb") as log:  # a file, not a pipe: a chatty server never blocks
            self.process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log.read_text()[-2000:]}")
            try:
                HTTP.get(f"{self.url}/repo/metadata/root.json", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("serve did not answer in time")

    def kill(self) -> None:
        """kill -9: no shutdown, no cleanup (what a crash or a power cut does)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def admin(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return HTTP.request(
            method,
            self.url + path,
            json=body,
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=30,
        )


@dataclass
class Device:
    """A device speaking the protocol: its own key, its committed release, its directives."""

    device_id: str
    device_class: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    active: tuple[str, int] | None = None
    director_key: bytes = b""
    seen: list[dict[str, Any]] = field(default_factory=list)
    etag: str | None = None

    def enrol(self, server: Server, token: str = ENROLL) -> httpx.Response:
        body = {
            "device_id": self.device_id,
            "device_class": self.device_class,
            "facts": {"cpu": "test"},
            "public_key": protocol.b64encode(protocol.public_key_bytes(self.key)),
            "token": token,
        }
        response = HTTP.post(f"{server.url}/v1/enrol", json=body)
        if response.status_code in (200, 201):
            self.director_key = protocol.b64decode(response.json()["director_key"])
        return response

    def signed(self, server: Server, path: str, body: bytes, **headers: str) -> httpx.Response:
        signature = protocol.sign_request(self.key, self.device_id, "POST", path, body)
        return HTTP.post(
            server.url + path,
            content=body,
            headers={**signature, "content-type": "application/json", **headers},
            timeout=30,
        )

    def checkin(self, server: Server, use_etag: bool = False) -> dict[str, Any] | None:
        """The verified directive (None on 304); raises on any other answer."""
        active = (
            None if self.active is None else {"name": self.active[0], "version": self.active[1]}
        )
        body = json.dumps({"active": active, "staged": None, "state": "idle"}).encode()
        extra = {"If-None-Match": self.etag} if use_etag and self.etag else {}
        response = self.signed(server, "/v1/checkin", body, **extra)
        if response.status_code == 304:
            return None
        assert response.status_code == 200, response.text
        self.etag = response.headers["etag"]
        directive = protocol.verify_directive(self.director_key, response.json())
        self.seen.append(directive)
        return directive

    def report(self, server: Server, events: list[dict[str, Any]]) -> httpx.Response:
        body = json.dumps({"events": events, "telemetry": []}).encode()
        return self.signed(server, "/v1/report", body)

    def follow(self, server: Server, *, canary_ok: bool = True, latency: float = 10.0) -> str:
        """One check-in, and what a healthy (or canary-failing) agent does about it."""
        directive = self.checkin(server)
        assert directive is not None
        name, version, action = directive["name"], directive["version"], directive["action"]
        now = time.time()
        if action == "install":
            ok = canary_ok
            events = [
                {"kind": "download", "name": name, "version": version, "ok": True, "at": now},
                {
                    "kind": "canary",
                    "name": name,
                    "version": version,
                    "ok": ok,
                    "at": now,
                    "detail": "" if ok else "output 3 off by 0.5",
                    "metrics": {},
                },
            ]
            if ok:
                events += [
                    {"kind": "activate", "name": name, "version": version, "ok": True, "at": now},
                    {
                        "kind": "health",
                        "name": name,
                        "version": version,
                        "ok": True,
                        "at": now,
                        "metrics": {"latency_p95_ms": latency},
                    },
                    {
                        "kind": "commit",
                        "name": name,
                        "version": version,
                        "ok": True,
                        "at": now,
                        "metrics": {"latency_p95_ms": latency},
                    },
                ]
                self.active = (name, version)
            assert self.report(server, events).status_code == 202
        elif action == "rollback" and self.active is not None and self.active[1] != version:
            self.active = (name, version) if version is not None else None
            self.report(
                server,
                [{"kind": "rollback", "name": name, "version": version, "ok": True, "at": now}],
            )
        return action
