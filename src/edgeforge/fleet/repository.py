"""A TUF repository that releases are published into, through python-tuf's Metadata API.

Layout of a repository DIR (what `serve` exposes is `metadata/` and `targets/` only):

    DIR/metadata/N.root.json, root.json     every root version, and the newest
    DIR/metadata/N.targets.json, targets.json, N.snapshot.json, snapshot.json, timestamp.json
    DIR/targets/<dir>/<sha256>.<name>        target files, hash-prefixed (consistent snapshots)
    DIR/repository.json                      settings: expiry per role (not served)
    DIR/.lock                                the publishers' lock (fcntl)

Invariants a caller can rely on:
- Consistent snapshots: a metadata or target file, once written under its versioned or
  hash-prefixed name, never changes; `timestamp.json` (and `root.json`) are the only files
  replaced in place, and each replacement is one `os.replace`.
- Publishing is all or nothing: new target files and metadata are staged first, then moved into
  place with `timestamp.json` last; an exception at any point undoes what was moved, so DIR is
  as it was. A crash (power cut) can at worst leave unreferenced staged files behind; readers
  follow timestamp -> snapshot -> targets and never see them.
- Versions only go up; every role's metadata is signed by at least its threshold of keys, or
  nothing is written. The trusted chain is read from disk under the lock for every change, so
  several processes may publish into one DIR (serialised by `lock()`).
- No private key is ever written under DIR (keys live in the keys folder, `edgeforge.fleet.keys`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet import keys as keystore
from edgeforge.fleet._durable import write_atomic

__all__ = ["DEFAULT_EXPIRY", "DEFAULT_THRESHOLDS", "Repository"]

DEFAULT_EXPIRY: dict[str, timedelta] = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
DEFAULT_THRESHOLDS: dict[str, int] = dict.fromkeys(keystore.TUF_ROLES, 1)
_SETTINGS = "repository.json"
_CHUNK = 1 << 20
_SERIALIZER = JSONSerializer(compact=True)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Repository:
    """One TUF repository folder and the keys that sign it. Make one with `init` or `open`."""

    def __init__(
        self,
        path: Path,
        keys: Path,
        expiry: dict[str, timedelta],
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.path = path
        self.keys = keys
        self.expiry = expiry
        # The repository's clock (expiry dates are computed from it); tests move it.
        self.clock: Callable[[], datetime] = clock or _utcnow
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._lock_file: Any = None

    # ----------------------------------------------------------------- make / open

    @classmethod
    def init(
        cls,
        path: Path,
        keys: Path | None = None,
        *,
        expiry: dict[str, timedelta] | None = None,
        thresholds: dict[str, int] | None = None,
        signers: dict[str, list[tuple[str, Key]]] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> Repository:
        """A new repository in `path` (absent or empty), keys in `keys` (beside it by default).

        `expiry` and `thresholds` override the defaults per role; `signers` names external keys
        per role as (signer URI, public key): they replace the keys generated for that role.
        Writes `metadata/1.root.json`, the root a device ships with."""
        path = Path(path).resolve()
        keys = Path(keys).resolve() if keys is not None else keystore.default_keys_dir(path)
        if keys == path or path in keys.parents:
            raise EdgeforgeError(
                f"keys folder {keys} is inside the repository {path}, which gets served; "
                "choose a --keys folder outside it"
            )
        if (path / "metadata" / "root.json").exists():
            raise EdgeforgeError(f"{path} is already a repository; open it instead")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise EdgeforgeError(f"{path} exists and is not an empty folder; choose another")
        if keys.exists() and any(keys.iterdir()):
            raise EdgeforgeError(f"keys folder {keys} is not empty; choose another with --keys")
        expiry = _merged("expiry", DEFAULT_EXPIRY, expiry or {})
        thresholds = _merged("threshold", DEFAULT_THRESHOLDS, thresholds or {})
        for role, value in expiry.items():
            if value <= timedelta(0):
                raise EdgeforgeError(f"expiry of {role} must be positive, not {value}")
        for role, value in thresholds.items():
            if value < 1:
                raise EdgeforgeError(f"threshold of {role} must be at least 1, not {value}")
        external = signers or {}
        unknown = set(external) - set(keystore.TUF_ROLES)
        if unknown:
            raise EdgeforgeError(
                f"unknown role {sorted(unknown)[0]!r} in signers; roles: root, targets, "
                "snapshot, timestamp"
            )

        repo = cls(path, keys, expiry, clock=clock)
        created = not path.exists()
        keys_created = not keys.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / "metadata").mkdir()
            (path / "targets").mkdir()
            now = repo.clock()
            root = Metadata(Root(expires=now + expiry["root"], consistent_snapshot=True))
            role_signers: dict[str, list[Signer]] = {}
            for role in keystore.TUF_ROLES:
                if role in external:
                    role_signers[role] = []
                    for uri, key in external[role]:
                        role_signers[role].append(_external_signer(uri, key))
                        keystore.register_external(keys, key.keyid, uri)
                else:
                    role_signers[role] = [
                        keystore.generate(keys, role) for _ in range(thresholds[role])
                    ]
                if len(role_signers[role]) < thresholds[role]:
                    raise EdgeforgeError(
                        f"{role} has {len(role_signers[role])} keys, fewer than its "
                        f"threshold {thresholds[role]}"
                    )
                for signer in role_signers[role]:
                    root.signed.add_key(signer.public_key, role)
                root.signed.roles[role].threshold = thresholds[role]
            keystore.generate(keys, "director")
            targets = Metadata(Targets(expires=now + expiry["targets"]))
            snapshot = Metadata(Snapshot(expires=now + expiry["snapshot"]))
            timestamp = Metadata(Timestamp(expires=now + expiry["timestamp"]))
            chain = {"root": root, "targets": targets, "snapshot": snapshot}
            chain["timestamp"] = timestamp
            for role, md in chain.items():
                for signer in role_signers[role]:
                    md.sign(signer, append=True)
            meta = path / "metadata"
            for role in ("root", "targets", "snapshot"):
                data = chain[role].to_bytes(_SERIALIZER)
                write_atomic(meta / f"1.{role}.json", data)
                write_atomic(meta / f"{role}.json", data)
            write_atomic(meta / "timestamp.json", timestamp.to_bytes(_SERIALIZER))
            settings = {"expiry_seconds": {r: v.total_seconds() for r, v in expiry.items()}}
            write_atomic(path / _SETTINGS, json.dumps(settings, indent=2).encode())
        except BaseException:
            _remove_tree(path / "metadata")
            _remove_tree(path / "targets")
            with contextlib.suppress(OSError):
                (path / _SETTINGS).unlink()
            if created:
                with contextlib.suppress(OSError):
                    path.rmdir()
            # the keys folder was absent or empty: what init made in it goes too
            for entry in keys.iterdir() if keys.is_dir() else []:
                if entry.is_dir():
                    _remove_tree(entry)
                else:
                    entry.unlink()
            if keys_created:
                with contextlib.suppress(OSError):
                    keys.rmdir()
            raise
        return repo

    @classmethod
    def open(
        cls,
        path: Path,
        keys: Path | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> Repository:
        """An existing repository. Refuses a folder that is not one, a missing keys folder or
        online key, and a key file readable by group or others (each in one line)."""
        path = Path(path).resolve()
        keys = Path(keys).resolve() if keys is not None else keystore.default_keys_dir(path)
        if not (path / "metadata" / "root.json").is_file() or not (path / _SETTINGS).is_file():
            raise EdgeforgeError(
                f"{path} is not an edgeforge repository (no metadata/root.json); "
                f"make one with: edgeforge keys init --repo {path}"
            )
        if not keys.is_dir():
            raise EdgeforgeError(f"keys folder {keys} not found; pass the right one with --keys")
        for pem in sorted(keys.rglob("*.pem")):
            keystore.check_permissions(pem)
        settings = json.loads((path / _SETTINGS).read_text())
        expiry = {r: timedelta(seconds=s) for r, s in settings["expiry_seconds"].items()}
        repo = cls(path, keys, expiry, clock=clock)
        root = repo._read("root.json", Root)
        for role in ("snapshot", "timestamp"):
            repo._signers(role, root)  # raises when this machine lacks the online keys
        return repo

    # ----------------------------------------------------------------- reading

    def _read(self, name: str, kind: type) -> Metadata:
        md = Metadata.from_file(str(self.path / "metadata" / name))
        if not isinstance(md.signed, kind):
            raise EdgeforgeError(f"{self.path / 'metadata' / name} is not {kind.type} metadata")
        return md

    def _chain(self) -> dict[str, Metadata]:
        """The trusted chain as readers see it: root, timestamp -> snapshot -> targets."""
        timestamp = self._read("timestamp.json", Timestamp)
        snapshot = self._read(f"{timestamp.signed.snapshot_meta.version}.snapshot.json", Snapshot)
        version = snapshot.signed.meta["targets.json"].version
        return {
            "root": self._read("root.json", Root),
            "targets": self._read(f"{version}.targets.json", Targets),
            "snapshot": snapshot,
            "timestamp": timestamp,
        }

    def metadata(self) -> dict[str, Metadata]:
        """The current signed metadata of each top-level role."""
        return self._chain()

    def targets(self) -> dict[str, dict]:
        """Every published target: path -> {"length", "hashes", "custom"}."""
        signed = self._chain()["targets"].signed
        return {
            path: {"length": info.length, "hashes": dict(info.hashes), "custom": info.custom}
            for path, info in signed.targets.items()
        }

    def target_file(self, path: str) -> Path:
        """Where the current version of target `path` lies on disk (hash-prefixed name)."""
        info = self._chain()["targets"].signed.targets.get(path)
        if info is None:
            raise EdgeforgeError(f"no target {path} in {self.path}")
        return self._target_location(path, info.hashes["sha256"])

    def _target_location(self, path: str, sha256: str) -> Path:
        pure = PurePosixPath(path)
        return self.path / "targets" / pure.parent / f"{sha256}.{pure.name}"

    # ----------------------------------------------------------------- keys

    def _signers(self, role: str, root: Metadata) -> list[Signer]:
        info = root.signed.roles[role]
        public = {keyid: root.signed.keys[keyid] for keyid in info.keyids}
        signers = keystore.load_signers(self.keys, role, public)
        if len(signers) < info.threshold:
            raise EdgeforgeError(
                f"only {len(signers)} of the {info.threshold} {role} keys needed are in "
                f"{self.keys}; bring the {role} keys (or pass the right --keys)"
            )
        return signers

    def _sign(self, md: Metadata, role: str, root: Metadata) -> None:
        md.signatures.clear()
        for signer in self._signers(role, root):
            md.sign(signer, append=True)

    def _expires(self, role: str) -> datetime:
        return self.clock() + self.expiry[role]

    def _director(self) -> Any:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        folder = keystore.role_dir(self.keys, "director")
        found = sorted(folder.glob("*.pem")) if folder.is_dir() else []
        if not found:
            raise EdgeforgeError(f"no director key in {folder}; pass the right --keys")
        keystore.check_permissions(found[0])
        return load_pem_private_key(found[0].read_bytes(), None)

    def director_public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key of the online director key."""
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return self._director().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def director_sign(self, payload: bytes) -> bytes:
        """An Ed25519 signature of `payload` with the director key (64 bytes)."""
        return self._director().sign(payload)

    # ----------------------------------------------------------------- lock

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive use of the repository, across threads and processes (fcntl on DIR/.lock).
        Re-entrant within one `Repository` object."""
        with self._thread_lock:
            if self._lock_depth == 0:
                handle = open(self.path / ".lock", "a+b")  # noqa: SIM115 (held across yield)
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                except BaseException:
                    handle.close()
                    raise
                self._lock_file = handle
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
                    self._lock_file.close()
                    self._lock_file = None

    # ----------------------------------------------------------------- changes

    def publish(
        self,
        files: dict[str, Path],
        custom: dict[str, dict] | None = None,
        *,
        move: bool = False,
    ) -> int:
        """Add or replace targets: target path -> local file, copied in hash-prefixed; re-signs
        targets, snapshot and timestamp. All or nothing. Returns the new targets version.

        `move=True` says the local files are the caller's to give away (a release's temporary
        folder): on the same file system they are linked in and removed once the release is
        committed, instead of copied, so publishing costs one read (the hash), not a copy.
        If the publish fails they stay where they were."""
        custom = custom or {}
        for target in (*files, *custom):
            _check_target_path(target)
        extra = set(custom) - set(files)
        if extra:
            raise EdgeforgeError(f"custom field for {sorted(extra)[0]}, which is not published")
        with self.lock(), _Transaction() as tx:
            chain = self._chain()
            root, targets = chain["root"], chain["targets"]
            for target, local in files.items():
                stage = tx.stage_link if move else tx.stage_copy
                staged, sha256, length = stage(Path(local), self.path / "targets")
                fields = {"custom": custom[target]} if target in custom else {}
                targets.signed.targets[target] = TargetFile(
                    length, {"sha256": sha256}, target, fields
                )
                tx.place(staged, self._target_location(target, sha256))
            self._bump(targets, "targets", root)
            self._commit_chain(tx, chain, new_targets=True)
            version = targets.signed.version
        if move:
            for local in files.values():
                with contextlib.suppress(OSError):
                    Path(local).unlink()
        return version

    def _bump(self, md: Metadata, role: str, root: Metadata) -> None:
        md.signed.version += 1
        md.signed.expires = self._expires(role)
        self._sign(md, role, root)

    def _commit_chain(
        self,
        tx: _Transaction,
        chain: dict[str, Metadata],
        *,
        new_targets: bool,
        new_snapshot: bool = True,
    ) -> None:
        """Write the changed chain: [targets ->] [snapshot ->] timestamp, timestamp last."""
        root, meta = chain["root"], self.path / "metadata"
        snapshot, timestamp = chain["snapshot"], chain["timestamp"]
        if new_targets:
            targets = chain["targets"]
            data = targets.to_bytes(_SERIALIZER)
            tx.write(meta / f"{targets.signed.version}.targets.json", data)
            tx.write(meta / "targets.json", data)
            snapshot.signed.meta["targets.json"] = MetaFile(targets.signed.version)
        if new_snapshot:
            self._bump(snapshot, "snapshot", root)
            data = snapshot.to_bytes(_SERIALIZER)
            tx.write(meta / f"{snapshot.signed.version}.snapshot.json", data)
            tx.write(meta / "snapshot.json", data)
            timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
        self._bump(timestamp, "timestamp", root)
        tx.write(meta / "timestamp.json", timestamp.to_bytes(_SERIALIZER))

    def resign_timestamp(self, *, if_expiring_within: timedelta | None = None) -> bool:
        """A fresh timestamp (online key only), always or only when the current one expires
        within `if_expiring_within`. Returns whether it was re-signed."""
        with self.lock(), _Transaction() as tx:
            chain = self._chain()
            expires = chain["timestamp"].signed.expires
            if if_expiring_within is not None and expires - self.clock() > if_expiring_within:
                return False
            self._commit_chain(tx, chain, new_targets=False, new_snapshot=False)
            return True

    def resign_online(self, *, if_expiring_within: timedelta | None = None) -> list[str]:
        """Fresh snapshot and timestamp (online keys only) where they expire within the window
        (always when it is None). Returns the roles re-signed."""
        with self.lock(), _Transaction() as tx:
            chain = self._chain()
            now, window = self.clock(), if_expiring_within

            def due(role: str) -> bool:
                return window is None or chain[role].signed.expires - now <= window

            if due("snapshot"):
                self._commit_chain(tx, chain, new_targets=False)
                return ["snapshot", "timestamp"]
            if due("timestamp"):
                self._commit_chain(tx, chain, new_targets=False, new_snapshot=False)
                return ["timestamp"]
            return []

    def rotate(self, role: str) -> list[str]:
        """New keys for `role` (as many as its threshold), replacing the old ones.

        The new root is signed by the old root keys and, when root itself rotates, by the new
        ones too, so a device moves from root N to N+1 by the thresholds of both. The role's
        metadata (and what depends on it) is re-signed with the new keys. Old key files move to
        `retired/`. Returns the new key ids."""
        if role == "director":
            with self.lock():
                old = sorted(keystore.role_dir(self.keys, "director").glob("*.pem"))
                signer = keystore.generate(self.keys, "director")
                for path in old:
                    keystore.retire(self.keys, "director", path.stem)
                return [signer.public_key.keyid]
        if role not in keystore.TUF_ROLES:
            raise EdgeforgeError(
                f"unknown role {role}; rotate one of root, targets, snapshot, timestamp, director"
            )
        with self.lock():
            chain = self._chain()
            root = chain["root"]
            old_root_signers = self._signers("root", root)
            info = root.signed.roles[role]
            old_ids = list(info.keyids)
            new = [keystore.generate(self.keys, role) for _ in range(info.threshold)]
            try:
                with _Transaction() as tx:
                    for keyid in old_ids:
                        root.signed.revoke_key(keyid, role)
                    for signer in new:
                        root.signed.add_key(signer.public_key, role)
                    root.signed.version += 1
                    root.signed.expires = self._expires("root")
                    root.signatures.clear()
                    for signer in old_root_signers + (new if role == "root" else []):
                        root.sign(signer, append=True)
                    data = root.to_bytes(_SERIALIZER)
                    meta = self.path / "metadata"
                    tx.write(meta / f"{root.signed.version}.root.json", data)
                    tx.write(meta / "root.json", data)
                    # The chain's root is the new one now: _sign finds the new keys.
                    if role == "targets":
                        self._bump(chain["targets"], "targets", root)
                        self._commit_chain(tx, chain, new_targets=True)
                    elif role == "snapshot":
                        self._commit_chain(tx, chain, new_targets=False)
                    elif role == "timestamp":
                        self._commit_chain(tx, chain, new_targets=False, new_snapshot=False)
            except BaseException:
                for signer in new:
                    (keystore.role_dir(self.keys, role) / f"{signer.public_key.keyid}.pem").unlink()
                raise
            for keyid in old_ids:
                keystore.retire(self.keys, role, keyid)
            return [signer.public_key.keyid for signer in new]


def _merged(what: str, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    unknown = set(given) - set(defaults)
    if unknown:
        raise EdgeforgeError(
            f"unknown role {sorted(unknown)[0]!r} in {what}; roles: {', '.join(defaults)}"
        )
    return {**defaults, **given}


def _external_signer(uri: str, key: Key) -> Signer:
    try:
        return Signer.from_priv_key_uri(uri, key)
    except Exception as exc:  # each signer kind fails in its own way; all are bad input here
        raise EdgeforgeError(f"cannot use the signer {uri}: {type(exc).__name__}: {exc}") from exc


def _check_target_path(path: str) -> None:
    pure = PurePosixPath(path)
    if (
        not path
        or pure.is_absolute()
        or "\\" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise EdgeforgeError(
            f"target path {path!r} must be relative, with '/' and no '.' or '..' parts"
        )


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class _Transaction:
    """Moves staged files into place and undoes every move if the block raises.

    `write` keeps the previous bytes of a file it replaces; `place` records whether its target
    existed (a hash-prefixed file that existed holds the same bytes, so it is left alone)."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self._staged: list[Path] = []

    def __enter__(self) -> _Transaction:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        for path in self._staged:
            with contextlib.suppress(OSError):
                path.unlink()
        if kind is not None:
            for undo in reversed(self._undo):
                with contextlib.suppress(OSError):
                    undo()

    def stage_copy(self, source: Path, folder: Path) -> tuple[Path, str, int]:
        """Copy `source` into `folder` under a temporary name, hashing as it goes."""
        staged = folder / f".staged-{uuid.uuid4().hex}"
        self._staged.append(staged)
        digest = hashlib.sha256()
        length = 0
        try:
            reader = open(source, "rb")  # noqa: SIM115
        except OSError as exc:
            raise EdgeforgeError(f"cannot read {source}: {exc.strerror}") from exc
        with reader, open(staged, "wb") as writer:
            while chunk := reader.read(_CHUNK):
                digest.update(chunk)
                writer.write(chunk)
                length += len(chunk)
            writer.flush()
            os.fsync(writer.fileno())
        return staged, digest.hexdigest(), length

    def stage_link(self, source: Path, folder: Path) -> tuple[Path, str, int]:
        """Link `source` into `folder` under a temporary name and hash it (one read, no copy);
        a copy where a link cannot be made (another file system)."""
        staged = folder / f".staged-{uuid.uuid4().hex}"
        try:
            os.link(source, staged)
        except OSError:
            return self.stage_copy(source, folder)
        self._staged.append(staged)
        digest = hashlib.sha256()
        length = 0
        with open(staged, "rb") as reader:
            while chunk := reader.read(_CHUNK):
                digest.update(chunk)
                length += len(chunk)
            os.fsync(reader.fileno())  # what the caller wrote may not be on disk yet
        return staged, digest.hexdigest(), length

    def place(self, staged: Path, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            return  # same name = same sha256 = same bytes
        os.replace(staged, final)
        self._undo.append(final.unlink)

    def write(self, path: Path, data: bytes) -> None:
        previous = path.read_bytes() if path.exists() else None
        write_atomic(path, data)
        if previous is None:
            self._undo.append(path.unlink)
        else:
            self._undo.append(lambda: write_atomic(path, previous))
