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
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edgeforge.fleet.agent._spawn import Launcher, Subprocess

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
    state: Path,
    name: str,
    version: int,
    out: Path,
    *,
    file_limit: int | None = None,
    launcher: Launcher | None = None,
) -> dict:
    """Fetch in a child process (started by `launcher`, by default a fresh interpreter); never
    raises for what the child does. `file_limit` caps the size of any file the child writes (a
    disk quota: past it, the download fails as disk full)."""
    argv = [str(state), name, str(version), str(out)]
    env: dict[str, str | None] = {FILE_LIMIT_ENV: None if file_limit is None else str(file_limit)}
    with tempfile.TemporaryDirectory(prefix="edgeforge-download-") as scratch:
        stdout, stderr = Path(scratch) / "out", Path(scratch) / "err"
        child = (launcher or Subprocess()).start(
            "edgeforge.fleet.agent._download",
            argv,
            env=env,
            out=stdout,
            err=stderr,
            own_group=False,
        )
        try:
            returncode = child.wait()
        finally:
            child.kill()  # only if this thread was interrupted while it ran
        printed = stdout.read_bytes().decode(errors="replace") if stdout.exists() else ""
        said = stderr.read_bytes().decode(errors="replace") if stderr.exists() else ""
    try:
        return json.loads(printed.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = (said.strip().splitlines() or [""])[-1][:200]
        return {"ok": False, "detail": f"download child failed ({returncode}) {last}"}


def _limit_files(size: int) -> None:
    """A write past `size` bytes fails with EFBIG (reported as disk full), not SIGXFSZ."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def main(argv: list[str]) -> int:
    """The child's entry (`python -m`, or a forked child): one JSON line on stdout."""
    if os.environ.get(FILE_LIMIT_ENV):
        _limit_files(int(os.environ[FILE_LIMIT_ENV]))
    parent = int(os.environ.get("EDGEFORGE_AGENT_PARENT", os.getppid()))
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    with contextlib.suppress(BrokenPipeError):
        state, name, version, out = argv[:4]
        print(json.dumps(fetch_in_process(Path(state), name, int(version), Path(out))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
