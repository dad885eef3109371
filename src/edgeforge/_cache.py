"""A small on-disk cache for answers that depend only on a tool's version (e.g. which ops a
runtime supports). Entries are JSON files under `$EDGEFORGE_CACHE` or ~/.cache/edgeforge; a
corrupt entry is ignored and recomputed, and writes are atomic."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeforge._io import write_json

__all__ = ["cache_dir", "remember"]


def cache_dir() -> Path:
    root = os.environ.get("EDGEFORGE_CACHE") or Path.home() / ".cache" / "edgeforge"
    return Path(root)


def remember(namespace: str, key: Any, compute: Callable[[], Any]) -> Any:
    """Return the cached JSON value for (namespace, key), computing and storing it if absent.

    `namespace` should carry the tool version ("openvino-2026.4.1/query"), so that a new
    version never reads an old answer; `key` is any JSON-serialisable description.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    path = cache_dir() / namespace / f"{digest[:32]}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())["value"]
        except (ValueError, KeyError):
            pass
    value = compute()
    write_json(path, {"key": key, "value": value})
    return value
