"""The one error type a user sees.

An `EdgeforgeError` carries a single line that says what is wrong and how to fix it. The CLI
prints it without a traceback and exits with status 2; the Python API lets it propagate.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

__all__ = ["EdgeforgeError", "first_line", "logged_cause"]


class EdgeforgeError(Exception):
    """Bad input or an unmet precondition, described in one line for the user."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep the message to one line: the CLI prints it as is.
        super().__init__(" ".join(message.split()))


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
