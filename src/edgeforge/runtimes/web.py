"""ONNX Runtime Web: the `.onnx` file run by onnxruntime-web's wasm provider in headless Chromium.

Nothing here imports a Python package for the browser; it needs Debian's `chromium` and a pinned
onnxruntime-web from npm (`scripts/install-web-deps.sh` installs both). Invariants:
- the artifact is a single `model.onnx` with its weights inline whenever they fit protobuf's
  2 GB limit (the browser fetches one file best); larger ones keep their external data files,
  which the page hands to onnxruntime-web through its `externalData` option;
- a `WebSession` serves only the files it was given (the page, the model, the onnxruntime-web
  dist folder) on 127.0.0.1, under a random path prefix, to requests whose Host is that address;
- one Chromium runs per session, with a fresh profile, and the page polls for work, so the
  browser and the wasm session stay loaded between runs; `close()` kills Chromium's whole
  process group and stops the server, and so does a failure to start;
- every wait on the browser has a timeout, and a timeout or a crash is one line that carries what
  the page reported (uncaught errors, console errors).
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
from edgeforge.model import Model, TensorSpec
from edgeforge.recipe import Recipe
from edgeforge.runtimes.base import (
    Artifact,
    Finding,
    Runtime,
    RuntimeUnavailable,
    Session,
    model_sha256,
)

__all__ = [
    "ORT_WEB_VERSION",
    "OnnxRuntimeWeb",
    "WebModelError",
    "WebSession",
    "chromium_binary",
    "ort_web_dist",
]

# Keep equal to ORT_WEB_VERSION in scripts/install-web-deps.sh. npm has no 1.32 (the Python
# package's version); 1.30.0 is the newest release there.
ORT_WEB_VERSION = "1.30.0"
ORT_WEB_BUNDLE = "ort.wasm.min.js"  # the script runner.html loads: wasm provider only

PAGE_DIR = Path(__file__).with_name("web_page")
TIMEOUT_S = 60.0
SIZE_BUDGET = 100 * 10**6  # what a web app can reasonably make a user download
PROTOBUF_LIMIT = 2 * 1024**3  # one .onnx file; beyond it weights must be external
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_DTYPES = "bool float16 float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64".split()


class WebModelError(EdgeforgeError):
    """onnxruntime-web itself refused or failed the model (not the browser or the server)."""


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


def _blocker() -> str | None:
    """Why this machine cannot run the browser side, with the command that fixes it."""
    if chromium_binary() is None:
        return (
            "no chromium browser: install Debian's chromium (apt-get install chromium) "
            "or run `make`"
        )
    version = installed_ort_web_version()
    if version is None:
        return f"no onnxruntime-web in {web_dir()}: run scripts/install-web-deps.sh"
    if version != ORT_WEB_VERSION:
        return (
            f"onnxruntime-web {version} in {web_dir()}, edgeforge pins {ORT_WEB_VERSION}: "
            "run scripts/install-web-deps.sh"
        )
    return None


@functools.cache
def _chromium_version(binary: str) -> str:
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


class WebSession(Session):
    """One headless Chromium page holding one onnxruntime-web InferenceSession."""

    def __init__(
        self,
        onnx_path: Path,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        *,
        timeout: float = TIMEOUT_S,
        threads: int | None = None,
    ) -> None:
        from edgeforge._onnx_file import external_data_files

        super().__init__(inputs, outputs)
        self.timeout = timeout
        self.last_browser_ms: float | None = None  # session.run time measured in the page
        self._ids = itertools.count(1)
        self._process: subprocess.Popen | None = None
        self._server: _PageServer | None = None
        blocker = _blocker()
        if blocker is not None:
            raise RuntimeUnavailable(f"runtime web cannot run here: {blocker}")
        binary, dist = chromium_binary(), ort_web_dist()
        assert binary is not None
        onnx_path = Path(onnx_path)
        data = external_data_files(_load_proto(onnx_path), onnx_path.parent)
        files = {
            "runner.html": PAGE_DIR / "runner.html",
            "runner.js": PAGE_DIR / "runner.js",
            "model/model.onnx": onnx_path,
        }
        files.update({f"model/{location}": path for location, path in data.items()})
        files.update({f"ort/{p.name}": p for p in dist.iterdir() if p.is_file()})
        config = {
            "model": "model/model.onnx",
            "externalData": [{"path": loc, "data": f"model/{loc}"} for loc in sorted(data)],
            "numThreads": threads,
        }
        self._scratch = Path(tempfile.mkdtemp(prefix="edgeforge-web-"))
        self._finalizer: weakref.finalize | None = None
        try:
            self._server = _PageServer(files, config)
            self._process = _launch_chromium(binary, self._server.url, self._scratch)
            self._finalizer = weakref.finalize(
                self, _stop, self._process, self._server, self._scratch
            )
            ready = self._wait(lambda s: s.ready, "to load the model")
        except BaseException:
            self.close()
            raise
        if not ready.get("ok"):
            self.close()
            error = _plain(ready.get("error"))
            if ready.get("stage") == "setup" or "no available backend" in error:
                # The page or the wasm files are broken: no verdict on the model.
                raise EdgeforgeError(
                    f"onnxruntime-web did not start in chromium ({error}); "
                    "run scripts/install-web-deps.sh again"
                )
            raise WebModelError(f"onnxruntime-web cannot load {onnx_path.name}: {error}")
        self.load_ms = float(ready.get("loadMs", 0.0))

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._server is None:
            raise EdgeforgeError("this web session is closed; open the artifact again")
        job_id = next(self._ids)
        job = {"id": job_id, "feeds": {name: _encode(name, a) for name, a in feeds.items()}}
        self._server.jobs.put(job)
        answer = self._wait(lambda s: s.results.pop(job_id, None), "to run the model")
        if "error" in answer:
            raise WebModelError(
                f"onnxruntime-web failed to run the model: {_plain(answer['error'])}"
            )
        self.last_browser_ms = float(answer.get("ms", 0.0))
        produced = {name: _decode(t) for name, t in answer["outputs"].items()}
        missing = [t.name for t in self.outputs if t.name not in produced]
        if missing:
            raise EdgeforgeError(
                f"onnxruntime-web returned {sorted(produced)}, without {missing}; rebuild the "
                "artifact from the model it was meant for"
            )
        return [produced[t.name] for t in self.outputs]

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


def _plain(error: Any) -> str:
    """ORT's message without its wrapper and the C++ source location and signature."""
    text = re.sub(r"Can't create a session\. ERROR_CODE: \d+, ERROR_MESSAGE: ", "", str(error))
    return re.sub(r"\S+\.(?:h|cc|cpp):\d+ .*?\) (?=[A-Z])", "", text)


def _load_proto(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _encode(name: str, array: np.ndarray) -> dict[str, Any]:
    if array.dtype.kind in "OSU":  # ONNX strings: object arrays of str, as ONNX Runtime uses
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel()]
        return {"dtype": "string", "shape": list(array.shape), "data": values}
    if array.dtype.name not in _DTYPES:
        raise EdgeforgeError(
            f"input {name!r} is {array.dtype}; onnxruntime-web takes strings and "
            f"{', '.join(_DTYPES)}"
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


# -- the runtime --------------------------------------------------------------------------------


class OnnxRuntimeWeb(Runtime):
    name = "web"
    format = "onnx"
    modules = ()
    distributions = ("onnxruntime",)

    def execution_blocker(self) -> str | None:
        return _blocker()

    def versions(self) -> dict[str, str]:
        found = super().versions()
        found["onnxruntime-web"] = installed_ort_web_version() or "not installed"
        binary = chromium_binary()
        found["chromium"] = _chromium_version(binary) if binary else "not installed"
        return found

    def _build(self, model: Model, recipe: Recipe, folder: Path) -> tuple[str, list[str]]:
        from edgeforge.runtimes.onnxruntime import _copy_onnx

        notes = [f"runs on onnxruntime-web {ORT_WEB_VERSION} (wasm execution provider)"]
        size = _model_bytes(model)
        if model.uses_external_data and size < PROTOBUF_LIMIT:
            import onnx

            onnx.save_model(model.proto(load_weights=True), str(folder / "model.onnx"))
            notes.append("external data inlined: the browser fetches one file")
        else:
            _copy_onnx(model, folder)
            if model.uses_external_data:
                notes.append(
                    "weights over 2 GB stay external; the page passes them as externalData"
                )
        return "model.onnx", notes

    def _open(self, artifact: Artifact) -> Session:
        return WebSession(artifact.path, artifact.inputs, artifact.outputs)

    def check(self, model: Model) -> list[Finding]:
        """Run `model` once in the browser on zeros; add the traps a web build meets."""
        findings = _static_findings(self.name, model)
        blocker = self.execution_blocker()
        if blocker is None:
            from edgeforge._cache import remember

            try:
                cached = remember(
                    f"web-{ORT_WEB_VERSION}/check",
                    model_sha256(model),
                    lambda: [f.to_dict() for f in _browser_findings(self.name, model)],
                )
                findings += [Finding(**{**d, "nodes": tuple(d["nodes"])}) for d in cached]
            except EdgeforgeError as exc:  # the browser failed, not the model: not cached
                findings.append(
                    Finding(
                        self.name,
                        "info",
                        f"could not run the model in chromium: {exc}",
                        "run `edgeforge check` again; see the message for the cause",
                    )
                )
        else:
            findings.append(
                Finding(
                    self.name,
                    "info",
                    f"kernel coverage not checked here: {blocker}",
                    "install chromium and onnxruntime-web to run the model in a browser",
                )
            )
        findings.append(
            Finding(
                self.name,
                "info",
                "WebGPU placement could not be checked here: headless chromium on this machine "
                "has no GPU, so the model ran on the wasm execution provider only",
                "check WebGPU in a browser with a GPU before relying on it",
                evidence="rule",
            )
        )
        return findings


def _model_bytes(model: Model) -> int:
    from edgeforge._onnx_file import external_data_files

    data = external_data_files(model.proto(load_weights=False), model.onnx_path.parent)
    return model.onnx_path.stat().st_size + sum(p.stat().st_size for p in set(data.values()))


def _static_findings(runtime: str, model: Model) -> list[Finding]:
    findings = []
    wide = [t.name for t in (*model.inputs, *model.outputs) if t.dtype in ("int64", "uint64")]
    if wide:
        findings.append(
            Finding(
                runtime,
                "trap",
                f"{', '.join(wide)} is 64-bit integer: JavaScript passes and receives it as "
                "BigInt64Array, which works but costs a conversion from and to Number",
                "build the BigInt64Array once per input, or export the model with int32 ids",
                evidence="rule",
            )
        )
    size = _model_bytes(model)
    if size >= PROTOBUF_LIMIT:
        findings.append(
            Finding(
                runtime,
                "trap",
                f"the model holds {size / 1024**3:.1f} GB: over protobuf's 2 GB for one file, "
                "and the wasm heap is limited to 4 GB for weights and activations together",
                "quantize (int8, int4 weight-only) or split the model; load weights as "
                "externalData; WebGPU keeps weights in GPU memory",
                evidence="rule",
            )
        )
    if size > SIZE_BUDGET:
        findings.append(
            Finding(
                runtime,
                "trap",
                f"the model is {size / 1e6:.0f} MB, over the ~{SIZE_BUDGET // 10**6} MB a web "
                "app can make users download (and mobile browsers may evict it from cache)",
                "quantize to int8 or fp16 or prune; cache it with the Cache API or OPFS",
                evidence="rule",
            )
        )
    return findings


def _zeros(spec: TensorSpec) -> np.ndarray:
    if spec.shape is None:
        raise EdgeforgeError(f"input {spec.name!r} has an unknown rank; cannot synthesize it")
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    if spec.dtype == "object":  # an ONNX string tensor
        return np.full(shape, "", dtype=object)
    if spec.dtype not in _DTYPES:
        raise EdgeforgeError(f"input {spec.name!r} is {spec.dtype}; cannot synthesize it")
    return np.zeros(shape, dtype=np.dtype(spec.dtype))


def _browser_findings(runtime: str, model: Model) -> list[Finding]:
    """Load and run the model once in chromium; a WebModelError is ORT-web's verdict."""
    feeds = {spec.name: _zeros(spec) for spec in model.inputs}
    try:
        with WebSession(model.onnx_path, model.inputs, model.outputs) as session:
            session.run(feeds)
    except WebModelError as exc:
        message = str(exc)
        op = re.search(r"implementation for (\w+)\(", message)
        node = re.search(r"node with name '([^']*)'", message)
        newest = re.search(r"support for domain ai\.onnx is till opset (\d+)", message)
        if newest:
            workaround = (
                f"export the model at opset {newest.group(1)} or lower "
                f"(torch.onnx.export(..., opset_version={newest.group(1)}))"
            )
        else:
            workaround = (
                "keep this op out of the web build (e.g. split the model), or use the "
                "WebGPU/JSEP provider where it has the kernel"
            )
        return [
            Finding(
                runtime,
                "unsupported",
                message[:500],
                workaround,
                op_type=op.group(1) if op else None,
                nodes=(node.group(1),) if node and node.group(1) else (),
                evidence=f"ran in headless chromium on onnxruntime-web {ORT_WEB_VERSION} (wasm)",
            )
        ]
    return []
