"""ONNX Runtime Web: the `.onnx` file run by onnxruntime-web's wasm provider in headless Chromium.

Nothing here imports a Python package for the browser; it needs Debian's `chromium` and a pinned
onnxruntime-web from npm (`edgeforge setup web` installs both). The server, the browser
and the page live in `_browser.py`, whose invariants a `WebSession` inherits (loopback only,
one Chromium per session, everything stopped by `close()`, every wait timed). Invariants:
- the artifact is a single `model.onnx` with its weights inline whenever they fit protobuf's
  2 GB limit (the browser fetches one file best); larger ones keep their external data files,
  which the page hands to onnxruntime-web through its `externalData` option;
- a `WebSession` serves the page only its model and that model's external data files;
- a failure is a `WebModelError` when onnxruntime-web refused the model, and a plain
  `EdgeforgeError` when the browser, the server or the page did.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge.errors import EdgeforgeError
from edgeforge.model import Model, TensorSpec
from edgeforge.recipe import Recipe
from edgeforge.runtimes._browser import (
    DTYPES,
    ORT_WEB_VERSION,
    BrowserPage,
    blocker,
    chromium_binary,
    chromium_version,
    installed_ort_web_version,
    ort_web_dist,
)
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

TIMEOUT_S = 60.0
SIZE_BUDGET = 100 * 10**6  # what a web app can reasonably make a user download
PROTOBUF_LIMIT = 2 * 1024**3  # one .onnx file; beyond it weights must be external


class WebModelError(EdgeforgeError):
    """onnxruntime-web itself refused or failed the model (not the browser or the server)."""


# -- the session --------------------------------------------------------------------------------


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
        self.last_browser_ms: float | None = None  # session.run time measured in the page
        reason = blocker()
        if reason is not None:
            raise RuntimeUnavailable(f"runtime web cannot run here: {reason}")
        onnx_path = Path(onnx_path)
        data = external_data_files(_load_proto(onnx_path), onnx_path.parent)
        files = {"model/model.onnx": onnx_path}
        files.update({f"model/{location}": path for location, path in data.items()})
        config = {
            "model": "model/model.onnx",
            "externalData": [{"path": loc, "data": f"model/{loc}"} for loc in sorted(data)],
            "numThreads": threads,
        }
        self._page = BrowserPage(files, config, timeout=timeout)
        ready = self._page.ready
        if not ready.get("ok"):
            self.close()
            error = _plain(ready.get("error"))
            if ready.get("stage") == "setup" or "no available backend" in error:
                # The page or the wasm files are broken: no verdict on the model.
                raise EdgeforgeError(
                    f"onnxruntime-web did not start in chromium ({error}); "
                    "run `edgeforge setup web` again"
                )
            raise WebModelError(f"onnxruntime-web cannot load {onnx_path.name}: {error}")
        self.load_ms = float(ready.get("loadMs", 0.0))

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._page.closed:
            raise EdgeforgeError("this web session is closed; open the artifact again")
        answer = self._page.run(feeds)
        if "error" in answer:
            raise WebModelError(
                f"onnxruntime-web failed to run the model: {_plain(answer['error'])}"
            )
        self.last_browser_ms = float(answer.get("ms", 0.0))
        produced = answer["outputs"]
        missing = [t.name for t in self.outputs if t.name not in produced]
        if missing:
            raise EdgeforgeError(
                f"onnxruntime-web returned {sorted(produced)}, without {missing}; rebuild the "
                "artifact from the model it was meant for"
            )
        return [produced[t.name] for t in self.outputs]

    @property
    def port(self) -> int | None:
        return self._page.port

    @property
    def browser_pid(self) -> int | None:
        return self._page.browser_pid

    def close(self) -> None:
        self._page.close()


def _plain(error: Any) -> str:
    """ORT's message without its wrapper and the C++ source location and signature."""
    text = re.sub(r"Can't create a session\. ERROR_CODE: \d+, ERROR_MESSAGE: ", "", str(error))
    return re.sub(r"\S+\.(?:h|cc|cpp):\d+ .*?\) (?=[A-Z])", "", text)


def _load_proto(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


# -- the runtime --------------------------------------------------------------------------------


class OnnxRuntimeWeb(Runtime):
    name = "web"
    format = "onnx"
    modules = ()
    distributions = ("onnxruntime",)

    def execution_blocker(self) -> str | None:
        return blocker()

    def versions(self) -> dict[str, str]:
        found = super().versions()
        found["onnxruntime-web"] = installed_ort_web_version() or "not installed"
        binary = chromium_binary()
        found["chromium"] = chromium_version(binary) if binary else "not installed"
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
    if spec.dtype not in DTYPES:
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
