"""Shared fixtures of the fleet tests: a TUF repository with a published variant, served over
loopback HTTP (a static folder, as a device would see it).

- `tuf_repo` -> `TufRepo`: a repository in tmp_path with model "demo" version 1 for
  "linux-x86" published and the alias production -> 1. `publish_variant` and `set_aliases`
  publish more (small fake artifacts: the registry's tests build real releases).
- `tuf_repo_factory` -> `make_tuf_repo(folder, **init)`: the same with `Repository.init`
  options (thresholds, expiry).
- `http_server` -> `serve(folder) -> base URL`: serves `metadata/` and `targets/` of a
  repository folder on 127.0.0.1 (refusing a folder that holds a private key, as `serve` must).
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from edgeforge.fleet.keys import private_keys_in
from edgeforge.fleet.repository import Repository


@dataclass
class TufRepo:
    """A repository under test: `path` is what gets served, `root` the root a device ships
    with, `scratch` a folder for local files."""

    repo: Repository
    path: Path
    root: Path
    scratch: Path

    def publish_variant(self, *args, **kwargs) -> dict:
        return publish_variant(self.repo, self.scratch, *args, **kwargs)

    def set_aliases(self, name: str, aliases: dict[str, int]) -> None:
        set_aliases(self.repo, self.scratch, name, aliases)


def publish_variant(
    repo: Repository,
    scratch: Path,
    name: str,
    version: int,
    device_class: str,
    files: dict[str, bytes] | None = None,
    *,
    index: dict | None = None,
    label: str | None = None,
) -> dict:
    """Publish a fake variant: its files, and a variant.json listing them (sha256, length).
    `index` overrides fields of variant.json; `label` (default: the device class) is what the
    signed custom field says the device class is. Returns variant.json."""
    files = files or {"model.onnx": f"{name} {version} {device_class}".encode() * 50}
    base = f"{name}/{version}/{device_class}"
    local = scratch / f"{name}-{version}-{device_class}"
    local.mkdir(parents=True, exist_ok=True)
    entries, publish = [], {}
    for rel, data in files.items():
        path = local / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append(
            {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}
        )
        publish[f"{base}/{rel}"] = path
    variant = {
        "name": name,
        "version": version,
        "device_class": device_class,
        "runtime": "onnxruntime",
        "precision": "fp32",
        "files": entries,
        "evidence": {"accuracy": {"top1": 0.91}, "size_bytes": sum(map(len, files.values()))},
        **(index or {}),
    }
    (local / "variant.json").write_text(json.dumps(variant, indent=2))
    publish[f"{base}/variant.json"] = local / "variant.json"
    signed_as = {"name": name, "version": version, "device_class": label or device_class}
    custom = {path: {"edgeforge": signed_as} for path in publish}
    with repo.lock():
        repo.publish(publish, custom)
    return variant


def set_aliases(repo: Repository, scratch: Path, name: str, aliases: dict[str, int]) -> None:
    path = scratch / f"{name}-aliases-{hashlib.sha256(repr(aliases).encode()).hexdigest()}.json"
    path.write_text(json.dumps({"name": name, "aliases": aliases, "history": []}))
    with repo.lock():
        repo.publish({f"{name}/aliases.json": path})


def make_tuf_repo(folder: Path, **init: Any) -> TufRepo:
    """A repository in `folder/repo` (keys beside it; `init` goes to `Repository.init`) with
    demo 1 for linux-x86 published and production -> 1."""
    repo = Repository.init(folder / "repo", **init)
    scratch = folder / "scratch"
    scratch.mkdir()
    made = TufRepo(repo, repo.path, repo.path / "metadata" / "1.root.json", scratch)
    made.publish_variant("demo", 1, "linux-x86")
    made.set_aliases("demo", {"production": 1})
    return made


@pytest.fixture
def tuf_repo(tmp_path) -> TufRepo:
    return make_tuf_repo(tmp_path)


@pytest.fixture
def tuf_repo_factory() -> Callable[..., TufRepo]:
    """`make_tuf_repo(folder, **init)`, for a repository with other thresholds or expiry."""
    return make_tuf_repo


class _RepositoryHandler(SimpleHTTPRequestHandler):
    """Static files of metadata/ and targets/ only (not the settings, lock or registry)."""

    def do_GET(self) -> None:
        if not self.path.startswith(("/metadata/", "/targets/")):
            self.send_error(404)
            return
        super().do_GET()

    def log_message(self, *args) -> None:  # quiet test output
        pass


@pytest.fixture
def http_server() -> Iterator[Callable[[Path], str]]:
    servers: list[ThreadingHTTPServer] = []

    def serve(folder: Path) -> str:
        keys = private_keys_in(folder)
        if keys:
            raise RuntimeError(f"refusing to serve {folder}: it holds a private key ({keys[0]})")
        handler = functools.partial(_RepositoryHandler, directory=str(folder))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
