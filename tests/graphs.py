"""Hand-built ONNX graphs for tests whose expected values are computed by hand."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import helper

__all__ = ["save_det_graph", "save_graph"]


def save_graph(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 20,
) -> Path:
    """Write a small hand-built ONNX graph (checked) and return its path."""
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def save_det_graph(folder: Path) -> Path:
    """`folder/det.onnx`: one `Det` node (a batch of 2 3x3 matrices to their determinants), an
    op ONNX Runtime runs but that has no cost rule and no ONNX-to-torch converter."""
    return save_graph(
        folder / "det.onnx",
        [helper.make_node("Det", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
