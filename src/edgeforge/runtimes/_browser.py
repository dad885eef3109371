"""The browser half of the `web` runtime: onnxruntime-web's files, a loopback server, headless
Chromium, and the page in `web_page/` that runs jobs for Python.

Chromium and onnxruntime-web come from outside Python (`edgeforge setup web`, `setup_web.py`).
A `BrowserPage` loads `runner.html` in its own Chromium; the page polls the server for jobs,
so the browser and whatever the page loaded stay loaded between runs. Invariants:
- `blocker()` is None only when a Chromium executable is found and onnxruntime-web
  ORT_WEB_VERSION is installed in `web_dir()`; otherwise it names the command that fixes it;
- a page serves only the files it was given, the harness (`runner.html`, `runner.js`) and the
  onnxruntime-web dist folder, on 127.0.0.1, under a random path prefix, to requests whose
  Host is that address;
- one Chromium runs per page, with a fresh profile in a scratch folder; `close()` kills its
  whole process group, stops the server and removes the folder, at most once, and so does a
  failure to start, and so does garbage collection or interpreter exit of an unclosed page;
- every wait on the browser has a timeout, and a timeout or a crash is one line (an
  EdgeforgeError) that carries what the page reported (uncaught errors, console errors);
- tensors cross as `runner.js` describes: base64 of little-endian C-order bytes, strings as a
  JSON list; an array of a dtype outside `DTYPES` (or strings) is refused before it is sent.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import itertools
import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge.errors import EdgeforgeError

__all__ = [
    "DTYPES",
    "ORT_WEB_VERSION",
    "BrowserPage",
    "blocker",
    "chromium_binary",
    "chromium_version",
    "installed_ort_web_version",
    "ort_web_dist",
    "web_dir",
]

# `edgeforge setup web` installs this version. npm has no 1.32 (the Python
# package's version); 1.30.0 is the newest release there.
ORT_WEB_VERSION = "1.30.0"
ORT_WEB_BUNDLE = "ort.wasm.min.js"  # the script runner.html loads: wasm provider only

PAGE_DIR = Path(__file__).with_name("web_page")

_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# The numeric dtypes the page turns into typed arrays (ARRAYS in runner.js).
DTYPES = "bool float16 float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64".split()


# -- where the browser and onnxruntime-web are ------------------------------------------------


def web_dir() -> Path:
    return Path(os.environ.get("EDGEFORGE_WEB_DIR") or Path.home() / ".cache/edgeforge/web")


def ort_web_dist() -> Path:
    return web_dir() / "node_modules" / "onnxruntime-web" / "dist"


def installed_ort_web_version() -> str | None:
    try:
        data = json.loads((ort_web_dist().parent / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return data.get("version") if (ort_web_dist() / ORT_WEB_BUNDLE).is_file() else None


def chromium_binary() -> str | None:
    """The Chromium executable: $EDGEFORGE_CHROMIUM, else Debian's, else one on PATH.

    Debian's /usr/bin/chromium is a shell wrapper that adds extension flags; the binary it
    execs is used directly when it is there.
    """
    configured = os.environ.get("EDGEFORGE_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    if os.access("/usr/lib/chromium/chromium", os.X_OK):
        return "/usr/lib/chromium/chromium"
    for name in _CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def blocker() -> str | None:
    """Why this machine cannot run the browser side, with the command that fixes it."""
    if chromium_binary() is None:
        return (
            "no chromium browser: install Debian's chromium (apt-get install chromium) "
            "or run `edgeforge setup web --install-browser` as root"
        )
    version = installed_ort_web_version()
    if version is None:
        return f"no onnxruntime-web in {web_dir()}: run `edgeforge setup web`"
    if version != ORT_WEB_VERSION:
        return (
            f"onnxruntime-web {version} in {web_dir()}, edgeforge pins {ORT_WEB_VERSION}: "
            "run `edgeforge setup web`"
        )
    return None


@functools.cache
def chromium_version(binary: str) -> str:
    try:
        text = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    found = re.search(r"\d+(\.\d+)+", text)
    return found.group(0) if found else "unknown"


# -- the server the page talks to ---------------------------------------------------------------

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".wasm": "application/wasm",  # WebAssembly.instantiateStreaming insists on it
}


class _PageServer:
    """A loopback HTTP server for one page: static files from a whitelist, and the job queue.

    Only 127.0.0.1 is bound, every path sits under a random token, and a request whose Host is
    not 127.0.0.1:<port> is refused (DNS rebinding); so other pages and other local users
    cannot read the model or post results.
    """

    def __init__(self, files: dict[str, Path], config: dict[str, Any]) -> None:
        self.token = secrets.token_urlsafe(16)
        self.files = files
        self.config = json.dumps(config).encode()
        self.jobs: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ready: dict[str, Any] | None = None
        self.results: dict[int, dict[str, Any]] = {}
        self.logs: list[str] = []
        self.changed = threading.Condition()
        self.httpd = _QuietServer(_handler(self), self.logs)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/{self.token}/runner.html"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def receive(self, kind: str, body: dict[str, Any]) -> None:
        with self.changed:
            if kind == "ready":
                self.ready = body
            elif kind == "result":
                self.results[int(body.get("id", -1))] = body
            else:
                self.logs.append(f"{body.get('kind', 'log')}: {body.get('message', '')}"[:500])
            self.changed.notify_all()

    def stop(self) -> None:
        self.jobs.put({"stop": True})
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler], logs: list[str]):
        super().__init__(("127.0.0.1", 0), handler)  # loopback only
        self.logs = logs

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A page killed mid-request (close() ends the browser first) breaks its pipe; that is
        # expected. Anything else goes to the page's log, which error messages quote.
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            self.logs.append(f"server: {type(error).__name__}: {error}"[:500])


def _handler(server: _PageServer) -> type[http.server.BaseHTTPRequestHandler]:
    prefix = f"/{server.token}/"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self._name()
            if name is None:
                return
            if name == "config.json":
                self._send(200, server.config, "application/json")
            elif name == "job":
                try:
                    job = server.jobs.get(timeout=5)
                except queue.Empty:
                    self._send(204, b"", "text/plain")
                else:
                    self._send(200, json.dumps(job).encode(), "application/json")
            elif name in server.files:
                self._send_file(server.files[name])
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:
            name = self._name()
            if name is None:
                return
            if name not in ("ready", "result", "log"):
                self._send(404, b"not found", "text/plain")
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                self._send(400, b"bad json", "text/plain")
                return
            server.receive(name, body if isinstance(body, dict) else {})
            self._send(204, b"", "text/plain")

        def _name(self) -> str | None:
            host = f"127.0.0.1:{self.server.server_address[1]}"
            if self.headers.get("Host") != host or not self.path.startswith(prefix):
                self._send(403, b"forbidden", "text/plain")
                return None
            return self.path[len(prefix) :].split("?", 1)[0]

        def _headers(self, code: int, content_type: str, length: int) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(length))
            self.send_header("Cache-Control", "no-store")
            # Cross-origin isolation gives the page SharedArrayBuffer, so wasm runs threaded.
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cross-Origin-Resource-Policy", "same-origin")
            self.end_headers()

        def _send(self, code: int, data: bytes, content_type: str) -> None:
            self._headers(code, content_type, len(data))
            self.wfile.write(data)

        def _send_file(self, path: Path) -> None:
            content_type = _CONTENT_TYPES.get(path.suffix, "application/octet-stream")
            self._headers(200, content_type, path.stat().st_size)
            with open(path, "rb") as handle:
                shutil.copyfileobj(handle, self.wfile, 1 << 20)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the page's own errors arrive through /log

    return Handler


# -- the browser --------------------------------------------------------------------------------


def _launch_chromium(binary: str, url: str, scratch: Path) -> subprocess.Popen:
    """The one place a browser is started: headless, no GPU, a fresh profile, and quiet.

    Without the background-networking flags Chromium keeps calling Google's services, which a
    closed network answers with a flood of failures. Its own process group lets `close` end
    the renderer, GPU and zygote processes with the browser; the crash handler, which leaves
    the group, writes under `scratch` (not ~/.config) and names it on its command line.
    """
    profile = scratch / "profile"
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-breakpad",
        "--disable-crash-reporter",
        "--disable-dev-shm-usage",  # containers give /dev/shm 64 MB
        "--enable-logging=stderr",
        f"--user-data-dir={profile}",
        f"--crash-dumps-dir={scratch / 'crashes'}",
        url,
    ]
    env = {**os.environ, "XDG_CONFIG_HOME": str(scratch)}
    with open(scratch / "chromium.log", "wb") as stderr:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )


def _live_processes(marker: str) -> list[int]:
    """Processes (not zombies) whose command line contains `marker`; Linux only."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _stop(process: subprocess.Popen | None, server: _PageServer | None, scratch: Path) -> None:
    """Kill Chromium's process group, stop the server, remove the profile (run once, through
    the session's finalizer)."""
    if process is not None:
        # Signal the group only while its leader is unreaped: a reaped pid may be reused.
        # SIGKILL at once: the profile is thrown away, so there is nothing to shut down.
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Helpers of a browser that died on its own, and the crash handler, which leaves the
        # group: all name our scratch folder on their command lines.
        for pid in _live_processes(str(scratch)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if server is not None:
        server.stop()
    shutil.rmtree(scratch, ignore_errors=True)


# -- the page -----------------------------------------------------------------------------------


class BrowserPage:
    """`runner.html` in one headless Chromium, served with `files` and `config.json`.

    The constructor returns once the page has posted `ready` (kept in `self.ready`, as the page
    sent it); it raises, with everything stopped, if the browser dies or the timeout passes
    first. `run` hands the page one job and waits for its answer.
    """

    def __init__(self, files: dict[str, Path], config: dict[str, Any], *, timeout: float) -> None:
        binary = chromium_binary()
        assert binary is not None, "check blocker() before opening a page"
        served = {"runner.html": PAGE_DIR / "runner.html", "runner.js": PAGE_DIR / "runner.js"}
        served.update(files)
        served.update({f"ort/{p.name}": p for p in ort_web_dist().iterdir() if p.is_file()})
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._process: subprocess.Popen | None = None
        self._server: _PageServer | None = None
        self._scratch = Path(tempfile.mkdtemp(prefix="edgeforge-web-"))
        self._finalizer: weakref.finalize | None = None
        try:
            self._server = _PageServer(served, config)
            self._process = _launch_chromium(binary, self._server.url, self._scratch)
            self._finalizer = weakref.finalize(
                self, _stop, self._process, self._server, self._scratch
            )
            self.ready = self._wait(lambda s: s.ready, "to load the model")
        except BaseException:
            self.close()
            raise

    @property
    def closed(self) -> bool:
        return self._server is None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        """The page's answer to one job: `{"error": ...}`, or `{"outputs": {name: array},
        "ms": ...}` with every output it produced decoded."""
        assert self._server is not None, "the page is closed"
        job_id = next(self._ids)
        job = {"id": job_id, "feeds": {name: _encode(name, a) for name, a in feeds.items()}}
        self._server.jobs.put(job)
        answer = self._wait(lambda s: s.results.pop(job_id, None), "to run the model")
        if "outputs" in answer:
            answer["outputs"] = {name: _decode(t) for name, t in answer["outputs"].items()}
        return answer

    def _wait(self, take: Callable[[_PageServer], Any], doing: str) -> dict[str, Any]:
        """Wait for `take(server)` to return an answer, while Chromium lives, until timeout."""
        server, process = self._server, self._process
        assert server is not None and process is not None
        deadline = time.monotonic() + self.timeout
        with server.changed:
            while True:
                answer = take(server)
                if answer is not None:
                    return answer
                if process.poll() is not None:
                    raise EdgeforgeError(
                        f"chromium exited (status {process.returncode}) before the page "
                        f"managed {doing}; {self._evidence()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EdgeforgeError(
                        f"onnxruntime-web in headless chromium took over {self.timeout:g} s "
                        f"{doing}; {self._evidence()}"
                    )
                server.changed.wait(min(left, 0.25))

    def _evidence(self) -> str:
        """What the page and the browser said, for an error message."""
        said = list(self._server.logs[-3:]) if self._server else []
        if not said:
            try:
                lines = (self._scratch / "chromium.log").read_text(errors="replace").splitlines()
            except OSError:
                lines = []
            said = [line for line in lines if "CONSOLE" in line or ":ERROR:" in line][-3:]
        return "the page said: " + " | ".join(said) if said else "the page reported nothing"

    @property
    def port(self) -> int | None:
        return self._server.port if self._server else None

    @property
    def browser_pid(self) -> int | None:
        return self._process.pid if self._process else None

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs _stop at most once, also at exit if never closed
        else:
            _stop(self._process, self._server, self._scratch)
        self._server = None


# -- tensors on the wire (runner.js decodes and encodes the same) -----------------------------


def _encode(name: str, array: np.ndarray) -> dict[str, Any]:
    if array.dtype.kind in "OSU":  # ONNX strings: object arrays of str, as ONNX Runtime uses
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel()]
        return {"dtype": "string", "shape": list(array.shape), "data": values}
    if array.dtype.name not in DTYPES:
        raise EdgeforgeError(
            f"input {name!r} is {array.dtype}; onnxruntime-web takes strings and "
            f"{', '.join(DTYPES)}"
        )
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "data": base64.b64encode(data.tobytes()).decode("ascii"),
    }


def _decode(tensor: dict[str, Any]) -> np.ndarray:
    if tensor["dtype"] == "string":
        return np.array(tensor["data"], dtype=object).reshape(tensor["shape"])
    dtype = np.dtype(tensor["dtype"]).newbyteorder("<")
    flat = np.frombuffer(base64.b64decode(tensor["data"]), dtype=dtype)
    return flat.reshape(tensor["shape"]).astype(dtype.newbyteorder("="))
