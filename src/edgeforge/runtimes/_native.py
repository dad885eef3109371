"""Helpers for runtimes whose converters and native libraries print on their own.

litert-torch, exir, TFLite, XNNPACK and absl write progress and logs to Python's streams and
straight to file descriptors 1 and 2; `silenced` catches both into a log that error messages
can quote. It is not thread-safe: the descriptors belong to the whole process.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping

from edgeforge.errors import first_line

__all__ = ["Log", "census", "first_line", "silenced"]

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Log:
    """What was printed while silenced (filled in when the block ends)."""

    text = ""


@contextlib.contextmanager
def silenced(env: Mapping[str, str] | None = None) -> Iterator[Log]:
    """Send everything printed inside the block, from Python or C, into the yielded `Log`;
    `env` sets environment variables (e.g. log levels) for the block only."""
    saved_env = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    log = Log()
    streams = io.StringIO()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        with tempfile.TemporaryFile() as sink:
            saved_fds = [os.dup(1), os.dup(2)]
            try:
                os.dup2(sink.fileno(), 1)
                os.dup2(sink.fileno(), 2)
                with (
                    contextlib.redirect_stdout(streams),
                    contextlib.redirect_stderr(streams),
                    warnings.catch_warnings(),
                ):
                    warnings.simplefilter("ignore")
                    yield log
            finally:
                with contextlib.suppress(OSError, AttributeError):
                    ctypes.CDLL(None).fflush(None)  # C's stdio buffers, before the swap back
                for fd, saved in zip((1, 2), saved_fds, strict=True):
                    os.dup2(saved, fd)
                    os.close(saved)
                sink.seek(0)
                log.text = sink.read().decode(errors="replace") + streams.getvalue()
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def census(ops: list[str]) -> str:
    """'aten.cumsum.default x2, aten.sort.default x1'."""
    return ", ".join(f"{op} x{n}" for op, n in sorted(Counter(ops).items()))
