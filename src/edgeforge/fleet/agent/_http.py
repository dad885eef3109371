"""The agent's one seam to the fleet server: enrol, check in, report (contract, section 4).

Standard library only (urllib), so the agent stays small in memory. Every request but enrolment
is signed with the device key (`edgeforge.fleet.protocol.sign_request`).
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeforge.fleet.protocol import sign_request

__all__ = ["Offline", "ServerClient"]


class Offline(Exception):
    """The server could not be reached (network down, server gone, 5xx)."""


class ServerClient:
    def __init__(self, server: str, *, timeout: float = 10.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: dict | None,
        *,
        key: Ed25519PrivateKey | None = None,
        device_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if key is not None and device_id is not None:
            all_headers.update(sign_request(key, device_id, method, path, data))
        request = urllib.request.Request(
            self.server + path, data=data if method != "GET" else None, method=method
        )
        for name, value in all_headers.items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
                reply_headers = dict(response.headers.items())
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
            reply_headers = dict(exc.headers.items()) if exc.headers else {}
            if status >= 500:
                raise Offline(f"{path}: HTTP {status}") from exc
        except (
            OSError,
            ValueError,
            http.client.HTTPException,
        ) as exc:  # refused, reset, timed out, bad reply
            raise Offline(f"{path}: {exc}") from exc
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        return status, reply_headers, payload
