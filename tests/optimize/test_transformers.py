"""int8-static on a transformer encoder: every calibration method and the sensitivity search
run (entropy and percentile crashed on the attention mask's -inf stand-in; sensitivity on
scalar weights), and `optimize` judges the encoder by the pooled cosine of its output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeforge.evaluate.data import load_data
from edgeforge.optimize.search import optimize
from edgeforge.optimize.sensitivity import keep_float_until, mean_cosine
from edgeforge.recipe import Recipe
from edgeforge.runtimes import get_runtime
from edgeforge.runtimes._ort_quantize import infinity_stand_ins


def test_the_attention_mask_s_stand_in_for_minus_infinity_is_found(tiny_bert):
    model, _ = tiny_bert
    tensors, nodes = infinity_stand_ins(model.onnx_path)
    assert tensors and nodes  # the mask's finfo(float32).min and the nodes it flows through


@pytest.mark.slow
@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_on_a_transformer(tiny_bert, method, tmp_path):
    import onnxruntime as ort

    model, data = tiny_bert
    recipe = Recipe("int8-static", {"data": str(data), "calibration_method": method})
    artifact = get_runtime("onnxruntime").build(model, recipe, tmp_path / method)
    assert any("stand-in for -inf" in note for note in artifact.manifest.notes)
    feeds = load_data(data, model.inputs).feeds
    reference = ort.InferenceSession(str(model.onnx_path))
    quantized = ort.InferenceSession(str(artifact.folder / "model.onnx"))
    want = np.concatenate([reference.run(None, f)[0].ravel() for f in feeds])
    got = np.concatenate([quantized.run(None, f)[0].ravel() for f in feeds])
    assert np.isfinite(got).all()
    assert float(np.dot(want, got) / np.linalg.norm(want) / np.linalg.norm(got)) > 0.99


@pytest.mark.slow
def test_sensitivity_search_on_a_transformer(tiny_bert):
    model, data = tiny_bert
    samples = load_data(data, model.inputs)
    recipe = Recipe("int8-static", {"data": str(data), "calibration_method": "percentile"})
    result = keep_float_until(model, recipe, samples, mean_cosine, limit=0.999999)
    assert result.ranking and result.quantize_runs >= 2
    assert result.metric_after >= result.metric_before


@pytest.mark.slow
def test_optimize_judges_an_encoder_by_pooled_cosine(tiny_bert, tmp_path):
    model, data = tiny_bert
    result = optimize(
        model.onnx_path,
        "laptop-cpu",
        data,
        out=tmp_path / "out",
        runtimes=["onnxruntime"],
        precisions=["fp32", "int8-static"],
        max_accuracy_drop="0.00001%",  # so that the sensitivity search runs too
        bench_runs=3,
        cleanup=False,
    )
    assert result.reference["metric"] == "cosine"
    assert result.reference["output"] == "last_hidden_state"
    assert "hidden states" in result.reference["why"]
    int8 = [c for c in result.candidates if c.precision == "int8-static"]
    assert {c.id for c in int8} >= {
        "onnxruntime/int8-static-minmax",
        "onnxruntime/int8-static-entropy",
        "onnxruntime/int8-static-percentile",
    }
    assert any("sensitivity" in c.id for c in int8)
    for candidate in int8:
        assert candidate.status == "evaluated", candidate.detail
        assert candidate.accuracy["metric"] == "cosine"
        assert candidate.accuracy_drop > 0  # int8 is not bit-exact: a real, measured drop
    data_json = result.to_dict()["data"]
    assert len(data_json["calibration_files"]) + len(data_json["holdout_files"]) == 24


@pytest.mark.slow
def test_an_int8_encoder_that_loses_all_but_its_outlier_dimension_scores_a_real_drop(
    outlier_bert, tmp_path
):
    from edgeforge.evaluate.compare import cosine_similarity

    model, data = outlier_bert
    result = optimize(
        model.onnx_path,
        "laptop-cpu",
        data,
        out=tmp_path / "out",
        runtimes=["onnxruntime"],
        precisions=["int8-static"],
        bench_runs=3,
        cleanup=False,
    )
    minmax = result.candidate("onnxruntime/int8-static-minmax")
    assert minmax.accuracy["metric"] == "cosine"
    assert minmax.accuracy_drop > 0.3
    # What a raw cosine of the hidden states says about the same artifact: all is well.
    import onnxruntime as ort

    feeds = load_data(data, model.inputs).feeds
    reference = ort.InferenceSession(str(model.onnx_path))
    quantized = ort.InferenceSession(str(Path(minmax.artifact) / "model.onnx"))
    want = np.concatenate([reference.run(None, f)[0].ravel() for f in feeds])
    got = np.concatenate([quantized.run(None, f)[0].ravel() for f in feeds])
    assert cosine_similarity(want, got) > 0.95


def test_ort_transformer_int8_keeps_the_feed_forward_block_and_attention_products_float(
    tiny_bert, tmp_path
):
    # MiniLM-L6: 0.9915 pooled cosine with every MatMul int8, 0.9979 with these kept float.
    import onnx

    model, data = tiny_bert
    recipe = Recipe("int8-static", {"data": str(data), "model_type": "transformer"})
    artifact = get_runtime("onnxruntime").build(model, recipe, tmp_path / "int8")
    graph = onnx.load(str(artifact.folder / "model.onnx")).graph
    dequantized = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def into_gelu(node) -> bool:
        after = readers.get(node.output[0], [])
        after += [r for a in after if a.op_type == "Add" for r in readers.get(a.output[0], [])]
        return any(r.op_type == "Gelu" for r in after)

    gelu_out = {out for n in graph.node if n.op_type == "Gelu" for out in n.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    feed_forward = [n for n in matmuls if n.input[0] in gelu_out or into_gelu(n)]
    assert feed_forward  # two per layer
    assert all(not set(n.input) & dequantized for n in feed_forward)
    quantized = [n for n in matmuls if set(n.input) & dequantized]
    assert quantized  # the attention's weight products
    assert all(n.input[1] in dequantized for n in quantized)  # never two activations
    assert any("feed-forward MatMul(s)" in note for note in artifact.manifest.notes)


def test_smooth_quant_alpha_is_checked_before_nncf_runs(tiny_bert, tmp_path):
    from edgeforge.errors import EdgeforgeError

    model, data = tiny_bert
    recipe = Recipe(
        "int8-static", {"data": str(data), "model_type": "transformer", "smooth_quant_alpha": 1.5}
    )
    with pytest.raises(EdgeforgeError, match="smooth_quant_alpha"):
        get_runtime("openvino").build(model, recipe, tmp_path / "ov")
