"""The one place the agent starts a child process (a download, a canary, a probe, a bench job).

A child runs `MODULE.main(argv)` of `edgeforge.fleet.agent._download` or `._child`, writes its
stdout and stderr to two files the parent names, and is its own process group (so killing it
kills what it started). Two ways to start one:

- `Subprocess()` (the default): `python -m MODULE ARGV`, a fresh interpreter. What a device
  does: it starts a child rarely, and the child then costs nothing while the agent idles.
- `ForkServer()`: the child is forked from one warm process that imported numpy, onnxruntime
  and the TUF client once (multiprocessing's forkserver). It is still a real child process with
  its own memory (watched against the budget), its own crash and its own kill; only the half
  second of interpreter start and imports is gone. The fleet simulator runs hundreds of agents
  in one process and starts their children this way.

Both give a `Child` with `pid`, `poll()`, `wait()` and `kill()` (SIGKILL to its group).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Child", "ForkServer", "Launcher", "Subprocess"]

PARENT_ENV = "EDGEFORGE_AGENT_PARENT"


class Child(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def wait(self) -> int: ...

    def kill(self) -> None: ...


class Launcher(Protocol):
    def start(
        self,
        module: str,
        argv: list[str],
        *,
        env: dict[str, str | None],
        out: Path,
        err: Path,
        own_group: bool = True,
        stdin: Any = None,
    ) -> Child: ...


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # not yet its own group leader


class _Popen:
    def __init__(self, process: subprocess.Popen[bytes], own_group: bool) -> None:
        self.process = process
        self.own_group = own_group
        self.pid = process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self) -> int:
        return self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            if self.own_group:
                _kill_group(self.pid)
            else:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()


def _apply_env(environ: Any, env: dict[str, str | None]) -> None:
    """Set `env`'s entries in `environ`; a None value removes that name."""
    for name, value in env.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value


class Subprocess:
    """`python -m MODULE ARGV`, in a new session if `own_group` (else it dies with the agent's
    process group, as a download does in a power cut); `env` entries set (None: removed)."""

    def start(
        self,
        module: str,
        argv: list[str],
        *,
        env: dict[str, str | None],
        out: Path,
        err: Path,
        own_group: bool = True,
        stdin: Any = None,
    ) -> Child:
        environ = {**os.environ, PARENT_ENV: str(os.getpid())}
        _apply_env(environ, env)
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *argv], stdin=stdin,
                stdout=stdout, stderr=stderr, env=environ, start_new_session=own_group,
            )  # fmt: skip
        return _Popen(process, own_group)


def _forked_main(module: str, argv: list[str], env: dict[str, str | None], out: str, err: str):
    """What a forked child runs: its own session, its files as fd 1 and 2, then MODULE.main."""
    import importlib

    os.setsid()
    _apply_env(os.environ, env)
    os.environ[PARENT_ENV] = str(os.getppid())  # the forkserver, which dies with the agent
    for path, fd in ((out, 1), (err, 2)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(handle, fd)
        os.close(handle)
    try:
        code = importlib.import_module(module).main(argv)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    sys.exit(code)


# multiprocessing reads a forked child's exit status from a pipe, and `Process.start()` polls
# every other live child while it is at it: two threads reading one status would see EOF
# (exit code 255). Every start and poll goes through this lock.
_STATUS_LOCK = threading.Lock()


class _Forked:
    def __init__(self, process: Any) -> None:
        self.process = process
        self.pid = int(process.pid)

    def poll(self) -> int | None:
        with _STATUS_LOCK:
            return self.process.exitcode

    def wait(self) -> int:
        while (code := self.poll()) is None:
            time.sleep(0.005)
        return int(code)

    def kill(self) -> None:
        if self.poll() is None:
            _kill_group(self.pid)


class ForkServer:
    """Children forked from one warm forkserver process (shared by every `ForkServer`); each is
    its own process group (the forkserver is not the agent's to take down with it)."""

    PRELOAD = (
        "numpy",
        "onnxruntime",
        "edgeforge.fleet.client",
        "edgeforge.fleet.agent._child",
        "edgeforge.fleet.agent._download",
    )

    def __init__(self) -> None:
        import multiprocessing

        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(list(self.PRELOAD))

    def start(
        self,
        module: str,
        argv: list[str],
        *,
        env: dict[str, str | None],
        out: Path,
        err: Path,
        own_group: bool = True,
        stdin: Any = None,
    ) -> Child:
        if stdin is not None:
            raise ValueError("a forked child takes no stdin; start it with Subprocess()")
        process = self.context.Process(
            target=_forked_main, args=(module, list(argv), dict(env), str(out), str(err)),
            daemon=False,
        )  # fmt: skip
        with _STATUS_LOCK:
            process.start()
        return _Forked(process)
