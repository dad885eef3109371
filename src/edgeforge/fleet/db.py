"""The fleet's database: one declarative `Base`, engines, and the packaged Alembic migrations.

Invariants:
- every table of the fleet (the registry's here, the server's in `edgeforge.fleet.server`)
  hangs off `Base`, and its schema changes only through a migration in
  `edgeforge/fleet/migrations/versions/` (no `create_all`): `upgrade(url)` brings any database
  to the newest revision, and running it twice changes nothing;
- the migrations ship inside the package and are configured here, in code: no alembic.ini;
- a URL is SQLAlchemy's (`sqlite:///path/registry.db`, `postgresql+psycopg://user@host/db`);
  a PostgreSQL schema is chosen in the URL itself (`?options=-csearch_path%3Dname`), so that
  every connection, Alembic's included, works in it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import NullPool

from edgeforge.errors import EdgeforgeError

__all__ = ["Base", "dispose", "engine", "sqlite_url", "upgrade"]

HEAD = "head"
_LOCK_KEY = 0x6564676566  # "edgef": the advisory lock that serialises migrations on PostgreSQL


class Base(DeclarativeBase):
    """The declarative base of every fleet table."""


_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def sqlite_url(path: Path) -> str:
    """The URL of an SQLite file (absolute, so a change of folder does not move it)."""
    return f"sqlite:///{Path(path).resolve()}"


def engine(url: str) -> Engine:
    """One engine per URL in this process (engines pool connections; make them once).

    SQLite gets foreign keys on and a busy timeout, so two processes releasing into one
    repository wait for each other instead of failing."""
    with _lock:
        made = _engines.get(url)
        if made is not None:
            return made
        try:
            if url.startswith("sqlite"):
                # No pool: a connection opens the file each time, so a registry file that was
                # replaced (a repository made again at the same path) is never a stale handle.
                made = create_engine(url, connect_args={"timeout": 30}, poolclass=NullPool)
                event.listen(made, "connect", _sqlite_pragmas)
            else:
                made = create_engine(url, pool_pre_ping=True)
        except (ArgumentError, NoSuchModuleError, ValueError) as exc:
            raise EdgeforgeError(
                f"--db {_redacted(url)}: not a database URL ({exc}); write "
                "sqlite:///path/registry.db or postgresql+psycopg://user@host:5432/db"
            ) from None
        _engines[url] = made
        return made


def _sqlite_pragmas(connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def upgrade(url: str, revision: str = HEAD) -> None:
    """Run the packaged migrations on `url` up to `revision` (default: the newest)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("path_separator", "os")
    made = engine(url)
    try:
        with made.begin() as connection:
            if connection.dialect.name == "postgresql":  # two upgrades at once: one waits
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except OperationalError as exc:
        raise EdgeforgeError(
            f"--db {_redacted(url)}: cannot reach the database ({str(exc.orig).strip()[:200]}); "
            "check the URL and that the server runs"
        ) from None


def dispose(url: str) -> None:
    """Close and forget the engine of `url` (tests that drop a schema call this first)."""
    with _lock:
        made = _engines.pop(url, None)
    if made is not None:
        made.dispose()


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<the URL given>"
