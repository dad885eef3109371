"""Alembic's environment, configured by `edgeforge.fleet.db.upgrade` (no alembic.ini).

`upgrade` passes an open connection in `config.attributes["connection"]`; migrations run
inside its transaction, so a failed one leaves the database as it was (on PostgreSQL).
"""

from __future__ import annotations

from alembic import context

from edgeforge.fleet.db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `edgeforge.fleet.db.upgrade` runs us
    raise RuntimeError("run the migrations through edgeforge.fleet.db.upgrade(url)")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
