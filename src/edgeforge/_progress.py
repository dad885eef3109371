"""Progress shown to a person: spinners and bars on stderr, silent when stderr is not a TTY.

All progress goes through here so the CLI and the API behave alike and tests stay quiet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["console", "output_console", "progress_bar", "status", "track"]

T = TypeVar("T")

console = Console(stderr=True)


def output_console() -> Console:
    """The console for results on stdout; wide when piped, so tables stay readable in logs."""
    out = Console()
    return out if out.is_terminal else Console(width=200)


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with `message` while the block runs (only on a terminal)."""
    if not console.is_terminal:
        yield
        return
    with console.status(message):
        yield


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate `items` with a progress bar (only on a terminal)."""
    if not console.is_terminal:
        yield from items
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        yield from progress.track(items, total=total, description=description)


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[], None]]:
    """A bar advanced by calling the yielded function (only drawn on a terminal)."""
    if not console.is_terminal:
        yield lambda: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)
