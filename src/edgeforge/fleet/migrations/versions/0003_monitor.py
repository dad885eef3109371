"""The fleet monitor: telemetry windows (decoded once, stored per device and window) and alerts.

Revision ID: 0003_monitor
Revises: 0002_fleet
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_monitor"
down_revision = "0002_fleet"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fleet_windows",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("window_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("device_class", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("start", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.UniqueConstraint("device_id", "window_id", name="uq_fleet_windows_device_window"),
    )
    op.create_index(
        "ix_fleet_windows_model", "fleet_windows", ["name", "version", "device_class", "day"]
    )
    op.create_table(
        "fleet_alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("device_class", sa.String(64), nullable=True),
        sa.Column("day", sa.String(10), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.UniqueConstraint("kind", "subject", name="uq_fleet_alerts_kind_subject"),
    )


def downgrade() -> None:
    op.drop_table("fleet_alerts")
    op.drop_index("ix_fleet_windows_model", table_name="fleet_windows")
    op.drop_table("fleet_windows")
