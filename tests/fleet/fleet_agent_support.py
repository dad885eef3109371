"""Test support for the agent: a tiny ONNX model, releases published into a real TUF repository,
and a small real fleet server on loopback (enrol, check-in, report, the repository with Range)
that implements the device protocol minimally, with knobs for faults (offline, dropped
downloads). It stands in for `edgeforge serve` in the agent's tests."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge.fleet import protocol

NAME = "tiny"


def make_model(path: Path, scale: float, *, bomb: bool = False) -> Path:
    """y = x @ W * scale (x: 1x8 float32). `bomb` adds a ConstantOfShape that allocates ~1 GB
    at run time (a model that blows any memory budget)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = (np.arange(64, dtype=np.float32).reshape(8, 8) / 64.0) * scale
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    inits = [numpy_helper.from_array(weight, "w")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])]
    if bomb:
        inits.append(numpy_helper.from_array(np.array([1 << 28], dtype=np.int64), "shape"))
        one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
        nodes.append(helper.make_node("ConstantOfShape", ["shape"], ["big"], value=one))
        nodes.append(helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("total", TensorProto.FLOAT, []))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def canary_feed(shift: float = 0.0) -> dict[str, np.ndarray]:
    return {"x": (np.linspace(-1, 1, 8, dtype=np.float32) + shift).reshape(1, 8)}


def publish(
    repo,
    work: Path,
    version: int,
    device_class: str,
    *,
    scale: float | None = None,
    wrong_reference: bool = False,
    bomb: bool = False,
    pad: int = 0,
    samples: int = 4,
    latency_budget_ms: float | None = None,
    personalize: Path | None = None,
) -> dict[str, Any]:
    """Publish NAME/VERSION/CLASS/{model.onnx, canary.npz, variant.json}; returns variant.json.
    `wrong_reference` makes the canary fail; `pad` grows the model file (for download tests);
    `latency_budget_ms` is the health probe's budget per inference (default: the agent's, five
    times the canary's slowest plus 50 ms); `personalize` ships that personalisation package
    folder in the variant (`personalize/`)."""
    import onnxruntime as ort

    folder = work / f"v{version}-{device_class}"
    folder.mkdir(parents=True, exist_ok=True)
    model = make_model(folder / "model.onnx", scale if scale is not None else version, bomb=bomb)
    if pad:
        import onnx

        proto = onnx.load(model)
        proto.doc_string = "p" * pad
        onnx.save(proto, model)
    # The release's layout: axis 0 is the sample.
    shifts = np.linspace(-1.0, 1.0, samples)
    inputs = np.stack([canary_feed(float(shift))["x"] for shift in shifts])
    if bomb:
        reference = np.zeros((len(inputs), 1, 8), np.float32)
    else:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        reference = np.stack([session.run(["y"], {"x": x})[0] for x in inputs])
    if wrong_reference:
        reference = reference + 1.0
    np.savez(folder / "canary.npz", **{"in/x": inputs, "out/y": reference})
    names = ["model.onnx", "canary.npz"]
    if personalize is not None:
        import shutil

        shutil.copytree(personalize, folder / "personalize")
        names += sorted(
            p.relative_to(folder).as_posix()
            for p in (folder / "personalize").rglob("*")
            if p.is_file()
        )
    files = []
    for file in names:
        data = (folder / file).read_bytes()
        files.append(
            {"path": file, "sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}
        )
    index = {
        "name": NAME,
        "version": version,
        "device_class": device_class,
        "runtime": "onnxruntime",
        "precision": "fp32",
        "format": "onnx",
        "main": "model.onnx",
        "files": files,
        "evidence": {},
        "canary": {
            "file": "canary.npz",
            "samples": len(inputs),
            "tolerance": {"rtol": 1e-3, "atol": 1e-4, "min_cosine": 0.9999, "min_top1": 0.0},
        },
    }
    if latency_budget_ms is not None:
        index["latency_budget_ms"] = latency_budget_ms
    (folder / "variant.json").write_text(json.dumps(index))
    base = f"{NAME}/{version}/{device_class}"
    custom = {"edgeforge": {"name": NAME, "version": version, "device_class": device_class}}
    with repo.lock():
        repo.publish(
            {f"{base}/{f}": folder / f for f in ("variant.json", *names)},
            {f"{base}/variant.json": custom},
        )
    return index


class FleetServer:
    """A minimal real fleet server on 127.0.0.1 (ThreadingHTTPServer)."""

    def __init__(self, repo) -> None:
        self.repo = repo
        self.devices: dict[str, dict] = {}
        self.directives: dict[str, dict] = {}  # device class or device id -> directive body
        self.reports: list[dict] = []
        self.checkins: list[dict] = []
        self.ranges: list[str] = []
        self.nonces: set[str] = set()
        self.offline = False
        self.drop_after: int | None = None  # close a target download after this many bytes, once
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status, body=None, headers=None):
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if server.offline:
                    self.close_connection = True
                    return
                server.serve_repo(self)

            def do_POST(self):
                if server.offline:
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                limit = protocol.BODY_LIMITS.get(self.path)
                if limit is None:
                    return self._reply(404, {"error": "no such endpoint"})
                if length > limit:
                    return self._reply(413, {"error": "too large"})
                status, reply, headers = server.handle(self.path, dict(self.headers), body)
                self._reply(status, reply, headers)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()

    def set_directive(self, key: str, version: int, action: str = "install") -> None:
        with self.lock:
            self.directives[key] = {"name": NAME, "version": version, "action": action}

    def handle(self, path: str, headers: dict, body: bytes):
        if path == "/v1/enrol":
            data = json.loads(body)
            known = self.devices.get(data["device_id"])
            if known and known["public_key"] != data["public_key"]:
                return 409, {"error": "device id taken"}, {}
            self.devices[data["device_id"]] = data
            reply = {
                "device_id": data["device_id"],
                "director_key": protocol.b64encode(self.repo.director_public_key()),
                "repo": "/repo",
            }
            return (200 if known else 201), reply, {}
        try:
            device_id = protocol.request_device(headers)
            device = self.devices[device_id]
            nonce = protocol.verify_request(
                protocol.b64decode(device["public_key"]), headers, "POST", path, body,
                now=time.time(),
            )  # fmt: skip
        except (protocol.ProtocolError, KeyError):
            return 401, {"error": "unauthenticated"}, {}
        with self.lock:
            if nonce in self.nonces:
                return 401, {"error": "replayed nonce"}, {}
            self.nonces.add(nonce)
        data = json.loads(body)
        if path == "/v1/report":
            with self.lock:
                self.reports.extend({"device_id": device_id, **e} for e in data["events"])
            return 202, {}, {}
        with self.lock:
            self.checkins.append({"device_id": device_id, **data})
            wanted = self.directives.get(device_id) or self.directives.get(device["device_class"])
        if wanted is None:
            wanted = {"name": NAME, "version": None, "action": "stay"}
        directive = {
            "device_id": device_id,
            "device_class": device["device_class"],
            "rollout": None,
            "issued_at": 0,
            **wanted,
        }
        etag = '"' + hashlib.sha256(protocol.canonical(directive)).hexdigest()[:16] + '"'
        if headers.get("If-None-Match") == etag:
            return 304, None, {"ETag": etag}
        signed = {
            "directive": directive,
            "signature": protocol.b64encode(self.repo.director_sign(protocol.canonical(directive))),
        }
        return 200, signed, {"ETag": etag}

    def serve_repo(self, handler) -> None:
        path = handler.path
        if not path.startswith("/repo/") or ".." in path:
            return handler._reply(404, {"error": "not found"})
        local = self.repo.path / path[len("/repo/") :]
        if not local.is_file():
            return handler._reply(404, {"error": "not found"})
        data = local.read_bytes()
        start, status = 0, 200
        header = handler.headers.get("Range")
        if header:
            self.ranges.append(header)
            start = int(header.split("=")[1].split("-")[0])
            if start >= len(data):
                return handler._reply(416, None, {"Content-Range": f"bytes */{len(data)}"})
            status = 206
        body = data[start:]
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        drop = self.drop_after if "/targets/" in path else None
        if drop is not None and len(body) > drop:
            self.drop_after = None  # once
            handler.wfile.write(body[:drop])
            handler.wfile.flush()
            handler.close_connection = True
            import socket

            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        handler.wfile.write(body)
