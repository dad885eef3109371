"""Model passes: transforms before any runtime (prune, distill, graph clean-up).

Registered by name with a lazy import path, so listing passes imports neither torch nor onnx.
A new pass is one file and one line here. Each pass also has a function of its own name in its
file, exported at the top level beside `load` and `inspect`:
`edgeforge.prune(module, example_inputs, ratio=..., data=..., epochs=...)`,
`edgeforge.distill(teacher, example_inputs, data, student=None, width=..., steps=...)` and
`edgeforge.cleanup(model)`, each returning a `PassResult`. (They are not re-exported here: a
package attribute `prune` would be replaced by the submodule `passes/prune.py` on its import.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgeforge.errors import EdgeforgeError

if TYPE_CHECKING:
    from edgeforge.passes.base import Footprint, Pass, PassResult

__all__ = [
    "Footprint",
    "Pass",
    "PassResult",
    "get_pass",
    "pass_names",
]

_REGISTRY = {
    "prune": "edgeforge.passes.prune:PrunePass",
    "distill": "edgeforge.passes.distill:DistillPass",
    "cleanup": "edgeforge.passes.cleanup:CleanupPass",
}

_LAZY = {
    "Footprint": "edgeforge.passes.base",
    "Pass": "edgeforge.passes.base",
    "PassResult": "edgeforge.passes.base",
}


def pass_names() -> list[str]:
    return list(_REGISTRY)


def get_pass(name: str, **options: Any) -> Pass:
    """The pass called `name`, configured with `options`; an unknown name lists the valid ones."""
    if name not in _REGISTRY:
        raise EdgeforgeError(f"unknown pass {name!r}; choose from {', '.join(_REGISTRY)}")
    module_name, _, class_name = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)(**options)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'edgeforge.passes' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
