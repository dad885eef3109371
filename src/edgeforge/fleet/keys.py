"""The keys of a TUF repository: Ed25519, through securesystemslib's signers.

Layout of a keys folder (by default `DIR.parent / f"{DIR.name}-keys"`, beside the repository
DIR and never inside it):

    KEYS/                      0700
      root/<keyid>.pem         offline-style: sign the root (who may sign what)
      targets/<keyid>.pem      offline-style: sign what exists (the releases)
      online/snapshot/<keyid>.pem, online/timestamp/<keyid>.pem
                               online: re-signed on every publish and on a schedule
      online/director/<keyid>.pem
                               online: signs which release each device should run
      signers.json             optional: keyid -> signer URI for keys held elsewhere
      retired/<role>/...       keys rotated out (kept so an old signature can be explained)

Invariants: every private key file is PEM PKCS#8, mode 0600, in a 0700 folder; a key file
readable by group or others is refused with the `chmod 600` that fixes it; no private key is
ever written under the repository folder (`private_keys_in` finds one if someone puts it there,
and `serve` refuses to serve such a folder). Keys are made and used only through
securesystemslib (`CryptoSigner.generate_ed25519`, `Signer.from_priv_key_uri`): no hand-rolled
crypto.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey

from edgeforge.errors import EdgeforgeError

__all__ = [
    "ONLINE_ROLES",
    "TUF_ROLES",
    "check_permissions",
    "default_keys_dir",
    "generate",
    "load_signers",
    "private_keys_in",
    "public_key_from_uri",
    "register_external",
    "retire",
    "role_dir",
]

TUF_ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE_ROLES = ("snapshot", "timestamp", "director")
_PEM_MARK = b"PRIVATE KEY-----"
_EXTERNAL = "signers.json"


def default_keys_dir(repo: Path) -> Path:
    """Where a repository's keys live unless `--keys` says otherwise: beside it, not in it."""
    repo = Path(repo).resolve()
    return repo.parent / f"{repo.name}-keys"


def role_dir(keys: Path, role: str) -> Path:
    """The folder of one role's private keys."""
    return keys / "online" / role if role in ONLINE_ROLES else keys / role


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def generate(keys: Path, role: str) -> CryptoSigner:
    """A new Ed25519 key for `role`, its private half written 0600 under `keys`."""
    signer = CryptoSigner.generate_ed25519()
    folder = role_dir(keys, role)
    for path in (keys, folder.parent, folder):
        _private_dir(path)
    path = folder / f"{signer.public_key.keyid}.pem"
    # O_EXCL + 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(signer.private_bytes)
    return signer


def check_permissions(path: Path) -> None:
    """Refuse a key file that group or others may read or write."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise EdgeforgeError(
            f"key file {path} is open to group or others (mode {stat.filemode(mode)}); "
            f"fix it with: chmod 600 {path}"
        )


def _external(keys: Path) -> dict[str, str]:
    path = keys / _EXTERNAL
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def register_external(keys: Path, keyid: str, uri: str) -> None:
    """Remember that the private key `keyid` is held elsewhere, reachable through `uri`."""
    _private_dir(keys)
    table = _external(keys)
    table[keyid] = uri
    path = keys / _EXTERNAL
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(table, file, indent=2)
    os.replace(tmp, path)


def public_key_from_uri(uri: str, public_pem: Path | None = None) -> Key:
    """The public key of an external signer: from `public_pem`, or for a `file2:` URI from the
    private key file itself. Other signer kinds need `public_pem`."""
    from cryptography.hazmat.primitives.serialization import (
        load_pem_private_key,
        load_pem_public_key,
    )

    if public_pem is not None:
        return SSlibKey.from_crypto(load_pem_public_key(Path(public_pem).read_bytes()))
    if uri.startswith("file2:"):
        path = Path(uri.removeprefix("file2:"))
        check_permissions(path)
        private = load_pem_private_key(path.read_bytes(), None)
        return SSlibKey.from_crypto(private.public_key())
    raise EdgeforgeError(
        f"signer {uri} is not a key file: give its public key too (role=URI,PUBLIC.pem)"
    )


def load_signers(keys: Path, role: str, public_keys: dict[str, Key]) -> list[Signer]:
    """The signers this machine holds for `role`, one per key of `public_keys` found either as
    a key file in the role's folder or as an external signer URI. Keys not held are skipped;
    the caller decides whether the threshold is met."""
    external = _external(keys)
    folder = role_dir(keys, role)
    signers: list[Signer] = []
    for keyid, public in public_keys.items():
        path = folder / f"{keyid}.pem"
        if keyid in external:
            uri = external[keyid]
            if uri.startswith("file2:"):
                check_permissions(Path(uri.removeprefix("file2:")))
        elif path.exists():
            check_permissions(path)
            uri = f"file2:{path}"
        else:
            continue
        try:
            signers.append(Signer.from_priv_key_uri(uri, public))
        except (ValueError, OSError) as exc:
            raise EdgeforgeError(f"cannot load the {role} key {uri}: {exc}") from exc
    return signers


def retire(keys: Path, role: str, keyid: str) -> None:
    """Move a rotated-out key file to `retired/<role>/`, out of the signing path."""
    path = role_dir(keys, role) / f"{keyid}.pem"
    if not path.exists():
        return
    target = keys / "retired" / role
    _private_dir(keys / "retired")
    _private_dir(target)
    os.replace(path, target / path.name)


def private_keys_in(folder: Path) -> list[Path]:
    """Every file under `folder` that holds a PEM private key (or is a key file by name).

    `serve` refuses a folder for which this is not empty: what is served must never carry a
    private key. Files are read in 1 MiB chunks with an overlap, so a key is found anywhere
    in a file, not only at its start."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    # Links are followed (a static server follows them too); each real folder is read once.
    for root, dirs, files in os.walk(folder, followlinks=True):
        here = os.stat(root)
        if (here.st_dev, here.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((here.st_dev, here.st_ino))
        for name in files:
            path = Path(root) / name
            if _holds_private_key(path):
                found.append(path)
    return sorted(found)


def _holds_private_key(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            tail = b""
            while chunk := file.read(1 << 20):
                if _PEM_MARK in tail + chunk:
                    return True
                tail = chunk[-len(_PEM_MARK) :]
    except OSError:
        return False
    return False
