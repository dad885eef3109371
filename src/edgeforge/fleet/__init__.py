"""The fleet half: signed releases, the fleet server, and the device agent.

Invariant: importing `edgeforge.fleet` imports nothing heavy; each name is imported on first
use (the device agent and client import neither torch nor any converter).

Rooms, by name (each imports what it needs when it is imported, nothing here does):

- `keys`: the Ed25519 keys of a TUF repository (offline root/targets, online
  snapshot/timestamp/director), stored 0600 beside the repository, never in it.
- `repository`: the signed repository a release is published into (`Repository`).
- `client`: the device side of a release: `fetch` one variant through the TUF client.
  It imports only the standard library, tuf, securesystemslib and cryptography.
- `protocol`: how a device and the fleet server sign requests and directives.
- `agent`: the device program (`Agent(state).predict(feed)`), a journaled two-slot state
  machine; no torch, no converter.
- `server`: the fleet server (device API, repository over HTTP, rollouts, admin API).
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
