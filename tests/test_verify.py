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
