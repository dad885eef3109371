"""Files that survive a crash or a power cut: the one way the fleet half replaces a file.

Invariant: `write_atomic` leaves either the old file or the new one at `path`, never a part of
either. It writes a temporary file `.NAME.PID.RANDOM.tmp` in the same folder (so the rename
stays on one file system; a crash may leave one behind, which readers ignore and owners sweep
with the `.*.tmp` pattern), fsyncs it, renames it over `path` and fsyncs the folder. Standard
library only: the device side (agent, telemetry, client) imports it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

__all__ = ["fsync_dir", "write_atomic"]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (a no-op where the OS refuses)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, atomically and durably."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
