"""The fleet wing: from a verified artifact to models running on devices.

Rooms, by name (each imports what it needs when it is imported, nothing here does):

- `keys`: the Ed25519 keys of a TUF repository (offline root/targets, online
  snapshot/timestamp/director), stored 0600 beside the repository, never in it.
- `repository`: the signed repository a release is published into (`Repository`).
- `client`: the device side of a release: `fetch` one variant through the TUF client.
  It imports only the standard library, tuf, securesystemslib and cryptography.
"""

from __future__ import annotations

__all__: list[str] = []
