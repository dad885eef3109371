"""Benchmark jobs on the fleet's own devices (issue 15, item 4).

Revision ID: 0004_jobs
Revises: 0003_monitor
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_jobs"
down_revision = "0003_monitor"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fleet_jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("target_device", sa.String(128), nullable=True, index=True),
        sa.Column("target_class", sa.String(64), nullable=True, index=True),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("claimed_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fleet_jobs")
