"""Finding the first layer where a candidate parts from its reference.

The reference model runs in ONNX Runtime with every intermediate tensor exposed as an output.
The candidate's runtime exposes what it can of the same tensors (`Runtime.intermediates`):
ONNX Runtime all of them, OpenVINO those whose names survive conversion. Walking the
reference's topological order, the first tensor whose error exceeds the tolerance names the
node that produced it. Runtimes that convert from torch (LiteRT, Core ML, ExecuTorch) have no
ONNX tensor names to line up, and the result says so rather than guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeforge.evaluate.compare import Tolerance, cosine_similarity, relative_error
from edgeforge.model import Model

__all__ = ["Divergence", "LayerError", "expose_all", "first_divergence"]


@dataclass
class LayerError:
    tensor: str
    node: str
    op_type: str
    relative_error: float
    cosine: float


@dataclass
class Divergence:
    found: bool
    node: str | None = None
    op_type: str | None = None
    tensor: str | None = None
    relative_error: float | None = None
    compared: int = 0  # how many intermediate tensors could be lined up
    layers: list[LayerError] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "node": self.node,
            "op_type": self.op_type,
            "tensor": self.tensor,
            "relative_error": self.relative_error,
            "compared": self.compared,
            "layers": [layer.__dict__ for layer in self.layers],
            "note": self.note,
        }


def expose_all(onnx_path: Path, out_path: Path) -> list[tuple[str, str, str]]:
    """Write a copy of the model whose graph outputs include every node output.

    Returns (tensor, node name, op type) in topological order, Constant nodes left out.
    """
    proto = onnx.load(str(onnx_path))
    existing = {o.name for o in proto.graph.output}
    produced = []
    for index, node in enumerate(proto.graph.node):
        if node.op_type == "Constant":
            continue
        for name in node.output:
            if name:
                produced.append((name, node.name or f"{node.op_type}_{index}", node.op_type))
                if name not in existing:
                    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    onnx.save(proto, str(out_path), save_as_external_data=proto.ByteSize() > 1_800_000_000)
    return produced


def reference_intermediates(
    model: Model, feeds: dict[str, np.ndarray], scratch: Path
) -> tuple[list[tuple[str, str, str]], dict[str, np.ndarray]]:
    from edgeforge.runtimes.onnxruntime import ort_run, ort_session

    exposed = scratch / "reference_all_outputs.onnx"
    order = expose_all(model.onnx_path, exposed)
    what = "the reference with every tensor exposed"
    session = ort_session(exposed, what)
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, ort_run(session, names, feeds, what), strict=True))
    return order, values


def first_divergence(
    order: list[tuple[str, str, str]],
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    tolerance: Tolerance,
) -> Divergence:
    """Walk `order`; the first float tensor outside `tolerance` is where the two part."""
    layers: list[LayerError] = []
    first: LayerError | None = None
    for tensor, node, op_type in order:
        if tensor not in candidate or tensor not in reference:
            continue
        want, have = np.asarray(reference[tensor]), np.asarray(candidate[tensor])
        if want.dtype.kind != "f" or want.shape != have.shape or want.size == 0:
            continue
        error = relative_error(want, have)
        cosine = cosine_similarity(want, have)
        layer = LayerError(tensor, node, op_type, error, cosine)
        layers.append(layer)
        scale = float(np.max(np.abs(want)))
        outside = (
            float(np.max(np.abs(want.astype(np.float64) - have)))
            > tolerance.atol + tolerance.rtol * scale
            or cosine < tolerance.min_cosine
        )
        if first is None and outside:
            first = layer
    if not layers:
        return Divergence(False, note="no intermediate tensor could be lined up")
    if first is None:
        return Divergence(
            False,
            compared=len(layers),
            layers=layers,
            note="every intermediate tensor that could be compared is within tolerance",
        )
    return Divergence(
        True, first.node, first.op_type, first.tensor, first.relative_error, len(layers), layers
    )
