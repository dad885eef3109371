"""ONNX Runtime carries out every recipe precision with its own quantizers, and both of its
runtimes (.onnx and .ort) build and run what comes out."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import edgeforge
from edgeforge.errors import EdgeforgeError
from edgeforge.evaluate.parity import verify
from edgeforge.recipe import PRECISIONS, Recipe
from edgeforge.runtimes import get_runtime
from edgeforge.zoo import resnet18, train_digits_cnn, transformer_encoder


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A trained digits CNN (dynamic batch), a calibration folder and the held-out images."""
    module, data, _ = train_digits_cnn(epochs=1)
    folder = tmp_path_factory.mktemp("digits-ortq")
    model = edgeforge.load(
        module,
        torch.randn(1, 1, 8, 8),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}},
        workdir=folder / "model",
    )
    calibration = folder / "calibration"
    calibration.mkdir()
    np.save(calibration / "image.npy", data.train_x[:64])
    np.save(calibration / "labels.npy", data.train_y[:64])
    return model, str(calibration), data.test_x


def _logits(runtime: str, artifact, images: np.ndarray) -> np.ndarray:
    with get_runtime(runtime).open(artifact) as session:
        return session.run({"image": images})["logits"]


def _reference(model, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images})[0]


@pytest.mark.parametrize("runtime", ["onnxruntime", "onnxruntime-mobile"])
@pytest.mark.parametrize("precision", [p for p in PRECISIONS if p != "bf16"])  # OpenVINO's
def test_every_precision_builds_and_runs(digits, tmp_path, runtime, precision):
    model, calibration, images = digits
    options = {"data": calibration} if precision == "int8-static" else {}
    artifact = get_runtime(runtime).build(model, Recipe(precision, options), tmp_path / "a")
    logits = _logits(runtime, artifact, images[:32])
    assert logits.shape == (32, 10) and logits.dtype == np.float32  # float32 IO everywhere
    agreement = np.mean(logits.argmax(1) == _reference(model, images[:32]).argmax(1))
    assert agreement >= 0.9, f"{runtime} {precision}: top-1 agreement {agreement:.0%}"
    assert artifact.manifest.recipe["precision"] == precision


def test_int8_static_keeps_top1_agreement_on_digits(digits, tmp_path):
    model, calibration, images = digits
    recipe = Recipe("int8-static", {"data": calibration})
    artifact = get_runtime("onnxruntime").build(model, recipe, tmp_path / "int8")
    got = _logits("onnxruntime", artifact, images)
    agreement = np.mean(got.argmax(1) == _reference(model, images).argmax(1))
    assert agreement >= 0.99, f"top-1 agreement {agreement:.1%} over {len(images)} images"
    assert any("calibrated on 64 samples" in note for note in artifact.manifest.notes)


def test_verify_judges_int8_by_agreement_not_elementwise(digits, tmp_path):
    model, calibration, _ = digits
    recipe = Recipe("int8-static", {"data": calibration})
    artifact = get_runtime("onnxruntime").build(model, recipe, tmp_path / "int8")
    result = verify(model, artifact, data=calibration, localize=False)
    assert result.precision == "int8-static" and result.passed, result.outputs[0].reason
    assert result.outputs[0].top1 >= 0.9


def test_verify_without_data_judges_quantized_models_on_random_samples(digits, tmp_path):
    model, _, _ = digits
    artifact = get_runtime("onnxruntime").build(model, Recipe("int8-dynamic"), tmp_path / "dyn")
    result = verify(model, artifact, localize=False)
    assert result.samples == 32 and result.data == "synthesised (realistic, by input role)"
    assert result.robustness is not None and "not run" in result.robustness.note
    assert any("pass --data" in note for note in result.notes)


def test_int8_static_without_data_says_it_calibrated_on_synthesised_samples(digits, tmp_path):
    model, _, _ = digits
    recipe = Recipe("int8-static", {"calibration_samples": 8})
    artifact = get_runtime("onnxruntime").build(model, recipe, tmp_path / "int8")
    assert any("random synthesised samples" in note for note in artifact.manifest.notes)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_every_calibration_method_builds(digits, tmp_path, method):
    model, calibration, images = digits
    options = {"data": calibration, "calibration_method": method, "calibration_samples": 16}
    artifact = get_runtime("onnxruntime").build(
        model, Recipe("int8-static", options), tmp_path / method
    )
    agreement = np.mean(
        _logits("onnxruntime", artifact, images).argmax(1) == _reference(model, images).argmax(1)
    )
    assert agreement >= 0.9, f"{method}: top-1 agreement {agreement:.1%}"
    assert any(f"{method} calibration" in note for note in artifact.manifest.notes)


def test_per_tensor_and_int8_activations_build(digits, tmp_path):
    model, calibration, images = digits
    options = {"data": calibration, "per_channel": False, "activation_type": "int8"}
    artifact = get_runtime("onnxruntime").build(
        model, Recipe("int8-static", options), tmp_path / "s8"
    )
    assert _logits("onnxruntime", artifact, images[:4]).shape == (4, 10)
    assert any("int8 activations" in n and "per tensor" in n for n in artifact.manifest.notes)


def test_nodes_to_exclude_stay_float(digits, tmp_path):
    model, calibration, _ = digits
    first_conv = next(
        n.name for n in model.proto(load_weights=False).graph.node if n.op_type == "Conv"
    )
    options = {"data": calibration, "nodes_to_exclude": [first_conv]}
    artifact = get_runtime("onnxruntime").build(
        model, Recipe("int8-static", options), tmp_path / "x"
    )
    graph = onnx.load(str(artifact.path)).graph
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    weights = {t.name for t in graph.initializer}
    assert convs[first_conv].input[1] in weights  # a float weight, not a DequantizeLinear output
    assert any(n.op_type == "DequantizeLinear" for n in graph.node)


@pytest.mark.parametrize("precision", ["fp16", "int8-dynamic", "int8-static", "int4-weight"])
def test_an_unknown_node_to_exclude_is_refused_not_ignored(digits, tmp_path, precision):
    model, calibration, _ = digits
    options = {"data": calibration, "nodes_to_exclude": ["no_such_node"]}
    with pytest.raises(EdgeforgeError, match="'no_such_node', which is not a node"):
        get_runtime("onnxruntime").build(model, Recipe(precision, options), tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"calibration_method": "kl"}, "minmax, entropy, percentile"),
        ({"activation_type": "fp8"}, "uint8, int8"),
        ({"block_size": 33}, "power of two"),
        ({"per_channel": "yes"}, "true or false"),
        ({"calibration_samples": 0}, "int >= 1"),
        ({"nodes_to_exclude": "conv1"}, "list of node names"),
        ({"data": {"folder": 1}}, "folder path"),
        ({"data": object()}, "JSON values"),
    ],
)
def test_bad_option_is_a_one_line_error(options, says):
    with pytest.raises(EdgeforgeError, match=says) as caught:
        Recipe("int8-static", options)
    assert "\n" not in str(caught.value)


def _initializer_bytes(proto: onnx.ModelProto) -> int:
    """Stored bytes of every initializer, 4-bit types packed two to a byte."""
    packed = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    total = 0
    for tensor in proto.graph.initializer:
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        if tensor.data_type in packed:
            total += (count + 1) // 2
        else:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            total += count * itemsize
    return total


def test_int4_weight_makes_transformer_weights_6x_smaller(tmp_path):
    torch.manual_seed(0)
    model = edgeforge.load(
        transformer_encoder().eval(),
        torch.randint(0, 1000, (1, 32)),
        input_names=["input_ids"],
        output_names=["logits"],
        workdir=tmp_path / "model",
    )
    artifact = get_runtime("onnxruntime").build(model, Recipe("int4-weight"), tmp_path / "int4")
    before = _initializer_bytes(model.proto(load_weights=True))
    after = _initializer_bytes(onnx.load(str(artifact.path)))
    assert before / after >= 6, f"{before} -> {after} bytes: {before / after:.2f}x"
    ops = {n.op_type for n in onnx.load(str(artifact.path)).graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and "Gemm" not in ops
    feeds = {"input_ids": np.random.default_rng(0).integers(0, 1000, (1, 32))}
    with get_runtime("onnxruntime").open(artifact) as session:
        assert np.isfinite(session.run(feeds)["logits"]).all()


@pytest.mark.slow
def test_int8_static_makes_resnet18_3_5x_smaller(tmp_path):
    torch.manual_seed(0)
    model = edgeforge.load(
        resnet18().eval(), torch.randn(1, 3, 224, 224), workdir=tmp_path / "model"
    )
    recipe = Recipe("int8-static", {"calibration_samples": 2})
    artifact = get_runtime("onnxruntime").build(model, recipe, tmp_path / "int8")
    ratio = model.onnx_path.stat().st_size / artifact.path.stat().st_size
    assert ratio >= 3.5, f"int8 resnet18 is only {ratio:.2f}x smaller"
