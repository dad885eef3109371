"""The fleet server: device API, TUF repository over HTTP, rollouts and the admin API.

`create_app(ServerConfig(...))` is the ASGI application; `edgeforge serve` runs it under
uvicorn. Nothing here is imported by the device agent.
"""

from __future__ import annotations

__all__: list[str] = []
