"""The device protocol: how a device and the fleet server prove who sent what.

Shared by the agent (device side) and the server; imports only the standard library and
`cryptography`, so a device installs it without anything else of edgeforge's.

Invariants a caller can rely on:
- `canonical(obj)` is the one byte form that is ever signed: sorted keys, no spaces, UTF-8.
- A request signature covers the method, the path, the timestamp, the nonce and the SHA-256 of
  the body, so none of them can be changed or moved to another request without breaking it.
- `verify_request` checks the signature and the clock skew; it returns the nonce, and the
  caller (the server) refuses a nonce it saw within the skew window (a replay).
- A directive is accepted only with a valid signature by the director key the device received
  at enrolment; `verify_directive` returns the directive itself, never unverified data.
- Every failure is a `ProtocolError` (one line, what was wrong); the server answers 401.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeforge.errors import EdgeforgeError

__all__ = [
    "ACTIONS",
    "AGENT_STATES",
    "BODY_LIMITS",
    "EVENT_KINDS",
    "HEADER_DEVICE",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MAX_SKEW_S",
    "ProtocolError",
    "b64decode",
    "b64encode",
    "canonical",
    "public_key_bytes",
    "request_device",
    "sign_directive",
    "sign_request",
    "signing_string",
    "verify_directive",
    "verify_request",
]

HEADER_DEVICE = "X-Edgeforge-Device"
HEADER_TIMESTAMP = "X-Edgeforge-Timestamp"
HEADER_NONCE = "X-Edgeforge-Nonce"
HEADER_SIGNATURE = "X-Edgeforge-Signature"

MAX_SKEW_S = 300

# Body size limits per endpoint (bytes); the server answers 413 beyond them.
BODY_LIMITS: dict[str, int] = {
    "/v1/enrol": 16 * 1024,
    "/v1/checkin": 8 * 1024,
    "/v1/report": 256 * 1024,
}

# The agent's states, as a check-in reports them (`state`).
AGENT_STATES: tuple[str, ...] = (
    "idle",
    "downloading",
    "staged",
    "canary",
    "activating",
    "probing",
    "committing",
    "rolling_back",
)

# Directive actions and report event kinds.
ACTIONS: tuple[str, ...] = ("install", "rollback", "stay")
EVENT_KINDS: tuple[str, ...] = (
    "download",
    "canary",
    "activate",
    "health",
    "commit",
    "rollback",
    "error",
    "personalize",  # that it ran and whether the head was kept: nothing of the user's data
)

_NONCE = re.compile(r"^[0-9a-f]{32}$")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ProtocolError(EdgeforgeError):
    """A request or directive that fails authentication: bad or missing signature, skewed
    timestamp, malformed header or key. The server answers 401."""


def canonical(obj: Any) -> bytes:
    """The bytes that get signed: JSON with sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, *, what: str = "value") -> bytes:
    """Strict base64 decoding; a `ProtocolError` naming `what` on bad input."""
    if not isinstance(text, str):
        raise ProtocolError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ProtocolError(f"{what} is not valid base64") from exc


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte Ed25519 public key (what enrolment sends, base64-encoded)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _load_public(public_key: bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    if isinstance(public_key, Ed25519PublicKey):  # already loaded (the server caches them)
        return public_key
    if not isinstance(public_key, bytes | bytearray) or len(public_key) != 32:
        raise ProtocolError("public key must be 32 raw Ed25519 bytes")
    return Ed25519PublicKey.from_public_bytes(bytes(public_key))


def signing_string(method: str, path: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    """What a request signature covers (contract, section 4)."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()


def sign_request(
    key: Ed25519PrivateKey,
    device_id: str,
    method: str,
    path: str,
    body: bytes,
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four headers that authenticate one request from `device_id`."""
    timestamp = int(time.time() if now is None else now)
    nonce = secrets.token_hex(16) if nonce is None else nonce
    if not _NONCE.match(nonce):
        raise ProtocolError("nonce must be 32 lowercase hex characters")
    signature = key.sign(signing_string(method, path, timestamp, nonce, body))
    return {
        HEADER_DEVICE: device_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: b64encode(signature),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        # A plain dict with other capitalisation (HTTP header names are case-insensitive).
        lowered = name.lower()
        for key, item in headers.items():
            if key.lower() == lowered:
                value = item
                break
    if value is None:
        raise ProtocolError(f"missing header {name}")
    return value


def request_device(headers: Mapping[str, str]) -> str:
    """The device id a request claims (so the server can look up its key before verifying)."""
    device_id = _header(headers, HEADER_DEVICE)
    if not _DEVICE_ID.match(device_id):
        raise ProtocolError(f"malformed {HEADER_DEVICE} header")
    return device_id


def verify_request(
    public_key: bytes | Ed25519PublicKey,
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    *,
    now: float,
    max_skew_s: float = MAX_SKEW_S,
) -> str:
    """Check a request's signature and timestamp; returns its nonce for the replay check.

    Raises `ProtocolError` for a missing or malformed header, a timestamp more than
    `max_skew_s` away from `now`, or a signature that does not verify with `public_key`.
    """
    request_device(headers)
    raw_timestamp = _header(headers, HEADER_TIMESTAMP)
    if not re.fullmatch(r"-?[0-9]{1,12}", raw_timestamp):
        raise ProtocolError(f"malformed {HEADER_TIMESTAMP} header")
    timestamp = int(raw_timestamp)
    if abs(now - timestamp) > max_skew_s:
        raise ProtocolError(
            f"request timestamp is more than {max_skew_s:g} s from the server's clock"
        )
    nonce = _header(headers, HEADER_NONCE)
    if not _NONCE.match(nonce):
        raise ProtocolError(f"malformed {HEADER_NONCE} header")
    signature = b64decode(_header(headers, HEADER_SIGNATURE), what=HEADER_SIGNATURE)
    try:
        _load_public(public_key).verify(
            signature, signing_string(method, path, timestamp, nonce, body)
        )
    except InvalidSignature as exc:
        raise ProtocolError("request signature does not verify") from exc
    return nonce


def sign_directive(key: Ed25519PrivateKey, directive: dict) -> dict:
    """`{"directive": directive, "signature": b64}` signed over `canonical(directive)`."""
    return {"directive": directive, "signature": b64encode(key.sign(canonical(directive)))}


def verify_directive(public_key: bytes, signed: dict) -> dict:
    """The directive inside `signed` if its signature verifies with the director key."""
    if not isinstance(signed, dict) or not isinstance(signed.get("directive"), dict):
        raise ProtocolError("signed directive must be an object with a 'directive' object")
    signature = b64decode(signed.get("signature"), what="directive signature")  # type: ignore[arg-type]
    directive = signed["directive"]
    try:
        _load_public(public_key).verify(signature, canonical(directive))
    except InvalidSignature as exc:
        raise ProtocolError("directive signature does not verify with the director key") from exc
    if directive.get("action") not in ACTIONS:
        raise ProtocolError(f"directive action must be one of {', '.join(ACTIONS)}")
    return directive
