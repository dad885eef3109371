"""Open an artifact with the device's runtime directly: a small table, one loader per runtime.

Each loader imports only the runtime itself (never `edgeforge.runtimes`, which imports the
converters), on first use. A loaded model is a `Session`: `run(feed) -> {output name: array}`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge.errors import EdgeforgeError

__all__ = ["LOADERS", "SUFFIXES", "Session", "artifact_path", "open_session"]


class Session:
    """A loaded model: input names and `run(feed)`."""

    def __init__(self, inputs: list[str], run: Callable[[dict[str, np.ndarray]], dict]) -> None:
        self.inputs = inputs
        self._run = run

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in self.inputs if name not in feed]
        if missing:
            raise EdgeforgeError(
                f"input {', '.join(missing)} missing; the model takes {', '.join(self.inputs)}"
            )
        return self._run(feed)


def _onnxruntime(path: Path) -> Session:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = session.run(outputs, {name: feed[name] for name in names})
        return dict(zip(outputs, values, strict=True))

    return Session(names, run)


def _openvino(path: Path) -> Session:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    names = [port.get_any_name() for port in compiled.inputs]
    outputs = [port.get_any_name() for port in compiled.outputs]

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = compiled({name: feed[name] for name in names})
        ports = zip(outputs, compiled.outputs, strict=True)
        return {name: np.asarray(result[port]) for name, port in ports}

    return Session(names, run)


def _litert(path: Path) -> Session:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    names = [d["name"] for d in inputs]

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for detail in inputs:
            interpreter.set_tensor(detail["index"], feed[detail["name"]])
        interpreter.invoke()
        return {d["name"]: interpreter.get_tensor(d["index"]) for d in outputs}

    return Session(names, run)


def _executorch(path: Path) -> Session:
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(path))
    method = program.load_method("forward")
    count = method.metadata.num_inputs()
    names = [f"input_{i}" for i in range(count)]

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch  # executorch's Python runtime takes tensors; only on executorch devices

        values = method.execute([torch.from_numpy(np.asarray(feed[n])) for n in names])
        return {f"output_{i}": np.asarray(v) for i, v in enumerate(values)}

    return Session(names, run)


# runtime name (variant.json "runtime") -> loader; and artifact suffix -> runtime name.
LOADERS: dict[str, Callable[[Path], Session]] = {
    "onnxruntime": _onnxruntime,
    "onnxruntime-mobile": _onnxruntime,
    "openvino": _openvino,
    "litert": _litert,
    "executorch": _executorch,
}
SUFFIXES: dict[str, str] = {
    ".onnx": "onnxruntime",
    ".ort": "onnxruntime",
    ".xml": "openvino",
    ".tflite": "litert",
    ".pte": "executorch",
}


def artifact_path(slot: Path, index: dict[str, Any]) -> tuple[str, Path]:
    """(runtime, artifact file) of the variant in `slot`, from its variant.json `index`."""
    files = [str(f["path"]) for f in index.get("files", []) if isinstance(f, dict) and "path" in f]
    artifact = index.get("main") or index.get("artifact")  # the release names it "main"
    if not isinstance(artifact, str):
        artifact = next((f for f in files if Path(f).suffix in SUFFIXES), None)
    if artifact is None:
        raise EdgeforgeError(f"{slot}: variant.json names no model file the agent can open")
    runtime = str(index.get("runtime") or SUFFIXES.get(Path(artifact).suffix, ""))
    if runtime not in LOADERS:
        runtime = SUFFIXES.get(Path(artifact).suffix, runtime)
    if runtime not in LOADERS:
        raise EdgeforgeError(
            f"runtime {runtime!r} has no loader on the device; supported: {', '.join(LOADERS)}"
        )
    return runtime, slot / artifact


def open_session(slot: Path, index: dict[str, Any]) -> Session:
    runtime, path = artifact_path(slot, index)
    try:
        return LOADERS[runtime](path)
    except ImportError as exc:
        raise EdgeforgeError(f"runtime {runtime} is not installed on this device") from exc
