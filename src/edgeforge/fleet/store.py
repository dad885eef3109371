"""Where the registry keeps a copy of every released file: a local folder or an S3 bucket.

Objects are content-addressed: `sha256/<first two hex>/<hex>`, so a file released twice is stored
once and a stored object can be checked against its name. The TUF repository's `targets/` is what
devices read; the store is the registry's own archive of the same bytes (a repository can be
rebuilt from it, and a PostgreSQL-backed registry on another host can reach it).

Invariants:
- `put` never leaves a partial object under its final name (local: temp file + rename; S3: one
  PUT, which is atomic);
- `get` checks the bytes against the hash it asked for, so a tampered store cannot slip a
  different file past the registry;
- `--store` is `s3://bucket[/prefix]` or a folder path; the S3 endpoint comes from `endpoint_url`
  or boto3's own `AWS_ENDPOINT_URL` (any S3-compatible server: MinIO, Ceph, moto).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from edgeforge.errors import EdgeforgeError

__all__ = ["ArtifactStore", "LocalStore", "S3Store", "open_store"]


def _key(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return f"sha256/{sha256[:2]}/{sha256}"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ArtifactStore(ABC):
    """A content-addressed store of files."""

    uri: str

    @abstractmethod
    def has(self, sha256: str) -> bool: ...

    @abstractmethod
    def _put(self, sha256: str, path: Path) -> None: ...

    @abstractmethod
    def _get(self, sha256: str, out: Path) -> None: ...

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove an object (a release that failed takes back what it added)."""

    def put(self, path: Path, sha256: str | None = None) -> str:
        """Store `path` (unless an object with its hash is there); returns its hash."""
        sha256 = sha256 or _file_sha256(path)
        if not self.has(sha256):
            self._put(sha256, Path(path))
        return sha256

    def get(self, sha256: str, out: Path) -> Path:
        """Write the object to `out`, refusing bytes that do not hash to `sha256`."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
        os.close(handle)
        try:
            self._get(sha256, Path(temp))
            if _file_sha256(Path(temp)) != sha256:
                raise EdgeforgeError(
                    f"{self.uri}: the object {sha256[:12]}... does not hash to its name; the "
                    "store was tampered with or corrupted"
                )
            os.replace(temp, out)
        finally:
            Path(temp).unlink(missing_ok=True)
        return out

    def object_uri(self, sha256: str) -> str:
        return f"{self.uri.rstrip('/')}/{_key(sha256)}"


class LocalStore(ArtifactStore):
    """A folder on this machine."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self.uri = self.folder.as_uri()

    def has(self, sha256: str) -> bool:
        return (self.folder / _key(sha256)).is_file()

    def _put(self, sha256: str, path: Path) -> None:
        final = self.folder / _key(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=".put-", dir=final.parent)
        os.close(handle)
        try:
            shutil.copyfile(path, temp)
            os.replace(temp, final)
        finally:
            Path(temp).unlink(missing_ok=True)

    def _get(self, sha256: str, out: Path) -> None:
        source = self.folder / _key(sha256)
        if not source.is_file():
            raise EdgeforgeError(f"{self.uri}: no object {sha256[:12]}...")
        shutil.copyfile(source, out)

    def delete(self, sha256: str) -> None:
        (self.folder / _key(sha256)).unlink(missing_ok=True)


class S3Store(ArtifactStore):
    """A bucket (and key prefix) on an S3-compatible server, through boto3."""

    def __init__(
        self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, client: Any = None
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.client = client

    def _object(self, sha256: str) -> str:
        return f"{self.prefix}/{_key(sha256)}" if self.prefix else _key(sha256)

    def has(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object(sha256))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(exc) from None
        return True

    def _put(self, sha256: str, path: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_file(
                str(path),
                self.bucket,
                self._object(sha256),
                ExtraArgs={"Metadata": {"sha256": sha256}},
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from None

    def _get(self, sha256: str, out: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.download_file(self.bucket, self._object(sha256), str(out))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from None

    def delete(self, sha256: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._object(sha256))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> EdgeforgeError:
        return EdgeforgeError(
            f"--store {self.uri}: {str(exc).splitlines()[0][:200]}; check the bucket, the "
            "endpoint (AWS_ENDPOINT_URL) and the credentials"
        )


def open_store(
    spec: str | Path | None, repository: Path, *, endpoint_url: str | None = None
) -> ArtifactStore:
    """`--store`: None -> the folder DIR-store beside the repository (never inside what is
    served); `s3://bucket[/prefix]` -> S3; anything else -> a local folder."""
    if spec is None:
        repository = Path(repository)
        return LocalStore(repository.parent / f"{repository.name}-store")
    text = str(spec)
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket:
            raise EdgeforgeError(f"--store {text!r}: write s3://bucket or s3://bucket/prefix")
        return S3Store(bucket, prefix, endpoint_url=endpoint_url)
    if "://" in text and not text.startswith("file://"):
        raise EdgeforgeError(
            f"--store {text!r}: give a folder or s3://bucket/prefix (an S3-compatible server; "
            "set its address in AWS_ENDPOINT_URL)"
        )
    return LocalStore(Path(text.removeprefix("file://")))
