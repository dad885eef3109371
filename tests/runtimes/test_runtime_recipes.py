"""Reduced-precision recipes on OpenVINO (NNCF), LiteRT (ai-edge-quantizer) and Core ML
(coremltools.optimize), built for real from a trained digits CNN and a trained MLP.

What is defended: an artifact that claims a precision but kept its float weights (it must be
smaller than fp32), a quantized model that no longer agrees with the source (top-1 agreement on
held-out digits: >= 97% for int8, >= 90% for int4), calibration that silently ignores the
user's data, and a precision a runtime cannot build slipping through without a one-line error.
Core ML packages cannot run off macOS: they are validated against their manifest instead.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import edgeforge
from edgeforge.errors import EdgeforgeError
from edgeforge.recipe import Recipe
from edgeforge.runtimes import get_runtime
from edgeforge.runtimes.base import Artifact
from edgeforge.zoo import train_digits_cnn
from edgeforge.zoo.digits import digits_data

INT8 = ("int8-dynamic", "int8-static")
MIN_TOP1 = {"int8-dynamic": 0.97, "int8-static": 0.97, "int4-weight": 0.90}


class DigitsMLP(nn.Module):
    """MatMul-heavy: 64 -> 256 -> 256 -> 10, so int4 groups of 128 fit most of its weights."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU()
        )
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))


def _train_mlp(epochs: int = 8) -> nn.Module:
    torch.manual_seed(0)
    data = digits_data()
    module = DigitsMLP()
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(module(x[batch]), y[batch]).backward()
            optimizer.step()
    return module.eval()


def _load(module: nn.Module, folder) -> edgeforge.Model:
    return edgeforge.load(
        module,
        torch.zeros(1, 1, 8, 8),
        input_names=["image"],
        output_names=["logits"],
        workdir=folder,
    )


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFORGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    return digits_data().test_x


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory):
    """32 training digits as image.npy, one sample per row: what `--data` reads."""
    folder = tmp_path_factory.mktemp("calibration")
    np.save(folder / "image.npy", digits_data().train_x[:32])
    return folder


@pytest.fixture(scope="module")
def cnn(tmp_path_factory, held_out) -> tuple[edgeforge.Model, np.ndarray]:
    module, _, _ = train_digits_cnn(epochs=4)
    with torch.no_grad():
        reference = module(torch.from_numpy(held_out)).numpy()
    return _load(module, tmp_path_factory.mktemp("cnn")), reference


@pytest.fixture(scope="module")
def mlp(tmp_path_factory, held_out) -> tuple[edgeforge.Model, np.ndarray]:
    module = _train_mlp()
    with torch.no_grad():
        reference = module(torch.from_numpy(held_out)).numpy()
    return _load(module, tmp_path_factory.mktemp("mlp")), reference


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Artifacts built once per (runtime, model, precision, options) for the whole module."""
    folder = tmp_path_factory.mktemp("builds")
    made: dict[tuple, Artifact] = {}

    def build(runtime: str, model: edgeforge.Model, precision: str, **options) -> Artifact:
        key = (runtime, str(model.onnx_path), precision, json.dumps(options, sort_keys=True))
        if key not in made:
            out = folder / f"{runtime}-{len(made)}-{precision}"
            made[key] = get_runtime(runtime).build(model, Recipe(precision, options), out)
        return made[key]

    return build


def _agreement(artifact: Artifact, images: np.ndarray, reference: np.ndarray) -> float:
    """Top-1 agreement with the source model, one image per run (LiteRT fixes batch 1)."""
    with get_runtime(artifact.runtime).open(artifact) as session:
        logits = np.concatenate([session.run({"image": image[None]})["logits"] for image in images])
    return float((logits.argmax(1) == reference.argmax(1)).mean())


def _ratio(artifact: Artifact, fp32: Artifact) -> float:
    """How many times smaller than fp32 the artifact's weights file is."""
    return _weights_bytes(fp32) / _weights_bytes(artifact)


def _weights_bytes(artifact: Artifact) -> int:
    """The file holding the weights: OpenVINO's model.bin (model.xml grows with the extra
    quantization ops), the .tflite, Core ML's weight.bin."""
    weights = {
        "openvino": artifact.path.with_suffix(".bin"),
        "litert": artifact.path,
        "coreml": artifact.path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin",
    }[artifact.runtime]
    return weights.stat().st_size


# -- OpenVINO and LiteRT: built, run, compared ---------------------------------------------


@pytest.mark.parametrize("runtime", ["openvino", "litert"])
@pytest.mark.parametrize("precision", INT8)
def test_int8_is_four_times_smaller_and_agrees_with_the_source(
    runtime, precision, cnn, builds, held_out, calibration_folder
):
    model, reference = cnn
    options = {"data": str(calibration_folder), "calibration_samples": 32}
    artifact = builds(runtime, model, precision, **(options if precision == "int8-static" else {}))
    assert artifact.manifest.recipe["precision"] == precision
    assert _ratio(artifact, builds(runtime, model, "fp32")) > 3.0
    assert _agreement(artifact, held_out, reference) >= MIN_TOP1[precision]


@pytest.mark.parametrize("runtime", ["openvino", "litert"])
def test_int4_weights_are_smaller_than_int8_and_still_agree(runtime, mlp, builds, held_out):
    model, reference = mlp
    int4 = builds(runtime, model, "int4-weight")
    fp32 = builds(runtime, model, "fp32")
    assert _ratio(int4, fp32) > 5.0
    assert _weights_bytes(int4) < _weights_bytes(builds(runtime, model, "int8-dynamic"))
    assert _agreement(int4, held_out, reference) >= MIN_TOP1["int4-weight"]


@pytest.mark.parametrize("runtime", ["openvino", "litert"])
def test_fp16_halves_the_weights_and_stays_close(runtime, cnn, builds, held_out):
    model, reference = cnn
    fp16 = builds(runtime, model, "fp16")
    assert 1.7 < _ratio(fp16, builds(runtime, model, "fp32")) < 2.3
    assert _agreement(fp16, held_out, reference) >= 0.99


def test_weight_only_recipes_say_so_in_the_notes(cnn, mlp, builds):
    openvino_int8 = " ".join(builds("openvino", cnn[0], "int8-dynamic").manifest.notes)
    assert "INT8_ASYM" in openvino_int8 and "weight-only" in openvino_int8
    openvino_int4 = " ".join(builds("openvino", mlp[0], "int4-weight").manifest.notes)
    assert "group size 128" in openvino_int4 and "i4" in openvino_int4
    litert_int4 = " ".join(builds("litert", mlp[0], "int4-weight").manifest.notes)
    assert "weight_only_wi4_afp32" in litert_int4


def test_calibration_reads_the_data_folder(cnn, builds, calibration_folder):
    options = {"data": str(calibration_folder), "calibration_samples": 32}
    for runtime in ("openvino", "litert"):
        notes = builds(runtime, cnn[0], "int8-static", **options).manifest.notes
        assert f"calibrated on 32 samples from {calibration_folder}" in notes


def test_calibration_without_data_is_synthesised_and_says_so(cnn, builds, held_out):
    model, reference = cnn
    artifact = builds("openvino", model, "int8-static", calibration_samples=8)
    (note,) = [n for n in artifact.manifest.notes if n.startswith("calibrated")]
    assert "synthesised" in note and "no `data` option" in note
    assert artifact.manifest.recipe["options"] == {"calibration_samples": 8}  # JSON as given
    # Synthesised image-like inputs (normalised, not the [0, 1] the model saw): it still works.
    assert _agreement(artifact, held_out[:100], reference[:100]) >= 0.9


def test_litert_static_model_keeps_float_inputs_and_outputs(cnn, builds, calibration_folder):
    from ai_edge_litert.interpreter import Interpreter

    options = {"data": str(calibration_folder), "calibration_samples": 32}
    artifact = builds("litert", cnn[0], "int8-static", **options)
    runner = Interpreter(model_path=str(artifact.path)).get_signature_runner()
    assert runner.get_input_details()["args_0"]["dtype"] == np.float32
    assert runner.get_output_details()["output_0"]["dtype"] == np.float32


def test_openvino_excluded_node_stays_float(cnn, builds, calibration_folder):
    import openvino as ov

    model, _ = cnn
    first_conv = next(n.name for n in model.proto().graph.node if n.op_type == "Conv")
    options = {"data": str(calibration_folder), "calibration_samples": 8}
    plain = builds("openvino", model, "int8-static", **options)
    kept = builds("openvino", model, "int8-static", nodes_to_exclude=[first_conv], **options)

    def kernel_source(artifact: Artifact) -> str:
        """What feeds the first convolution's kernel: a Constant (float) or the
        dequantizing Multiply NNCF puts behind int8 weights."""
        ir = ov.Core().read_model(artifact.path)
        conv = next(op for op in ir.get_ordered_ops() if op.get_type_name() == "Convolution")
        return conv.input_value(1).get_node().get_type_name()

    assert kernel_source(plain) == "Multiply"
    assert kernel_source(kept) == "Constant"
    assert f"kept in float (nodes_to_exclude): {first_conv}" in kept.manifest.notes


# -- Core ML: built and validated (it cannot run off macOS) ----------------------------------


@pytest.mark.parametrize(
    ("precision", "stored", "min_ratio"),
    [("int8-dynamic", "INT8", 3.0), ("int4-weight", "INT4", 5.0)],
)
def test_coreml_quantized_package_is_consistent_and_smaller(
    precision, stored, min_ratio, mlp, builds
):
    from edgeforge.runtimes.coreml import validate_without_running

    model, _ = mlp
    artifact = builds("coreml", model, precision)
    fp32 = builds("coreml", model, "fp32")
    assert validate_without_running(artifact) == []
    assert _ratio(artifact, fp32) > min_ratio
    notes = " ".join(artifact.manifest.notes)
    assert f"{stored} x" in notes and "weight-only" in notes


def test_coreml_int4_raises_the_deployment_target_and_refuses_an_older_one(mlp, builds, tmp_path):
    model, _ = mlp
    artifact = builds("coreml", model, "int4-weight")
    assert "minimum deployment target iOS18" in artifact.manifest.notes[0]
    with pytest.raises(EdgeforgeError, match="int4-weight needs coreml_target iOS18 or later"):
        get_runtime("coreml").build(
            model, Recipe("int4-weight", {"coreml_target": "iOS16"}), tmp_path / "old"
        )


def test_coreml_package_claiming_int8_without_int8_weights_is_caught(mlp, builds, tmp_path):
    from edgeforge.runtimes.coreml import validate_without_running

    fp32 = builds("coreml", mlp[0], "fp32")
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    # A copy: a link leading out of the artifact folder is refused on its own (issue 13).
    shutil.copytree(fp32.path, tampered / "model.mlpackage")
    manifest = {**fp32.manifest.to_dict(), "recipe": {"precision": "int8-dynamic", "options": {}}}
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    problems = validate_without_running(Artifact.load(tampered))
    assert any("no INT8 or UINT8 weights" in p for p in problems)


# -- what cannot be built is refused in one line --------------------------------------------


def test_coreml_refuses_int8_static_listing_what_it_builds(cnn, tmp_path):
    with pytest.raises(EdgeforgeError) as caught:
        get_runtime("coreml").build(cnn[0], Recipe("int8-static"), tmp_path / "static")
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        "runtime coreml cannot build int8-static; it builds fp32, fp16, int8-dynamic, int4-weight"
    )
    assert not (tmp_path / "static").exists()


@pytest.mark.parametrize(
    ("runtime", "precision", "options", "expected"),
    [
        ("litert", "int4-weight", {"symmetric": False}, "symmetric only"),
        ("openvino", "int4-weight", {"group_size": 0}, "group_size must be a positive"),
        ("openvino", "int8-static", {"calibration_samples": "many"}, "calibration_samples"),
        ("openvino", "int8-static", {"nodes_to_exclude": ["no_such_node"]}, "nodes_to_exclude"),
        ("openvino", "int8-static", {"data": "/no/such/folder"}, "not a folder"),
    ],
)
def test_bad_options_are_one_line_errors(runtime, precision, options, expected, cnn, tmp_path):
    with pytest.raises(EdgeforgeError, match=expected) as caught:
        get_runtime(runtime).build(cnn[0], Recipe(precision, options), tmp_path / "bad")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "bad").exists()
