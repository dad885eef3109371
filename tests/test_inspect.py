"""`inspect`: counts checked against hand-computed values and published figures."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from graphs import save_det_graph, save_graph
from onnx import TensorProto, helper, numpy_helper

import edgeforge


def _weights(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _value(name: str, shape: list, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


# -- exact parameter counts ------------------------------------------------------------------


def test_counts_exactly_the_elements_of_the_onnx_weight_tensors(digits_model):
    proto = onnx.load(str(digits_model.onnx_path))
    expected = sum(numpy_helper.to_array(t).size for t in proto.graph.initializer)
    profile = edgeforge.inspect(digits_model)
    assert profile.weights["onnx_elements"] == expected
    assert profile.weights["bytes"] == sum(
        numpy_helper.to_array(t).nbytes for t in proto.graph.initializer
    )


def test_torch_source_also_reports_torchs_own_parameter_count(resnet50_profile):
    profile, module = resnet50_profile
    assert profile.weights["torch_parameters"] == sum(p.numel() for p in module.parameters())
    assert profile.weights["torch_buffers"] == sum(b.numel() for b in module.buffers())
    # BatchNorm is folded into the convolutions on export, so the ONNX count is smaller.
    assert profile.weights["onnx_elements"] < profile.weights["torch_parameters"]
    assert any("torch_parameters" in note for note in profile.notes)


# -- published figures -----------------------------------------------------------------------


def test_resnet50_macs_match_the_published_4_1_gmacs(resnet50_profile):
    profile, _ = resnet50_profile
    assert profile.macs == pytest.approx(4.1e9, rel=0.05)
    assert profile.not_counted == []


def test_bert_base_macs_match_the_published_figure(bert_base_profile):
    # MobileBERT (Sun et al., ACL 2020), Table 4: BERT-base, sequence 128, 22.5 GFLOPs,
    # i.e. 11.25 GMACs. Analytically: 12 layers x (4 x 128 x 768^2 + 2 x 128 x 768 x 3072
    # + 2 x 128^2 x 768) + pooler 768^2 = 11.17 GMACs.
    profile, module = bert_base_profile
    assert profile.macs == pytest.approx(11.25e9, rel=0.05)
    analytic = 12 * (4 * 128 * 768**2 + 2 * 128 * 768 * 3072 + 2 * 128**2 * 768) + 768**2
    assert profile.macs == analytic
    assert profile.weights["torch_parameters"] == sum(p.numel() for p in module.parameters())
    assert [(a.name, a.value) for a in profile.assumed_dims][:2] == [
        ("batch", 1),
        ("sequence", 128),
    ]


# -- per-op rules on hand-built graphs -------------------------------------------------------


def test_depthwise_and_grouped_conv_macs(tmp_path):
    rng = np.random.default_rng(0)
    path = save_graph(
        tmp_path / "conv.onnx",
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], group=8),
            helper.make_node("Conv", ["a", "w2", "b2"], ["y"], strides=[2, 2]),
        ],
        [_value("x", [1, 8, 16, 16])],
        [_value("y", [1, 4, 7, 7])],
        [_weights(rng, "w1", 8, 1, 3, 3), _weights(rng, "w2", 4, 8, 3, 3), _weights(rng, "b2", 4)],
    )
    profile = edgeforge.inspect(path)
    depthwise = 8 * 16 * 16 * 9  # one 3x3 filter per channel
    dense = 4 * 7 * 7 * 8 * 9
    assert [n.macs for n in profile.nodes] == [depthwise, dense]
    assert profile.nodes[1].flops == 2 * dense + 4 * 7 * 7  # bias adds one per output


def test_conv_transpose_gemm_matmul_and_einsum_macs(tmp_path):
    rng = np.random.default_rng(0)
    path = save_graph(
        tmp_path / "mix.onnx",
        [
            helper.make_node("ConvTranspose", ["x", "wt"], ["up"], strides=[2, 2]),
            helper.make_node("Flatten", ["up"], ["flat"]),
            helper.make_node("Gemm", ["flat", "wg"], ["g"], transB=1),
            helper.make_node("Reshape", ["g", "shape"], ["g3"]),
            helper.make_node("MatMul", ["g3", "wm"], ["m"]),
            helper.make_node("Einsum", ["m", "m"], ["e"], equation="bij,bkj->bik"),
        ],
        [_value("x", [1, 4, 5, 5])],
        [_value("e", [2, 3, 3])],
        [
            _weights(rng, "wt", 4, 2, 2, 2),
            _weights(rng, "wg", 30, 200),
            numpy_helper.from_array(np.array([2, 3, 5], dtype=np.int64), "shape"),
            _weights(rng, "wm", 5, 6),
        ],
    )
    profile = edgeforge.inspect(path)
    macs = {n.op_type: n.macs for n in profile.nodes}
    assert macs["ConvTranspose"] == 1 * 4 * 5 * 5 * (2 * 2 * 2)  # each input pixel x kernel
    assert macs["Gemm"] == 1 * 200 * 30
    assert macs["MatMul"] == 2 * 3 * 5 * 6
    assert macs["Einsum"] == 2 * 3 * 6 * 3
    assert macs["Reshape"] == 0 and macs["Flatten"] == 0


def test_pooling_normalisation_and_elementwise_flops(tmp_path):
    rng = np.random.default_rng(0)
    path = save_graph(
        tmp_path / "misc.onnx",
        [
            helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Relu", ["p"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("LayerNormalization", ["f", "scale"], ["n"], axis=-1),
            helper.make_node("Softmax", ["n"], ["y"]),
        ],
        [_value("x", [1, 3, 8, 8])],
        [_value("y", [1, 3])],
        [_weights(rng, "scale", 3)],
    )
    flops = {n.op_type: n.flops for n in edgeforge.inspect(path).nodes}
    assert flops["MaxPool"] == 3 * 4 * 4 * 4
    assert flops["Relu"] == 3 * 4 * 4
    assert flops["GlobalAveragePool"] == 3 * 4 * 4
    assert flops["LayerNormalization"] == 5 * 3
    assert flops["Softmax"] == 3 * 3


def test_op_without_a_rule_is_reported_not_guessed(tmp_path):
    path = save_det_graph(tmp_path)
    profile = edgeforge.inspect(path)
    assert profile.flops == 0
    assert profile.not_counted == [
        {"op_type": "Det", "reason": "no cost rule for this op", "count": 1, "nodes": ["Det_0"]}
    ]


# -- activation memory -----------------------------------------------------------------------


def test_peak_activation_memory_follows_tensor_liveness(tmp_path):
    # x feeds two branches that are added: x, a and b are all live while b is computed.
    path = save_graph(
        tmp_path / "branch.onnx",
        [
            helper.make_node("Relu", ["x"], ["a"], name="first"),
            helper.make_node("Sigmoid", ["x"], ["b"], name="second"),
            helper.make_node("Add", ["a", "b"], ["y"], name="join"),
        ],
        [_value("x", [1, 1000])],
        [_value("y", [1, 1000])],
    )
    memory = edgeforge.inspect(path).activation_memory
    assert memory.timeline == [8000, 12000, 12000]
    assert memory.peak_bytes == 12000
    assert memory.peak_node == "second"


def test_peak_activation_memory_of_resnet50_is_a_few_feature_maps(resnet50_profile):
    profile, _ = resnet50_profile
    largest_map = 64 * 112 * 112 * 4  # stem output, float32
    assert largest_map <= profile.activation_memory.peak_bytes <= 6 * largest_map


# -- dynamic dimensions and overrides --------------------------------------------------------


def test_dynamic_batch_is_assumed_1_and_override_scales_the_work(digits_model):
    one = edgeforge.inspect(digits_model)
    assert [(a.input, a.axis, a.value) for a in one.assumed_dims] == [("image", 0, 1)]
    four = edgeforge.inspect(digits_model, shapes={"image": (4, 1, 8, 8)})
    assert four.macs == 4 * one.macs
    assert four.assumed_dims[0].reason == "override"
    assert four.inputs[0]["shape"] == ["batch", 1, 8, 8]  # the model itself is unchanged
    # input_shapes() gives the concrete shapes each profile was computed at
    assert one.input_shapes() == {"image": (1, 1, 8, 8)}
    assert four.input_shapes() == {"image": (4, 1, 8, 8)}


# -- census, opsets and the external-data path -----------------------------------------------


def test_op_census_names_domain_opset_and_count(digits_model):
    census = {row["op_type"]: row for row in edgeforge.inspect(digits_model).op_census}
    assert census["Conv"] == {"domain": "ai.onnx", "op_type": "Conv", "count": 2, "opset": 20}
    assert census["Relu"]["count"] == 3


def test_external_weights_are_counted_without_being_read(tmp_path):
    """A 1 GB model with external data is inspected in a process that stays far below 1 GB."""
    folder = tmp_path / "big"
    folder.mkdir()
    rows = 16384 * 16  # 262144 x 1024 float32 = 1 GiB
    weight = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[rows, 1024])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(rows * 4096))):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "big",
        [_value("x", [1, rows])],
        [_value("y", [1, 1024])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.save(model, folder / "model.onnx")
    with open(folder / "w.bin", "wb") as handle:  # sparse: no disk blocks are written
        handle.truncate(rows * 4096)

    script = textwrap.dedent(
        f"""
        import json, edgeforge

        def _peak_rss_kb():  # VmHWM starts afresh at exec, unlike ru_maxrss
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        profile = edgeforge.inspect({str(folder / "model.onnx")!r})
        peak_kb = _peak_rss_kb()
        print(json.dumps([profile.weights["onnx_elements"], profile.macs, peak_kb]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    elements, macs, peak_kb = json.loads(result.stdout.strip().splitlines()[-1])
    assert elements == rows * 1024
    assert macs == rows * 1024
    assert peak_kb * 1024 < 0.5 * 2**30, f"inspect used {peak_kb / 1024:.0f} MB"


def test_profile_json_is_the_cli_json(digits_model):
    result = subprocess.run(
        [sys.executable, "-m", "edgeforge.cli", "inspect", str(digits_model.onnx_path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    from_cli = json.loads(result.stdout)
    assert from_cli.pop("schema") == "edgeforge.inspect/1"  # --json adds its version, first
    from_api = json.loads(json.dumps(edgeforge.inspect(digits_model).to_dict(), default=str))
    for data in (from_cli, from_api):
        data.pop("seconds")
        data["model"].pop("provenance")  # the API's Model remembers it came from torch
        data["model"].pop("torch_parameters")
        data["model"].pop("torch_program")
        data["weights"].pop("torch_parameters")
        data["weights"].pop("torch_buffers")
        data["notes"] = data["notes"][:2]
    assert from_cli == from_api
