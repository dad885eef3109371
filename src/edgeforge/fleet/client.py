"""The device side of a release: fetch one variant through the TUF client, verified.

What a device trusts: the root metadata it shipped with (`keys init` writes it as
`DIR/metadata/1.root.json`), then whatever that root's keys sign, one root version at a time.
Nothing is taken from the repository on trust: every file is checked by `tuf.ngclient.Updater`
against signed metadata (length and SHA-256), in the fixed order root -> timestamp -> snapshot
-> targets, and versions never go down (the state folder remembers them across runs).

Invariants:
- `state/metadata/` holds the trusted metadata; it is bootstrapped from `root` only when it
  holds none yet, never from the repository it is about to trust.
- The variant must be signed as `NAME/VERSION/CLASS/variant.json` with a custom field naming the
  same name, version and device class, and `variant.json` must say the same device class:
  a variant built for another class is refused, whatever its signatures.
- Every file `variant.json` lists must itself be a signed target with the same length and hash.
- `out` appears complete or not at all (a temporary folder beside it, then a rename).

Imports: the standard library, tuf, securesystemslib and `edgeforge.errors` only (the device
installs no converter and no torch).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface, Updater

from edgeforge.errors import EdgeforgeError

__all__ = ["FetchedVariant", "FolderFetcher", "UpdateRefused", "check", "fetch", "updater"]

_CHUNK = 1 << 20


class UpdateRefused(EdgeforgeError):
    """What the repository served failed verification or does not fit this device; nothing
    was installed. `__cause__` is the TUF error when TUF refused it."""


@dataclass
class FetchedVariant:
    """One verified variant, written under `out`."""

    name: str
    version: int
    device_class: str
    out: Path
    index: dict
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "device_class": self.device_class,
            "out": str(self.out),
            "index": self.index,
            "files": {rel: str(path) for rel, path in self.files.items()},
        }


class FolderFetcher(FetcherInterface):
    """Reads `file://` URLs: a repository in a local folder (a USB stick, a test).

    A missing file is a 404, as ngclient expects when it looks for the next root version."""

    def _fetch(self, url: str) -> Iterator[bytes]:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise tuf_errors.DownloadError(f"FolderFetcher reads file:// URLs, not {url}")
        try:
            handle = open(unquote(parsed.path), "rb")  # noqa: SIM115 (closed by _chunks)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise tuf_errors.DownloadHTTPError(f"{url} not found", 404) from None
        return _chunks(handle)


def _chunks(handle: Any) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def _base(repo: str | Path) -> tuple[str, bool]:
    """The repository's base URL, and whether it is a local folder."""
    text = str(repo)
    if text.startswith(("http://", "https://")):
        return text.rstrip("/"), False
    if text.startswith("file://"):
        return text.rstrip("/"), True
    folder = Path(repo).resolve()
    if not (folder / "metadata").is_dir():
        raise EdgeforgeError(
            f"{folder} is not a repository folder (no metadata/ in it); give its URL or folder"
        )
    return folder.as_uri(), True


def updater(
    repo: str | Path,
    state: Path,
    *,
    root: Path | None = None,
    fetcher: FetcherInterface | None = None,
) -> Updater:
    """A `tuf.ngclient.Updater` over `repo` with its trusted metadata in `state/metadata`.

    The trusted root is `state/metadata/root.json` when the device has one (the newest root it
    verified), else the file `root` (the root it shipped with)."""
    state = Path(state)
    trusted = state / "metadata" / "root.json"
    if trusted.is_file():
        bootstrap = trusted.read_bytes()
    elif root is not None:
        try:
            bootstrap = Path(root).read_bytes()
        except OSError as exc:
            raise EdgeforgeError(f"cannot read the trusted root {root}: {exc.strerror}") from exc
    else:
        raise EdgeforgeError(
            f"{state} holds no trusted metadata yet; pass --root ROOT.json, the root this device "
            "ships with (keys init wrote it as DIR/metadata/1.root.json)"
        )
    base, local = _base(repo)
    if local and fetcher is None:
        fetcher = FolderFetcher()
    (state / "metadata").mkdir(parents=True, exist_ok=True)
    (state / "targets").mkdir(parents=True, exist_ok=True)
    with _refusals("the trusted root"):
        return Updater(
            str(state / "metadata"),
            f"{base}/metadata/",
            str(state / "targets"),
            f"{base}/targets/",
            fetcher=fetcher,
            bootstrap=bootstrap,
        )


@contextlib.contextmanager
def _refusals(what: str) -> Iterator[None]:
    """TUF's refusals as one line each (`UpdateRefused`, with the TUF error as its cause)."""
    try:
        yield
    except tuf_errors.RepositoryError as exc:
        raise UpdateRefused(
            f"{what} failed verification ({type(exc).__name__}: {exc}); nothing was installed"
        ) from exc
    except tuf_errors.DownloadError as exc:
        cause = exc.__cause__ or exc
        raise UpdateRefused(
            f"could not download {what} ({type(exc).__name__}: {cause}); nothing was installed"
        ) from exc


def _resolve_alias(client: Updater, name: str, alias: str) -> int:
    path = f"{name}/aliases.json"
    with _refusals(path):
        info = client.get_targetinfo(path)
        if info is None:
            raise EdgeforgeError(f"no model {name} (no signed {path}); check --name")
        local = client.find_cached_target(info) or client.download_target(info)
    table = json.loads(Path(local).read_text())
    if table.get("name") != name:
        raise UpdateRefused(f"{path} names model {table.get('name')!r}, not {name!r}")
    aliases = table.get("aliases", {})
    if alias not in aliases:
        known = ", ".join(sorted(aliases)) or "none"
        raise EdgeforgeError(f"{name} has no alias {alias!r} (its aliases: {known})")
    return int(aliases[alias])


def check(
    repo: str | Path,
    state: Path,
    name: str,
    *,
    alias: str,
    root: Path | None = None,
    fetcher: FetcherInterface | None = None,
) -> int:
    """The update check: refresh the trusted metadata and return the version `alias` names."""
    client = updater(repo, state, root=root, fetcher=fetcher)
    with _refusals("the repository metadata"):
        client.refresh()
    return _resolve_alias(client, name, alias)


def fetch(
    repo: str | Path,
    state: Path,
    name: str,
    device_class: str,
    out: Path,
    *,
    version: int | None = None,
    alias: str | None = None,
    root: Path | None = None,
    fetcher: FetcherInterface | None = None,
) -> FetchedVariant:
    """Download and verify `name` at `version` (or where `alias` points) for `device_class`,
    and write it to `out` (replacing an earlier fetch there)."""
    if (version is None) == (alias is None):
        raise EdgeforgeError("give either a version or an alias (--version V or --alias A)")
    out = Path(out).resolve()
    _check_out(out)
    client = updater(repo, state, root=root, fetcher=fetcher)
    with _refusals("the repository metadata"):
        client.refresh()
    if alias is not None:
        version = _resolve_alias(client, name, alias)
    assert version is not None
    base = f"{name}/{version}/{device_class}"
    with _refusals(f"{base}/variant.json"):
        info = client.get_targetinfo(f"{base}/variant.json")
    if info is None:
        raise EdgeforgeError(
            f"{name} version {version} has no variant for device class {device_class}"
        )
    signed = (info.custom or {}).get("edgeforge", {})
    expected = {"name": name, "version": version, "device_class": device_class}
    if {key: signed.get(key) for key in expected} != expected:
        raise UpdateRefused(
            f"{base}/variant.json is signed for {signed or 'nothing'}, not {expected}"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex}"
    partial.mkdir()
    try:
        with _refusals(f"{base}/variant.json"):
            client.download_target(info, str(partial / "variant.json"))
        index = json.loads((partial / "variant.json").read_text())
        if index.get("device_class") != device_class:
            raise UpdateRefused(
                f"{base}/variant.json is built for device class {index.get('device_class')!r}, "
                f"not {device_class!r}; refused"
            )
        files: dict[str, Path] = {}
        for rel, entry in _listed_files(index).items():
            target = f"{base}/{rel}"
            with _refusals(target):
                file_info = client.get_targetinfo(target)
                if file_info is None:
                    raise UpdateRefused(f"variant.json lists {rel}, which is not a signed target")
                if "sha256" in entry and entry["sha256"] != file_info.hashes.get("sha256"):
                    raise UpdateRefused(f"variant.json and the signed target {target} disagree")
                if "length" in entry and int(entry["length"]) != file_info.length:
                    raise UpdateRefused(f"variant.json and the signed target {target} disagree")
                dest = partial / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                client.download_target(file_info, str(dest))
            files[rel] = out / rel
        _replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return FetchedVariant(name, version, device_class, out, index, files)


def _listed_files(index: dict) -> dict[str, dict]:
    """The files of a variant: its `files` entries, and its canary file if named apart."""
    listed: dict[str, dict] = {}
    for entry in index.get("files", []):
        entry = {"path": entry} if isinstance(entry, str) else dict(entry)
        listed[_relative(entry["path"])] = entry
    canary = index.get("canary")
    if isinstance(canary, dict):
        canary = canary.get("file") or canary.get("path")
    if isinstance(canary, str) and _relative(canary) not in listed:
        listed[_relative(canary)] = {"path": canary}
    listed.pop("variant.json", None)
    return listed


def _relative(path: str) -> str:
    pure = PurePosixPath(path)
    if pure.is_absolute() or not path or any(p in ("", ".", "..") for p in path.split("/")):
        raise UpdateRefused(f"variant.json names the path {path!r}, which leaves the variant")
    return path


def _check_out(out: Path) -> None:
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / "variant.json").is_file())
    ):
        raise EdgeforgeError(
            f"{out} exists and is not an earlier fetch; choose another --out or remove it"
        )


def _replace(partial: Path, out: Path) -> None:
    """Put the complete `partial` folder at `out`, the earlier fetch (if any) moved away first."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex}"
        os.replace(out, old)
    os.replace(partial, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
