"""The child process that downloads a release for the agent, through the TUF client.

Run as `python -m edgeforge.fleet.agent._download STATE NAME VERSION OUT`; prints one JSON
object (`ok`, `detail`, `resumed_from`). The agent runs the download in a child so that its own
resident memory never holds the TUF client (about 15 MB), and so that a hostile repository's
metadata is parsed in a process that can die. Bytes are kept by the resumable fetcher
(`partial/`), so a killed child, or a killed agent, loses nothing already durable. A child whose
parent dies exits too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["download_failure", "fetch_in_process", "run_download"]

PAUSE_ENV = "EDGEFORGE_AGENT_PAUSE_AT"
FILE_LIMIT_ENV = "EDGEFORGE_AGENT_FILE_LIMIT"


def download_failure(exc: BaseException) -> str:
    """One line for a failed download; a full disk is named as such."""
    seen: BaseException | None = exc
    while seen is not None:
        if getattr(seen, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return "disk full during download; the active model is kept"
        seen = seen.__cause__ or seen.__context__
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"download failed: {type(exc).__name__}: {text}"[:300]


def fetch_in_process(state: Path, name: str, version: int, out: Path, fetch: Any = None) -> dict:
    """Fetch `name` `version` for this device into `out`; {"ok", "detail", "resumed_from"}."""
    from edgeforge.fleet.agent._fetcher import ResumableFetcher
    from edgeforge.fleet.agent._files import read_json

    device = read_json(state / "device.json", {}) or {}
    testing = os.environ.get(PAUSE_ENV) == "downloading"

    def progress(url: str, offset: int) -> None:
        if testing:  # test hook: stop once bytes are durable, for a test to kill us
            (state / "paused-at").write_text("downloading")
            time.sleep(600)

    fetcher = ResumableFetcher(
        state / "partial",
        chunk_size=1024 if testing else 64 * 1024,
        persist_every=1024 if testing else 1024 * 1024,
        on_progress=progress,
    )
    if fetch is None:
        from edgeforge.fleet.client import fetch
    root = state / "root.json"
    try:
        fetch(
            device["repo"],
            state / "tuf",
            name,
            device["device_class"],
            out,
            version=version,
            root=root if root.exists() else None,
            fetcher=fetcher,
        )
    except Exception as exc:
        return {"ok": False, "detail": download_failure(exc), "resumed_from": fetcher.resumed_from}
    return {"ok": True, "detail": "", "resumed_from": fetcher.resumed_from}


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(70)
        time.sleep(0.1)


def run_download(
    state: Path, name: str, version: int, out: Path, *, file_limit: int | None = None
) -> dict:
    """Fetch in a child process; never raises for what the child does. `file_limit` caps the
    size of any file the child writes (a disk quota: past it, the download fails as disk full)."""
    command = [sys.executable, "-m", "edgeforge.fleet.agent._download"]
    command += [str(state), name, str(version), str(out)]
    env = {**os.environ, "EDGEFORGE_AGENT_PARENT": str(os.getpid())}
    if file_limit is not None:
        env[FILE_LIMIT_ENV] = str(file_limit)
    with tempfile.TemporaryFile() as err:
        child = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            check=False,
        )
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    try:
        return json.loads(child.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = (stderr.strip().splitlines() or [""])[-1][:200]
        return {"ok": False, "detail": f"download child failed ({child.returncode}) {last}"}


def _limit_files(size: int) -> None:
    """A write past `size` bytes fails with EFBIG (reported as disk full), not SIGXFSZ."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


if __name__ == "__main__":
    if os.environ.get(FILE_LIMIT_ENV):
        _limit_files(int(os.environ[FILE_LIMIT_ENV]))
    parent = int(os.environ.get("EDGEFORGE_AGENT_PARENT", os.getppid()))
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    with contextlib.suppress(BrokenPipeError):
        state, name, version, out = sys.argv[1:5]
        print(json.dumps(fetch_in_process(Path(state), name, int(version), Path(out))))
