"""Imported only by edgeforge's fork server, as its first preload (see `edgeforge._children`).

Importing it prepares the server process before the heavy preloads that follow it:
- the libraries' log levels and variables are set (`quiet_libraries`), and the server's own
  output goes to /dev/null, so the preloads' import chatter never reaches the terminal (each
  child then captures its own output; with `EDGEFORGE_VERBOSE=1` nothing is redirected);
- a child named `edgeforge-…` skips multiprocessing's re-import of the caller's main module.
  multiprocessing re-runs the parent's `__main__` (by path or module name) in every child so
  that objects defined there can be unpickled; a script without an
  `if __name__ == "__main__":` guard then runs again in each child. edgeforge's jobs hold
  only edgeforge's functions and data, so its children need no main module; other children
  of the same server keep the standard behaviour.
"""

from __future__ import annotations

import os
from multiprocessing import spawn
from typing import Any

from edgeforge._children import CHILD_PREFIX
from edgeforge._quiet import quiet_libraries, verbose

__all__: list[str] = []

_MAIN_KEYS = ("init_main_from_name", "init_main_from_path")
_standard_prepare = spawn.prepare


def _prepare(data: dict[str, Any]) -> None:
    """`multiprocessing.spawn.prepare`, less the main module for edgeforge's children."""
    if str(data.get("name", "")).startswith(CHILD_PREFIX):
        data = {key: value for key, value in data.items() if key not in _MAIN_KEYS}
    _standard_prepare(data)


def _silence_server() -> None:
    """The server's stdout and stderr to /dev/null (children capture their own)."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


# The child runs `spawn._main`, which calls the module-level `prepare` after the fork.
spawn.prepare = _prepare
quiet_libraries()
if not verbose():
    _silence_server()
