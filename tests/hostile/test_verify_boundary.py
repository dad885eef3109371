"""`verify` behind the trust boundary (issue 13, classes 2 and 6).

The reference and the candidate run in a child process held to the time limit and the memory
budget: a Loop whose trip count comes from an input ends in one line, not a hang; a model that
ONNX Runtime refuses or cannot run is one line naming which model, never an internal error.
The result is the same object whether the comparison ran in a child or here.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeforge import cli
from edgeforge.evaluate.parity import verify

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgeforge: error:"), err
    return err


@pytest.fixture
def relu(tmp_path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", F32, [1, 4])],
        [helper.make_tensor_value_info("y", F32, [1, 4])],
    )
    return _save(graph, tmp_path / "relu.onnx")


def test_loop_trip_count_from_input_times_out(tmp_path: Path, capsys) -> None:
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c2"]), helper.make_node("Add", ["v", "v"], ["v2"])],
        "body",
        [
            helper.make_tensor_value_info("i", I64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", F32, [1]),
        ],
        [
            helper.make_tensor_value_info("c2", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v2", F32, [1]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "cond", "v0"], ["y"], body=body)],
        "loop",
        [helper.make_tensor_value_info("n", I64, [1])],
        [helper.make_tensor_value_info("y", F32, [1])],
        [
            numpy_helper.from_array(np.array(True), "cond"),
            numpy_helper.from_array(np.ones(1, np.float32), "v0"),
        ],
    )
    model = _save(graph, tmp_path / "loop.onnx")
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "n.npy", np.array([1 << 40], np.int64))  # one sample: 2^40 trips
    started = time.monotonic()
    code = cli.main(["verify", str(model), str(model), "--data", str(data), "--timeout", "3"])
    assert code == 2
    assert "did not finish within 3 s" in _one_line(capsys)
    assert time.monotonic() - started < 30


def test_reference_onnxruntime_refuses_is_one_line(tmp_path: Path, relu: Path, capsys) -> None:
    graph = helper.make_graph(  # Add of float and int64: ONNX Runtime refuses the session
        [helper.make_node("Add", ["x", "W"], ["y"])],
        "mixed",
        [helper.make_tensor_value_info("x", F32, [1, 4])],
        [helper.make_tensor_value_info("y", F32, [1, 4])],
        [numpy_helper.from_array(np.ones((1, 4), np.int64), "W")],
    )
    bad = _save(graph, tmp_path / "mixed.onnx")
    assert cli.main(["verify", str(bad), str(relu)]) == 2
    assert "ONNX Runtime cannot load it" in _one_line(capsys)


def test_candidate_fails_at_run_time_is_one_line(tmp_path: Path, capsys) -> None:
    graph = helper.make_graph(  # indices past the end: ONNX Runtime fails when it runs
        [helper.make_node("Gather", ["x", "idx"], ["y"], axis=1)],
        "gather",
        [helper.make_tensor_value_info("x", F32, [1, 4])],
        [helper.make_tensor_value_info("y", F32, [1, 1])],
        [numpy_helper.from_array(np.array([9], np.int64), "idx")],
    )
    bad = _save(graph, tmp_path / "gather.onnx")
    assert cli.main(["verify", str(bad), str(bad)]) == 2
    assert "the reference: ONNX Runtime failed to run it" in _one_line(capsys)


def test_result_same_in_child_and_in_process(relu: Path) -> None:
    isolated = verify(relu, relu).to_dict()
    here = verify(relu, relu, isolate=False).to_dict()
    isolated.pop("created"), here.pop("created")
    assert isolated == here and isolated["passed"]


def test_timeout_nan_refused(relu: Path, capsys) -> None:
    assert cli.main(["verify", str(relu), str(relu), "--timeout", "nan"]) == 2
    assert "--timeout" in _one_line(capsys)


def test_memory_limit_flag_on_verify(relu: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("EDGEFORGE_MEMORY_LIMIT", "8GB")  # restored after the test
    assert cli.main(["verify", str(relu), str(relu), "--memory-limit", "2GB"]) == 0
    assert cli.main(["verify", str(relu), str(relu), "--memory-limit", "lots"]) == 2
