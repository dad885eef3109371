"""The fleet server's monitor: telemetry windows in, aggregates, drift verdicts, alerts out.

Invariants:

- A window is decoded (`decode_window`) when its report arrives: a report with a payload that
  does not decode is refused whole (422) and nothing of it is stored. A stored window's class
  is the one its device enrolled with.
- Aggregates are computed on read from the stored windows of the version asked about (the
  `ix_fleet_windows_model` index), so every worker and server sees the same figures with no
  shared state beyond the database; `aggregate_windows` makes them independent of the order
  the windows arrived in. Each process memoises the aggregate of each version x class x day
  with the number of windows it was made from (`AggregateCache`): stored windows are only
  ever inserted, never changed or deleted, so an unchanged count means the same windows, and a
  read decodes only the days that received windows since (a count query first, then the rows
  of the changed days).
- Nothing is shown about a telemetry aggregate with fewer than `min_reporters` distinct
  devices: `monitor_summary` and `gate_metrics` give None for every figure, the charts are not
  drawn, and a gate metric is undecided.
- An alert is one row per (kind, subject): raised from any number of workers, it is stored once.
- A version's reference is `NAME/VERSION/CLASS/reference.json`, a signed target of the
  repository (written by `release`); it is read from the repository's own target files.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.monitor import (
    MIN_REPORTERS,
    Aggregate,
    Reference,
    aggregate_windows,
    day_of,
    drift,
    gate_metrics,
    monitor_summary,
)
from edgeforge.fleet.server.models import Alert, Device, Rollout, RolloutDevice, TelemetryWindow
from edgeforge.fleet.telemetry import decode_window, window_id

__all__ = [
    "MAX_WINDOW_BYTES",
    "AggregateCache",
    "ReferenceCache",
    "alerts",
    "check_alerts",
    "decode_entries",
    "load_aggregates",
    "rollout_telemetry",
    "store_windows",
    "summary",
]

W = TelemetryWindow.__table__
A = Alert.__table__
D = Device.__table__
R = Rollout.__table__
RD = RolloutDevice.__table__
MAX_WINDOW_BYTES = 64 * 1024


def decode_entries(entries: list[Any]) -> list[dict[str, Any]]:
    """Check a report's telemetry entries (`{"id", "payload"}` or a bare base64 payload) and
    decode each window; EdgeforgeError (422) on the first that does not decode."""
    out = []
    for index, entry in enumerate(entries):
        payload = entry.get("payload") if isinstance(entry, dict) else entry
        if not isinstance(payload, str) or len(payload) > MAX_WINDOW_BYTES * 4 // 3 + 4:
            raise EdgeforgeError(f"telemetry entry {index} has no base64 payload of <= 64 KiB")
        try:
            raw = base64.b64decode(payload, validate=True)
            window = decode_window(raw)
        except (ValueError, EdgeforgeError) as exc:
            raise EdgeforgeError(f"telemetry entry {index} does not decode: {exc}") from None
        out.append(
            {
                "window_id": window_id(raw),
                "name": window.name,
                "version": int(window.version),
                "day": day_of(window.start),
                "start": float(window.start),
                "payload": payload,
            }
        )
    return out


def store_windows(
    conn: Connection, insert_ignore: Any, device: Any, windows: list[dict[str, Any]], now: float
) -> None:
    """Store decoded windows of `device` (a fleet_devices row); a resent one is ignored.
    `insert_ignore` is the dialect's INSERT ... ON CONFLICT DO NOTHING on fleet_windows."""
    if windows:
        conn.execute(
            insert_ignore,
            [
                {
                    **w,
                    "device_id": device.id,
                    "device_class": device.device_class,
                    "received_at": now,
                }
                for w in windows
            ],
        )


class AggregateCache:
    """Per-process memo: (database, name, version, class, day) -> (windows counted, their
    aggregate). Sound because `fleet_windows` rows are insert-only (see the module's
    invariants). Holds at most `limit` days (the oldest memoised go first; a day of 300
    devices' image windows is ~0.25 MB). The aggregates it hands out are shared: callers merge
    them into new ones, never `add` to them."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._memo: dict[tuple[Any, ...], tuple[int, Aggregate]] = {}
        self._lock = threading.Lock()
        self.decoded_days = 0  # days (re)computed from their rows, for tests and benches

    def get(self, key: tuple[Any, ...], count: int) -> Aggregate | None:
        with self._lock:
            hit = self._memo.get(key)
        return hit[1] if hit is not None and hit[0] == count else None

    def put(self, key: tuple[Any, ...], count: int, aggregate: Aggregate) -> None:
        with self._lock:
            self._memo.pop(key, None)
            self._memo[key] = (count, aggregate)
            while len(self._memo) > self.limit:
                self._memo.pop(next(iter(self._memo)))
            self.decoded_days += 1


AGGREGATES = AggregateCache()


def _matching(query: Any, name: Any, version: Any, device_class: Any, days: Any) -> Any:
    if name is not None:
        query = query.where(W.c.name == name)
    if version is not None:
        query = query.where(W.c.version == version)
    if device_class is not None:
        query = query.where(W.c.device_class == device_class)
    if days is not None:
        query = query.where(W.c.day.in_(list(days)))
    return query


def _aggregate_rows(rows: list[Any]) -> list[Aggregate]:
    classes = {r.device_id: r.device_class for r in rows}
    aggs = aggregate_windows(((r.device_id, r.payload) for r in rows), device_classes=classes)
    return list(aggs.values())


def load_aggregates(
    conn: Connection,
    *,
    name: str | None = None,
    version: int | None = None,
    device_class: str | None = None,
    since: float | None = None,
    days: Iterable[str] | None = None,
    cache: AggregateCache | None = AGGREGATES,
) -> list[Aggregate]:
    """Aggregates (per version × class × day) of the stored windows that match. Whole days
    come from `cache` where their window count is unchanged; `since` (windows received from
    then on: part of a day) always reads the rows."""
    columns = (W.c.device_id, W.c.device_class, W.c.payload)
    if since is not None or cache is None:
        query = _matching(select(*columns), name, version, device_class, days)
        if since is not None:
            query = query.where(W.c.received_at >= since)
        return _aggregate_rows(conn.execute(query).all())
    group = (W.c.name, W.c.version, W.c.device_class, W.c.day)
    counts = conn.execute(
        _matching(select(*group, func.count()), name, version, device_class, days).group_by(*group)
    ).all()
    database = conn.engine.url.render_as_string(hide_password=True)
    out = []
    for g_name, g_version, g_class, g_day, count in counts:
        key = (database, g_name, g_version, g_class, g_day)
        agg = cache.get(key, count)
        if agg is None:
            rows = conn.execute(_matching(select(*columns), g_name, g_version, g_class, [g_day]))
            rows = rows.all()
            fresh = _aggregate_rows(rows)
            if len(rows) != count or len(fresh) != 1:
                out.extend(fresh)  # rows arrived between the two queries: use, do not keep
                continue
            agg = fresh[0]
            cache.put(key, count, agg)
        out.append(agg)
    return out


class ReferenceCache:
    """References read from the repository's targets, cached by content hash (a new release
    of the same path has a new hash, so nothing stale is served)."""

    def __init__(self, repo: Any) -> None:
        self.repo = repo
        self._cache: dict[str, Reference] = {}

    def references(self, name: str | None = None) -> dict[tuple[str, int, str], Reference]:
        out: dict[tuple[str, int, str], Reference] = {}
        for path, info in self.repo.targets().items():
            parts = path.split("/")
            if len(parts) != 4 or parts[3] != "reference.json":
                continue
            if name is not None and parts[0] != name:
                continue
            digest = info.get("hashes", {}).get("sha256", path)
            if digest not in self._cache:
                try:
                    data = json.loads(self.repo.target_file(path).read_text())
                    self._cache[digest] = Reference.from_dict(data)
                except (OSError, ValueError, KeyError, EdgeforgeError):
                    continue  # a broken reference is no reference: verdict "no-reference"
            try:
                out[(parts[0], int(parts[1]), parts[2])] = self._cache[digest]
            except ValueError:
                continue
        return out


def summary(
    engine: Engine, refs: ReferenceCache, *, model: str | None, min_reporters: int
) -> dict[str, Any]:
    """`monitor_summary` over every stored window (of `model` when given)."""
    with engine.connect() as conn:
        aggs = load_aggregates(conn, name=model)
    return monitor_summary(aggs, refs.references(model), model=model, min_reporters=min_reporters)


def _upsert_ignore(engine: Engine, table: Any) -> Any:
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert
    return upsert(table).on_conflict_do_nothing()


def check_alerts(
    engine: Engine,
    refs: ReferenceCache,
    *,
    min_reporters: int = MIN_REPORTERS,
    now: float | None = None,
    days_back: int = 2,
) -> int:
    """Raise alerts for drift verdicts of the last `days_back` days and for aborted rollouts.
    Idempotent (one row per kind and subject); returns how many aggregates were judged."""
    now = time.time() if now is None else now
    days = [day_of(now - 86400 * i) for i in range(days_back)]
    with engine.connect() as conn:
        aggs = load_aggregates(conn, days=days)
        aborted = conn.execute(select(R).where(R.c.state == "aborted")).all()
    references = refs.references()
    rows = []
    for agg in aggs:
        report = drift(
            agg,
            references.get((agg.name, agg.version, agg.device_class)),
            min_reporters=min_reporters,
        )
        if report.verdict != "drift":
            continue
        rows.append(
            {
                "kind": "drift",
                "subject": f"{agg.name}@{agg.version}/{agg.device_class}/{agg.day}",
                "name": agg.name,
                "version": agg.version,
                "device_class": agg.device_class,
                "day": agg.day,
                "created_at": now,
                "message": f"drift on {agg.day}: " + "; ".join(report.reasons),
                "detail": json.dumps(report.to_dict()),
            }
        )
    for r in aborted:
        rows.append(
            {
                "kind": "rollout-aborted",
                "subject": f"rollout {r.id}",
                "name": r.name,
                "version": r.version,
                "device_class": r.device_class,
                "day": day_of(r.finished_at or now),
                "created_at": r.finished_at or now,
                "message": f"rollout {r.id} of {r.name}@{r.version} to {r.device_class} "
                f"aborted: {r.reason}",
                "detail": json.dumps({"rollout": r.id}),
            }
        )
    if rows:
        with engine.begin() as conn:
            conn.execute(_upsert_ignore(engine, A), rows)
    return len(aggs)


def alerts(engine: Engine, *, limit: int = 200) -> list[dict[str, Any]]:
    """The newest alerts first."""
    with engine.connect() as conn:
        rows = conn.execute(select(A).order_by(A.c.created_at.desc(), A.c.id.desc()).limit(limit))
        return [
            {
                "id": r.id,
                "kind": r.kind,
                "subject": r.subject,
                "name": r.name,
                "version": r.version,
                "device_class": r.device_class,
                "day": r.day,
                "created_at": r.created_at,
                "message": r.message,
            }
            for r in rows
        ]


def rollout_telemetry(
    conn: Connection, row: Any, refs: ReferenceCache | None, *, min_reporters: int
) -> dict[str, dict[str, Any]]:
    """The gate's telemetry figures for a rollout (a fleet_rollouts row): the relative change
    of the fleet p95 latency and median confidence of its version against the version the
    devices ran before (confidence: against the release reference when that version has too
    few reporters), and the largest PSI against the reference."""
    references = refs.references(row.name) if refs is not None else {}
    new_aggs = load_aggregates(
        conn,
        name=row.name,
        version=row.version,
        device_class=row.device_class,
        since=row.created_at,
    )
    key = f"{row.name}@{row.version}/{row.device_class}"
    new = gate_metrics(new_aggs, references, min_reporters=min_reporters).get(key, {})
    before = Counter(
        v
        for v in conn.execute(select(RD.c.from_version).where(RD.c.rollout_id == row.id)).scalars()
        if v is not None
    )
    old: dict[str, Any] = {}
    if before:
        base = before.most_common(1)[0][0]
        old_aggs = load_aggregates(conn, name=row.name, version=base, device_class=row.device_class)
        old = gate_metrics(old_aggs, references, min_reporters=min_reporters).get(
            f"{row.name}@{base}/{row.device_class}", {}
        )
    reporters = int(new.get("reporters", 0))
    enough = bool(new.get("enough_reporters"))

    def change(metric: str, baseline: float | None) -> dict[str, Any]:
        value = new.get(metric)
        ok = enough and value is not None and baseline is not None and baseline > 0
        return {
            "value": value / baseline - 1 if ok else None,
            "reporters": reporters,
            "enough": ok,
        }

    ref_conf = None
    reference = references.get((row.name, row.version, row.device_class))
    if reference is not None and reference.slots["confidence"].n:
        ref_conf = reference.slots["confidence"].quantile(0.5)
    conf_base = old.get("confidence_p50") if old.get("enough_reporters") else None
    return {
        "latency_p95": change("latency_p95", old.get("latency_p95")),
        "confidence_p50": change("confidence_p50", conf_base if conf_base else ref_conf),
        "drift_psi": {
            "value": new.get("drift_psi") if enough else None,
            "reporters": reporters,
            "enough": enough and new.get("drift_psi") is not None,
        },
    }
