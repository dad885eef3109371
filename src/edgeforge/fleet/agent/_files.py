"""Durable small files: the journal (append + fsync) and atomic JSON pointers.

Invariants:
- `atomic_write_json` leaves either the old file or the new one, never a mix: it writes a
  temporary file in the same folder, fsyncs it, renames it over the target and fsyncs the folder.
- `Journal.append` returns only after the line is on disk (fsync). A line cut short by a crash
  (no trailing newline, or not JSON) is ignored on reading; every line before it stands.
- Past 1 MB the journal keeps its last 2,000 entries (rewritten atomically): months of updates
  never fill a device's disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from edgeforge.fleet._durable import fsync_dir, write_atomic

__all__ = ["Journal", "atomic_write_json", "fsync_dir", "read_json"]


def atomic_write_json(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` atomically and durably (write, fsync, rename, fsync dir)."""
    write_atomic(path, json.dumps(data, sort_keys=True).encode("utf-8"))


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in `path`, or `default` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


class Journal:
    """An append-only file of JSON lines, one per state transition."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry = {"at": time.time(), **entry}
        line = json.dumps(entry, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            self._heal(fd)
            os.write(fd, line.encode())
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > self.max_bytes:
            self._compact()
        return entry

    max_bytes = 1 << 20
    keep = 2000

    def _compact(self) -> None:
        """Keep the last `keep` entries (atomically: a crash leaves the old file or the new)."""
        entries = self.entries()[-self.keep :]
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(e, sort_keys=True) + "\n" for e in entries)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)

    def _heal(self, fd: int) -> None:
        """A line cut short by a crash gets its newline, so the next entry starts clean."""
        size = os.fstat(fd).st_size
        if size:
            with open(self.path, "rb") as handle:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    os.write(fd, b"\n")

    def entries(self, last: int | None = None) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        lines = text.splitlines()
        if last is not None:
            lines = lines[-last * 2 :]
        result = []
        for line in lines:
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict) and "state" in item:
                    result.append(item)
        return result[-last:] if last is not None else result

    def last(self) -> dict[str, Any] | None:
        entries = self.entries(last=1)
        return entries[-1] if entries else None
