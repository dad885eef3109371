"""The fleet half: signed releases, the registry, the client, the agent and the server.

Kept tiny and lazy on purpose: importing `edgeforge.fleet` imports nothing heavy, so the device
side (`edgeforge.fleet.client`, `edgeforge.fleet.agent`) stays free of torch and converters.
"""

from __future__ import annotations

__all__: list[str] = []
