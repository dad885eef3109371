"""`verify`: parity metrics, precision tolerances, the first diverging layer, task metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import edgeforge
from edgeforge.evaluate import tolerance_for, verify
from edgeforge.recipe import Recipe
from edgeforge.runtimes import get_runtime


@pytest.fixture(scope="module")
def ort_artifact(digits_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("artifacts") / "onnxruntime"
    return get_runtime("onnxruntime").build(digits_model, Recipe(), folder)


def _corrupt(artifact, tmp_path, weight: str):
    """A copy of the artifact with one weight changed (a bit flip in a real deployment)."""
    folder = tmp_path / "corrupted"
    shutil.copytree(artifact.folder, folder)
    proto = onnx.load(str(folder / "model.onnx"))
    tensor = next(t for t in proto.graph.initializer if t.name == weight)
    values = numpy_helper.to_array(tensor).copy()
    values.flat[0] += 5.0
    tensor.CopyFrom(numpy_helper.from_array(values, weight))
    onnx.save(proto, str(folder / "model.onnx"))
    consumer = next(n for n in proto.graph.node if weight in n.input)
    return folder, consumer.name


def test_faithful_artifact_passes_with_every_metric(digits_model, ort_artifact):
    result = verify(digits_model, ort_artifact.folder)
    assert result.passed
    assert result.samples == 6 and result.data.startswith("synthesised")
    (logits,) = result.outputs
    assert logits.max_abs == 0.0 and logits.cosine == pytest.approx(1.0)
    assert logits.top1 == 1.0 and logits.top5 == 1.0
    assert result.divergence is None


@pytest.mark.parametrize("weight", ["features.3.weight", "head.1.weight"])
def test_corrupted_weight_fails_and_names_the_layer_that_uses_it(
    digits_model, ort_artifact, tmp_path, weight
):
    folder, consumer = _corrupt(ort_artifact, tmp_path, weight)
    result = verify(digits_model, folder)
    assert not result.passed
    assert "max abs error" in result.outputs[0].reason
    assert result.divergence.found
    assert result.divergence.node == consumer
    # every layer before it matches exactly
    before = result.divergence.layers[: [x.node for x in result.divergence.layers].index(consumer)]
    assert all(layer.relative_error < 1e-6 for layer in before)


def test_cli_exits_1_on_failure_and_writes_the_report(digits_model, ort_artifact, tmp_path):
    folder, consumer = _corrupt(ort_artifact, tmp_path, "features.0.weight")
    report = tmp_path / "verify.html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeforge.cli",
            "verify",
            str(digits_model.onnx_path),
            str(folder),
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stderr
    assert f"first diverges at node {consumer}" in result.stdout
    html = report.read_text()
    assert "First diverging layer" in html and "<svg" in html
    data = json.loads(report.with_suffix(".json").read_text())
    assert data["verify"]["divergence"]["node"] == consumer


def test_precision_sets_the_tolerance_and_overrides_win():
    assert tolerance_for("fp32").rtol < tolerance_for("fp16").rtol
    assert tolerance_for("int8-static").min_top1 == 0.9
    assert tolerance_for("fp32", rtol=0.5).rtol == 0.5
    with pytest.raises(edgeforge.EdgeforgeError, match="unknown precision"):
        tolerance_for("fp12")


def test_labelled_data_gives_the_task_metric_for_both(digits_model, ort_artifact, tmp_path):
    from edgeforge.zoo.digits import digits_data

    data = digits_data()
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(20):
        np.savez(folder / f"{i:03}.npz", image=data.test_x[i : i + 1], label=data.test_y[i])
    result = verify(digits_model, ort_artifact.folder, data=folder)
    assert result.samples == 20
    assert result.task_metric["metric"] == "top-1 accuracy"
    assert result.task_metric["reference"] == result.task_metric["candidate"]


def test_data_with_the_wrong_shape_names_the_input(digits_model, ort_artifact, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    np.save(folder / "image.npy", np.zeros((4, 1, 9, 9), np.float32))
    with pytest.raises(edgeforge.EdgeforgeError, match=r"input 'image' axis 2 is 9, the model"):
        verify(digits_model, ort_artifact.folder, data=folder)


def test_empty_data_folder_is_refused_with_the_layout(digits_model, ort_artifact, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(edgeforge.EdgeforgeError, match=r"empty; expected \.npz files"):
        verify(digits_model, ort_artifact.folder, data=tmp_path / "empty")


def test_candidate_with_another_signature_says_what_differs(ort_artifact, tmp_path):
    import torch

    other = edgeforge.load(
        torch.nn.Linear(64, 10),
        torch.randn(1, 64),
        input_names=["features"],
        workdir=tmp_path,
    )
    with pytest.raises(edgeforge.EdgeforgeError, match=r"inputs \['image'\] differ"):
        verify(other, ort_artifact.folder)


# -- reading --data honestly: every sample, stratified draws, preprocessing, chance ---------------


def test_every_sample_is_read_not_the_first_64_files(digits_model, ort_artifact, five_class_images):
    result = verify(digits_model, ort_artifact.folder, data=five_class_images)
    assert result.samples == 100 and result.samples_available == 100
    assert "all 100 samples" in result.data


def test_max_samples_draws_every_class_with_a_fixed_seed(digits_model, five_class_images):
    from edgeforge.evaluate.data import load_data

    first = load_data(five_class_images, digits_model.inputs, limit=25)
    assert len(first.feeds) == 25
    assert np.bincount(first.labels).tolist() == [5, 5, 5, 5, 5]  # stratified, no class lost
    assert "25 of 100" in first.source and "stratified" in first.source
    again = load_data(five_class_images, digits_model.inputs, limit=25)
    assert again.files == first.files  # the same seed draws the same files


def test_max_samples_on_the_cli_says_how_many_were_used(
    digits_model, ort_artifact, five_class_images, capsys
):
    from edgeforge.cli import main

    code = main(
        [
            "verify", str(digits_model.onnx_path), str(ort_artifact.folder),
            "--data", str(five_class_images), "--max-samples", "10", "--json",
        ]
    )  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["samples"] == 10 and data["samples_available"] == 100


def test_preprocess_is_applied_and_recorded(digits_model, ort_artifact, five_class_images):
    from PIL import Image

    from edgeforge.evaluate.data import load_data

    spec = "mean=0.5;std=0.25;layout=nchw;channels=gray"
    samples = load_data(five_class_images, digits_model.inputs, preprocess=spec)
    pixels = np.asarray(Image.open(five_class_images / samples.files[0]), np.float32)
    expected = (pixels / 255 - 0.5) / 0.25
    np.testing.assert_allclose(samples.feeds[0]["image"][0, 0], expected, rtol=1e-6)
    result = verify(digits_model, ort_artifact.folder, data=five_class_images, preprocess=spec)
    assert result.to_dict()["preprocess"]["mean"] == [0.5]
    assert result.to_dict()["preprocess"]["std"] == [0.25]


def test_preprocess_hook_from_a_file(digits_model, five_class_images, tmp_path):
    from edgeforge.evaluate.data import load_data

    hook = tmp_path / "prep.py"
    hook.write_text(
        "import numpy as np\ndef constant(path):\n    return np.full((1, 8, 8), 7.0, np.float32)\n"
    )
    samples = load_data(five_class_images, digits_model.inputs, preprocess=f"hook={hook}:constant")
    assert samples.feeds[0]["image"].shape == (1, 1, 8, 8)
    assert float(samples.feeds[0]["image"].max()) == 7.0
    assert samples.preprocess["hook"] == f"{hook}:constant"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mean=0.5;sdt=0.2", "keys: mean, std"),
        ("layout=chw", "choose nchw or nhwc"),
        ("std=0,1,1", "divides by zero"),
        ("mean=a", "not a number"),
        ("hook=nowhere_module_xyz:f", "importing nowhere_module_xyz failed"),
    ],
)
def test_bad_preprocess_says_what_is_wrong(digits_model, five_class_images, spec, message):
    from edgeforge.evaluate.data import load_data

    with pytest.raises(edgeforge.EdgeforgeError, match=message):
        load_data(five_class_images, digits_model.inputs, preprocess=spec)


def test_preprocess_on_array_data_is_refused(digits_model, tmp_path):
    from edgeforge.evaluate.data import load_data

    np.save(tmp_path / "image.npy", np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(edgeforge.EdgeforgeError, match="applies to image folders"):
        load_data(tmp_path, digits_model.inputs, preprocess="mean=0.5")


def test_reference_near_chance_is_said_to_be(digits_model, ort_artifact, five_class_images):
    # An untrained CNN on random images: its top-1 on the labels is chance, and a gate on it
    # proves nothing.
    result = verify(digits_model, ort_artifact.folder, data=five_class_images)
    assert result.task_metric["near_chance"] is True
    assert any("within reach of chance" in note for note in result.notes)


def test_a_trained_model_is_not_called_chance(tmp_path):
    from edgeforge.evaluate.compare import chance_level

    labels = np.repeat(np.arange(10), 10)
    assert chance_level(0.9, labels) is None
    assert "within reach of chance" in chance_level(0.12, labels)


def test_preprocess_nhwc_bgr_for_a_channels_last_input(tmp_path):
    from PIL import Image

    from edgeforge.evaluate.data import load_data
    from edgeforge.model import TensorSpec

    (tmp_path / "cats").mkdir()
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[..., 0] = 255  # pure red
    Image.fromarray(pixels).save(tmp_path / "cats" / "a.png")
    spec = TensorSpec("image", "float32", (1, 4, 6, 3))
    samples = load_data(tmp_path, (spec,), preprocess="layout=nhwc;channels=bgr;mean=0,0,0.5")
    image = samples.feeds[0]["image"]
    assert image.shape == (1, 4, 6, 3)
    assert image[0, 0, 0].tolist() == [0.0, 0.0, 0.5]  # red is last in BGR, minus its mean


def test_images_beside_class_folders_are_refused(digits_model, five_class_images):
    from PIL import Image

    from edgeforge.evaluate.data import load_data

    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(five_class_images / "stray.png")
    with pytest.raises(edgeforge.EdgeforgeError, match=r"stray\.png lies beside the class"):
        load_data(five_class_images, digits_model.inputs)


def test_a_channels_last_input_is_read_channels_last_without_being_told(tmp_path):
    from PIL import Image

    from edgeforge.evaluate.data import load_data
    from edgeforge.model import TensorSpec

    (tmp_path / "dogs").mkdir()
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "dogs" / "a.png")
    spec = TensorSpec("image", "float32", (1, 5, 7, 3))
    assert load_data(tmp_path, (spec,)).feeds[0]["image"].shape == (1, 5, 7, 3)
