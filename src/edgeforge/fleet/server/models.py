"""The fleet server's tables: devices, nonces, rollouts, who took what, events, telemetry.

Invariants:

- All the server's state is here: any number of workers or servers share one database, and a
  restarted server carries on where the last one stopped.
- `fleet_nonces` has the primary key (device_id, nonce): a replayed nonce is refused by the
  database itself, whichever worker sees it.
- `fleet_rollouts.active_key` is "NAME/CLASS" while a rollout is running or paused and NULL
  after; its unique constraint is what allows one live rollout per model and device class.
- `fleet_rollout_devices` has a row for each device that was told to install a rollout's
  version (and only those): abort tells exactly these devices to roll back.

- `fleet_windows` holds each telemetry window once per (device, window id = hash of the
  payload): a window resent after a lost acknowledgement is refused by the database. Its
  `device_class` is the class the device enrolled with, never the one the window claims.
- `fleet_alerts` has one row per (kind, subject): the monitor may raise the same alert from
  several workers at once, and only one row results.

Migrations: "0002_fleet" (down_revision "0001_registry"), "0003_monitor" (windows, alerts) in
`edgeforge.fleet.migrations`.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from edgeforge.fleet.db import Base

__all__ = [
    "FLEET_TABLES",
    "MONITOR_TABLES",
    "Alert",
    "Base",
    "Device",
    "DeviceEvent",
    "Nonce",
    "Rollout",
    "RolloutDevice",
    "Telemetry",
    "TelemetryWindow",
]


class Device(Base):
    """An enrolled device; `bucket` in [0, 1) is a hash of its id (wave assignment)."""

    __tablename__ = "fleet_devices"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    device_class: Mapped[str] = mapped_column(String(64), index=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    facts: Mapped[str] = mapped_column(Text, default="{}")
    bucket: Mapped[float] = mapped_column(Float)
    enrolled_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    active_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    active_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    staged_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    staged_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the p95 latency (ms) the device last reported for its active version
    latency_p95: Mapped[float | None] = mapped_column(Float, nullable=True)
    # the last rollout that told this device to install, and whether it must roll back
    rollout_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rollback_to: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rollback_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    # the last signed directive (its content hash, the JSON sent): unchanged state reuses it
    directive_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    directive: Mapped[str | None] = mapped_column(Text, nullable=True)


class Nonce(Base):
    """A nonce seen from a device within the skew window (older ones are purged)."""

    __tablename__ = "fleet_nonces"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    seen_at: Mapped[float] = mapped_column(Float, index=True)


class Rollout(Base):
    """One model version going out to one device class in waves."""

    __tablename__ = "fleet_rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    device_class: Mapped[str] = mapped_column(String(64))
    waves: Mapped[str] = mapped_column(Text)  # JSON list of cumulative fractions
    gate: Mapped[str] = mapped_column(Text)
    min_devices: Mapped[int] = mapped_column(Integer)
    report_timeout_s: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))  # running|paused|aborted|completed
    reason: Mapped[str] = mapped_column(Text, default="")
    wave: Mapped[int] = mapped_column(Integer, default=0)
    reach: Mapped[float] = mapped_column(Float)  # fraction of the class's buckets reached
    offset: Mapped[float] = mapped_column(Float)  # where this rollout's buckets start
    active_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    wave_started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    history: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of gate verdicts

    __table_args__ = (Index("ix_fleet_rollouts_class_state", "device_class", "state"),)


class RolloutDevice(Base):
    """A device told to install a rollout's version, and what came of it."""

    __tablename__ = "fleet_rollout_devices"

    rollout_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("fleet_rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    issued_at: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(
        String(16), default="pending"
    )  # pending|success|failed|timeout
    detail: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    canary_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    latency_p95: Mapped[float | None] = mapped_column(Float, nullable=True)
    baseline_latency_p95: Mapped[float | None] = mapped_column(Float, nullable=True)


class DeviceEvent(Base):
    """One event a device reported (download, canary, activate, health, commit, ...)."""

    __tablename__ = "fleet_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128), index=True)
    received_at: Mapped[float] = mapped_column(Float)
    at: Mapped[float | None] = mapped_column(Float, nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[str] = mapped_column(Text, default="{}")


class Telemetry(Base):
    """A device's telemetry as sent (sketches; the monitoring issue reads them)."""

    __tablename__ = "fleet_telemetry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128), index=True)
    received_at: Mapped[float] = mapped_column(Float)
    body: Mapped[str] = mapped_column(Text)


class TelemetryWindow(Base):
    """One decoded-and-checked telemetry window (sketches only) from one device."""

    __tablename__ = "fleet_windows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128))
    window_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    device_class: Mapped[str] = mapped_column(String(64))
    day: Mapped[str] = mapped_column(String(10))
    start: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    payload: Mapped[str] = mapped_column(Text)  # base64, as the device sent it

    __table_args__ = (
        UniqueConstraint("device_id", "window_id", name="uq_fleet_windows_device_window"),
        Index("ix_fleet_windows_model", "name", "version", "device_class", "day"),
    )


class Alert(Base):
    """Something a person should look at: a drift verdict, an aborted rollout."""

    __tablename__ = "fleet_alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))  # drift | rollout-aborted
    subject: Mapped[str] = mapped_column(String(300))
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    device_class: Mapped[str | None] = mapped_column(String(64), nullable=True)
    day: Mapped[str | None] = mapped_column(String(10), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text, default="{}")

    __table_args__ = (UniqueConstraint("kind", "subject", name="uq_fleet_alerts_kind_subject"),)


MONITOR_TABLES = tuple(cls.__table__ for cls in (TelemetryWindow, Alert))

FLEET_TABLES = tuple(
    cls.__table__ for cls in (Device, Nonce, Rollout, RolloutDevice, DeviceEvent, Telemetry)
)
