"""Which metric judges `optimize`'s candidates, and the calibration/held-out split: a sentence
encoder by the pooled cosine of its output, a classifier by top-1, a named metric when the user
names one; the split stratified by class, naming its files."""

from __future__ import annotations

import numpy as np
import pytest

from edgeforge import load
from edgeforge.errors import EdgeforgeError
from edgeforge.optimize._accuracy import judge_for, score
from edgeforge.optimize._data import Split


def _encoder_outputs(seed: int = 0):
    """Hidden states (2 sentences x 16 tokens x 32) with one large spike per sentence, and a
    candidate that keeps the spike but scrambles every other value: what a broken int8 encoder
    looks like to an arg-max over the flattened output (no change) and to cosine (a big one)."""
    rng = np.random.default_rng(seed)
    reference, candidate, feeds = [], [], []
    for _ in range(4):
        hidden = rng.standard_normal((1, 16, 32)).astype(np.float32)
        hidden[0, 0, 0] = 6.0
        scrambled = rng.standard_normal((1, 16, 32)).astype(np.float32)
        scrambled[0, 0, 0] = 6.0
        mask = np.ones((1, 16), np.int64)
        mask[0, 10:] = 0
        reference.append({"last_hidden_state": hidden})
        candidate.append({"last_hidden_state": scrambled})
        feeds.append({"input_ids": np.ones((1, 16), np.int64), "attention_mask": mask})
    return reference, candidate, feeds


def test_an_encoder_is_judged_by_pooled_cosine_and_a_broken_one_scores_a_real_drop():
    reference, candidate, feeds = _encoder_outputs()
    found = score(candidate, reference, None, feeds=feeds)
    assert found.metric == "cosine" and found.output == "last_hidden_state"
    assert "hidden states" in found.why
    assert found.drop > 0.3  # the flattened arg-max agreed on every sample: 'drop 0.00%'
    assert found.top1_agreement == 1.0
    same = score(reference, reference, None, feeds=feeds)
    assert same.drop == pytest.approx(0.0, abs=1e-9)


def test_pooling_uses_the_attention_mask():
    reference, _, feeds = _encoder_outputs()
    # Change only the padded positions: a masked pooling does not see it, a plain mean would.
    padded = [{"last_hidden_state": r["last_hidden_state"].copy()} for r in reference]
    for p in padded:
        p["last_hidden_state"][0, 10:] = 100.0
    assert score(padded, reference, None, feeds=feeds).drop == pytest.approx(0.0, abs=1e-9)
    assert score(padded, reference, None, feeds=None).drop > 0.1


def test_a_classifier_is_judged_by_top1():
    reference = [{"logits": np.array([[2.0, 1.0, 0.0]])}, {"logits": np.array([[0.0, 3.0, 1.0]])}]
    candidate = [{"logits": np.array([[2.0, 1.0, 0.0]])}, {"logits": np.array([[3.0, 0.0, 1.0]])}]
    found = score(candidate, reference, None)
    assert found.metric == "top1_agreement" and found.drop == pytest.approx(0.5)
    assert "class scores" in found.why


@pytest.mark.parametrize(
    ("name", "shape", "metric"),
    [
        ("logits", (1, 10), "top1"),
        ("pooler_output", (1, 768), "cosine"),
        ("last_hidden_state", (1, 7, 32), "cosine"),
        ("depth", (1, 1, 16, 16), "psnr"),
        ("value", (1, 1), "mae"),
        ("boxes", (1, 5, 4), "iou"),
    ],
)
def test_the_metric_follows_the_output_s_nature(name, shape, metric):
    outputs = [{name: np.ones(shape, np.float32)}]
    assert judge_for(outputs, None).metric == metric


def test_a_named_metric_judges_and_says_so():
    reference, candidate, _ = _encoder_outputs()
    found = score(candidate, reference, None, metric="top1")
    assert found.metric == "top1_agreement" and "--metric" in found.why
    psnr = score(candidate, reference, None, metric="psnr")
    assert psnr.metric == "psnr_db" and 0 < psnr.drop < 1
    with pytest.raises(EdgeforgeError, match="choose top1, top5, cosine"):
        score(candidate, reference, None, metric="f1")


def test_a_callable_metric_judges(tmp_path):
    reference, candidate, _ = _encoder_outputs()

    def always_half(want, got) -> float:
        return 0.5

    assert score(candidate, reference, None, metric=always_half).drop == pytest.approx(0.5)
    module = tmp_path / "mymetric.py"
    module.write_text("def same(reference, candidate):\n    return 0.75\n")
    found = score(candidate, reference, None, metric=f"{module}:same")
    assert found.drop == pytest.approx(0.25) and found.metric.endswith(":same")


def test_box_iou_agreement_matches_each_reference_box():
    from edgeforge.optimize._accuracy import box_iou_agreement

    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    assert box_iou_agreement(boxes, boxes[::-1]) == pytest.approx(1.0)
    shifted = boxes + np.array([5, 0, 5, 0], np.float32)
    assert box_iou_agreement(boxes, shifted) == pytest.approx(50 / 150)


def test_the_split_is_stratified_and_names_its_files(digits_model, five_class_images):
    split = Split.read(five_class_images, load(digits_model.onnx_path), calibration=None)
    described = split.describe()
    calibration, held_out = described["calibration_files"], described["holdout_files"]
    assert len(calibration) == 50 and len(held_out) == 50
    assert not set(calibration) & set(held_out)
    # Every class on both sides (the first half of the sorted files held classes 0-2 only).
    assert {f.split("/")[0] for f in calibration} == {f"class{c}" for c in range(5)}
    assert {f.split("/")[0] for f in held_out} == {f"class{c}" for c in range(5)}
    assert np.bincount(split.labels_calibration).tolist() == [10] * 5
    assert "stratified" in described["split"]
    again = Split.read(five_class_images, load(digits_model.onnx_path), calibration=None)
    assert again.describe()["calibration_files"] == calibration


def test_max_samples_and_preprocess_reach_the_split(digits_model, five_class_images):
    split = Split.read(
        five_class_images,
        load(digits_model.onnx_path),
        calibration=None,
        max_samples=30,
        preprocess="mean=0.5;std=0.5",
    )
    described = split.describe()
    assert described["samples"] == 30 and described["available"] == 100
    assert described["preprocess"]["mean"] == [0.5]
    assert {f.split("/")[0] for f in described["holdout_files"]} == {f"class{c}" for c in range(5)}


def test_an_unknown_metric_is_refused_before_any_work(tmp_path, capsys):
    from edgeforge.cli import main

    code = main(
        [
            "optimize", "no-such-model.onnx", "--device", "laptop-cpu",
            "--data", str(tmp_path), "--metric", "f1", "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    assert code == 2
    assert "--metric 'f1': choose top1, top5, cosine" in capsys.readouterr().err


@pytest.mark.slow
def test_metric_named_on_the_cli_judges_and_is_reported(tiny_bert, tmp_path, capsys):
    import json

    from edgeforge.cli import main

    model, data = tiny_bert
    code = main(
        [
            "optimize", str(model.onnx_path), "--device", "laptop-cpu", "--data", str(data),
            "--runtimes", "onnxruntime", "--precisions", "fp32", "--no-cleanup", "--runs", "3",
            "--metric", "mae", "--max-samples", "12", "--out", str(tmp_path / "out"), "--json",
        ]
    )  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["reference"]["metric"] == "relative_error"
    assert "--metric" in result["reference"]["why"]
    assert result["data"]["samples"] == 12 and result["data"]["available"] == 24
    assert result["candidates"][0]["accuracy"]["metric"] == "relative_error"
