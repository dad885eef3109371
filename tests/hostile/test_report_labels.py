"""Class 6 of issue 13, reports and `split --out`: names from a model are text, outputs guarded.

A node or op name holding `$...$` was read by matplotlib as mathtext and broke the report; the
split's `--out` could be a folder holding the model itself.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgeforge import EdgeforgeError
from edgeforge.hybrid.split import _check_out
from edgeforge.report._plots import layer_error_svg, work_by_op_type_svg


@pytest.mark.parametrize("name", ["a$\\frac$b", "$x_{$", "$$", "price: $5 and $6"])
def test_node_name_that_breaks_mathtext_is_drawn_as_text(name: str) -> None:
    svg = work_by_op_type_svg({"by_op_type": [{"op_type": name, "flops": 10}]})
    assert svg.startswith("<svg")
    verification = {
        "divergence": {
            "found": True,
            "tensor": "t",
            "node": name,
            "layers": [{"tensor": "t", "relative_error": 1.0}],
        }
    }
    assert layer_error_svg(verification).startswith("<svg")


def test_split_out_holding_the_model_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = tmp_path / "head.onnx"  # a name split itself writes
    onnx.save(helper.make_model(graph), model)
    with pytest.raises(EdgeforgeError, match="holds the input"):
        _check_out(tmp_path, [model])


def test_split_out_that_is_a_file_refused(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("mine")
    with pytest.raises(EdgeforgeError, match="file"):
        _check_out(tmp_path / "out", [])


def test_node_name_not_utf8_inspects(tmp_path: Path, capsys) -> None:
    """Found by the fuzzer: ONNX's shape inference could not decode its own error message
    naming a node whose name is not UTF-8 (an internal error)."""
    from edgeforge import cli

    graph = helper.make_graph(  # Reshape by a float tensor: strict inference names the node
        [helper.make_node("Reshape", ["x", "x"], ["y"], name="ZZZZ")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    raw = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    model = tmp_path / "model.onnx"
    model.write_bytes(raw.replace(b"ZZZZ", b"\xf2\x28\xa1\x28"))
    assert cli.main(["inspect", str(model), "--json"]) in (0, 2)
    assert "internal error" not in capsys.readouterr().err
