"""The one error type a user sees.

An `EdgeforgeError` carries a single line that says what is wrong and how to fix it. The CLI
prints it without a traceback and exits with status 2; the Python API lets it propagate.
"""

from __future__ import annotations

import re

__all__ = ["EdgeforgeError", "first_line"]


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
