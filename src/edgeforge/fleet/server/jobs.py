"""Benchmark jobs: the user's own devices as a benchmark farm (issue 15, item 4).

An admin queues a job (`POST /v1/admin/jobs`: a released NAME@VERSION, on one device id or on a
device class); an agent started with `--accept-jobs` asks for work (`POST /v1/jobs/next`, signed),
fetches the signed variant of its class through its TUF client, measures it with its runtime
loaders in a child (warm-up, then N timed runs) and posts the figures (`POST /v1/jobs/{id}/result`,
signed). `GET /v1/admin/jobs/{id}` shows the job and, once done, its result.

Invariants:
- A job is claimed by one device only (a conditional UPDATE from `queued`); a job on a class is
  claimed by the first device of that class that asks. A device sees, claims and reports only
  jobs it may run (its id or its class) and only results for jobs it claimed.
- A job's version must be released for the class it runs on (checked against the TUF targets
  when it is queued for a device, and again when a device of a class claims it).
- A claimed job whose device does not report within `CLAIM_TIMEOUT_S` goes back to `queued`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import Float, Integer, String, Text, insert, or_, select, update
from sqlalchemy.orm import Mapped, mapped_column

from edgeforge.fleet.db import Base
from edgeforge.fleet.server.models import Device

__all__ = ["CLAIM_TIMEOUT_S", "Job", "router"]

CLAIM_TIMEOUT_S = 1800.0
MAX_RUNS = 10_000
_STATES = ("queued", "running", "done", "failed")


class Job(Base):
    """One benchmark job and, once reported, its result (the device's figures, as JSON)."""

    __tablename__ = "fleet_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    target_device: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    target_class: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    options: Mapped[str] = mapped_column(Text, default="{}")
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claimed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")


J = Job.__table__
D = Device.__table__
router = APIRouter()


def _refused(status: int, message: str) -> Exception:
    from edgeforge.fleet.server.app import _Refused

    return _Refused(status, message)


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise _refused(422, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise _refused(422, "the body must be an object")
    return data


def _row(job: Any) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "version": job.version,
        "on": job.target_device or job.target_class,
        "target": "device" if job.target_device else "class",
        "options": json.loads(job.options or "{}"),
        "state": job.state,
        "created_at": job.created_at,
        "claimed_by": job.claimed_by,
        "claimed_at": job.claimed_at,
        "finished_at": job.finished_at,
        "result": json.loads(job.result) if job.result else None,
        "detail": job.detail,
    }


def _released(server: Any, name: str, version: int, device_class: str) -> bool:
    return f"{name}/{version}/{device_class}/variant.json" in server.repo.targets()


def _options(data: dict[str, Any]) -> dict[str, int]:
    out = {}
    for key, default in (("warmup", 10), ("runs", 50)):
        value = data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_RUNS:
            raise _refused(422, f"{key} must be an integer from 0 to {MAX_RUNS}")
        out[key] = value
    if out["runs"] < 1:
        raise _refused(422, "runs must be at least 1")
    return out


def queue(server: Any, body: bytes, now: float) -> dict[str, Any]:
    data = _json(body)
    name, version, on = data.get("name"), data.get("version"), data.get("on")
    if not isinstance(name, str) or not name or len(name) > 128:
        raise _refused(422, "name must be the released model's name")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _refused(422, "version must be an integer (a released version)")
    if not isinstance(on, str) or not on or len(on) > 128:
        raise _refused(422, "on must be a device id or a device class")
    options = _options(data)
    with server.engine.begin() as conn:
        device = conn.execute(select(D.c.id, D.c.device_class).where(D.c.id == on)).first()
        known_class = conn.execute(select(D.c.id).where(D.c.device_class == on).limit(1)).first()
        if device is not None:
            target = {"target_device": device.id, "target_class": None}
            device_class = device.device_class
        elif known_class is not None:
            target = {"target_device": None, "target_class": on}
            device_class = on
        else:
            raise _refused(404, f"no enrolled device and no device class is named {on!r}")
        if not _released(server, name, version, device_class):
            raise _refused(
                404, f"{name}@{version} has no variant for class {device_class}; release one first"
            )
        job_id = conn.execute(
            insert(J).values(
                name=name, version=version, options=json.dumps(options), state="queued",
                created_at=now, detail="", **target,
            )
        ).inserted_primary_key[0]  # fmt: skip
        return _row(conn.execute(select(J).where(J.c.id == job_id)).one())


def claim(server: Any, headers: Any, path: str, body: bytes, now: float) -> dict | None:
    with server.engine.begin() as conn:
        device = server._authenticate(conn, headers, "POST", path, body, now)
        # claims that timed out go back to the queue
        conn.execute(
            update(J)
            .where(J.c.state == "running", J.c.claimed_at < now - CLAIM_TIMEOUT_S)
            .values(state="queued", claimed_by=None, claimed_at=None)
        )
        mine = or_(J.c.target_device == device.id, J.c.target_class == device.device_class)
        candidates = conn.execute(
            select(J).where(J.c.state == "queued", mine).order_by(J.c.id).limit(5)
        ).all()
        for job in candidates:
            taken = conn.execute(
                update(J)
                .where(J.c.id == job.id, J.c.state == "queued")
                .values(state="running", claimed_by=device.id, claimed_at=now)
            ).rowcount
            if taken:
                row = conn.execute(select(J).where(J.c.id == job.id)).one()
                return {**_row(row), "device_class": device.device_class}
    return None


def finish(server: Any, job_id: int, headers: Any, path: str, body: bytes, now: float) -> None:
    data = _json(body)
    ok, result = data.get("ok"), data.get("result", {})
    if not isinstance(ok, bool) or not isinstance(result, dict):
        raise _refused(422, "a job result needs ok: true|false and result: {...}")
    with server.engine.begin() as conn:
        device = server._authenticate(conn, headers, "POST", path, body, now)
        changed = conn.execute(
            update(J)
            .where(J.c.id == job_id, J.c.claimed_by == device.id, J.c.state == "running")
            .values(
                state="done" if ok else "failed", finished_at=now,
                result=json.dumps({**result, "device_id": device.id,
                                   "device_class": device.device_class}),
                detail=str(data.get("detail", ""))[:2000],
            )
        ).rowcount  # fmt: skip
        if not changed:
            raise _refused(404, f"job {job_id} is not running on device {device.id}")


def get(server: Any, job_id: int) -> dict[str, Any]:
    with server.engine.connect() as conn:
        row = conn.execute(select(J).where(J.c.id == job_id)).first()
    if row is None:
        raise _refused(404, f"no job {job_id}")
    return _row(row)


def _admin(request: Request) -> Any:
    import hmac

    server = request.app.state.server
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), server.config.admin_token.encode()
    ):
        raise _refused(401, "admin requests need Authorization: Bearer <EDGEFORGE_ADMIN_TOKEN>")
    return server


@router.post("/v1/admin/jobs", status_code=201)
async def queue_job(request: Request) -> Response:
    server = _admin(request)
    body = await request.body()
    job = await run_in_threadpool(queue, server, body, time.time())
    return JSONResponse({"job": job}, status_code=201)


@router.get("/v1/admin/jobs/{job_id}")
async def get_job(request: Request, job_id: int) -> Response:
    server = _admin(request)
    return JSONResponse({"job": await run_in_threadpool(get, server, job_id)})


@router.post("/v1/jobs/next")
async def next_job(request: Request) -> Response:
    server = request.app.state.server
    body = await request.body()
    job = await run_in_threadpool(
        claim, server, request.headers, request.url.path, body, time.time()
    )
    if job is None:
        return Response(status_code=204)
    return JSONResponse({"job": job})


@router.post("/v1/jobs/{job_id}/result", status_code=202)
async def job_result(request: Request, job_id: int) -> Response:
    server = request.app.state.server
    body = await request.body()
    await run_in_threadpool(
        finish, server, job_id, request.headers, request.url.path, body, time.time()
    )
    return JSONResponse({"accepted": True}, status_code=202)
