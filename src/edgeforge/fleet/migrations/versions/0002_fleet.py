"""The fleet server: devices, nonces, rollouts, the devices each rollout told, events, telemetry.

Revision ID: 0002_fleet
Revises: 0001_registry
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_fleet"
down_revision = "0001_registry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fleet_devices",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("device_class", sa.String(64), nullable=False, index=True),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False),
        sa.Column("facts", sa.Text, nullable=False),
        sa.Column("bucket", sa.Float, nullable=False),
        sa.Column("enrolled_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=True),
        sa.Column("state", sa.String(32), nullable=True),
        sa.Column("active_name", sa.String(128), nullable=True),
        sa.Column("active_version", sa.Integer, nullable=True),
        sa.Column("staged_name", sa.String(128), nullable=True),
        sa.Column("staged_version", sa.Integer, nullable=True),
        sa.Column("latency_p95", sa.Float, nullable=True),
        sa.Column("rollout_id", sa.Integer, nullable=True),
        sa.Column("rollback_to", sa.Integer, nullable=True),
        sa.Column("rollback_pending", sa.Boolean, nullable=False),
        sa.Column("directive_key", sa.String(64), nullable=True),
        sa.Column("directive", sa.Text, nullable=True),
    )
    op.create_table(
        "fleet_nonces",
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("nonce", sa.String(32), primary_key=True),
        sa.Column("seen_at", sa.Float, nullable=False, index=True),
    )
    op.create_table(
        "fleet_rollouts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("device_class", sa.String(64), nullable=False),
        sa.Column("waves", sa.Text, nullable=False),
        sa.Column("gate", sa.Text, nullable=False),
        sa.Column("min_devices", sa.Integer, nullable=False),
        sa.Column("report_timeout_s", sa.Float, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("reach", sa.Float, nullable=False),
        sa.Column("offset", sa.Float, nullable=False),
        sa.Column("active_key", sa.String(200), nullable=True, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("wave_started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("history", sa.Text, nullable=False),
    )
    op.create_index("ix_fleet_rollouts_class_state", "fleet_rollouts", ["device_class", "state"])
    op.create_table(
        "fleet_rollout_devices",
        sa.Column(
            "rollout_id",
            sa.Integer,
            sa.ForeignKey("fleet_rollouts.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("from_version", sa.Integer, nullable=True),
        sa.Column("issued_at", sa.Float, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("decided_at", sa.Float, nullable=True),
        sa.Column("canary_ok", sa.Boolean, nullable=True),
        sa.Column("latency_p95", sa.Float, nullable=True),
        sa.Column("baseline_latency_p95", sa.Float, nullable=True),
    )
    op.create_table(
        "fleet_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(128), nullable=False, index=True),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("at", sa.Float, nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
    )
    op.create_table(
        "fleet_telemetry",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(128), nullable=False, index=True),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "fleet_telemetry",
        "fleet_events",
        "fleet_rollout_devices",
        "fleet_rollouts",
        "fleet_nonces",
        "fleet_devices",
    ):
        op.drop_table(table)
