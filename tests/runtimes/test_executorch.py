"""ExecuTorch: real lowerings to XNNPACK, run in ExecuTorch's Python runtime."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch_models
from graphs import save_det_graph
from torch_models import CumulativeSum, Determinant, load_module, max_error

import edgeforge
from edgeforge.errors import EdgeforgeError
from edgeforge.recipe import Recipe
from edgeforge.runtimes import get_runtime
from edgeforge.runtimes.base import Artifact

pytest.importorskip("executorch")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFORGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def executorch():
    return get_runtime("executorch")


@pytest.fixture(scope="module")
def two_inputs():
    return torch_models.two_inputs()


@pytest.fixture(scope="module")
def two_input_model(tmp_path_factory) -> edgeforge.Model:
    return torch_models.two_input_model(tmp_path_factory.mktemp("two-inputs"))


@pytest.fixture(scope="module")
def digits_pte(executorch, digits_model, tmp_path_factory) -> Artifact:
    return executorch.build(digits_model, Recipe("fp32"), tmp_path_factory.mktemp("et") / "digits")


@pytest.fixture(scope="module")
def two_input_pte(executorch, two_input_model, tmp_path_factory) -> Artifact:
    return executorch.build(two_input_model, Recipe(), tmp_path_factory.mktemp("et") / "two")


def test_artifact_folder_holds_the_pte_and_a_manifest(digits_pte):
    assert digits_pte.path == digits_pte.folder / "model.pte"
    assert digits_pte.path.stat().st_size > 10_000  # the weights are in it
    manifest = json.loads((digits_pte.folder / "manifest.json").read_text())
    assert manifest["runtime"] == "executorch"
    assert manifest["format"] == "pte"
    assert manifest["recipe"]["precision"] == "fp32"
    for tool in ("edgeforge", "executorch"):
        assert manifest["tools"][tool][0].isdigit(), manifest["tools"]
    notes = " ".join(manifest["notes"])
    assert "(1, 1, 8, 8)" in notes  # the shape the dynamic batch was fixed to
    assert "XNNPACK takes 13 of 13 nodes in 1 delegated subgraph(s)" in notes
    assert Artifact.load(digits_pte.folder).manifest == digits_pte.manifest


def test_digits_match_onnxruntime(executorch, digits_pte, digits_model):
    image = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    (want,) = ort.InferenceSession(str(digits_model.onnx_path)).run(None, {"image": image})
    with executorch.open(digits_pte) as session:
        got = session.run({"image": image})["logits"]
    assert got.shape == want.shape == (1, 10)
    error, bound = max_error(got, want)
    assert error <= bound


def test_two_inputs_and_outputs_are_mapped_by_name(executorch, two_input_pte, two_inputs):
    module, _ = two_inputs
    features = torch.randn(3, 6)
    steps = torch.tensor([3, -1, 2])
    with torch.no_grad():
        scores, best = module(features, steps)
    session = executorch.open(two_input_pte)
    got = session.run({"steps": steps.numpy(), "features": features.numpy()})
    assert list(got) == ["scores", "best"]
    error, bound = max_error(got["scores"], scores.numpy())
    assert error <= bound
    assert got["best"].dtype == np.int64
    np.testing.assert_array_equal(got["best"], best.numpy())
    # argmax is not among XNNPACK's ops: the notes say where it runs.
    assert "aten.argmax.default x1" in " ".join(two_input_pte.manifest.notes)


def test_a_batch_other_than_the_converted_one_is_refused_in_one_line(executorch, digits_pte):
    session = executorch.open(digits_pte)
    batch = np.zeros((5, 1, 8, 8), np.float32)
    with pytest.raises(
        EdgeforgeError, match=r"input 'image' has shape 5x1x8x8, the artifact takes 1x1x8x8"
    ):
        session.run({"image": batch})
    # The refusal leaves the method usable at the converted shape.
    assert session.run({"image": batch[:1]})["logits"].shape == (1, 10)


def test_a_model_without_a_torch_program_is_refused(executorch, tmp_path):
    onnx_only = save_det_graph(tmp_path)
    model = edgeforge.load(onnx_only)  # an ONNX op the ONNX-to-torch bridge lacks
    assert model.torch_program is None
    with pytest.raises(EdgeforgeError) as refused:
        executorch.build(model, Recipe(), tmp_path / "out")
    message = str(refused.value)
    assert "\n" not in message and "torch.export program" in message
    assert not (tmp_path / "out").exists()
    (finding,) = executorch.check(model)
    assert finding.severity == "unsupported" and finding.op_type == "Det"


def test_check_names_the_op_executorch_cannot_handle(executorch, tmp_path):
    op = "aten._linalg_det.default"
    model = load_module(Determinant(), torch.randn(2, 3, 3), tmp_path / "model")
    findings = executorch.check(model)
    unsupported = [f for f in findings if f.severity == "unsupported"]
    assert len(unsupported) == 1, findings
    assert unsupported[0].op_type == op
    assert op in unsupported[0].message and op in unsupported[0].workaround
    assert unsupported[0].evidence == "conversion attempt"
    json.dumps([f.to_dict() for f in findings])
    # The answer is cached per model and tool versions.
    assert list((tmp_path / "cache").glob("executorch-*/check/*.json"))
    assert executorch.check(model) == findings
    # Building fails the same way, and leaves nothing behind.
    with pytest.raises(EdgeforgeError, match=op):
        executorch.build(model, Recipe(), tmp_path / "out" / "artifact")
    assert not list((tmp_path / "out").iterdir())


def test_check_reports_ops_the_xnnpack_delegate_leaves(executorch, tmp_path, capfd):
    model = load_module(CumulativeSum(), torch.randn(3, 5), tmp_path / "model")
    capfd.readouterr()
    findings = executorch.check(model)
    out, err = capfd.readouterr()
    assert out == err == ""  # exir's warnings and the native logs stay quiet
    (fallback,) = findings
    assert fallback.severity == "fallback" and fallback.op_type == "aten.cumsum.default"
    assert "portable CPU kernels, not XNNPACK" in fallback.message


def test_check_warns_of_fixed_dynamic_axes(executorch, digits_model):
    (fixed,) = executorch.check(digits_model)
    assert fixed.severity == "trap" and "'image'" in fixed.message
    assert "(1, 1, 8, 8)" in fixed.message and "convert per input shape or pad" in fixed.workaround
