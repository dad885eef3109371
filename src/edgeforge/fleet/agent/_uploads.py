"""The daemon's side of telemetry: upload spooled windows as bytes, record outcomes as lines.

The application process that calls `Agent.predict()` summarises inferences (`edgeforge.fleet.
telemetry`, which needs numpy and datasketches) and closes windows into the spool on disk,
`STATE/telemetry/spool/<end µs>-<id>.win`. The daemon must stay small (idle RSS goal 40 MB), so it
never imports numpy or datasketches: it reads the spooled files as bytes, sends them base64 with
the next report, and deletes a file only after the server accepted (202) the report carrying it.
Canary and health outcomes, decided in the daemon, go to `STATE/telemetry/outcomes.log` (one JSON
line each, append + fsync); the next `Telemetry` the application opens replays them into its
windows and truncates the log.

Invariants: a window file is read only under its final name (the writer renames a complete
temp file into place), so a half-written window is never sent; a window the server did not take
stays spooled (the spool's own size and age bounds still apply); the same window sent twice has
the same id (its hash), so the server can count it once.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = [
    "UPLOAD_LIMIT",
    "append_outcome",
    "pending_windows",
    "read_outcomes",
    "remove_windows",
    "spool_dir",
    "spool_summary",
]

# Windows per report: the same as telemetry.DRAIN_LIMIT (16 entries, ~200 kB of JSON, inside the
# report's 256 KiB body limit), repeated here so this module needs no numpy.
UPLOAD_LIMIT = 16


def telemetry_dir(state: Path) -> Path:
    return Path(state) / "telemetry"


def spool_dir(state: Path) -> Path:
    return telemetry_dir(state) / "spool"


def pending_windows(state: Path, limit: int = UPLOAD_LIMIT) -> list[dict[str, str]]:
    """The oldest spooled windows as report entries `[{"id", "payload"}]` (payload base64)."""
    folder = spool_dir(state)
    if not folder.is_dir():
        return []
    entries = []
    for path in sorted(folder.glob("*.win"))[:limit]:
        try:
            data = path.read_bytes()
        except OSError:  # pruned by the application meanwhile
            continue
        entries.append(
            {"id": path.stem.split("-", 1)[1], "payload": base64.b64encode(data).decode("ascii")}
        )
    return entries


def spool_summary(state: Path) -> dict[str, int]:
    """How many windows wait for upload, and their bytes (for `agent status`)."""
    folder = spool_dir(state)
    sizes = []
    for path in folder.glob("*.win") if folder.is_dir() else []:
        with contextlib.suppress(OSError):
            sizes.append(path.stat().st_size)
    return {"spooled": len(sizes), "bytes": sum(sizes)}


def remove_windows(state: Path, ids: list[str]) -> None:
    """Forget windows the server accepted (the application may have pruned some already)."""
    wanted = set(ids)
    folder = spool_dir(state)
    for path in sorted(folder.glob("*.win")) if folder.is_dir() else []:
        if path.stem.split("-", 1)[1] in wanted:
            path.unlink(missing_ok=True)


def append_outcome(state: Path, kind: str, ok: bool, name: str | None, version: int | None) -> None:
    """Record a canary or health outcome for the application's telemetry to pick up."""
    folder = telemetry_dir(state)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = json.dumps({"kind": kind, "ok": bool(ok), "name": name, "version": version,
                       "at": time.time()}) + "\n"  # fmt: skip
    with contextlib.suppress(OSError):  # telemetry never stops an install
        fd = os.open(folder / "outcomes.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def read_outcomes(state: Path) -> list[dict[str, Any]]:
    """Take the recorded outcomes (the log is renamed away first, so a line appended meanwhile
    goes to a new log and is read next time, never lost or read twice)."""
    log = telemetry_dir(state) / "outcomes.log"
    taken = log.with_name(f".outcomes.{os.getpid()}.taking")
    try:
        os.replace(log, taken)
    except OSError:
        return []
    out = []
    with contextlib.suppress(OSError):
        for line in taken.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("kind") in ("canary", "health"):
                    out.append(entry)
    taken.unlink(missing_ok=True)
    return out
