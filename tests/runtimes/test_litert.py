"""LiteRT: real conversions with litert-torch, run in the ai-edge-litert interpreter."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch_models
from graphs import save_det_graph
from torch import nn
from torch_models import CumulativeSum, Determinant, load_module, max_error

import edgeforge
from edgeforge.errors import EdgeforgeError
from edgeforge.recipe import Recipe
from edgeforge.runtimes import get_runtime
from edgeforge.runtimes.base import Artifact

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")


class TopK(nn.Module):
    """Converts (to STABLEHLO_SORT), but the LiteRT 2.3 interpreter has no kernel for it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.topk(x, 3).values


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFORGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def litert():
    return get_runtime("litert")


@pytest.fixture(scope="module")
def two_inputs():
    return torch_models.two_inputs()


@pytest.fixture(scope="module")
def two_input_model(tmp_path_factory) -> edgeforge.Model:
    return torch_models.two_input_model(tmp_path_factory.mktemp("two-inputs"))


@pytest.fixture(scope="module")
def digits_tflite(litert, digits_model, tmp_path_factory) -> Artifact:
    return litert.build(digits_model, Recipe("fp32"), tmp_path_factory.mktemp("lt") / "digits")


@pytest.fixture(scope="module")
def two_input_tflite(litert, two_input_model, tmp_path_factory) -> Artifact:
    return litert.build(two_input_model, Recipe(), tmp_path_factory.mktemp("lt") / "two")


def test_artifact_folder_holds_the_tflite_and_a_manifest(digits_tflite):
    assert digits_tflite.path == digits_tflite.folder / "model.tflite"
    assert digits_tflite.path.stat().st_size > 10_000  # the weights are in it
    manifest = json.loads((digits_tflite.folder / "manifest.json").read_text())
    assert manifest["runtime"] == "litert"
    assert manifest["format"] == "tflite"
    assert manifest["recipe"]["precision"] == "fp32"
    for tool in ("edgeforge", "litert-torch", "ai-edge-litert"):
        assert manifest["tools"][tool][0].isdigit(), manifest["tools"]
    notes = " ".join(manifest["notes"])
    assert "(1, 1, 8, 8)" in notes  # the shape the dynamic batch was fixed to
    assert "XNNPACK delegate takes 8 of 8 ops" in notes
    assert Artifact.load(digits_tflite.folder).manifest == digits_tflite.manifest


def test_digits_match_onnxruntime(litert, digits_tflite, digits_model):
    image = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    (want,) = ort.InferenceSession(str(digits_model.onnx_path)).run(None, {"image": image})
    with litert.open(digits_tflite) as session:
        got = session.run({"image": image})["logits"]
    assert got.shape == want.shape == (1, 10)
    error, bound = max_error(got, want)
    assert error <= bound


def test_two_inputs_and_outputs_are_mapped_by_name(litert, two_input_tflite, two_inputs):
    module, _ = two_inputs
    features = torch.randn(3, 6)
    steps = torch.tensor([3, -1, 2])
    with torch.no_grad():
        scores, best = module(features, steps)
    session = litert.open(two_input_tflite)
    got = session.run({"steps": steps.numpy(), "features": features.numpy()})
    assert list(got) == ["scores", "best"]
    error, bound = max_error(got["scores"], scores.numpy())
    assert error <= bound
    # int64 is int32 inside the .tflite; the session hands back the model's own width.
    assert got["best"].dtype == np.int64
    np.testing.assert_array_equal(got["best"], best.numpy())
    assert "steps (int64 as int32)" in " ".join(two_input_tflite.manifest.notes)


def test_a_batch_other_than_the_converted_one_is_refused_in_one_line(litert, digits_tflite):
    session = litert.open(digits_tflite)
    batch = np.zeros((5, 1, 8, 8), np.float32)
    with pytest.raises(
        EdgeforgeError, match=r"input 'image' has shape 5x1x8x8, the artifact takes 1x1x8x8"
    ):
        session.run({"image": batch})
    # The refusal leaves the interpreter usable at the converted shape.
    assert session.run({"image": batch[:1]})["logits"].shape == (1, 10)


def test_a_model_without_a_torch_program_is_refused(litert, tmp_path):
    onnx_only = save_det_graph(tmp_path)
    model = edgeforge.load(onnx_only)  # an ONNX op the ONNX-to-torch bridge lacks
    assert model.torch_program is None
    with pytest.raises(EdgeforgeError) as refused:
        litert.build(model, Recipe(), tmp_path / "out")
    message = str(refused.value)
    assert "\n" not in message and "torch.export program" in message
    assert not (tmp_path / "out").exists()
    (finding,) = litert.check(model)
    assert finding.severity == "unsupported" and finding.op_type == "Det"


@pytest.mark.parametrize(
    ("module", "example", "op"),
    [
        (Determinant(), torch.randn(2, 3, 3), "aten._linalg_det.default"),
        (TopK(), torch.randn(2, 8), "STABLEHLO_SORT"),
    ],
    ids=["no-lowering", "no-kernel"],
)
def test_check_names_the_op_litert_cannot_handle(litert, module, example, op, tmp_path):
    model = load_module(module, example, tmp_path / "model")
    findings = litert.check(model)
    unsupported = [f for f in findings if f.severity == "unsupported"]
    assert len(unsupported) == 1, findings
    assert unsupported[0].op_type == op
    assert op in unsupported[0].message and op in unsupported[0].workaround
    assert unsupported[0].evidence == "conversion attempt"
    json.dumps([f.to_dict() for f in findings])
    # The answer is cached per model and tool versions.
    assert list((tmp_path / "cache").glob("litert-*/check/*.json"))
    assert litert.check(model) == findings
    # Building fails the same way, and leaves nothing behind.
    with pytest.raises(EdgeforgeError, match=op):
        litert.build(model, Recipe(), tmp_path / "out" / "artifact")
    assert not list((tmp_path / "out").iterdir())


def test_check_reports_ops_the_xnnpack_delegate_leaves(litert, tmp_path, capfd):
    model = load_module(CumulativeSum(), torch.randn(3, 5), tmp_path / "model")
    capfd.readouterr()
    findings = litert.check(model)
    out, err = capfd.readouterr()
    assert out == err == ""  # the converter's progress and the native logs stay quiet
    (fallback,) = findings
    assert fallback.severity == "fallback" and fallback.op_type == "CUMSUM"
    assert "XNNPACK" in fallback.message


def test_check_warns_of_fixed_dynamic_axes_and_int64(litert, digits_model, two_input_model):
    (fixed,) = litert.check(digits_model)
    assert fixed.severity == "trap" and "'image'" in fixed.message
    assert "(1, 1, 8, 8)" in fixed.message and fixed.workaround == "convert per input shape or pad"
    traps = {f.message.split("'")[1] for f in litert.check(two_input_model) if f.severity == "trap"}
    assert traps == {"steps", "best"}  # the int64 input and the int64 output
