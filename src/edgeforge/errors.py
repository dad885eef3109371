"""The one error type a user sees.

An `EdgeforgeError` carries a single line that says what is wrong and how to fix it. The CLI
prints it without a traceback and exits with status 2; the Python API lets it propagate.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
from collections.abc import Iterator

__all__ = ["EdgeforgeError", "file_system_error", "first_line", "logged_cause"]


class EdgeforgeError(Exception):
    """Bad input or an unmet precondition, described in one line for the user."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep the message to one line: the CLI prints it as is. A file name that is not
        # UTF-8 (surrogate escapes) is shown escaped, so printing it never fails (issue 13).
        text = " ".join(message.split())
        super().__init__(text.encode("utf-8", "backslashreplace").decode("utf-8"))


# What the file system says about a path the user gave (issue 13, class 6): a name too long
# or not encodable, a read-only or full folder, a file where a folder is needed.
_PATH_ERRNOS = {
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.EILSEQ: "rename it with UTF-8 characters",
    errno.EACCES: "choose a folder you may write to",
    errno.EPERM: "choose a folder you may write to",
    errno.EROFS: "choose a folder on a writable file system",
    errno.ENOSPC: "free some space or choose another disk",
    errno.EDQUOT: "free some space or choose another disk",
    errno.ENOTDIR: "a file stands where a folder is needed; choose another path",
    errno.EISDIR: "a folder stands where a file is needed; choose another path",
}


def file_system_error(exc: OSError) -> EdgeforgeError | None:
    """One line for an OSError about the user's path (not about our code), else None."""
    advice = _PATH_ERRNOS.get(exc.errno or -1)
    if advice is None:
        return None
    where = f"{exc.filename}: " if exc.filename else ""
    return EdgeforgeError(f"{where}{exc.strerror or exc}; {advice}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(exc: BaseException) -> str:
    """`Type: first line` of the innermost cause, colour codes removed: what a tool's failure
    says in one line (exporters and converters wrap the real problem in generic messages)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = _ANSI.sub("", str(exc)).strip()
    line = text.splitlines()[0][:300] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


@contextlib.contextmanager
def logged_cause(logger: str) -> Iterator[None]:
    """Within the block, an exception that `logger` logs with its traceback (instead of
    printing it) becomes the `__cause__` of the exception the block raises, so `first_line`
    finds the real cause. torch.export.load does this: it logs the deserialisation error,
    then raises "check the warnings above". The logged record is kept, not printed."""
    target = logging.getLogger(logger)
    recorder = _Recorder()
    saved = target.level, target.propagate, target.handlers
    target.setLevel(logging.WARNING)  # wins over a caller's silencing of the logger
    target.propagate = False
    target.handlers = [recorder]  # torch attaches its stderr handler to the logger itself
    try:
        yield
    except Exception as exc:
        if exc.__cause__ is None and recorder.exception is not None:
            exc.__cause__ = recorder.exception
        raise
    finally:
        target.setLevel(saved[0])
        target.propagate, target.handlers = saved[1], saved[2]


class _Recorder(logging.Handler):
    """Keeps the last exception that was logged with `exc_info`."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.exception: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.exception = record.exc_info[1]
