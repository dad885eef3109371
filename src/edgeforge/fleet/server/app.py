"""The fleet server: the device API, the TUF repository over HTTP, and the admin API.

Invariants:

- No state lives in the process: devices, nonces, rollouts and cached directives are rows in
  the database, so any number of workers and servers share one PostgreSQL (the background
  loops are safe to run in each: rollout moves are conditional updates, the timestamp is
  re-signed under the repository's lock and only when it nears expiry). The one cache, of
  device public keys, is a hint: the check-in statement records a nonce only where the row
  still holds the key the signature was verified with.
- A device request is accepted only with a valid signature by the key the device enrolled
  with, a timestamp within `max_skew_s`, and a nonce the database has not seen from it; the
  device id is the one the signature names, and every query a device request makes is keyed
  by it: a device can never read or write another device's rows.
- Every request body has a size limit (413 beyond it), checked before it is read in full.
- Only `DIR/metadata/` and `DIR/targets/` are served, only regular files inside them (a
  symlink out is refused), and the server refuses to start when either holds a private key.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet import protocol
from edgeforge.fleet.server import monitoring, rollouts
from edgeforge.fleet.server.models import Device, DeviceEvent, Nonce, Rollout, TelemetryWindow

__all__ = ["ServerConfig", "create_app", "served_private_keys"]

log = logging.getLogger("edgeforge.fleet.server")

D = Device.__table__
N = Nonce.__table__
E = DeviceEvent.__table__
W = TelemetryWindow.__table__
R = Rollout.__table__

# Body limits (bytes) by path prefix; the protocol's limits for the device endpoints.
BODY_LIMITS: dict[str, int] = {
    **protocol.BODY_LIMITS,
    "/v1/admin": 64 * 1024,
}
DEFAULT_BODY_LIMIT = 16 * 1024
MAX_EVENTS = 1000
LAST_SEEN_RESOLUTION_S = 60.0
CHECKIN_THREADS = 16  # per process; past the fast statement's 8 connections they wait for one
KEY_CACHE_SIZE = 100_000  # loaded device keys kept per process (a bound, not a working set)
_CLASS = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_METADATA = re.compile(r"^[A-Za-z0-9._-]{1,128}\.json$")


@dataclass
class ServerConfig:
    """What one server process needs; the same for every worker and server of a fleet."""

    repo: Path
    db: str
    admin_token: str
    enroll_token: str
    keys: Path | None = None
    max_skew_s: float = protocol.MAX_SKEW_S
    gate_interval_s: float = 5.0
    resign_interval_s: float = 300.0
    resign_within: timedelta = field(default_factory=lambda: timedelta(hours=12))
    background: bool = True
    min_reporters: int = 10
    monitor_interval_s: float = 60.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "repo": str(self.repo),
                "db": self.db,
                "admin_token": self.admin_token,
                "enroll_token": self.enroll_token,
                "keys": None if self.keys is None else str(self.keys),
                "max_skew_s": self.max_skew_s,
                "gate_interval_s": self.gate_interval_s,
                "resign_interval_s": self.resign_interval_s,
                "resign_within_s": self.resign_within.total_seconds(),
                "background": self.background,
                "min_reporters": self.min_reporters,
                "monitor_interval_s": self.monitor_interval_s,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        data = json.loads(text)
        return cls(
            repo=Path(data["repo"]),
            db=data["db"],
            admin_token=data["admin_token"],
            enroll_token=data["enroll_token"],
            keys=None if data.get("keys") is None else Path(data["keys"]),
            max_skew_s=data["max_skew_s"],
            gate_interval_s=data["gate_interval_s"],
            resign_interval_s=data["resign_interval_s"],
            resign_within=timedelta(seconds=data["resign_within_s"]),
            background=data["background"],
            min_reporters=int(data.get("min_reporters", 10)),
            monitor_interval_s=float(data.get("monitor_interval_s", 60.0)),
        )


def served_private_keys(repo: Path, keys: Path | None) -> list[Path]:
    """Files under what the server would serve that hold a private key: a PEM private key, or
    a copy of any file of the keys folder. Empty when the repository is safe to serve."""
    from edgeforge.fleet.keys import private_keys_in

    found: set[Path] = set()
    served = [repo / "metadata", repo / "targets"]
    for folder in served:
        if folder.is_dir():
            found.update(private_keys_in(folder))
    if keys is not None and keys.is_dir():
        secrets: dict[int, set[str]] = {}
        for path in keys.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                secrets.setdefault(len(data), set()).add(hashlib.sha256(data).hexdigest())
        for folder in served:
            for path in folder.rglob("*") if folder.is_dir() else []:
                if path.is_file() and path.stat().st_size in secrets:
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    if digest in secrets[path.stat().st_size]:
                        found.add(path)
    return sorted(found)


def _reported(
    state: str | None, active: tuple[str, int] | None, staged: tuple[str, int] | None
) -> dict[str, Any]:
    return {
        "state": state,
        "active_name": active[0] if active else None,
        "active_version": active[1] if active else None,
        "staged_name": staged[0] if staged else None,
        "staged_version": staged[1] if staged else None,
    }


class _FastDevice(NamedTuple):
    """The device columns a check-in reads (the fast path's row)."""

    id: str
    device_class: str
    bucket: float
    last_seen: float | None
    state: str | None
    active_name: str | None
    active_version: int | None
    staged_name: str | None
    staged_version: int | None
    latency_p95: float | None
    rollout_id: int | None
    rollback_to: int | None
    rollback_pending: bool
    directive_key: str | None
    directive: str | None


class _WouldWrite(Exception):
    """`decide` wants the database (a rollout row to insert, a rollback version to look up)."""


class _NoWrites:
    """The connection `decide` gets on the fast path: any use means "do it in a transaction"."""

    def execute(self, *_args: Any, **_kwargs: Any) -> Any:
        raise _WouldWrite


_NO_WRITES = _NoWrites()

# The fast check-in's one statement (PostgreSQL; see FleetServer._fast_checkin). The nonce is
# inserted only when the device row holds the key the signature was verified with; last_seen
# moves only when over a minute old; the rollouts are those `rollouts.decide_rows` reads.
# Parameters: $1 the device id, $2 the key verified with, $3 the nonce, $4 now, $5 the
# last_seen older than which it moves.
_FAST_CHECKIN = f"""
WITH d AS (
    SELECT {", ".join(_FastDevice._fields)}
    FROM {D.name} WHERE id = $1::text AND public_key = $2::bytea
), n AS (
    INSERT INTO {N.name} (device_id, nonce, seen_at)
    SELECT id, $3::text, $4::float8 FROM d
    ON CONFLICT DO NOTHING
    RETURNING 1
), s AS (
    UPDATE {D.name} SET last_seen = $4::float8
    WHERE id = $1::text AND EXISTS (SELECT 1 FROM n)
      AND (last_seen IS NULL OR last_seen < $5::float8)
    RETURNING 1
)
SELECT d.*, EXISTS (SELECT 1 FROM n) AS fresh, (
    SELECT json_agg(json_build_array(
        r.id, r.name, r.version, r.device_class, r.state, r.reach, r."offset") ORDER BY r.id DESC)
    FROM (
        SELECT * FROM {R.name} r
        WHERE r.device_class = d.device_class
          AND (r.state IN ('running', 'paused', 'completed') OR r.id = d.rollout_id)
        ORDER BY r.id DESC LIMIT {rollouts.DECIDE_LIMIT}
    ) r
) AS rollouts
FROM d
"""


class _BodyLimit:
    """ASGI middleware: 413 for a body over its path's limit, by Content-Length or as it
    streams in (a client that lies about the length is cut off at the limit)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = next((v for k, v in BODY_LIMITS.items() if path.startswith(k)), DEFAULT_BODY_LIMIT)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                await _too_large(send, limit)
                return
        seen = 0
        too_large = False

        async def limited() -> dict:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(send, limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps({"error": f"request body over the limit of {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _Refused(400, "the body is not JSON") from None


def _release_ref(value: Any, what: str) -> tuple[str, int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("name"), str)
        or not isinstance(value.get("version"), int)
        or isinstance(value.get("version"), bool)
        or len(value["name"]) > 128
    ):
        raise _Refused(422, f"{what} must be null or {{'name': str, 'version': int}}")
    return value["name"], value["version"]


class FleetServer:
    """The application's state: configuration, engine and repository (all shared-nothing)."""

    def __init__(self, config: ServerConfig) -> None:
        from edgeforge.fleet import db
        from edgeforge.fleet.repository import Repository

        self.config = config
        self.repo = Repository.open(config.repo, config.keys)
        leaked = served_private_keys(self.repo.path, self.repo.keys)
        if leaked:
            raise EdgeforgeError(
                f"refusing to serve {self.repo.path}: {leaked[0]} holds a private key "
                f"({len(leaked)} such files); move keys out of metadata/ and targets/"
            )
        self.engine: Engine = db.engine(config.db)
        # Device requests run on their own engine: no pre-ping round trip per request and,
        # on PostgreSQL, asynchronous commit (a database crash may forget the last fraction
        # of a second of check-ins: nonces, last-seen times; a device re-sends its state at
        # its next check-in). Rollout state changes use `engine`, with synchronous commit.
        self.device_engine: Engine = _device_engine(config.db)
        dialect = self.device_engine.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert
        self._insert_nonce = upsert(N).on_conflict_do_nothing().returning(N.c.nonce)
        self._insert_window = upsert(W).on_conflict_do_nothing()
        self._fast_sql = _FAST_CHECKIN if dialect == "postgresql" else None
        self._fast_pool = _AutocommitPool(self.device_engine) if self._fast_sql else None
        self._keys: dict[str, tuple[bytes, Any]] = {}
        self._keys_lock = threading.Lock()
        self.references = monitoring.ReferenceCache(self.repo)
        self.director_key = protocol.b64encode(self.repo.director_public_key())

    # ------------------------------------------------------------------ devices

    def enrol(self, body: bytes, now: float) -> tuple[int, dict[str, Any]]:
        data = _json_body(body)
        if not isinstance(data, dict):
            raise _Refused(422, "the enrolment body must be an object")
        token = data.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(
            token.encode(), self.config.enroll_token.encode()
        ):
            raise _Refused(401, "the enrolment token is wrong")
        device_id, device_class = data.get("device_id"), data.get("device_class")
        facts = data.get("facts", {})
        if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id):
            raise _Refused(422, "device_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
        if not isinstance(device_class, str) or not _CLASS.match(device_class):
            raise _Refused(422, "device_class must be 1-64 characters of A-Z a-z 0-9 . _ -")
        if not isinstance(facts, dict):
            raise _Refused(422, "facts must be an object")
        try:
            public_key = protocol.b64decode(data.get("public_key"), what="public_key")  # type: ignore[arg-type]
        except protocol.ProtocolError as exc:
            raise _Refused(422, str(exc)) from None
        if len(public_key) != 32:
            raise _Refused(422, "public_key must be 32 raw Ed25519 bytes, base64-encoded")
        answer = {"device_id": device_id, "director_key": self.director_key, "repo": "/repo"}
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(D).values(
                        id=device_id,
                        device_class=device_class,
                        public_key=public_key,
                        facts=json.dumps(facts),
                        bucket=rollouts.bucket_of(device_id),
                        enrolled_at=now,
                        rollback_pending=False,
                    )
                )
            return 201, answer
        except IntegrityError:
            pass
        with self.engine.connect() as conn:
            known = conn.execute(
                select(D.c.public_key, D.c.device_class).where(D.c.id == device_id)
            ).one()
        if not hmac.compare_digest(bytes(known.public_key), public_key):
            raise _Refused(409, f"device {device_id} is enrolled with another key")
        if known.device_class != device_class:
            raise _Refused(409, f"device {device_id} is enrolled as class {known.device_class}")
        return 200, answer

    def _authenticate(
        self, conn: Any, headers: Any, method: str, path: str, body: bytes, now: float
    ) -> Any:
        """The device row of a signed request, once signature, clock and nonce check out."""
        try:
            device_id = protocol.request_device(headers)
        except protocol.ProtocolError as exc:
            raise _Refused(401, str(exc)) from None
        device = conn.execute(select(D).where(D.c.id == device_id)).one_or_none()
        if device is None:
            raise _Refused(401, f"device {device_id} is not enrolled")
        try:
            nonce = protocol.verify_request(
                bytes(device.public_key),
                headers,
                method,
                path,
                body,
                now=now,
                max_skew_s=self.config.max_skew_s,
            )
        except protocol.ProtocolError as exc:
            raise _Refused(401, str(exc)) from None
        # one statement, no savepoint: the primary key refuses a nonce seen before
        fresh = conn.execute(
            self._insert_nonce.values(device_id=device_id, nonce=nonce, seen_at=now)
        ).first()
        if fresh is None:
            raise _Refused(401, "the request's nonce was seen before (a replay)")
        return device

    def checkin(self, headers: Any, path: str, body: bytes, now: float) -> tuple[str, str]:
        data = _json_body(body)
        if not isinstance(data, dict):
            raise _Refused(422, "the check-in body must be an object")
        active = _release_ref(data.get("active"), "active")
        staged = _release_ref(data.get("staged"), "staged")
        state = data.get("state")
        if state is not None and (not isinstance(state, str) or len(state) > 32):
            raise _Refused(422, "state must be a short string")
        if self._fast_sql is not None:
            answered = self._fast_checkin(headers, path, body, now, active, staged, state)
            if answered is not None:
                return answered
        with self.device_engine.begin() as conn:
            device = self._authenticate(conn, headers, "POST", path, body, now)
            return self._settle(conn, device, active, staged, state, now)

    def _settle(
        self,
        conn: Any,
        device: Any,
        active: tuple[str, int] | None,
        staged: tuple[str, int] | None,
        state: str | None,
        now: float,
        rows: list[Any] | None = None,
    ) -> tuple[str, str]:
        """The signed directive and ETag of an authenticated check-in; writes what changed."""
        directive, updates = rollouts.decide(conn, device, active, staged, now, rows)
        key = hashlib.sha256(protocol.canonical(directive)).hexdigest()
        if key == device.directive_key and device.directive:
            signed = device.directive
        else:
            content = {**directive, "issued_at": now}
            signature = self.repo.director_sign(protocol.canonical(content))
            signed = json.dumps({"directive": content, "signature": protocol.b64encode(signature)})
            updates.update(directive_key=key, directive=signed)
        reported = _reported(state, active, staged)
        changed = any(getattr(device, k) != v for k, v in reported.items())
        # unchanged state writes nothing but the nonce; last_seen is kept to the minute
        if updates or changed or (device.last_seen or 0) < now - LAST_SEEN_RESOLUTION_S:
            updates.update(reported, last_seen=now)
            conn.execute(update(D).where(D.c.id == device.id).values(**updates))
        return signed, f'"{key[:32]}"'

    def _public_key(self, device_id: str) -> tuple[bytes, Any] | None:
        """The device's enrolled key (raw, loaded), from this process's bounded cache or the
        database; None when the device is not enrolled. A cached key is only a hint: the
        check-in statement records the nonce only where the row still holds that key."""
        cached = self._keys.get(device_id)
        if cached is not None:
            return cached
        raw = self.device_engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(f"SELECT public_key FROM {D.name} WHERE id = %s", (device_id,))
            row = cursor.fetchone()
            cursor.close()
            raw.commit()
        finally:
            raw.close()
        if row is None or len(row[0]) != 32:
            return None
        found = (bytes(row[0]), Ed25519PublicKey.from_public_bytes(bytes(row[0])))
        with self._keys_lock:
            if len(self._keys) >= KEY_CACHE_SIZE:
                self._keys.pop(next(iter(self._keys)))
            self._keys[device_id] = found
        return found

    def _fast_checkin(
        self,
        headers: Any,
        path: str,
        body: bytes,
        now: float,
        active: tuple[str, int] | None,
        staged: tuple[str, int] | None,
        state: str | None,
    ) -> tuple[str, str] | None:
        """A check-in in one round trip (PostgreSQL): the signature is verified with the cached
        key first, then one statement records the nonce (only where the device still has that
        key), moves last_seen when it is over a minute old, and returns the device row with the
        rollouts `decide` reads. Unchanged state ends there; anything to write (a directive to
        sign, a rollout row, reported state) is written in a transaction of its own after.
        None when the generic path must answer (a device not enrolled, or re-keyed)."""
        try:
            device_id = protocol.request_device(headers)
        except protocol.ProtocolError as exc:
            raise _Refused(401, str(exc)) from None
        known = self._public_key(device_id)
        if known is None:
            return None
        raw_key, public_key = known
        try:
            nonce = protocol.verify_request(
                public_key,
                headers,
                "POST",
                path,
                body,
                now=now,
                max_skew_s=self.config.max_skew_s,
            )
        except protocol.ProtocolError as exc:
            raise _Refused(401, str(exc)) from None
        assert self._fast_pool is not None
        with self._fast_pool.statement() as statement:
            row = statement.run(device_id, raw_key, nonce, now)
        if row is None:  # not enrolled any more, or under another key: ask the database afresh
            with self._keys_lock:
                self._keys.pop(device_id, None)
            return None
        device = _FastDevice(*row[: len(_FastDevice._fields)])
        fresh, rollout_rows = row[-2], row[-1]
        if not fresh:
            raise _Refused(401, "the request's nonce was seen before (a replay)")
        rows = [rollouts.RolloutRow(*r) for r in rollout_rows or ()]
        try:
            directive, updates = rollouts.decide(_NO_WRITES, device, active, staged, now, rows)
        except _WouldWrite:
            updates = {"write": True}
        if not updates:
            key = hashlib.sha256(protocol.canonical(directive)).hexdigest()
            reported = _reported(state, active, staged)
            if (
                key == device.directive_key
                and device.directive
                and all(getattr(device, k) == v for k, v in reported.items())
            ):
                return device.directive, f'"{key[:32]}"'
        with self.device_engine.begin() as conn:
            # the rollouts are read again here, in the transaction that writes
            return self._settle(conn, device, active, staged, state, now)

    def report(self, headers: Any, path: str, body: bytes, now: float) -> int:
        data = _json_body(body)
        if not isinstance(data, dict):
            raise _Refused(422, "the report body must be an object")
        events, telemetry = data.get("events", []), data.get("telemetry", [])
        if not isinstance(events, list) or not isinstance(telemetry, list):
            raise _Refused(422, "events and telemetry must be lists")
        if len(events) > MAX_EVENTS or len(telemetry) > MAX_EVENTS:
            raise _Refused(413, f"at most {MAX_EVENTS} events and telemetry items per report")
        clean = [self._event(e) for e in events]
        try:  # decoded before anything is written: a broken window refuses the whole report
            windows = monitoring.decode_entries(telemetry)
        except EdgeforgeError as exc:
            raise _Refused(422, str(exc)) from None
        with self.device_engine.begin() as conn:
            device = self._authenticate(conn, headers, "POST", path, body, now)
            if clean:
                conn.execute(
                    insert(E),
                    [
                        {
                            "device_id": device.id,
                            "received_at": now,
                            "at": e["at"],
                            "kind": e["kind"],
                            "name": e["name"],
                            "version": e["version"],
                            "ok": e["ok"],
                            "detail": e["detail"],
                            "metrics": json.dumps(e["metrics"]),
                        }
                        for e in clean
                    ],
                )
                rollouts.record_events(conn, device, clean, now)
            monitoring.store_windows(conn, self._insert_window, device, windows, now)
        return len(clean)

    @staticmethod
    def _event(event: Any) -> dict[str, Any]:
        if not isinstance(event, dict) or event.get("kind") not in protocol.EVENT_KINDS:
            raise _Refused(422, f"each event needs a kind among {', '.join(protocol.EVENT_KINDS)}")
        if not isinstance(event.get("ok"), bool):
            raise _Refused(422, "each event needs ok: true or false")
        name, version = event.get("name"), event.get("version")
        at, metrics = event.get("at"), event.get("metrics", {})
        if name is not None and (not isinstance(name, str) or len(name) > 128):
            raise _Refused(422, "an event's name must be a short string")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise _Refused(422, "an event's version must be an integer")
        if at is not None and not isinstance(at, (int, float)):
            raise _Refused(422, "an event's at must be unix seconds")
        if not isinstance(metrics, dict):
            raise _Refused(422, "an event's metrics must be an object")
        return {
            "kind": event["kind"],
            "ok": event["ok"],
            "name": name,
            "version": version,
            "at": at,
            "detail": str(event.get("detail", ""))[:2000],
            "metrics": metrics,
        }

    # ------------------------------------------------------------------ admin

    def devices(self, device_class: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        query = select(D).order_by(D.c.id).limit(limit).offset(offset)
        if device_class:
            query = query.where(D.c.device_class == device_class)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            {
                "device_id": r.id,
                "device_class": r.device_class,
                "facts": json.loads(r.facts or "{}"),
                "enrolled_at": r.enrolled_at,
                "last_seen": r.last_seen,
                "state": r.state,
                "active": None
                if r.active_name is None
                else {"name": r.active_name, "version": r.active_version},
                "staged": None
                if r.staged_name is None
                else {"name": r.staged_name, "version": r.staged_version},
                "rollout": r.rollout_id,
                "rollback_pending": r.rollback_pending,
            }
            for r in rows
        ]

    def start_rollout(self, body: bytes) -> list[dict[str, Any]]:
        data = _json_body(body)
        if not isinstance(data, dict):
            raise _Refused(422, "the rollout body must be an object")
        spec = rollouts.RolloutSpec.from_dict(data)
        releases = rollouts.releases_in(self.repo.targets())
        return rollouts.start(self.engine, spec, releases)

    # ------------------------------------------------------------------ loops

    def telemetry_figures(self, conn: Any, row: Any) -> dict[str, dict[str, Any]]:
        """The rollout gates' telemetry metrics (see `monitoring.rollout_telemetry`)."""
        return monitoring.rollout_telemetry(
            conn, row, self.references, min_reporters=self.config.min_reporters
        )

    def advance(self) -> list[dict[str, Any]]:
        return rollouts.advance(self.engine, telemetry=self.telemetry_figures)

    def rollout_status(self, rollout_id: int) -> dict[str, Any]:
        return rollouts.rollout_status(self.engine, rollout_id, telemetry=self.telemetry_figures)

    def monitor(self, model: str | None) -> dict[str, Any]:
        return monitoring.summary(
            self.engine, self.references, model=model, min_reporters=self.config.min_reporters
        )

    def alerts(self) -> list[dict[str, Any]]:
        monitoring.check_alerts(
            self.engine, self.references, min_reporters=self.config.min_reporters
        )
        return monitoring.alerts(self.engine)

    def purge_nonces(self, now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(N).where(N.c.seen_at < now - 2 * self.config.max_skew_s))

    def resign(self) -> bool:
        return self.repo.resign_timestamp(if_expiring_within=self.config.resign_within)


def _device_engine(url: str) -> Engine:
    from sqlalchemy import create_engine, event

    from edgeforge.fleet import db

    if url.startswith("sqlite"):
        return db.engine(url)
    made = create_engine(url, pool_size=10, max_overflow=10)

    @event.listens_for(made, "connect")
    def _asynchronous_commit(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("SET synchronous_commit = off")
        cursor.close()
        connection.commit()

    return made


class _FastStatement:
    """The fast check-in's statement, prepared on its own autocommit connection (no BEGIN,
    no rollback-on-return per check-in, as the engine's pool would do) and run through
    libpq (`psycopg.pq`, which lets go of the GIL while it waits), its row read by psycopg's
    own loaders: a cursor's layers above that (query conversion, parameter adaptation,
    result bookkeeping) cost the worker as much CPU as the rest of the round trip."""

    NAME = b"edgeforge_fast_checkin"

    def __init__(self, conninfo: str) -> None:
        import psycopg
        from psycopg import pq
        from psycopg.adapt import Transformer

        self.connection = psycopg.connect(conninfo, autocommit=True)
        self.connection.execute("SET synchronous_commit = off")  # as the device engine's
        self.pgconn = self.connection.pgconn
        self.transformer = Transformer(self.connection)
        self.succeeded = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
        self._check(self.pgconn.prepare(self.NAME, _FAST_CHECKIN.encode()))

    def _check(self, result: Any) -> None:
        if result.status not in self.succeeded:
            from psycopg import errors

            raise errors.error_from_result(result)

    def run(self, device_id: str, key: bytes, nonce: str, now: float) -> tuple | None:
        """The statement's one row (`_FastDevice`, fresh, rollouts), or None when no device
        `device_id` holds `key`."""
        stale = now - LAST_SEEN_RESOLUTION_S
        result = self.pgconn.exec_prepared(
            self.NAME,
            [device_id.encode(), key, nonce.encode(), repr(now).encode(), repr(stale).encode()],
            param_formats=[0, 1, 0, 0, 0],  # the key as raw bytes, the rest as text
        )
        self._check(result)
        if result.ntuples == 0:
            return None
        self.transformer.set_pgresult(result)
        return self.transformer.load_row(0, tuple)

    def close(self) -> None:
        self.connection.close()

    @property
    def usable(self) -> bool:
        return not (self.connection.closed or self.connection.broken)


class _AutocommitPool:
    """`_FastStatement`s for the fast check-in, each on its own connection. At most `size`
    open (a check-in waits for one past that): with the device engine's 20, a worker holds
    at most 28 of PostgreSQL's connections (100 by default, for every worker and server of
    the fleet)."""

    def __init__(self, engine: Engine, size: int = 8) -> None:
        import queue

        self.conninfo = engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self.idle: queue.SimpleQueue[_FastStatement] = queue.SimpleQueue()
        self.slots = threading.BoundedSemaphore(size)

    @contextlib.contextmanager
    def statement(self) -> Any:
        import queue

        with self.slots:
            try:
                statement = self.idle.get_nowait()
            except queue.Empty:
                statement = _FastStatement(self.conninfo)
            try:
                yield statement
            except BaseException:
                statement.close()  # its state is unknown: never handed out again
                raise
            if statement.usable:
                self.idle.put(statement)
            else:
                statement.close()


class _CheckinRoute:
    """ASGI middleware answering `POST /v1/checkin` itself, the device API's hot path, without
    the framework's routing and request objects (about a third of a check-in's CPU): a signed
    directive with its ETag, 304 when `If-None-Match` names it, the refusals as JSON. It sits
    inside `_BodyLimit`; every other request goes on to the application."""

    def __init__(self, app: Any, server: FleetServer) -> None:
        self.app = app
        self.server = server
        # The check-ins' own threads, through asyncio's executor: anyio's worker threads
        # (run_in_threadpool) cost twice the CPU per call.
        self.threads = concurrent.futures.ThreadPoolExecutor(
            CHECKIN_THREADS, thread_name_prefix="edgeforge-checkin"
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/checkin" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:  # the first of repeated headers, as Starlette's
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        try:
            signed, etag = await asyncio.get_running_loop().run_in_executor(
                self.threads,
                self.server.checkin,
                headers,
                scope["path"],
                b"".join(chunks),
                time.time(),
            )
        except _Refused as exc:
            await _send(send, exc.status, json.dumps({"error": exc.message}).encode())
            return
        except EdgeforgeError as exc:
            await _send(send, 422, json.dumps({"error": str(exc)}).encode())
            return
        if headers.get("if-none-match") == etag:
            await _send(send, 304, None, [(b"etag", etag.encode())])
            return
        await _send(send, 200, signed.encode(), [(b"etag", etag.encode())])


async def _send(
    send: Any, status: int, body: bytes | None, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """One whole response: JSON `body` (none for a 304), its length and `headers`."""
    headers = list(headers or [])
    if body is not None:
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body or b""})


async def _every(seconds: float, what: str, work: Any) -> None:
    while True:
        try:
            await run_in_threadpool(work)
        except Exception:  # a loop must outlive one bad pass (the database may be away)
            log.exception("%s failed; trying again in %g s", what, seconds)
        await asyncio.sleep(seconds)


def create_app(config: ServerConfig) -> FastAPI:
    """The ASGI application (uvicorn runs it; tests may run it in a thread)."""
    server = FleetServer(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = []
        if config.background:
            tasks = [
                asyncio.create_task(_every(config.gate_interval_s, "gate loop", server.advance)),
                asyncio.create_task(
                    _every(
                        config.monitor_interval_s,
                        "monitor",
                        lambda: monitoring.check_alerts(
                            server.engine, server.references, min_reporters=config.min_reporters
                        ),
                    )
                ),
                asyncio.create_task(
                    _every(config.resign_interval_s, "timestamp re-signing", server.resign)
                ),
                asyncio.create_task(
                    _every(60.0, "nonce purge", lambda: server.purge_nonces(time.time()))
                ),
            ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()

    app = FastAPI(title="edgeforge fleet server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.add_middleware(_CheckinRoute, server=server)
    app.add_middleware(_BodyLimit)  # added last: the outer one, so it limits check-ins too
    app.include_router(__import__("edgeforge.fleet.server.jobs", fromlist=["router"]).router)

    @app.exception_handler(_Refused)
    async def _refused(_request: Request, exc: _Refused) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(rollouts.ConflictError)
    async def _conflict(_request: Request, exc: rollouts.ConflictError) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(rollouts.NotFoundError)
    async def _not_found(_request: Request, exc: rollouts.NotFoundError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(EdgeforgeError)
    async def _bad_input(_request: Request, exc: EdgeforgeError) -> JSONResponse:
        return _error(422, str(exc))

    # ------------------------------------------------------------- device API

    @app.post("/v1/enrol")
    async def enrol(request: Request) -> Response:
        body = await request.body()
        status, answer = await run_in_threadpool(server.enrol, body, time.time())
        return JSONResponse(answer, status_code=status)

    # POST /v1/checkin is answered by `_CheckinRoute` (plain ASGI, inside the body limit)

    @app.post("/v1/report", status_code=202)
    async def report(request: Request) -> Response:
        body = await request.body()
        count = await run_in_threadpool(
            server.report, request.headers, request.url.path, body, time.time()
        )
        return JSONResponse({"accepted": count}, status_code=202)

    # ------------------------------------------------------------- repository

    def _file(request: Request, path: Path, root: Path, cache: str) -> Response:
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return _error(404, "no such file")
        if not resolved.is_relative_to(root.resolve()) or not resolved.is_file():
            return _error(404, "no such file")
        response = FileResponse(
            resolved, headers={"Cache-Control": cache}, stat_result=resolved.stat()
        )
        etag = response.headers.get("etag")
        if etag and request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache})
        return response

    @app.get("/repo/metadata/{name}")
    async def metadata(request: Request, name: str) -> Response:
        if not _METADATA.match(name):
            return _error(404, "no such metadata")
        root = server.repo.path / "metadata"
        return _file(request, root / name, root, "no-cache")

    @app.get("/repo/targets/{target:path}")
    async def targets(request: Request, target: str) -> Response:
        root = server.repo.path / "targets"
        return _file(request, root / target, root, "public, max-age=31536000, immutable")

    # ------------------------------------------------------------- admin API

    def _admin(request: Request) -> None:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), config.admin_token.encode()
        ):
            raise _Refused(401, "admin requests need Authorization: Bearer <EDGEFORGE_ADMIN_TOKEN>")

    @app.post("/v1/admin/rollouts", status_code=201)
    async def rollout_start(request: Request) -> Response:
        _admin(request)
        body = await request.body()
        started = await run_in_threadpool(server.start_rollout, body)
        return JSONResponse({"rollouts": started}, status_code=201)

    @app.get("/v1/admin/rollouts")
    async def rollout_list(request: Request) -> Response:
        _admin(request)
        return JSONResponse(
            {"rollouts": await run_in_threadpool(rollouts.list_rollouts, server.engine)}
        )

    @app.get("/v1/admin/rollouts/{rollout_id}")
    async def rollout_get(request: Request, rollout_id: int) -> Response:
        _admin(request)
        return JSONResponse(await run_in_threadpool(server.rollout_status, rollout_id))

    @app.post("/v1/admin/rollouts/{rollout_id}/{verb}")
    async def rollout_verb(request: Request, rollout_id: int, verb: str) -> Response:
        _admin(request)
        actions = {"pause": rollouts.pause, "resume": rollouts.resume, "abort": rollouts.abort}
        if verb not in actions:
            return _error(404, f"no verb {verb}; use pause, resume or abort")
        return JSONResponse(await run_in_threadpool(actions[verb], server.engine, rollout_id))

    @app.get("/v1/admin/devices")
    async def device_list(
        request: Request, device_class: str | None = None, limit: int = 1000, offset: int = 0
    ) -> Response:
        _admin(request)
        limit = max(1, min(limit, 10000))
        rows = await run_in_threadpool(server.devices, device_class, limit, max(0, offset))
        return JSONResponse({"devices": rows})

    @app.get("/v1/admin/monitor")
    async def monitor(request: Request, model: str | None = None) -> Response:
        _admin(request)
        return JSONResponse(await run_in_threadpool(server.monitor, model or None))

    @app.get("/v1/admin/alerts")
    async def alert_list(request: Request) -> Response:
        _admin(request)
        return JSONResponse({"alerts": await run_in_threadpool(server.alerts)})

    from edgeforge.fleet.server.dashboard import add_dashboard

    add_dashboard(app, server)

    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory for `--workers N`: the configuration comes in EDGEFORGE_SERVE_CONFIG."""
    import os

    return create_app(ServerConfig.from_json(os.environ["EDGEFORGE_SERVE_CONFIG"]))
