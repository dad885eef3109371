"""Runtime plug-ins, registered by name with a lazy import path.

Listing runtimes imports none of them, so `edgeforge devices` and `--help` stay fast and work
without the optional extras installed. A new runtime is one file and one line here.
"""

from __future__ import annotations

import importlib

from edgeforge.errors import EdgeforgeError
from edgeforge.runtimes.base import (
    Artifact,
    Availability,
    Finding,
    Manifest,
    Runtime,
    RuntimeUnavailable,
    Session,
)

__all__ = [
    "Artifact",
    "Availability",
    "Finding",
    "Manifest",
    "Runtime",
    "RuntimeUnavailable",
    "Session",
    "get_runtime",
    "runtime_names",
]

_REGISTRY = {
    "onnxruntime": "edgeforge.runtimes.onnxruntime:OnnxRuntime",
    "onnxruntime-mobile": "edgeforge.runtimes.onnxruntime:OnnxRuntimeMobile",
    "openvino": "edgeforge.runtimes.openvino:OpenVino",
    "litert": "edgeforge.runtimes.litert:LiteRT",
    "coreml": "edgeforge.runtimes.coreml:CoreML",
    "executorch": "edgeforge.runtimes.executorch:ExecuTorch",
    "web": "edgeforge.runtimes.web:OnnxRuntimeWeb",
    "tensorrt": "edgeforge.runtimes.tensorrt:TensorRT",
}


def runtime_names() -> list[str]:
    return list(_REGISTRY)


def get_runtime(name: str) -> Runtime:
    """The runtime called `name`; an unknown name lists the valid ones."""
    if name not in _REGISTRY:
        raise EdgeforgeError(f"unknown runtime {name!r}; choose from {', '.join(_REGISTRY)}")
    module_name, _, class_name = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)()
