"""Core ML: conversion from the torch.export program, checked against the manifest off macOS.

Off macOS nothing here executes a package; what is tested is what coremltools itself reads:
the package's spec, its signature and the precision its weights are stored in.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from graphs import save_det_graph
from torch import nn

import edgeforge
from edgeforge.errors import EdgeforgeError
from edgeforge.recipe import Recipe
from edgeforge.runtimes import RuntimeUnavailable, get_runtime
from edgeforge.runtimes.base import Artifact

ct = pytest.importorskip("coremltools")

from edgeforge.runtimes.coreml import NOT_MACOS, validate_without_running  # noqa: E402

ON_MACOS = sys.platform == "darwin"
only_macos = pytest.mark.skipif(not ON_MACOS, reason="Core ML prediction runs only on macOS")


class TwoInputs(nn.Module):
    """Two inputs (one int64) and two outputs (one int64), to pin order and integer widths."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, features: torch.Tensor, steps: torch.Tensor):
        scores = self.linear(features) * steps.unsqueeze(-1).float()
        return scores, scores.argmax(-1)


class Determinant(nn.Module):
    """torch.linalg.det exports to ONNX (Det) and runs in ONNX Runtime; coremltools 9 has no
    conversion for it (nor for fmod, signbit or bitwise_xor, which were tried too)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.det(x) + 1


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFORGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def coreml():
    return get_runtime("coreml")


@pytest.fixture(scope="module")
def two_input_model(tmp_path_factory) -> edgeforge.Model:
    torch.manual_seed(0)
    return edgeforge.load(
        TwoInputs().eval(),
        (torch.randn(2, 4), torch.tensor([1, 2])),
        input_names=["features", "steps"],
        output_names=["scores", "best"],
        workdir=tmp_path_factory.mktemp("two-inputs"),
    )


@pytest.fixture(scope="module")
def digits_fp32(coreml, digits_model, tmp_path_factory) -> Artifact:
    return coreml.build(digits_model, Recipe("fp32"), tmp_path_factory.mktemp("cm") / "fp32")


@pytest.fixture(scope="module")
def digits_fp16(coreml, digits_model, tmp_path_factory) -> Artifact:
    return coreml.build(digits_model, Recipe("fp16"), tmp_path_factory.mktemp("cm") / "fp16")


def _spec(artifact: Artifact):
    return ct.models.MLModel(str(artifact.path), skip_model_load=True).get_spec()


def _array_types(features) -> list[str]:
    from coremltools.proto import FeatureTypes_pb2

    names = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
    return [names.Name(f.type.multiArrayType.dataType) for f in features]


def _weight_types(spec) -> set[str]:
    from coremltools.proto import MIL_pb2

    found = set()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                tensor = op.attributes["val"].type.tensorType if op.type == "const" else None
                if tensor is not None and tensor.rank >= 1:
                    found.add(MIL_pb2.DataType.Name(tensor.dataType))
    return found & {"FLOAT16", "FLOAT32"}


def _tampered(artifact: Artifact, folder, change) -> Artifact:
    """A copy of `artifact` whose manifest.json was edited by `change(data)`."""
    shutil.copytree(artifact.folder, folder)
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return Artifact.load(folder)


# -- building ---------------------------------------------------------------------------------


def test_package_is_written_with_manifest_and_tool_versions(digits_fp32):
    assert digits_fp32.path.name == "model.mlpackage"
    assert (digits_fp32.path / "Manifest.json").is_file()
    assert (digits_fp32.folder / "manifest.json").is_file()
    manifest = Artifact.load(digits_fp32.folder).manifest
    assert (manifest.runtime, manifest.format) == ("coreml", "mlpackage")
    assert manifest.tools["coremltools"] == ct.__version__
    assert manifest.recipe["precision"] == "fp32"
    # Core ML's own names and the fixed batch size are on record.
    assert any("image -> x" in note for note in manifest.notes)
    assert any("logits -> " in note for note in manifest.notes)
    assert any("axis 0 (batch) = 1" in note for note in manifest.notes)


def test_fp16_package_stores_fp16_weights_and_keeps_fp32_io(digits_fp16, digits_fp32):
    spec = _spec(digits_fp16)
    assert spec.description.metadata.userDefined["edgeforge.precision"] == "fp16"
    assert _weight_types(spec) == {"FLOAT16"}
    assert _weight_types(_spec(digits_fp32)) == {"FLOAT32"}
    assert _array_types(spec.description.input) == ["FLOAT32"]
    assert _array_types(spec.description.output) == ["FLOAT32"]
    assert digits_fp16.size_bytes() < digits_fp32.size_bytes()


def test_two_inputs_keep_their_order_and_int64_becomes_int32(coreml, two_input_model, tmp_path):
    artifact = coreml.build(two_input_model, Recipe("fp32"), tmp_path / "two")
    spec = _spec(artifact)
    assert _array_types(spec.description.input) == ["FLOAT32", "INT32"]
    assert _array_types(spec.description.output) == ["FLOAT32", "INT32"]
    assert [list(f.type.multiArrayType.shape) for f in spec.description.input] == [[2, 4], [2]]
    assert any("steps is int64 in the source and int32" in n for n in artifact.manifest.notes)
    assert validate_without_running(artifact) == []


def test_onnx_source_the_bridge_cannot_take_is_refused_with_what_to_do(coreml, tmp_path):
    onnx_only = save_det_graph(tmp_path)
    onnx_only = edgeforge.load(onnx_only)  # an ONNX op the ONNX-to-torch bridge lacks
    with pytest.raises(EdgeforgeError, match=r"torch\.export program.*Det"):
        coreml.build(onnx_only, Recipe("fp32"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (finding,) = coreml.check(onnx_only)
    assert finding.severity == "unsupported" and "torch source" in finding.workaround


# -- checking a package without running it ------------------------------------------------------


def test_untouched_packages_are_consistent(coreml, digits_fp32, digits_fp16):
    assert validate_without_running(digits_fp32) == []
    assert validate_without_running(digits_fp16) == []
    assert coreml.validate_without_running(digits_fp16) == []  # where convert looks for it


def test_manifest_claiming_an_extra_output_is_caught(digits_fp32, tmp_path):
    def add_output(data):
        data["outputs"].append({"name": "probabilities", "dtype": "float32", "shape": [1, 10]})

    tampered = _tampered(digits_fp32, tmp_path / "extra", add_output)
    (problem,) = validate_without_running(tampered)
    assert "2 outputs" in problem and "has 1" in problem


def test_manifest_with_another_input_shape_or_type_is_caught(digits_fp32, tmp_path):
    def change_input(data):
        data["inputs"][0]["shape"] = ["batch", 3, 8, 8]
        data["inputs"][0]["dtype"] = "float16"

    problems = validate_without_running(_tampered(digits_fp32, tmp_path / "shape", change_input))
    assert any("axis 1 is 1 in the package but 3" in p for p in problems)
    assert any("float32 in the package but float16" in p for p in problems)


def test_manifest_claiming_fp16_for_an_fp32_package_is_caught(digits_fp32, tmp_path):
    def claim_fp16(data):
        data["recipe"]["precision"] = "fp16"

    problems = validate_without_running(_tampered(digits_fp32, tmp_path / "prec", claim_fp16))
    assert any("marked fp32, not fp16" in p for p in problems)
    assert any("weights are all float32" in p for p in problems)


def test_folder_without_a_package_is_reported_not_raised(digits_fp32, tmp_path):
    copy = tmp_path / "gone"
    shutil.copytree(digits_fp32.folder, copy)
    shutil.rmtree(copy / "model.mlpackage")
    (problem,) = validate_without_running(Artifact.load(copy))
    assert "not an .mlpackage" in problem


# -- running ------------------------------------------------------------------------------------


@pytest.mark.skipif(ON_MACOS, reason="on macOS Core ML can run the package")
def test_open_off_macos_says_why_instead_of_skipping(coreml, digits_fp32):
    available = coreml.availability()
    assert available.installed and not available.can_execute
    assert available.reason == NOT_MACOS
    with pytest.raises(RuntimeUnavailable, match="runs only on macOS/iOS"):
        coreml.open(digits_fp32)


@only_macos
def test_prediction_matches_onnxruntime(coreml, digits_model, digits_fp32, tmp_path):
    onnxruntime = get_runtime("onnxruntime")
    reference = onnxruntime.open(onnxruntime.build(digits_model, Recipe(), tmp_path / "ort"))
    feeds = {"image": np.random.default_rng(0).standard_normal((1, 1, 8, 8), np.float32)}
    with coreml.open(digits_fp32) as session:
        got = session.run(feeds)
    np.testing.assert_allclose(got["logits"], reference.run(feeds)["logits"], rtol=1e-3, atol=1e-3)


@only_macos
def test_prediction_maps_two_inputs_by_position(coreml, two_input_model, tmp_path):
    onnxruntime = get_runtime("onnxruntime")
    reference = onnxruntime.open(onnxruntime.build(two_input_model, Recipe(), tmp_path / "ort"))
    feeds = {
        "features": np.random.default_rng(0).standard_normal((2, 4), np.float32),
        "steps": np.array([3, -1], np.int64),
    }
    artifact = coreml.build(two_input_model, Recipe("fp32"), tmp_path / "cm")
    with coreml.open(artifact) as session:
        got = session.run(feeds)
    want = reference.run(feeds)
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-3, atol=1e-3)
    assert got["best"].dtype == np.int64
    np.testing.assert_array_equal(got["best"], want["best"])


# -- check ------------------------------------------------------------------------------------


def test_check_names_the_op_coremltools_cannot_convert(coreml, tmp_path):
    model = edgeforge.load(Determinant(), torch.randn(2, 3, 3), workdir=tmp_path / "det")
    findings = coreml.check(model)
    unsupported = [f for f in findings if f.severity == "unsupported"]
    assert [f.op_type for f in unsupported] == ["aten::linalg_det"]
    assert unsupported[0].nodes and "register_torch_op" in unsupported[0].workaround
    assert "cofactor" in unsupported[0].workaround
    # The answer is cached per coremltools version, keyed on the model's hash.
    assert list((tmp_path / "cache").glob(f"coreml-{ct.__version__}/check/*.json"))
    assert coreml.check(model) == findings
    with pytest.raises(EdgeforgeError, match="no conversion for op 'linalg_det'"):
        coreml.build(model, Recipe("fp32"), tmp_path / "out")


def test_check_warns_of_dynamic_batch_and_unknown_placement(coreml, digits_model):
    findings = coreml.check(digits_model)
    assert not [f for f in findings if f.severity == "unsupported"]
    (dynamic,) = [f for f in findings if f.severity == "trap"]
    assert "image" in dynamic.message and "EnumeratedShapes" in dynamic.workaround
    (placement,) = [f for f in findings if f.severity == "info"]
    assert "Neural Engine" in placement.message


def test_check_warns_that_int64_becomes_int32(coreml, two_input_model):
    traps = [f.message for f in coreml.check(two_input_model) if f.severity == "trap"]
    assert any(m.startswith("input steps is int64") for m in traps)
    assert any(m.startswith("output best is int64") for m in traps)
