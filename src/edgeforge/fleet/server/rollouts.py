"""Staged rollouts: which release each device should run, and the gate loop that moves waves.

Invariants:

- A device's place in a rollout is `(bucket(device_id) - offset) mod 1`, with `offset` a hash of
  the rollout's model, version and class: deterministic, so a device that enrols mid-rollout
  gets what its wave says, and a restarted server (or another worker) says the same.
- A rollout reaches the devices whose place is under its `reach`; `reach` only grows: to the
  current wave's fraction, and further while fewer than `min_devices` devices are reached, so
  every gate can have its minimum sample.
- A device is told to install a rollout's version only while the rollout runs and reaches it
  (a paused rollout keeps the devices it told, tells no new ones); each such device gets a row
  in `fleet_rollout_devices` with the version it ran before (its last committed one).
- Abort (by hand or by a failed gate) tells exactly the devices with such a row to roll back to
  that version at their next check-in; devices not reached never hear of the new version.
- State changes are conditional updates (`WHERE state = ... AND wave = ...`), so several
  workers running the gate loop at once move a rollout at most once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.server.gates import GateSample, evaluate, parse_gate, parse_waves
from edgeforge.fleet.server.models import Device, Rollout, RolloutDevice

__all__ = [
    "ConflictError",
    "NotFoundError",
    "RolloutSpec",
    "abort",
    "advance",
    "bucket_of",
    "decide",
    "list_rollouts",
    "pause",
    "record_events",
    "releases_in",
    "resume",
    "rollout_status",
    "start",
]

D = Device.__table__
R = Rollout.__table__
RD = RolloutDevice.__table__
LIVE = ("running", "paused")
FAILED_OUTCOMES = ("failed", "timeout")


class ConflictError(EdgeforgeError):
    """A rollout of this model and class is already live."""


class NotFoundError(EdgeforgeError):
    """No such rollout."""


def _fraction(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def bucket_of(device_id: str) -> float:
    """The device's bucket in [0, 1): a hash of its id, fixed at enrolment."""
    return _fraction(f"edgeforge-device:{device_id}")


def _place(bucket: float, offset: float) -> float:
    return (bucket - offset) % 1.0


def releases_in(targets: Iterable[str]) -> dict[tuple[str, int], set[str]]:
    """(name, version) -> device classes, from the signed target paths
    `NAME/VERSION/CLASS/variant.json`."""
    found: dict[tuple[str, int], set[str]] = {}
    for path in targets:
        parts = path.split("/")
        if len(parts) == 4 and parts[3] == "variant.json" and parts[1].isdigit():
            found.setdefault((parts[0], int(parts[1])), set()).add(parts[2])
    return found


@dataclass
class RolloutSpec:
    """What `rollout start` asks for (validated by `start`)."""

    name: str
    version: int
    device_class: str | None = None
    waves: str | list[Any] = "1%,10%,50%,100%"
    gate: str = "failure_rate<2%"
    min_devices: int = 20
    report_timeout_s: float = 1800.0
    confidence: float = 0.95

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutSpec:
        try:
            spec = cls(
                name=str(data["name"]),
                version=int(data["version"]),
                device_class=None
                if data.get("device_class") is None
                else str(data["device_class"]),
                waves=data.get("waves", cls.waves),
                gate=str(data.get("gate", cls.gate)),
                min_devices=int(data.get("min_devices", cls.min_devices)),
                report_timeout_s=float(data.get("report_timeout_s", cls.report_timeout_s)),
                confidence=float(data.get("confidence", cls.confidence)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgeforgeError(
                f"the rollout request is malformed ({exc}); give name and version"
            ) from None
        if spec.min_devices < 1 or spec.report_timeout_s <= 0:
            raise EdgeforgeError("min_devices must be at least 1 and report_timeout_s positive")
        return spec


def _places(conn: Connection, device_class: str, offset: float) -> list[float]:
    buckets = conn.execute(select(D.c.bucket).where(D.c.device_class == device_class)).scalars()
    return sorted(_place(b, offset) for b in buckets)


def _reach_for(places: list[float], count: int) -> float:
    """The smallest reach that takes in `count` devices. While the class has fewer devices
    than that, 0.0: the waves' own fractions rule and the gate waits for devices to enrol
    (widening to everything would hand the new version to every device that enrols later)."""
    if count <= 0 or count > len(places):
        return 0.0
    if count == len(places):
        return 1.0
    return (places[count - 1] + places[count]) / 2


def start(
    engine: Engine,
    spec: RolloutSpec,
    releases: dict[tuple[str, int], set[str]],
    *,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Start one rollout per device class (the one asked, or every class of the release)."""
    now = time.time() if now is None else now
    waves = parse_waves(spec.waves)
    parse_gate(spec.gate)
    classes = releases.get((spec.name, spec.version))
    if not classes:
        known = sorted(v for n, v in releases if n == spec.name)
        hint = (
            f"versions of {spec.name}: {', '.join(map(str, known))}"
            if known
            else f"no release is named {spec.name}"
        )
        raise EdgeforgeError(f"{spec.name}@{spec.version} is not in the repository ({hint})")
    if spec.device_class is not None:
        if spec.device_class not in classes:
            raise EdgeforgeError(
                f"{spec.name}@{spec.version} has no variant for class {spec.device_class!r} "
                f"(it has {', '.join(sorted(classes))})"
            )
        classes = {spec.device_class}
    ids = []
    try:
        with engine.begin() as conn:
            for device_class in sorted(classes):
                offset = _fraction(f"{spec.name}@{spec.version}/{device_class}")
                places = _places(conn, device_class, offset)
                reach = max(waves[0], _reach_for(places, spec.min_devices))
                result = conn.execute(
                    insert(R).values(
                        name=spec.name,
                        version=spec.version,
                        device_class=device_class,
                        waves=json.dumps(waves),
                        gate=spec.gate,
                        min_devices=spec.min_devices,
                        report_timeout_s=spec.report_timeout_s,
                        confidence=spec.confidence,
                        state="running",
                        reason="",
                        wave=0,
                        reach=reach,
                        offset=offset,
                        active_key=f"{spec.name}/{device_class}",
                        created_at=now,
                        wave_started_at=now,
                        history="[]",
                    )
                )
                ids.append(result.inserted_primary_key[0])
    except IntegrityError:
        raise ConflictError(
            f"a rollout of {spec.name} is already live for one of the classes "
            f"{', '.join(sorted(classes))}; "
            "let it finish, or pause/abort it first"
        ) from None
    return [rollout_status(engine, i, now=now) for i in ids]


def decide(
    conn: Connection,
    device: Any,
    active: tuple[str, int] | None,
    staged: tuple[str, int] | None,
    now: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The directive (without `issued_at`) for `device` (a fleet_devices row) now, and the
    device columns to update. Inserts the device's rollout row when it is first told to install."""
    updates: dict[str, Any] = {}
    base = {"device_id": device.id, "device_class": device.device_class}
    rows = conn.execute(
        select(R.c.id, R.c.name, R.c.version, R.c.device_class, R.c.state, R.c.reach, R.c.offset)
        .where(
            R.c.device_class == device.device_class,
            or_(R.c.state.in_(("running", "paused", "completed")), R.c.id == device.rollout_id),
        )
        .order_by(R.c.id.desc())
        .limit(50)
    ).all()
    # The rollout that last told this device to install was aborted, and the device runs (or
    # stages) its version: roll back. Checked here at every check-in, not only by the flag the
    # abort sets, so a device told to install while the abort was being decided is not missed.
    mine = next((r for r in rows if r.id == device.rollout_id), None)
    if mine is not None and mine.state == "aborted":
        if (mine.name, mine.version) in (active, staged):
            back = (
                device.rollback_to
                if device.rollback_pending
                else _rollback_to(conn, mine, device.id)
            )
            if not device.rollback_pending:
                updates.update(rollback_pending=True, rollback_to=back)
            directive = {
                "name": mine.name,
                "version": back,
                "action": "rollback",
                "rollout": mine.id,
            }
            return {**base, **directive}, updates
        if device.rollback_pending:
            updates["rollback_pending"] = False
    if active is not None:
        rows = [r for r in rows if r.name == active[0]]
    target: tuple[str | None, int | None, int | None] | None = None
    for r in rows:
        if r.state not in LIVE:  # completed ones are the baseline; aborted ones tell no one
            continue
        told = device.rollout_id == r.id
        if told or (r.state == "running" and _place(device.bucket, r.offset) < r.reach):
            target = (r.name, r.version, r.id)
            if not told:
                updates["rollout_id"] = r.id
                conn.execute(
                    insert(RD).values(
                        rollout_id=r.id,
                        device_id=device.id,
                        from_version=active[1] if active and active[0] == r.name else None,
                        issued_at=now,
                        outcome="pending",
                        detail="",
                        baseline_latency_p95=device.latency_p95,
                    )
                )
            break
    if target is None:
        done = next((r for r in rows if r.state == "completed"), None)
        if done is not None:
            target = (done.name, done.version, None)
        elif active is not None:
            target = (active[0], active[1], None)
        else:
            target = (None, None, None)
    name, version, rollout = target
    action = "stay" if name is None or active == (name, version) else "install"
    return {**base, "name": name, "version": version, "action": action, "rollout": rollout}, updates


_FAIL_KINDS = {"download", "canary", "activate", "health", "commit", "rollback", "error"}


def _latency(metrics: Any) -> float | None:
    if isinstance(metrics, dict):
        for key in ("latency_p95_ms", "p95_ms", "latency_ms"):
            value = metrics.get(key)
            if isinstance(value, (int, float)) and value > 0:
                return float(value)
    return None


def record_events(conn: Connection, device: Any, events: list[dict[str, Any]], now: float) -> None:
    """Fold a device's events into its rollout row (outcome, canary, latency) and its baseline
    latency. Only the device's own rows are touched."""
    rollout = None
    if device.rollout_id is not None:
        rollout = conn.execute(
            select(R.c.name, R.c.version).where(R.c.id == device.rollout_id)
        ).one_or_none()
    row: dict[str, Any] = {}
    device_latency = None
    for event in events:
        kind, ok = event["kind"], event["ok"]
        # the health probe's (and commit's) latency: what the model does on the device
        latency = _latency(event.get("metrics")) if kind in ("health", "commit") else None
        ours = rollout is not None and (event.get("name"), event.get("version")) == (
            rollout.name,
            rollout.version,
        )
        if not ours:
            if latency is not None:
                device_latency = latency
            continue
        if kind == "canary":
            row["canary_ok"] = bool(ok) and row.get("canary_ok", True)
        if latency is not None:
            row["latency_p95"] = latency
        if not ok and kind in _FAIL_KINDS:
            row.setdefault("outcome", "failed")
            row.setdefault("detail", f"{kind}: {str(event.get('detail', ''))[:500]}")
        elif ok and kind == "commit":
            row.setdefault("outcome", "success")
    if device_latency is not None:
        conn.execute(update(D).where(D.c.id == device.id).values(latency_p95=device_latency))
    if not row:
        return
    where = (RD.c.rollout_id == device.rollout_id) & (RD.c.device_id == device.id)
    outcome = row.pop("outcome", None)
    detail = row.pop("detail", "")
    if row:
        if row.get("canary_ok") is True:  # a failed canary stays failed
            row["canary_ok"] = func.coalesce(RD.c.canary_ok, True)
        conn.execute(update(RD).where(where).values(**row))
    if outcome is not None:
        conn.execute(
            update(RD)
            .where(where, RD.c.outcome == "pending")
            .values(outcome=outcome, detail=detail, decided_at=now)
        )


def _rollback_to(conn: Connection, rollout: Any, device_id: str) -> int | None:
    """The version a device told by `rollout` ran before it (else the last completed one)."""
    before = conn.execute(
        select(RD.c.from_version).where(RD.c.rollout_id == rollout.id, RD.c.device_id == device_id)
    ).scalar()
    return before if before is not None else _baseline(conn, rollout)


def _baseline(conn: Connection, rollout: Any) -> int | None:
    return conn.execute(
        select(R.c.version)
        .where(
            R.c.name == rollout.name,
            R.c.device_class == rollout.device_class,
            R.c.state == "completed",
            R.c.id < rollout.id,
        )
        .order_by(R.c.id.desc())
        .limit(1)
    ).scalar()


TelemetryFigures = Callable[[Connection, Any], dict[str, dict[str, Any]]]


def _sample(
    conn: Connection, rollout_id: int, row: Any = None, telemetry: TelemetryFigures | None = None
) -> GateSample:
    rows = conn.execute(
        select(RD.c.outcome, RD.c.canary_ok, RD.c.latency_p95, RD.c.baseline_latency_p95).where(
            RD.c.rollout_id == rollout_id
        )
    ).all()
    decided = [r for r in rows if r.outcome != "pending"]
    canary = [r.canary_ok for r in rows if r.canary_ok is not None]
    ratios = [
        r.latency_p95 / r.baseline_latency_p95
        for r in decided
        if r.outcome == "success" and r.latency_p95 and r.baseline_latency_p95
    ]
    return GateSample(
        decided=len(decided),
        failed=sum(r.outcome in FAILED_OUTCOMES for r in decided),
        pending=len(rows) - len(decided),
        canary_runs=len(canary),
        canary_passed=sum(canary),
        latency_ratios=ratios,
        telemetry=telemetry(conn, row) if telemetry is not None and row is not None else {},
    )


def _history(row: Any, entry: dict[str, Any]) -> str:
    history = json.loads(row.history or "[]")
    history.append(entry)
    return json.dumps(history[-200:])


def _abort(conn: Connection, row: Any, reason: str, now: float) -> bool:
    changed = conn.execute(
        update(R)
        .where(R.c.id == row.id, R.c.state == row.state, R.c.wave == row.wave)
        .values(
            state="aborted",
            active_key=None,
            reason=reason,
            finished_at=now,
            history=_history(
                row, {"at": now, "wave": row.wave, "event": "aborted", "reason": reason}
            ),
        )
    ).rowcount
    if not changed:
        return False
    baseline = _baseline(conn, row)
    told = conn.execute(
        select(RD.c.device_id, RD.c.from_version).where(RD.c.rollout_id == row.id)
    ).all()
    if told:
        conn.execute(
            update(D)
            .where(D.c.id == bindparam("did"), D.c.rollout_id == row.id)
            .values(rollback_pending=True, rollback_to=bindparam("back")),
            [
                {
                    "did": t.device_id,
                    "back": t.from_version if t.from_version is not None else baseline,
                }
                for t in told
            ],
        )
    return True


def advance(
    engine: Engine, *, now: float | None = None, telemetry: TelemetryFigures | None = None
) -> list[dict[str, Any]]:
    """One pass of the gate loop over running rollouts: time out silent devices, judge the gate,
    then abort, move to the next wave, widen the wave, or complete. Returns what changed."""
    now = time.time() if now is None else now
    changes = []
    with engine.connect() as conn:
        running = conn.execute(select(R.c.id).where(R.c.state == "running")).scalars().all()
    for rollout_id in running:
        with engine.begin() as conn:
            change = _advance_one(conn, rollout_id, now, telemetry)
        if change:
            changes.append(change)
    return changes


def _advance_one(
    conn: Connection, rollout_id: int, now: float, telemetry: TelemetryFigures | None = None
) -> dict[str, Any] | None:
    row = conn.execute(select(R).where(R.c.id == rollout_id)).one()
    if row.state != "running":
        return None
    conn.execute(
        update(RD)
        .where(
            RD.c.rollout_id == row.id,
            RD.c.outcome == "pending",
            RD.c.issued_at < now - row.report_timeout_s,
        )
        .values(
            outcome="timeout", decided_at=now, detail=f"no report within {row.report_timeout_s:g} s"
        )
    )
    waves = json.loads(row.waves)
    verdict = evaluate(
        parse_gate(row.gate),
        _sample(conn, row.id, row, telemetry),
        min_devices=row.min_devices,
        confidence=row.confidence,
    )
    guard = (R.c.id == row.id) & (R.c.state == "running") & (R.c.wave == row.wave)
    places = _places(conn, row.device_class, row.offset)
    reached = sum(p < row.reach for p in places)
    entry = {"at": now, "wave": row.wave, "verdict": verdict.to_dict()}
    if verdict.status == "failed":
        reason = f"wave {row.wave + 1} gate failed: {verdict.reason}"
        if _abort(conn, row, reason, now):
            return {"rollout": row.id, "event": "aborted", "reason": reason}
        return None
    if verdict.status in ("passed", "unsure"):
        told = conn.execute(
            select(func.count()).select_from(RD).where(RD.c.rollout_id == row.id)
        ).scalar()
        if told < reached and now - row.wave_started_at < row.report_timeout_s:
            return None  # the wave's devices have not all checked in yet: judge it when they have
    if verdict.status == "passed":
        if row.wave + 1 >= len(waves):
            conn.execute(
                update(R)
                .where(guard)
                .values(
                    state="completed",
                    active_key=None,
                    finished_at=now,
                    reason="every wave passed its gate",
                    history=_history(row, {**entry, "event": "completed"}),
                )
            )
            return {"rollout": row.id, "event": "completed"}
        reach = max(row.reach, waves[row.wave + 1], _reach_for(places, row.min_devices))
        conn.execute(
            update(R)
            .where(guard)
            .values(
                wave=row.wave + 1,
                reach=reach,
                wave_started_at=now,
                history=_history(row, {**entry, "event": "next wave"}),
            )
        )
        return {"rollout": row.id, "event": "next wave", "wave": row.wave + 1}
    if verdict.status == "unsure":
        # widen the wave: more devices, a tighter bound; pause once every device is reached
        target = min(reached + row.min_devices, len(places))
        reach = max(row.reach, _reach_for(places, target)) if target > reached else row.reach
        if reach > row.reach:
            conn.execute(
                update(R)
                .where(guard)
                .values(
                    reach=reach,
                    wave_started_at=now,
                    history=_history(row, {**entry, "event": "widened"}),
                )
            )
            return {"rollout": row.id, "event": "widened", "reach": reach}
        reason = (
            f"gate unsure with every device reached: {verdict.reason}; "
            "resume accepts the wave, abort rolls back"
        )
        conn.execute(
            update(R)
            .where(guard)
            .values(
                state="paused",
                reason=reason,
                history=_history(row, {**entry, "event": "paused: unsure"}),
            )
        )
        return {"rollout": row.id, "event": "paused", "reason": reason}
    # waiting: keep the minimum sample reachable as devices enrol
    reach = max(row.reach, _reach_for(places, row.min_devices))
    if reach > row.reach:
        conn.execute(update(R).where(guard).values(reach=reach))
        return {"rollout": row.id, "event": "widened", "reach": reach}
    return None


def _get(conn: Connection, rollout_id: int) -> Any:
    row = conn.execute(select(R).where(R.c.id == rollout_id)).one_or_none()
    if row is None:
        raise NotFoundError(
            f"there is no rollout {rollout_id}; list them with `edgeforge rollout status`"
        )
    return row


def pause(engine: Engine, rollout_id: int, *, now: float | None = None) -> dict[str, Any]:
    """Stop telling new devices to install; devices already told keep the new version."""
    now = time.time() if now is None else now
    with engine.begin() as conn:
        row = _get(conn, rollout_id)
        if row.state == "running":
            conn.execute(
                update(R)
                .where(R.c.id == row.id, R.c.state == "running")
                .values(
                    state="paused",
                    reason="paused by hand",
                    history=_history(row, {"at": now, "wave": row.wave, "event": "paused"}),
                )
            )
        elif row.state != "paused":
            raise EdgeforgeError(
                f"rollout {rollout_id} is {row.state}; only a running rollout pauses"
            )
    return rollout_status(engine, rollout_id, now=now)


def resume(engine: Engine, rollout_id: int, *, now: float | None = None) -> dict[str, Any]:
    """Run a paused rollout again; one the gate paused as unsure has its wave accepted."""
    now = time.time() if now is None else now
    with engine.begin() as conn:
        row = _get(conn, rollout_id)
        if row.state == "running":
            return rollout_status(engine, rollout_id, now=now)
        if row.state != "paused":
            raise EdgeforgeError(
                f"rollout {rollout_id} is {row.state}; only a paused rollout resumes"
            )
        values: dict[str, Any] = {"state": "running", "reason": ""}
        history = json.loads(row.history or "[]")
        accept = bool(history) and history[-1].get("event") == "paused: unsure"
        waves = json.loads(row.waves)
        if accept and row.wave + 1 >= len(waves):
            values.update(
                state="completed",
                active_key=None,
                finished_at=now,
                reason="last wave accepted by hand",
            )
        elif accept:
            values.update(wave=row.wave + 1, wave_started_at=now)
        values["history"] = _history(
            row, {"at": now, "wave": row.wave, "event": "accepted" if accept else "resumed"}
        )
        conn.execute(update(R).where(R.c.id == row.id, R.c.state == "paused").values(**values))
    return rollout_status(engine, rollout_id, now=now)


def abort(
    engine: Engine, rollout_id: int, *, reason: str = "aborted by hand", now: float | None = None
) -> dict[str, Any]:
    """Abort in any state: every device told to install rolls back at its next check-in."""
    now = time.time() if now is None else now
    with engine.begin() as conn:
        row = _get(conn, rollout_id)
        if row.state != "aborted":
            _abort(conn, row, reason, now)
    return rollout_status(engine, rollout_id, now=now)


def _as_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "version": row.version,
        "device_class": row.device_class,
        "state": row.state,
        "reason": row.reason,
        "wave": row.wave + 1,
        "waves": json.loads(row.waves),
        "reach": row.reach,
        "offset": row.offset,
        "gate": row.gate,
        "min_devices": row.min_devices,
        "report_timeout_s": row.report_timeout_s,
        "confidence": row.confidence,
        "created_at": row.created_at,
        "wave_started_at": row.wave_started_at,
        "finished_at": row.finished_at,
    }


def rollout_status(
    engine: Engine,
    rollout_id: int,
    *,
    now: float | None = None,
    telemetry: TelemetryFigures | None = None,
) -> dict[str, Any]:
    """The rollout, its devices' outcomes and the gate's current verdict."""
    with engine.connect() as conn:
        row = _get(conn, rollout_id)
        counts = dict(
            conn.execute(
                select(RD.c.outcome, func.count())
                .where(RD.c.rollout_id == rollout_id)
                .group_by(RD.c.outcome)
            ).all()
        )
        places = _places(conn, row.device_class, row.offset)
        sample = _sample(conn, rollout_id, row, telemetry)
        rolled_back = conn.execute(
            select(func.count())
            .select_from(D)
            .where(D.c.rollout_id == rollout_id, D.c.rollback_pending.is_(True))
        ).scalar()
    verdict = evaluate(
        parse_gate(row.gate), sample, min_devices=row.min_devices, confidence=row.confidence
    )
    return {
        **_as_dict(row),
        "devices": {
            "in_class": len(places),
            "reached": sum(p < row.reach for p in places),
            "told": sum(counts.values()),
            **{k: counts.get(k, 0) for k in ("pending", "success", "failed", "timeout")},
            "rollback_pending": rolled_back,
        },
        "gate_now": verdict.to_dict(),
        "history": json.loads(row.history or "[]"),
    }


def list_rollouts(engine: Engine) -> list[dict[str, Any]]:
    """Every rollout, newest first (without per-device figures)."""
    with engine.connect() as conn:
        return [_as_dict(r) for r in conn.execute(select(R).order_by(R.c.id.desc())).all()]
