"""The fleet server: device API, TUF repository over HTTP, rollouts and the admin API.

`create_app(ServerConfig(...))` is the ASGI application; `edgeforge serve` runs it under
uvicorn. Nothing here is imported by the device agent.
"""

from __future__ import annotations

__all__ = ["ADMIN_ENV", "ENROLL_ENV"]

# Where `edgeforge serve` reads its tokens (else it writes generated ones, 0600, to its folder).
ADMIN_ENV = "EDGEFORGE_ADMIN_TOKEN"
ENROLL_ENV = "EDGEFORGE_ENROLL_TOKEN"
