"""A TUF fetcher whose target downloads survive a lost connection, a restart or a power cut.

`ResumableFetcher` is a `tuf.ngclient.FetcherInterface`: the TUF client still checks every byte
(length and hashes from signed metadata); this class only decides where the bytes come from.

Invariants:
- A target's bytes go to `partial/<key>.part`; `partial/<key>.offset` names how many of them
  are durable (fsynced before the offset is written atomically). On the next try the file is cut
  back to that offset and the rest is asked for with `Range: bytes=OFFSET-`.
- A server that ignores the Range (answers 200) starts the file again from byte 0; nothing
  already handed to the TUF client is ever handed twice (the request is answered before any
  stored byte is yielded).
- Once every byte has been yielded the partial files are removed, so a download the TUF client
  then rejects (wrong hash) starts clean next time. A failed write (disk full) removes them too
  and re-raises, so the disk is freed and the caller reports it.
- Metadata files are small and always fetched whole.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

from edgeforge.fleet.agent._files import atomic_write_json, read_json

__all__ = ["ResumableFetcher"]


class ResumableFetcher(FetcherInterface):
    """HTTP(S) fetcher with Range resume for `/targets/` URLs, offsets persisted under `folder`."""

    def __init__(
        self,
        folder: Path,
        *,
        timeout: float = 30.0,
        chunk_size: int = 64 * 1024,
        persist_every: int = 1024 * 1024,
        on_progress: Callable[[str, int], None] | None = None,
    ) -> None:
        self.folder = folder
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.persist_every = persist_every
        self.on_progress = on_progress
        self.resumed_from: dict[str, int] = {}  # url -> offset a download resumed from

    def _open(self, url: str, offset: int = 0):
        request = urllib.request.Request(url)
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                return None  # every byte is already here
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {exc.code}", exc.code) from exc

    def _fetch(self, url: str) -> Iterator[bytes]:
        if "/targets/" not in url:
            response = self._open(url)
            assert response is not None
            return self._stream(response)
        return self._resumable(url)

    def _stream(self, response) -> Iterator[bytes]:
        with response:
            while chunk := response.read(self.chunk_size):
                yield chunk

    def paths(self, url: str) -> tuple[Path, Path]:
        key = hashlib.sha256(url.encode()).hexdigest()[:32]
        return self.folder / f"{key}.part", self.folder / f"{key}.offset"

    def _resumable(self, url: str) -> Iterator[bytes]:
        self.folder.mkdir(parents=True, exist_ok=True)
        part, offset_file = self.paths(url)
        offset = int((read_json(offset_file, {}) or {}).get("offset", 0))
        if not part.exists() or part.stat().st_size < offset:
            offset = 0
        response = self._open(url, offset)
        if response is not None and offset and response.status != 206:
            offset = 0  # the server ignored the Range: start again
        if offset:
            self.resumed_from[url] = offset
        with open(part, "r+b" if part.exists() else "w+b") as handle:
            handle.truncate(offset)  # drop whatever was written after the last durable offset
            handle.seek(0)
            stored = offset
            while stored > 0:
                chunk = handle.read(min(self.chunk_size, stored))
                if not chunk:
                    break
                stored -= len(chunk)
                yield chunk
            handle.seek(offset)
            if response is not None:
                unsaved = 0
                declared = response.headers.get("Content-Length")
                end = offset + int(declared) if declared and declared.isdigit() else None
                try:
                    with response:
                        while chunk := response.read(self.chunk_size):
                            handle.write(chunk)
                            offset += len(chunk)
                            unsaved += len(chunk)
                            if unsaved >= self.persist_every:
                                self._persist(handle, offset_file, url, offset)
                                unsaved = 0
                            yield chunk
                    if end is not None and offset < end:
                        # The connection closed early (urllib returns b"" rather than raising).
                        raise exceptions.DownloadError(
                            f"{url}: connection closed after {offset} of {end} bytes"
                        )
                except Exception as exc:  # a lost connection, a full disk, an interrupt
                    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                        handle.close()
                        self.discard(url)
                        raise
                    with contextlib.suppress(OSError):
                        self._persist(handle, offset_file, url, offset)
                    raise
        self.discard(url)

    def _persist(self, handle, offset_file: Path, url: str, offset: int) -> None:
        handle.flush()
        os.fsync(handle.fileno())
        atomic_write_json(offset_file, {"url": url, "offset": offset})
        if self.on_progress is not None:
            self.on_progress(url, offset)

    def discard(self, url: str) -> None:
        for path in self.paths(url):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def pending(self) -> dict[str, int]:
        """url -> durable offset of every download that can resume."""
        result = {}
        for path in sorted(self.folder.glob("*.offset")):
            data = read_json(path, {}) or {}
            if "url" in data:
                result[data["url"]] = int(data.get("offset", 0))
        return result
