"""The one-statement check-in on PostgreSQL (FleetServer._fast_checkin), in process against the
real PostgreSQL: same answers as the generic path, replays refused across processes' caches, a
cached key that the database no longer holds never lets a request in, last_seen to the minute.
(The HTTP tests in test_server.py and test_rollout.py run the same path through `edgeforge
serve` on PostgreSQL: 304/ETag, device isolation, rollouts and rollbacks.)"""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from server_support import ADMIN, ENROLL, make_repository, postgres_schema
from sqlalchemy import select, update

from edgeforge.fleet import protocol
from edgeforge.fleet.server.app import FleetServer, ServerConfig, _Refused
from edgeforge.fleet.server.models import Device, Nonce

D = Device.__table__
N = Nonce.__table__
BODY = protocol.canonical({"active": None, "staged": None, "state": "idle"})


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two FleetServers (two workers' worth of caches) on one PostgreSQL schema."""
    repo = make_repository(tmp_path_factory.mktemp("fast"), {"demo": {1: ["cls-a"]}})
    with postgres_schema() as url:
        from edgeforge.fleet import db

        db.upgrade(url)
        config = ServerConfig(
            repo=repo, db=url, admin_token=ADMIN, enroll_token=ENROLL, background=False
        )
        made = [FleetServer(config), FleetServer(config)]
        try:
            yield made
        finally:
            for server in made:
                server.device_engine.dispose()
                server.engine.dispose()


def _enrol(server: FleetServer, name: str) -> tuple[str, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    device_id = f"{name}-{time.monotonic_ns()}"
    body = {
        "token": ENROLL,
        "device_id": device_id,
        "device_class": "cls-a",
        "public_key": protocol.b64encode(protocol.public_key_bytes(key)),
    }
    assert server.enrol(json.dumps(body).encode(), time.time())[0] == 201
    return device_id, key


def _checkin(server: FleetServer, device_id: str, key: Ed25519PrivateKey, headers=None):
    headers = headers or protocol.sign_request(key, device_id, "POST", "/v1/checkin", BODY)
    return server.checkin(headers, "/v1/checkin", BODY, time.time())


def test_unchanged_checkins_take_the_fast_path_and_answer_the_same(servers):
    first, second = servers
    device_id, key = _enrol(first, "same")
    signed, etag = _checkin(first, device_id, key)  # signs and stores the directive
    assert device_id in first._keys  # the fast path ran: the key is cached
    for server in (first, second, first):
        assert _checkin(server, device_id, key) == (signed, etag)
    directive = json.loads(signed)["directive"]
    assert directive["device_id"] == device_id and directive["action"] == "stay"


def test_a_replay_is_refused_by_the_other_worker_and_by_the_same(servers):
    first, second = servers
    device_id, key = _enrol(first, "replay")
    _checkin(first, device_id, key)
    _checkin(second, device_id, key)  # both caches hold the key
    headers = protocol.sign_request(key, device_id, "POST", "/v1/checkin", BODY)
    _checkin(first, device_id, key, headers)
    for server in (second, first):
        with pytest.raises(_Refused, match="replay"):
            _checkin(server, device_id, key, headers)


def test_a_cached_key_the_database_no_longer_holds_lets_nothing_in(servers):
    first, _ = servers
    device_id, old = _enrol(first, "rekey")
    _checkin(first, device_id, old)
    assert device_id in first._keys
    new = Ed25519PrivateKey.generate()
    with first.engine.begin() as conn:  # the row changes under the cache
        conn.execute(
            update(D).where(D.c.id == device_id).values(public_key=protocol.public_key_bytes(new))
        )
    headers = protocol.sign_request(old, device_id, "POST", "/v1/checkin", BODY)
    with pytest.raises(_Refused, match="does not verify"):
        _checkin(first, device_id, old, headers)
    with first.engine.connect() as conn:  # the refused request recorded no nonce
        nonces = conn.execute(select(N.c.nonce).where(N.c.device_id == device_id)).scalars()
        assert headers[protocol.HEADER_NONCE] not in set(nonces)
    signed, _ = _checkin(first, device_id, new)
    assert json.loads(signed)["directive"]["device_id"] == device_id


def test_a_bad_signature_writes_nothing_and_an_unknown_device_is_refused(servers):
    first, _ = servers
    device_id, key = _enrol(first, "forged")
    _checkin(first, device_id, key)
    forged = protocol.sign_request(
        Ed25519PrivateKey.generate(), device_id, "POST", "/v1/checkin", BODY
    )
    with pytest.raises(_Refused, match="does not verify"):
        _checkin(first, device_id, key, forged)
    with first.engine.connect() as conn:
        nonces = set(conn.execute(select(N.c.nonce).where(N.c.device_id == device_id)).scalars())
    assert forged[protocol.HEADER_NONCE] not in nonces
    with pytest.raises(_Refused, match="not enrolled"):
        _checkin(first, "nobody-here", key)


def test_last_seen_moves_only_when_over_a_minute_old(servers):
    first, _ = servers
    device_id, key = _enrol(first, "seen")
    _checkin(first, device_id, key)

    def last_seen() -> float:
        with first.engine.connect() as conn:
            return conn.execute(select(D.c.last_seen).where(D.c.id == device_id)).scalar()

    recent = last_seen()
    _checkin(first, device_id, key)
    assert last_seen() == recent  # within the minute: only the nonce is written
    with first.engine.begin() as conn:
        conn.execute(update(D).where(D.c.id == device_id).values(last_seen=recent - 120))
    before = time.time()
    _checkin(first, device_id, key)
    assert last_seen() >= before


def test_a_connection_the_database_dropped_is_never_handed_out_again(servers):
    """A fast statement whose connection died fails its one check-in and is closed."""
    import psycopg
    from sqlalchemy import text

    first, _ = servers
    device_id, key = _enrol(first, "dropped")
    _checkin(first, device_id, key)
    _checkin(first, device_id, key)  # the fast path: its statement goes back to the pool
    idle = []
    while not first._fast_pool.idle.empty():
        idle.append(first._fast_pool.idle.get_nowait())
    for statement in idle[1:]:
        statement.close()
    with first.engine.connect() as conn:
        pid = idle[0].connection.info.backend_pid
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    first._fast_pool.idle.put(idle[0])
    with pytest.raises(psycopg.Error):  # answered 500; the device tries again
        _checkin(first, device_id, key)
    assert first._fast_pool.idle.empty()  # closed, not put back
    signed, _ = _checkin(first, device_id, key)  # on a fresh connection
    assert json.loads(signed)["directive"]["device_id"] == device_id
