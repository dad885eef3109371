"""edgeforge: take a trained model to a verified, measured model on edge devices.

The public surface is small: `load` a model from any source, `inspect` it, and look up
`devices`. Each CLI verb is a thin call into the function of the same name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeforge.errors import EdgeforgeError

if TYPE_CHECKING:
    from edgeforge._load import load
    from edgeforge.analysis import Profile, inspect
    from edgeforge.model import Model, TensorSpec
    from edgeforge.passes.cleanup import cleanup
    from edgeforge.passes.distill import distill
    from edgeforge.passes.prune import prune

__all__ = [
    "EdgeforgeError",
    "Model",
    "Profile",
    "TensorSpec",
    "__version__",
    "cleanup",
    "distill",
    "inspect",
    "load",
    "prune",
]

__version__ = "0.1.0"

# Imported on first use, so that `edgeforge devices` starts without onnx or torch.
_LAZY = {
    "Profile": "edgeforge.analysis",
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
