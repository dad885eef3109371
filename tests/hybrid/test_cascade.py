"""`cascade`: a threshold calibrated on one part of the digits meets the target on the rest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hybrid_models import Link
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

import edgeforge
from edgeforge.cli import main
from edgeforge.errors import EdgeforgeError
from edgeforge.hybrid import cascade
from edgeforge.report import write_report
from edgeforge.report.html import render_html
from edgeforge.zoo.digits import digits_data


def _classifier(path, layers: list[tuple[np.ndarray, np.ndarray]]) -> edgeforge.Model:
    """Flatten, then Gemm (+ Relu between) with sklearn's fitted weights (inputs x outputs), as
    an ONNX file."""
    h = onnx.helper
    inits, nodes, name = [], [h.make_node("Flatten", ["image"], ["flat"])], "flat"
    for i, (weight, bias) in enumerate(layers):
        inits += [
            onnx.numpy_helper.from_array(weight.astype(np.float32), f"w{i}"),
            onnx.numpy_helper.from_array(bias.astype(np.float32), f"b{i}"),
        ]
        out = "logits" if i == len(layers) - 1 else f"gemm{i}"
        nodes.append(h.make_node("Gemm", [name, f"w{i}", f"b{i}"], [out]))
        if out != "logits":
            nodes.append(h.make_node("Relu", [out], [f"relu{i}"]))
            out = f"relu{i}"
        name = out
    classes = layers[-1][1].shape[0]
    graph = h.make_graph(
        nodes,
        "digits",
        [h.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path))
    return edgeforge.load(path)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    data = digits_data()
    x, y = data.train_x.reshape(len(data.train_x), -1), data.train_y
    # A weak on-device model (softmax regression on 40 images) and a stronger cloud one.
    weak = LogisticRegression(max_iter=200).fit(x[:40], y[:40])
    strong = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0).fit(x, y)
    five = LogisticRegression(max_iter=50).fit(x, y % 5)
    root = tmp_path_factory.mktemp("cascade")
    folder = root / "data"
    folder.mkdir()
    np.save(folder / "image.npy", data.test_x)
    np.save(folder / "labels.npy", data.test_y)
    return {
        "small": _classifier(root / "small.onnx", [(weak.coef_.T, weak.intercept_)]),
        "large": _classifier(
            root / "large.onnx", list(zip(strong.coefs_, strong.intercepts_, strict=True))
        ),
        "five_classes": _classifier(root / "five.onnx", [(five.coef_.T, five.intercept_)]),
        "data": folder,
    }


def test_threshold_meets_target_on_held_out_samples(digits):
    result = cascade(
        digits["small"],
        digits["large"],
        digits["data"],
        target_accuracy=0.95,
        network=Link("4g", 50, 10, 30, 0.005),
        small_ms=1.0,
        large_ms=2.0,
        price_per_request=0.0004,
    )
    held = result.held_out
    assert result.met and held.accuracy >= 0.95, result.to_dict()
    assert held.small_accuracy < 0.95 <= held.large_accuracy
    assert 0 < held.escalated_share < 1
    latency = result.latency
    assert latency["expected_ms"] == pytest.approx(
        1.0 + held.escalated_share * (latency["network_ms"] + 2.0)
    )
    assert result.cost_per_1k == pytest.approx(1000 * held.escalated_share * 0.0004)

    html = render_html({"cascade": result.to_dict()})  # before: a <pre> of the JSON
    assert "<pre>" not in html and "<h2>Cascade:" in html
    assert "<th>cascade accuracy</th>" in html and "<th>expected ms</th>" in html
    if shots := os.environ.get("EDGEFORGE_SCREENSHOTS"):  # kept to look at (scripts/)
        write_report({"cascade": result.to_dict()}, Path(shots) / "cascade.html")


def test_target_above_reach_reports_the_best(digits):
    result = cascade(digits["small"], digits["large"], digits["data"], target_accuracy=1.0)
    assert not result.met
    assert result.best["accuracy"] < 1.0
    assert any("above what the cascade reaches" in note for note in result.notes)
    assert result.latency["measured_here"] == "small,large"


def test_models_scoring_different_classes_are_refused(digits):
    with pytest.raises(EdgeforgeError, match="same classes") as caught:
        cascade(digits["small"], digits["five_classes"], digits["data"], target_accuracy=0.9)
    assert "\n" not in str(caught.value)


def test_cli_cascade(digits, capsys):
    argv = ["cascade", str(digits["small"].onnx_path), str(digits["large"].onnx_path)]
    code = main([*argv, "--data", str(digits["data"]), "--target-accuracy", "0.93", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["met"] is True


def test_cli_cascade_uses_max_samples_and_records_what_it_read(digits, capsys):
    argv = ["cascade", str(digits["small"].onnx_path), str(digits["large"].onnx_path)]
    options = ["--target-accuracy", "0.5", "--max-samples", "40", "--json"]
    code = main([*argv, "--data", str(digits["data"]), *options])
    assert code in (0, 1)
    printed = json.loads(capsys.readouterr().out)
    assert printed["data"]["samples"] == 40
    assert printed["data"]["available"] > 40
    assert printed["calibration"]["samples"] + printed["held_out"]["samples"] == 40
    assert "40 of" in printed["data"]["source"]
