"""The device protocol: signatures that bind every part of a request, replays and skew refused,
directives accepted only from the director key. Each test names what the attacker controls."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeforge.fleet import protocol
from edgeforge.fleet.protocol import ProtocolError

NOW = 1_800_000_000.0


@pytest.fixture
def device_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _signed(key, body=b'{"state":"idle"}', **kwargs):
    return protocol.sign_request(key, "dev-1", "POST", "/v1/checkin", body, now=NOW, **kwargs)


def test_canonical_is_sorted_compact_utf8():
    assert protocol.canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_headers_have_the_contract_shape(device_key):
    headers = _signed(device_key)
    assert headers["X-Edgeforge-Device"] == "dev-1"
    assert headers["X-Edgeforge-Timestamp"] == str(int(NOW))
    assert len(headers["X-Edgeforge-Nonce"]) == 32
    assert len(protocol.b64decode(headers["X-Edgeforge-Signature"])) == 64


def test_valid_request_verifies_and_returns_nonce(device_key):
    body = b'{"state":"idle"}'
    headers = _signed(device_key, body)
    public = protocol.public_key_bytes(device_key)
    nonce = protocol.verify_request(public, headers, "POST", "/v1/checkin", body, now=NOW + 10)
    assert nonce == headers["X-Edgeforge-Nonce"]
    lowered = {k.lower(): v for k, v in headers.items()}  # header names are case-insensitive
    assert protocol.verify_request(public, lowered, "POST", "/v1/checkin", body, now=NOW) == nonce


def test_signature_covers_the_spec_string(device_key):
    """The signed string is exactly the contract's, so another implementation can verify it."""
    import hashlib

    body = b"{}"
    headers = _signed(device_key, body, nonce="0" * 32)
    message = f"POST\n/v1/checkin\n{int(NOW)}\n{'0' * 32}\n{hashlib.sha256(body).hexdigest()}"
    device_key.public_key().verify(
        protocol.b64decode(headers["X-Edgeforge-Signature"]), message.encode()
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/checkin", b'{"state":"idle"}'),
        ("POST", "/v1/report", b'{"state":"idle"}'),
        ("POST", "/v1/checkin", b'{"state":"probing"}'),
    ],
)
def test_tampered_request_refused(device_key, method, path, body):
    """The attacker (on the network) changes the method, the path or the body."""
    headers = _signed(device_key)
    public = protocol.public_key_bytes(device_key)
    with pytest.raises(ProtocolError, match="does not verify"):
        protocol.verify_request(public, headers, method, path, body, now=NOW)


def test_other_device_key_refused(device_key):
    """The attacker holds a device key of its own and claims another device's id."""
    headers = _signed(Ed25519PrivateKey.generate())
    with pytest.raises(ProtocolError, match="does not verify"):
        protocol.verify_request(
            protocol.public_key_bytes(device_key),
            headers,
            "POST",
            "/v1/checkin",
            b'{"state":"idle"}',
            now=NOW,
        )


def test_replay_outside_skew_refused(device_key):
    """The attacker replays a captured request later than the skew window."""
    headers = _signed(device_key)
    with pytest.raises(ProtocolError, match="clock"):
        protocol.verify_request(
            protocol.public_key_bytes(device_key),
            headers,
            "POST",
            "/v1/checkin",
            b'{"state":"idle"}',
            now=NOW + 301,
        )


def test_changed_timestamp_or_nonce_refused(device_key):
    """The attacker refreshes a captured request's timestamp or nonce to pass the replay check."""
    public = protocol.public_key_bytes(device_key)
    body = b'{"state":"idle"}'
    for name, value in [
        ("X-Edgeforge-Timestamp", str(int(NOW) + 1)),
        ("X-Edgeforge-Nonce", "f" * 32),
    ]:
        headers = {**_signed(device_key, body), name: value}
        with pytest.raises(ProtocolError, match="does not verify"):
            protocol.verify_request(public, headers, "POST", "/v1/checkin", body, now=NOW)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Edgeforge-Nonce", "xyz"),
        ("X-Edgeforge-Timestamp", "soon"),
        ("X-Edgeforge-Signature", "!!!"),
        ("X-Edgeforge-Device", "a b"),
    ],
)
def test_malformed_headers_refused(device_key, name, value):
    headers = {**_signed(device_key), name: value}
    with pytest.raises(ProtocolError):
        protocol.verify_request(
            protocol.public_key_bytes(device_key),
            headers,
            "POST",
            "/v1/checkin",
            b'{"state":"idle"}',
            now=NOW,
        )


def test_missing_header_refused(device_key):
    headers = _signed(device_key)
    del headers["X-Edgeforge-Signature"]
    with pytest.raises(ProtocolError, match="missing header"):
        protocol.verify_request(
            protocol.public_key_bytes(device_key), headers, "POST", "/v1/checkin", b"", now=NOW
        )


def test_directive_round_trip():
    director = Ed25519PrivateKey.generate()
    directive = {
        "device_id": "dev-1",
        "name": "m",
        "version": 2,
        "device_class": "x",
        "action": "install",
        "rollout": 1,
        "issued_at": NOW,
    }
    signed = protocol.sign_directive(director, directive)
    assert protocol.verify_directive(protocol.public_key_bytes(director), signed) == directive


def test_forged_directive_refused():
    """The attacker controls the server's responses but not the director key."""
    director = Ed25519PrivateKey.generate()
    directive = {"device_id": "dev-1", "name": "m", "version": 2, "action": "install"}
    forged = protocol.sign_directive(Ed25519PrivateKey.generate(), directive)
    with pytest.raises(ProtocolError, match="director key"):
        protocol.verify_directive(protocol.public_key_bytes(director), forged)
    signed = protocol.sign_directive(director, directive)
    signed["directive"] = {**directive, "version": 3}
    with pytest.raises(ProtocolError, match="director key"):
        protocol.verify_directive(protocol.public_key_bytes(director), signed)


def test_directive_malformed_refused():
    public = protocol.public_key_bytes(Ed25519PrivateKey.generate())
    for bad in [None, {}, {"directive": []}, {"directive": {}, "signature": 3}]:
        with pytest.raises(ProtocolError):
            protocol.verify_directive(public, bad)
    with pytest.raises(ProtocolError, match="32 raw"):
        protocol.verify_directive(b"short", {"directive": {}, "signature": ""})


def test_protocol_imports_nothing_heavy():
    code = (
        "import sys, edgeforge.fleet.protocol;"
        "heavy=('torch','onnx','edgeforge.runtimes','edgeforge.convert');"
        "bad=[m for m in heavy if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
