"""Class 6 of issue 13 (the parts outside `--data`): every bad value is exit 2 with one line.

Tolerances that make every comparison pass or fail (`--rtol nan`, `--atol -1`,
`--min-cosine 2`) and a binary `--prices` file were internal errors or silently accepted.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgeforge import EdgeforgeError, cli
from edgeforge.evaluate.compare import tolerance_for


@pytest.fixture
def model(tmp_path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize(
    "flag, value", [("--rtol", "nan"), ("--atol", "-1"), ("--min-cosine", "2"), ("--rtol", "-0.1")]
)
def test_tolerance_that_judges_nothing_refused(model: Path, flag: str, value: str, capsys) -> None:
    assert cli.main(["verify", str(model), str(model), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edgeforge: error: {flag}") and err.count("\n") == 1


def test_infinite_tolerance_still_means_not_judged() -> None:
    assert tolerance_for("fp32", rtol=float("inf")).rtol == float("inf")
    with pytest.raises(EdgeforgeError):
        tolerance_for("fp32", min_cosine=float("nan"))


def test_binary_prices_file_refused(model: Path, tmp_path: Path, capsys) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_bytes(bytes(range(256)))
    code = cli.main(["decide", str(model), "--device", "raspberry-pi-5", "--prices", str(prices)])
    assert code == 2
    assert "not a UTF-8 text file" in capsys.readouterr().err


def test_prices_folder_refused(model: Path, tmp_path: Path, capsys) -> None:
    code = cli.main(["decide", str(model), "--device", "raspberry-pi-5", "--prices", str(tmp_path)])
    assert code == 2
    assert "cannot read it" in capsys.readouterr().err


def test_input_of_undefined_element_type_not_an_internal_error(tmp_path: Path, capsys) -> None:
    # Found by bench/fuzz_load.py: element type 99 passed the checker, then crashed `load`.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "odd",
        [helper.make_tensor_value_info("x", 99, [2, 3])],
        [helper.make_tensor_value_info("y", 99, [2, 3])],
    )
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert cli.main(["inspect", str(path)]) in (0, 2)
    assert "internal error" not in capsys.readouterr().err


def test_external_location_not_utf8_refused(tmp_path: Path, capsys) -> None:
    # Found by bench/fuzz_load.py: protobuf hands a non-UTF-8 string field over as bytes.
    import numpy as np
    from onnx import numpy_helper

    weight = numpy_helper.from_array(np.ones(4, np.float32), "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "wXbin"
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])],
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [weight],
    )
    raw = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "ext.onnx"
    path.write_bytes(raw.SerializeToString().replace(b"wXbin", b"w\xbabin"))
    assert cli.main(["inspect", str(path)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_dim_name_not_utf8_not_an_internal_error(tmp_path: Path, capsys) -> None:
    # Found by bench/fuzz_load.py: a dim_param that is not UTF-8 reached a regex as bytes.
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "dims",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["bXtch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["bXtch", 4])],
    )
    raw = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "dims.onnx"
    path.write_bytes(raw.SerializeToString().replace(b"bXtch", b"b\xbatch"))
    assert cli.main(["inspect", str(path), "--json"]) in (0, 2)
    assert "internal error" not in capsys.readouterr().err
