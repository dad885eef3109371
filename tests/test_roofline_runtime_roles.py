"""What the roofline reads from a graph beyond its ops' costs (issue 19): embedding tables
looked up by Gather are not weight reads, a residual Add before a LayerNorm runs inside it
(SkipLayerNorm), attention's activation-by-activation MatMuls have their own class, and ONNX
Runtime's NCHWc layout copies a tensor where a blocked conv meets an op that is not blocked;
and, where `calibrate --here` measured them, a fused activation's pass over the conv's output,
pairwise broadcasts, and the runtime call's own cost once per inference."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import save_graph
from onnx import TensorProto, helper, numpy_helper

import edgeforge
from edgeforge.estimator import FactorEntry
from edgeforge.estimator.roofline import roofline_ms

PEAK_GOPS = 10.0
BANDWIDTH_GBPS = 40.0


def _entry(**changes) -> FactorEntry:
    fields = {
        "device": "*",
        "unit": "*",
        "precision": "*",
        "compute_efficiency": {"matmul": 1.0, "conv": 1.0, "normalization": 1.0},
        "default_compute": 1.0,
        "memory_efficiency": 1.0,
        "layer_overhead_ms": 0.0,
        "band_low": 1.0,
        "band_high": 1.0,
    }
    return FactorEntry(**{**fields, **changes})


def _layers(path, entry: FactorEntry):
    profile = edgeforge.inspect(path)
    layers = roofline_ms(
        profile, entry, peak_gops=PEAK_GOPS, bandwidth_gbps=BANDWIDTH_GBPS, precision="fp32"
    )
    return {layer.name: layer for layer in layers}


def _value(name: str, shape: list[int], dtype: int = TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_an_embedding_table_is_not_charged_as_matmul_weight_reads(tmp_path):
    # A 10000 x 64 table (640,000 elements) looked up for 8 tokens, then a 64 x 64 MatMul.
    table = numpy_helper.from_array(np.zeros((10000, 64), np.float32), "table")
    weight = numpy_helper.from_array(np.zeros((64, 64), np.float32), "w")
    path = save_graph(
        tmp_path / "embed.onnx",
        [
            helper.make_node("Gather", ["table", "ids"], ["e"], name="lookup"),
            helper.make_node("MatMul", ["e", "w"], ["y"], name="mm"),
        ],
        [_value("ids", [1, 8], TensorProto.INT64)],
        [_value("y", [1, 8, 64])],
        [table, weight],
    )
    layers = _layers(path, _entry())
    # The MatMul reads its own 64 x 64 weights and 2 x 8 x 64 activations: the table's
    # 640,000 elements are not shared out over it.
    assert layers["mm"].bytes_moved == (64 * 64 + 2 * 8 * 64) * 4
    assert layers["lookup"].bytes_moved == 2 * 8 * 64 * 4  # the rows it looked up


def _skip_norm(path):
    gamma = numpy_helper.from_array(np.ones(64, np.float32), "gamma")
    beta = numpy_helper.from_array(np.zeros(64, np.float32), "beta")
    return save_graph(
        path,
        [
            helper.make_node("Add", ["x", "r"], ["s"], name="residual"),
            helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], name="norm"),
        ],
        [_value("x", [1, 16, 64]), _value("r", [1, 16, 64])],
        [_value("y", [1, 16, 64])],
        [gamma, beta],
    )


def test_a_residual_add_before_a_layer_norm_is_costed_as_skip_layer_norm(tmp_path):
    path = _skip_norm(tmp_path / "skip.onnx")
    plain = _layers(path, _entry())
    skip = _layers(
        path,
        _entry(
            compute_efficiency={"normalization": 1.0, "normalization_skip": 0.25},
            memory_efficiency=1e6,  # compute-bound, to compare the classes' efficiencies
        ),
    )
    assert plain["residual"].bound == skip["residual"].bound == "fused"
    compute_only = _layers(path, _entry(memory_efficiency=1e6))
    # 5 FLOPs per output element at a quarter of the plain norm's efficiency.
    assert skip["norm"].ms == pytest.approx(4 * compute_only["norm"].ms)
    assert compute_only["norm"].ms == pytest.approx(5 * 16 * 64 / (PEAK_GOPS * 1e9) * 1e3)


def test_attention_products_take_the_batched_matmul_class_when_it_is_fitted(tmp_path):
    path = save_graph(
        tmp_path / "scores.onnx",
        [helper.make_node("MatMul", ["q", "k"], ["y"], name="scores")],
        [_value("q", [4, 16, 8]), _value("k", [4, 8, 16])],
        [_value("y", [4, 16, 16])],
    )
    fast = _entry(memory_efficiency=1e6)
    slow = _entry(compute_efficiency={"matmul": 1.0, "matmul_batched": 0.5}, memory_efficiency=1e6)
    # Published-row entries have no such class: the MatMul keeps the matmul efficiency.
    assert _layers(path, slow)["scores"].ms == pytest.approx(2 * _layers(path, fast)["scores"].ms)


def _conv_then_reduce(path):
    weight = numpy_helper.from_array(np.zeros((16, 16, 1, 1), np.float32), "w")
    return save_graph(
        path,
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("ReduceMean", ["r"], ["y"], name="pool", keepdims=1),
        ],
        [_value("x", [1, 16, 8, 8])],
        [_value("y", [1, 1, 1, 1])],
        [weight],
        opset=17,
    )


def test_nchwc_layout_copies_are_costed_only_where_the_entry_names_the_block(tmp_path):
    path = _conv_then_reduce(tmp_path / "conv_reduce.onnx")
    none = _layers(path, _entry())
    blocked = _layers(path, _entry(nchwc_block=16))
    # The conv reads its NCHW input into blocks (16 x 8 x 8 elements) and the ReduceMean,
    # which ONNX Runtime does not run blocked, reads its input back: one copy each, read and
    # written, at 40 GB/s.
    copy_ms = 2 * 16 * 8 * 8 * 4 / (BANDWIDTH_GBPS * 1e9) * 1e3
    assert blocked["conv"].ms == pytest.approx(none["conv"].ms + copy_ms)
    assert blocked["pool"].ms == pytest.approx(none["pool"].ms + copy_ms)
    assert blocked["relu"].ms == none["relu"].ms == 0.0  # fused, and blocked like the conv


def test_a_memory_curve_prices_small_streams_at_cache_speed(tmp_path):
    path = save_graph(
        tmp_path / "relu.onnx",
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [_value("x", [1, 1024])],
        [_value("y", [1, 1024])],
    )
    flat = _layers(path, _entry(default_compute=1e6))  # memory-bound
    curve = _layers(path, _entry(default_compute=1e6, memory_curve=((1e3, 4.0), (1e9, 1.0))))
    # 8 KB moved: between the curve's points, log-log: 4 ** (1 - log(8192/1e3)/log(1e6)).
    efficiency = 4.0 ** (1 - np.log(8192 / 1e3) / np.log(1e6))
    assert curve["relu"].ms == pytest.approx(flat["relu"].ms / efficiency)


def test_nodes_whose_inputs_are_all_known_at_load_are_folded(tmp_path):
    # Slicing a stored weight happens once, when the graph loads; the MatMul it feeds runs.
    weight = numpy_helper.from_array(np.zeros((64, 64), np.float32), "w")
    bounds = [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s", 0), ("e", 32))]
    path = save_graph(
        tmp_path / "folded.onnx",
        [
            helper.make_node("Slice", ["w", "s", "e"], ["half"], name="slice"),
            helper.make_node("MatMul", ["x", "half"], ["y"], name="mm"),
        ],
        [_value("x", [1, 32])],
        [_value("y", [1, 64])],
        [weight, *bounds],
    )
    layers = _layers(path, _entry(layer_overhead_ms=0.001))
    assert layers["slice"].ms == 0.0 and layers["slice"].bound == "view"
    assert layers["mm"].ms > 0.001


def _conv_then(path, activation: str):
    weight = numpy_helper.from_array(np.zeros((16, 16, 1, 1), np.float32), "w")
    return save_graph(
        path,
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node(activation, ["c"], ["y"], name="act"),
        ],
        [_value("x", [1, 16, 8, 8])],
        [_value("y", [1, 16, 8, 8])],
        [weight],
        opset=17,
    )


def test_a_fused_activation_costs_a_pass_only_where_the_entry_measured_one(tmp_path):
    sigmoid = _conv_then(tmp_path / "sigmoid.onnx", "Sigmoid")
    relu = _conv_then(tmp_path / "relu.onnx", "Relu")
    efficiency = {"conv": 1.0, "Sigmoid": 0.25}
    free = _layers(sigmoid, _entry(compute_efficiency=efficiency))
    passed = _layers(sigmoid, _entry(compute_efficiency=efficiency, activation_pass=2.0))
    assert free["act"].ms == 0.0 and free["act"].bound == "fused"
    # Twice its own compute time as a node: its flops at its own efficiency (0.25 of 10 GOPS).
    own_ms = free["act"].flops / (PEAK_GOPS * 1e9 * 0.25) * 1e3
    assert own_ms > 0 and passed["act"].ms == pytest.approx(2.0 * own_ms)
    assert passed["act"].bound == "fused" and passed["conv"].ms == free["conv"].ms
    # ONNX Runtime applies Relu inside the kernel: it stays free.
    assert _layers(relu, _entry(activation_pass=2.0))["act"].ms == 0.0


def test_a_pairwise_broadcast_takes_its_own_class_where_the_entry_has_it(tmp_path):
    path = save_graph(
        tmp_path / "pairwise.onnx",
        [
            helper.make_node("Max", ["a", "b"], ["pairs"], name="pairwise"),
            helper.make_node("Max", ["pairs", "c"], ["y"], name="same_shape"),
        ],
        [_value("a", [1, 50, 1, 2]), _value("b", [1, 1, 50, 2]), _value("c", [1, 50, 50, 2])],
        [_value("y", [1, 50, 50, 2])],
    )
    plain = _entry(memory_efficiency=1e6)
    outer = _entry(memory_efficiency=1e6, compute_efficiency={"elementwise_outer": 0.1})
    before, after = _layers(path, plain), _layers(path, outer)
    assert after["pairwise"].ms == pytest.approx(10 * before["pairwise"].ms)
    assert after["same_shape"].ms == before["same_shape"].ms  # one operand is the output's size


def test_this_machine_pays_the_runtime_call_once_per_inference(tmp_path):
    from edgeforge.estimator import Factors, estimate

    path = _conv_then(tmp_path / "conv.onnx", "Relu")
    profile = edgeforge.inspect(path)
    results = []
    for call_ms in (0.0, 0.004):
        factors = Factors((_entry(run_overhead_ms=call_ms),))
        results.append(estimate(profile, "this-machine", factors=factors))
    without, with_call = results
    assert with_call.latency_ms == pytest.approx(without.latency_ms + 0.004)
    assert sum(layer.ms for layer in with_call.layers) == pytest.approx(without.latency_ms)


def _conv_relu_reduce(path, channels: int, group: int):
    weight = np.zeros((channels, channels // group, 3, 3), np.float32)
    return save_graph(
        path,
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", group=group, pads=[1] * 4),
            helper.make_node("ReduceMean", ["c"], ["y"], name="pool", keepdims=1),
        ],
        [_value("x", [1, channels, 8, 8])],
        [_value("y", [1, 1, 1, 1])],
        [numpy_helper.from_array(weight, "w")],
        opset=17,
    )


@pytest.mark.parametrize(
    ("channels", "group", "blocked"),
    [(116, 1, True), (58, 1, False), (116, 116, True), (58, 58, False), (12, 1, True)],
)
def test_nchwc_blocks_the_convs_onnx_runtime_blocks(tmp_path, channels, group, blocked):
    # As ONNX Runtime lays them out at block 16: channels a multiple of 4 are padded to blocks
    # (116), others run as plain NCHW (58); a dense conv of fewer channels than a block reads
    # its NCHW input as it is (12: no copy in, one out).
    path = _conv_relu_reduce(tmp_path / f"conv{channels}g{group}.onnx", channels, group)
    efficiency = {"conv": 1.0, "conv_depthwise": 1.0, "conv_depthwise_unblocked": 0.01}
    none = _layers(path, _entry(compute_efficiency=efficiency))
    at16 = _layers(path, _entry(compute_efficiency=efficiency, nchwc_block=16))
    copy_ms = 2 * channels * 8 * 8 * 4 / (BANDWIDTH_GBPS * 1e9) * 1e3
    assert at16["pool"].ms == pytest.approx(none["pool"].ms + (copy_ms if blocked else 0.0))
    copies_in = copy_ms if blocked and channels >= 16 else 0.0
    if group == 1 or blocked:
        assert at16["conv"].ms == pytest.approx(none["conv"].ms + copies_in)
    else:  # a depthwise conv NCHWc cannot block takes its own class (100x slower here)
        assert at16["conv"].ms == pytest.approx(100 * none["conv"].ms, rel=0.01)
