"""The OpenVINO runtime, run for real: conversion, fp32/fp16 IR, CPU sessions and `check`."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from graphs import save_graph
from onnx import TensorProto, helper

import edgeforge
from edgeforge.errors import EdgeforgeError
from edgeforge.recipe import Recipe
from edgeforge.runtimes import Artifact, get_runtime
from edgeforge.runtimes.openvino import OpenVino

ov = pytest.importorskip("openvino")

OV_VERSION = importlib.metadata.version("openvino")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own check cache, so no answer leaks in from ~/.cache or another test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEFORGE_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def digits_fp32(digits_model, tmp_path_factory) -> Artifact:
    return OpenVino().build(digits_model, Recipe("fp32"), tmp_path_factory.mktemp("ov") / "fp32")


@pytest.fixture(scope="module")
def digits_fp16(digits_model, tmp_path_factory) -> Artifact:
    return OpenVino().build(digits_model, Recipe("fp16"), tmp_path_factory.mktemp("ov") / "fp16")


def _images(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, 1, 8, 8)).astype(np.float32)


def _reference(model: edgeforge.Model, image: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image})[0]


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


def _float_constant_types(artifact: Artifact) -> set[str]:
    ir = ov.Core().read_model(artifact.path)
    return {
        op.get_element_type().get_type_name()
        for op in ir.get_ops()
        if op.get_type_name() == "Constant" and op.get_element_type().is_real()
    }


def _det_model(folder: Path) -> edgeforge.Model:
    """Relu then Det: OpenVINO's ONNX frontend has no conversion rule for Det."""
    path = save_graph(
        folder / "det.onnx",
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu0"),
            helper.make_node("Det", ["r"], ["y"], name="det0"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    return edgeforge.load(path)


# -- build ----------------------------------------------------------------------------------


def test_build_writes_ir_and_manifest(digits_fp32):
    files = {p.name for p in digits_fp32.folder.iterdir()}
    assert {"model.xml", "model.bin", "manifest.json"} <= files
    manifest = json.loads((digits_fp32.folder / "manifest.json").read_text())
    assert manifest["runtime"] == "openvino"
    assert manifest["format"] == "openvino-ir"
    assert manifest["file"] == "model.xml"
    assert manifest["tools"]["openvino"] == OV_VERSION
    assert [t["name"] for t in manifest["inputs"]] == ["image"]


def test_fp32_recipe_is_not_silently_saved_as_fp16(digits_fp32):
    # openvino.save_model compresses weights to fp16 unless told otherwise.
    assert _float_constant_types(digits_fp32) == {"f32"}


def test_fp16_artifact_is_smaller_and_close(digits_model, digits_fp32, digits_fp16):
    assert "f16" in _float_constant_types(digits_fp16)
    assert digits_fp16.size_bytes() < digits_fp32.size_bytes()
    image = _images(3)
    with OpenVino().open(digits_fp16) as session:
        got = session.run({"image": image})["logits"]
    assert _relative_error(got, _reference(digits_model, image)) < 1e-2


def test_failed_conversion_leaves_no_artifact(tmp_path):
    out = tmp_path / "artifact"
    with pytest.raises(EdgeforgeError, match="Det"):
        OpenVino().build(_det_model(tmp_path), Recipe("fp32"), out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".artifact")] == []


# -- sessions -------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_session_matches_onnxruntime(digits_model, digits_fp32, batch):
    image = _images(batch)  # batch 3 runs the IR's dynamic batch dimension
    with OpenVino(threads=2).open(digits_fp32) as session:
        got = session.run({"image": image})
    assert list(got) == ["logits"]
    assert got["logits"].shape == (batch, 10)
    assert _relative_error(got["logits"], _reference(digits_model, image)) < 1e-4


def test_session_does_not_compute_in_bf16_behind_our_back(digits_model, digits_fp32):
    with OpenVino().open(digits_fp32) as session:
        assert session.inference_precision == "f32"
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in capabilities:
        pytest.skip("this CPU has no bf16: OpenVINO's default is f32 here anyway")
    # What the hint guards against: OpenVINO's own default on this CPU loses parity.
    image = _images(3)
    with OpenVino(inference_precision="bf16").open(digits_fp32) as session:
        got = session.run({"image": image})["logits"]
    assert _relative_error(got, _reference(digits_model, image)) > 1e-4


def test_a_bf16_artifact_computes_in_bf16_and_default_leaves_the_choice_to_openvino(
    digits_model, tmp_path
):
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    artifact = OpenVino().build(digits_model, Recipe("bf16"), tmp_path / "bf16")
    assert any("bf16" in note for note in artifact.manifest.notes)
    image = _images(3)
    with OpenVino().open(artifact) as session:
        assert session.inference_precision == "bf16"
        got = session.run({"image": image})["logits"]
        if "BF16" in capabilities:
            assert session.effective_precision == "bf16"
    assert _relative_error(got, _reference(digits_model, image)) < 0.05
    with OpenVino(inference_precision="default").open(artifact) as session:
        assert session.inference_precision == "default"
        expected = "bf16" if "BF16" in capabilities else "f32"
        assert session.effective_precision == expected


def test_session_refuses_a_feed_of_the_wrong_shape(digits_fp32):
    with OpenVino().open(digits_fp32) as session, pytest.raises(EdgeforgeError, match="image"):
        session.run({"image": np.zeros((1, 1, 8, 4), np.float32)})


def test_open_refuses_an_artifact_built_by_another_runtime(digits_model, tmp_path):
    onnx_artifact = get_runtime("onnxruntime").build(digits_model, Recipe(), tmp_path / "ort")
    with pytest.raises(EdgeforgeError, match="built for onnxruntime"):
        OpenVino().open(onnx_artifact)


def test_intermediate_outputs_return_named_tensors(digits_model, digits_fp32):
    image = _images(2)
    values = OpenVino().intermediate_outputs(
        digits_fp32, {"image": image}, ["relu", "view", "no_such_tensor", "logits"]
    )
    assert sorted(values) == ["logits", "relu", "view"]  # a name the IR lacks is left out
    assert values["relu"].shape == (2, 16, 8, 8)
    assert values["relu"].min() >= 0
    assert values["view"].shape == (2, 512)
    assert _relative_error(values["logits"], _reference(digits_model, image)) < 1e-4


def test_intermediates_hook_exposes_the_same_tensors(digits_fp32, tmp_path):
    feeds = {"image": _images(1)}
    direct = OpenVino().intermediate_outputs(digits_fp32, feeds, ["relu_1", "missing"])
    hooked = OpenVino().intermediates(digits_fp32, feeds, ["relu_1", "missing"], tmp_path)
    assert list(hooked) == list(direct) == ["relu_1"]
    np.testing.assert_array_equal(hooked["relu_1"], direct["relu_1"])


# -- check ----------------------------------------------------------------------------------


def test_check_names_an_op_openvino_cannot_convert(tmp_path):
    findings = OpenVino().check(_det_model(tmp_path))
    assert len(findings) == 1
    (finding,) = findings
    assert finding.severity == "unsupported"
    assert finding.op_type == "Det"
    assert finding.nodes == ("det0",)
    assert finding.evidence == "conversion attempt"
    assert "Det" in finding.workaround


def test_check_says_why_a_conversion_failed(tmp_path):
    path = save_graph(
        tmp_path / "resize.onnx",
        [
            helper.make_node(
                "Resize",
                ["x", "", "scales"],
                ["y"],
                name="resize0",
                mode="cubic",
                coordinate_transformation_mode="tf_crop_and_resize",
            )
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4]),
            helper.make_tensor_value_info("scales", TensorProto.FLOAT, [4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, "h", "w"])],
    )
    (finding,) = OpenVino().check(edgeforge.load(path))
    assert (finding.op_type, finding.nodes) == ("Resize", ("resize0",))
    assert "tf_crop_and_resize" in finding.message


def test_check_warns_of_dynamic_dims_and_int64_inputs(tmp_path):
    path = save_graph(
        tmp_path / "embedding.onnx",
        [helper.make_node("Gather", ["table", "ids"], ["y"], name="embed")],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 4])],
        [helper.make_tensor("table", TensorProto.FLOAT, [10, 4], [0.5] * 40)],
    )
    findings = OpenVino().check(edgeforge.load(path))
    assert not [f for f in findings if f.severity == "unsupported"]
    traps = {f.message.split(" (")[0]: f for f in findings if f.severity == "trap"}
    assert set(traps) == {"dynamic input dimensions", "int64 inputs"}
    assert "--shape ids=1x1" in traps["dynamic input dimensions"].workaround
    assert "int32" in traps["int64 inputs"].workaround
    placed_elsewhere = any(d.split(".")[0] in ("GPU", "NPU") for d in ov.Core().available_devices)
    info = [f for f in findings if f.severity == "info"]
    assert len(info) == (0 if placed_elsewhere else 1)


def test_check_finds_nothing_unsupported_in_the_digits_cnn(digits_model):
    findings = OpenVino().check(digits_model)
    assert [f for f in findings if f.severity == "unsupported"] == []
    assert any(f.severity == "trap" and "image" in f.message for f in findings)


def test_check_answer_is_cached_per_version_and_model(tmp_path, private_cache):
    model = _det_model(tmp_path)
    first = OpenVino().check(model)
    entries = list((private_cache / f"openvino-{OV_VERSION}" / "query").glob("*.json"))
    assert len(entries) == 1
    # Mark the stored answer: a second call that converted again would not return the mark.
    stored = json.loads(entries[0].read_text())
    assert stored["value"] == [f.to_dict() for f in first]
    stored["value"][0]["message"] = "from the cache"
    entries[0].write_text(json.dumps(stored))
    (second,) = OpenVino().check(model)
    assert second.message == "from the cache"
    assert second.nodes == first[0].nodes  # rebuilt as a Finding, nodes a tuple again
