"""One agent per state folder: an exclusive `fcntl` lock held while the loop runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from edgeforge.errors import EdgeforgeError

__all__ = ["exclusive"]


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise EdgeforgeError(f"{path.parent}: another agent runs on this state folder") from exc
        yield
    finally:
        os.close(fd)  # closing releases the lock (and the kernel releases it on kill -9)
