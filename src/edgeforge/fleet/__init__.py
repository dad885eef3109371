"""The fleet half: signed releases, the fleet server, and the device agent.

Invariant: importing `edgeforge.fleet` imports nothing heavy; each name is imported on first
use (the device agent and client import neither torch nor any converter).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeforge.fleet.agent import Agent

__all__ = ["Agent"]

_LAZY = {"Agent": "edgeforge.fleet.agent"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeforge.fleet' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
