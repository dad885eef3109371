"""edgeforge: take a trained model to a verified, measured model on edge devices.

The Python API is the CLI: every verb is one call of the same name taking the same options
(`edgeforge.convert("model.onnx", "onnxruntime,openvino")` is `edgeforge convert model.onnx
--runtime onnxruntime,openvino`), raises `EdgeforgeError` on bad input and returns a typed
result whose `to_dict()` is what `--json` prints. `load` and `inspect` read a model; `prune`,
`distill` and `cleanup` are the model passes. See `edgeforge._api` for the keyword rules.

Invariant: `import edgeforge` imports neither onnx nor torch; each name is imported on first
use, so that `edgeforge devices` starts fast and the base install works without torch.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from edgeforge.errors import EdgeforgeError

if TYPE_CHECKING:
    from edgeforge._api import (
        bench,
        calibrate,
        cascade,
        check,
        convert,
        decide,
        estimate,
        optimize,
        split,
        verify,
    )
    from edgeforge._load import load
    from edgeforge.analysis import Profile, inspect
    from edgeforge.fleet.personal import PersonalizationPackage
    from edgeforge.model import Model, TensorSpec
    from edgeforge.passes.cleanup import cleanup
    from edgeforge.passes.distill import distill
    from edgeforge.passes.prune import prune

__all__ = [
    "EdgeforgeError",
    "Model",
    "PersonalizationPackage",
    "Profile",
    "TensorSpec",
    "__version__",
    "bench",
    "calibrate",
    "cascade",
    "check",
    "cleanup",
    "convert",
    "decide",
    "distill",
    "estimate",
    "inspect",
    "load",
    "optimize",
    "prune",
    "split",
    "verify",
]

__version__ = "0.1.0"

_VERBS = (
    "bench",
    "calibrate",
    "cascade",
    "check",
    "convert",
    "decide",
    "estimate",
    "optimize",
    "split",
    "verify",
)

# Imported on first use, so that `edgeforge devices` starts without onnx or torch.
_LAZY = {
    **dict.fromkeys(_VERBS, "edgeforge._api"),
    "Profile": "edgeforge.analysis",
    "PersonalizationPackage": "edgeforge.fleet.personal",
    "inspect": "edgeforge.analysis",
    "load": "edgeforge._load",
    "Model": "edgeforge.model",
    "TensorSpec": "edgeforge.model",
    "prune": "edgeforge.passes.prune",
    "distill": "edgeforge.passes.distill",
    "cleanup": "edgeforge.passes.cleanup",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'edgeforge' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)


class _Package(types.ModuleType):
    """Four verbs share their name with the module that implements them (`edgeforge.convert`,
    `bench`, `optimize`, `decide`). Importing such a module makes Python set it as an attribute
    of this package, which would hide the function; the function keeps the name instead.
    `from edgeforge.convert import check` still finds the module (in `sys.modules`)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _VERBS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
