"""The fleet database's Alembic migrations, shipped in the package (see `edgeforge.fleet.db`)."""
