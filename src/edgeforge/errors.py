"""The one error type a user sees.

An `EdgeforgeError` carries a single line that says what is wrong and how to fix it. The CLI
prints it without a traceback and exits with status 2; the Python API lets it propagate.
"""

from __future__ import annotations

__all__ = ["EdgeforgeError"]


class EdgeforgeError(Exception):
    """Bad input or an unmet precondition, described in one line for the user."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep the message to one line: the CLI prints it as is.
        super().__init__(" ".join(message.split()))
