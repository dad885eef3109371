"""`estimate`, published rows and calibration, on hand-built graphs with hand-computed values."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import save_graph
from onnx import TensorProto, helper, numpy_helper

import edgeforge
from edgeforge.devices import ComputeUnit, Device, Figure, get_device
from edgeforge.errors import EdgeforgeError
from edgeforge.estimator import (
    FactorEntry,
    Factors,
    PublishedRow,
    Unavailable,
    estimate,
    estimate_devices,
    fit,
    load_factors,
    read_rows,
    split,
    unit_choices,
    validate,
)
from edgeforge.estimator.calibration import default_entry, predict_row

# -- fixtures --------------------------------------------------------------------------------


def _figure(value: float) -> Figure:
    return Figure(value, "policy", "test figure")


def _device(*, ram_gb: float = 1.0, bandwidth_gbps: float = 40.0) -> Device:
    """A one-core device: 10 GFLOPS fp32, `bandwidth_gbps`, `ram_gb`, a 1 MB size budget."""
    return Device(
        id="test-board",
        name="Test board",
        kind="sbc",
        aliases=(),
        runtimes=("onnxruntime",),
        ram_gb=_figure(ram_gb),
        memory_bandwidth_gbps=_figure(bandwidth_gbps),
        size_budget_mb=_figure(1.0),
        compute=(ComputeUnit("cpu", "1× test core", {"fp32": _figure(10.0)}),),
    )


def _factors(**changes: float) -> Factors:
    entry = FactorEntry(
        device="*",
        unit="*",
        precision="*",
        compute_efficiency={"matmul": 0.5},
        default_compute=1.0,
        memory_efficiency=0.8,
        layer_overhead_ms=0.002,
        band_low=0.8,
        band_high=1.5,
    )
    return Factors((dataclasses.replace(entry, **changes),))


def _matmul_relu(path: Path, k: int = 64, n: int = 32) -> Path:
    """x[1,k] @ W[k,n] -> Relu: MatMul has k*n MACs, Relu n FLOPs."""
    weights = numpy_helper.from_array(np.zeros((k, n), np.float32), "W")
    return save_graph(
        path,
        [
            helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
            helper.make_node("Relu", ["y"], ["z"], name="relu"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, n])],
        [weights],
    )


@pytest.fixture(scope="module")
def small_profile(tmp_path_factory) -> edgeforge.Profile:
    return edgeforge.inspect(_matmul_relu(tmp_path_factory.mktemp("est") / "mm.onnx"))


@pytest.fixture(scope="module")
def synthetic_profiles(tmp_path_factory) -> dict[str, edgeforge.Profile]:
    folder = tmp_path_factory.mktemp("cal")
    sizes = {"small": (64, 32), "medium": (256, 256), "large": (1024, 512)}
    return {
        name: edgeforge.inspect(_matmul_relu(folder / f"{name}.onnx", k, n))
        for name, (k, n) in sizes.items()
    }


# -- roofline --------------------------------------------------------------------------------


def test_estimate_matches_hand_computed_roofline(small_profile):
    result = estimate(small_profile, _device(), factors=_factors())
    # MatMul: 4096 FLOPs / (10 GFLOPS x 0.5) = 819.2 ns; bytes (2048 weights + 2 x 32
    # activations) x 4 = 8448 B / (40 GB/s x 0.8) = 264 ns -> compute-bound, plus 0.002 ms.
    # The Relu reads the MatMul's output and nothing else does: fused, free.
    expected_ms = 819.2e-9 * 1e3 + 0.002
    assert result.latency_ms == pytest.approx(expected_ms, rel=1e-9)
    assert result.latency_low_ms == pytest.approx(0.8 * expected_ms)
    assert result.latency_high_ms == pytest.approx(1.5 * expected_ms)
    assert [layer.bytes_moved for layer in result.layers] == [8448, 0]
    assert [layer.bound for layer in result.layers] == ["compute", "fused"]
    assert result.weight_bytes == 2048 * 4
    assert result.peak_memory_bytes == 2048 * 4 + small_profile.activation_memory.peak_bytes
    assert result.unit == "cpu"
    assert result.factors["entry"] == "*/*/*"


def test_an_activation_with_nothing_to_fuse_into_is_memory_bound(tmp_path):
    path = save_graph(
        tmp_path / "relu.onnx",
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
    )
    (layer,) = estimate(edgeforge.inspect(path), _device(), factors=_factors()).layers
    # 64 FLOPs / 10 GFLOPS = 6.4 ns; 2 x 64 x 4 B / (40 GB/s x 0.8) = 16 ns -> memory-bound.
    assert layer.bound == "memory"
    assert layer.ms == pytest.approx(16e-9 * 1e3 + 0.002, rel=1e-9)


def _conv_weights(name: str, out: int, inp: int, k: int = 1) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros((out, inp, k, k), np.float32), name)


def test_fusion_follows_what_runtimes_fold_into_a_conv(tmp_path):
    c = 8
    node = helper.make_node
    path = save_graph(
        tmp_path / "block.onnx",
        [
            node("Conv", ["x", "W1"], ["c1"], name="conv1"),
            node("Relu", ["c1"], ["r1"], name="relu1"),  # activation: fused
            node("Conv", ["r1", "W2"], ["c2"], name="conv2"),
            node("Add", ["c2", "r1"], ["a"], name="residual"),  # one residual: fused
            node("Relu", ["a"], ["r2"], name="relu2"),  # still the conv's epilogue: fused
            node("Sigmoid", ["r2"], ["s"], name="gate"),  # r2 has two readers: not fused
            node("Mul", ["r2", "s"], ["m"], name="silu"),  # x * sigmoid(x): fused
            node("GlobalAveragePool", ["m"], ["g"], name="squeeze"),
            node("Conv", ["g", "W3"], ["c3"], name="excite"),
            node("Sigmoid", ["c3"], ["e"], name="excite_act"),  # fused into the 1x1 conv
            node("Mul", ["m", "e"], ["o"], name="scale"),  # broadcasts to a larger tensor
            node("Flatten", ["o"], ["y"], name="flatten"),  # a view
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c * 16])],
        [_conv_weights("W1", c, c), _conv_weights("W2", c, c), _conv_weights("W3", c, c)],
    )
    layers = estimate(edgeforge.inspect(path), _device(), factors=_factors()).layers
    bounds = {layer.name: layer.bound for layer in layers}
    free = {name for name, bound in bounds.items() if bound in ("fused", "view")}
    assert free == {"relu1", "residual", "relu2", "silu", "excite_act", "flatten"}
    assert bounds["flatten"] == "view"
    for layer in layers:
        if layer.name in free:
            assert layer.ms == 0 and layer.overhead_ms == 0 and layer.bytes_moved == 0


def test_depthwise_conv_takes_its_own_efficiency(tmp_path):
    channels = 8
    weights = numpy_helper.from_array(np.zeros((channels, 1, 3, 3), np.float32), "W")
    path = save_graph(
        tmp_path / "dw.onnx",
        [helper.make_node("Conv", ["x", "W"], ["y"], name="dw", group=channels, pads=[1] * 4)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 16, 16])],
        [weights],
    )
    profile = edgeforge.inspect(path)
    fast_memory = _device(bandwidth_gbps=1e6)
    factors = _factors(compute_efficiency={"conv": 1.0, "conv_depthwise": 0.1})
    (layer,) = estimate(profile, fast_memory, factors=factors).layers
    # 8 x 16 x 16 x 9 MACs = 18432 MACs = 36864 FLOPs at 10 GFLOPS x 0.1.
    assert layer.bound == "compute"
    assert layer.ms == pytest.approx(36864 / 1e9 * 1e3 + 0.002, rel=1e-6)


def test_layer_bound_follows_arithmetic_intensity(small_profile):
    # Starve the bandwidth and the MatMul turns memory-bound.
    assert estimate(small_profile, _device(), factors=_factors()).layers[0].bound == "compute"
    starved = estimate(small_profile, _device(bandwidth_gbps=0.01), factors=_factors())
    assert starved.layers[0].bound == "memory"


def test_model_too_big_for_ram_says_by_how_much(small_profile):
    ram_bytes = 5_000
    result = estimate(small_profile, _device(ram_gb=ram_bytes / 1e9), factors=_factors())
    assert result.ram.fits is False
    assert result.ram.short_bytes == result.peak_memory_bytes - ram_bytes > 0
    assert any("more than the device's RAM" in note for note in result.notes)
    assert result.size_budget.fits is True and result.size_budget.short_bytes == 0


def test_int8_shrinks_bytes_and_memory(small_profile):
    device = dataclasses.replace(
        _device(),
        compute=(ComputeUnit("cpu", "1× test core", {"fp32": _figure(10.0), "int8": _figure(20)}),),
    )
    fp32 = estimate(small_profile, device, factors=_factors())
    int8 = estimate(small_profile, device, precision="int8", factors=_factors())
    assert int8.weight_bytes == fp32.weight_bytes // 4
    assert int8.layers[0].bytes_moved == fp32.layers[0].bytes_moved // 4


def test_unknown_runtime_lists_the_device_runtimes(small_profile):
    with pytest.raises(EdgeforgeError, match="it runs onnxruntime"):
        estimate(small_profile, _device(), runtime="tensorrt", factors=_factors())
    with pytest.raises(EdgeforgeError, match="valid: fp32, fp16, int8"):
        estimate(small_profile, _device(), precision="bf16", factors=_factors())


def test_unit_rule_on_catalogue_devices():
    def kinds(device: str, **options: str) -> set[str]:
        return {unit.kind for unit, _ in unit_choices(get_device(device), **options)}

    nano = get_device("jetson-nano")
    assert kinds("jetson-nano", runtime="tensorrt") == {"gpu"}
    # each unit with the first runtime the device lists that reaches it
    assert {u.kind: r for u, r in unit_choices(nano)} == {"gpu": "tensorrt", "cpu": "onnxruntime"}
    # the Neural Engine computes no fp32; int8 runs everywhere else at least at the fp32 peak
    assert "ane" not in kinds("iphone-15-pro", precision="fp32")
    assert kinds("coral-dev-board", precision="int8") == {"tpu", "cpu"}
    assert kinds("coral-dev-board", precision="fp32") == {"cpu"}
    with pytest.raises(EdgeforgeError, match="tensorrt needs a GPU"):
        unit_choices(get_device("raspberry-pi-4"), runtime="tensorrt")
    with pytest.raises(EdgeforgeError, match=r"cannot run fp32.*Edge TPU runs int8 only"):
        unit_choices(get_device("coral-usb-accelerator"), precision="fp32")


def test_shipped_factors_load_with_provenance():
    factors = load_factors()
    entry, matched = factors.lookup("no-such-device", "no-such-unit", "fp32")
    assert matched == "*/*/*"
    assert entry.band_low <= 1.0 <= entry.band_high
    assert "method" in factors.provenance and "date" in factors.provenance


def test_lookup_prefers_the_most_specific_entry():
    device_entry = dataclasses.replace(default_entry(), device="rpi", unit="cpu")
    factors = Factors((default_entry(), device_entry))
    assert factors.lookup("rpi", "cpu", "int8")[1] == "rpi/cpu/*"
    assert factors.lookup("rpi", "gpu", "int8")[1] == "*/*/*"
    with pytest.raises(EdgeforgeError, match="default entry"):
        Factors((device_entry,))


@pytest.fixture(scope="module")
def squeezenet_profile(tmp_path_factory) -> edgeforge.Profile:
    from edgeforge.zoo import catalog

    module, inputs, options = catalog.build("squeezenet1_1")
    return edgeforge.inspect(module, inputs, workdir=tmp_path_factory.mktemp("sq"), **options)


def test_zoo_model_on_a_catalogue_device_with_shipped_factors(squeezenet_profile):
    result = estimate(squeezenet_profile, get_device("raspberry-pi-4"), runtime="onnxruntime")
    # The transfer model, with the Pi 4's own terms (it has published rows).
    assert result.factors["model"] == "transfer"
    assert result.factors["entry"].startswith("transfer:raspberry-pi-4/onnxruntime/cpu")
    assert result.factors["device_terms"] == "fitted"
    assert 0 < result.latency_low_ms <= result.latency_ms <= result.latency_high_ms
    assert result.ram.fits is True and result.size_budget.fits is True
    assert any(layer.bound == "compute" for layer in result.layers if layer.category == "conv")
    assert result.to_dict()["layers"][0]["name"] == result.layers[0].name


def test_default_runs_on_the_fastest_unit_and_says_which(squeezenet_profile):
    # Before: the CPU unless a runtime or unit was named, whatever the GPU or TPU could do.
    nano = estimate(squeezenet_profile, "jetson-nano")
    assert (nano.unit, nano.runtime) == ("gpu", "tensorrt")
    cpu = estimate(squeezenet_profile, "jetson-nano", unit="cpu")
    assert nano.latency_ms < cpu.latency_ms
    assert [a["unit"] for a in nano.alternatives] == ["gpu", "cpu"]
    assert "runs on the gpu (128-core Maxwell GPU" in nano.notes[0] and "tensorrt" in nano.notes[0]
    coral = estimate(squeezenet_profile, "coral-dev-board", precision="int8")
    assert (coral.unit, coral.runtime) == ("tpu", "litert")


def test_a_device_that_cannot_run_the_precision_is_reported_alone(small_profile):
    # Before: one device that could not run int8 failed the whole list.
    fp16_only = dataclasses.replace(
        _device(),
        id="fp16-board",
        compute=(ComputeUnit("npu", "fp16 NPU", {"fp16": _figure(100.0)}, {"int8": "fp16 only"}),),
    )
    results = estimate_devices(
        small_profile, [_device(), fp16_only], precision="int8", factors=_factors()
    )
    assert [type(r) for r in results] == [edgeforge.estimator.Estimate, Unavailable]
    assert results[0].precision == "int8" and results[0].latency_ms > 0
    refused = results[1].to_dict()
    assert refused["available"] is False and refused["device"] == "fp16-board"
    assert "cannot run int8" in refused["reason"] and "fp16 only" in refused["reason"]
    assert "\n" not in refused["reason"]


def test_cli_lists_each_device_even_when_one_cannot_run(small_profile, capsys):
    from edgeforge.cli import main

    path = small_profile.model["path"]
    argv = ["estimate", path, "--device", "raspberry-pi-4,coral-usb-accelerator", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)["estimates"]
    assert [d["available"] for d in data] == [True, False]
    assert "the Edge TPU runs int8 only" in data[1]["reason"]


def test_estimate_takes_an_artifact_folder(small_profile, tmp_path, capsys):
    # Before: `estimate` took model files only, unlike `bench` and `verify`.
    from edgeforge.cli import main
    from edgeforge.convert import convert

    result = convert(small_profile.model["path"], "onnxruntime", tmp_path / "out")
    folder = tmp_path / "out" / "onnxruntime"
    assert (folder / "manifest.json").is_file(), result.to_dict()
    found = estimate(folder, "raspberry-pi-4")
    assert found.artifact == str(folder) and found.runtime == "onnxruntime"
    assert found.precision == "fp32" and str(folder) in found.notes[0]
    assert main(["estimate", str(folder), "--device", "raspberry-pi-4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["estimates"][0]["artifact"] == str(folder)
    with pytest.raises(EdgeforgeError, match="pass one of its artifact folders: onnxruntime"):
        estimate(tmp_path / "out", "raspberry-pi-4")


# -- published rows --------------------------------------------------------------------------

_CSV = """device,runtime,model,input,precision,batch,latency_ms,fps,source
Raspberry Pi 4B,ncnn benchncnn CPU threads=4 powersave=0,squeezenet_int8,227x227x3,int8,1,30.5,,s1
Raspberry Pi 4B,ncnn benchncnn Vulkan gpu_device=0 threads=1,MobileNet v2,224x224x3,fp16,1,,50,s2
Raspberry Pi 4B,ncnn CPU,mnasnet,224x224x3,fp32,1,12.0,,s3
Imaginary Board 9000,ncnn CPU,resnet50,224x224x3,fp32,1,99.0,,s4
Raspberry Pi 4B,OpenCV DNN,ResNet-18,640x480 (image WxH),fp32,1,80.0,,s5
"""


def test_published_rows_map_known_names_and_explain_the_rest(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(_CSV)
    rows = read_rows(path)
    assert len(rows) == 5

    squeeze, mobilenet, mnasnet, imaginary, resnet = rows
    assert squeeze.mapped and squeeze.architecture == "squeezenet1_1"
    assert squeeze.device_id == "raspberry-pi-4"
    assert (squeeze.image_size, squeeze.threads, squeeze.unit) == ((227, 227), 4, "cpu")
    assert squeeze.precision == "int8"

    assert mobilenet.architecture == "mobilenet_v2"
    assert mobilenet.unit == "gpu"
    assert mobilenet.latency_ms == pytest.approx(20.0)  # from fps = 50

    assert not mnasnet.mapped and "maps to no zoo architecture" in mnasnet.reason
    assert not imaginary.mapped and "not a catalogue id or alias" in imaginary.reason
    assert imaginary.architecture == "resnet50"  # the model mapped; the device did not

    assert resnet.image_size == (480, 640)  # WxH read as width x height


def test_published_file_without_a_required_column_is_refused(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("device,model\nx,y\n")
    with pytest.raises(EdgeforgeError, match="missing column"):
        read_rows(path)


# -- calibration -----------------------------------------------------------------------------


def _row(line: int, architecture: str, latency_ms: float = 1.0) -> PublishedRow:
    return PublishedRow(
        line=line,
        device="Raspberry Pi 4B",
        runtime="synthetic CPU",
        model=architecture,
        input="",
        precision="fp32",
        batch=1,
        latency_ms=latency_ms,
        source="synthetic",
        architecture=architecture,
        device_id="raspberry-pi-4",
        unit="cpu",
        threads=None,
        image_size=None,
        reason=None,
    )


def _synthetic_rows(profiles, scale: float, noise: tuple[float, ...]) -> list[PublishedRow]:
    truth = FactorEntry.scaled("*", "*", "*", scale, band_low=1.0, band_high=1.0)
    rows = []
    for line, (name, wobble) in enumerate(
        [(name, wobble) for name in profiles for wobble in noise], start=2
    ):
        predicted = predict_row(_row(line, name), truth, profiles)
        assert predicted is not None
        rows.append(_row(line, name, sum(predicted) * wobble))
    return rows


def test_row_prediction_scales_with_input_pixels_and_threads(tmp_path):
    weights = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "W")
    path = save_graph(
        tmp_path / "conv.onnx",
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1] * 4)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        [weights],
    )
    profiles = {"conv": edgeforge.inspect(path)}
    entry = default_entry()
    base = predict_row(_row(2, "conv"), entry, profiles)
    bigger = predict_row(dataclasses.replace(_row(2, "conv"), image_size=(32, 32)), entry, profiles)
    one_thread = predict_row(dataclasses.replace(_row(2, "conv"), threads=1), entry, profiles)
    assert base is not None and bigger is not None and one_thread is not None
    assert bigger[0] == pytest.approx(4 * base[0])  # 4x the pixels, 4x the work
    assert bigger[1] == base[1]  # overhead does not scale
    assert one_thread[0] >= base[0]  # 1 of the Pi 4's 4 cores: never faster


def test_calibration_recovers_known_factors(synthetic_profiles):
    rows = _synthetic_rows(synthetic_profiles, 0.37, noise=(1.0,))
    factors = fit(rows, synthetic_profiles)
    entry, matched = factors.lookup("raspberry-pi-4", "cpu", "fp32")
    assert matched == "raspberry-pi-4/cpu/fp32"
    assert entry.memory_efficiency == pytest.approx(0.37, rel=1e-6)
    assert entry.compute_efficiency["matmul"] == pytest.approx(0.37, rel=1e-6)
    assert entry.fit["rows"] == len(rows)

    report = validate(rows, factors, synthetic_profiles)
    assert report["overall"]["median_abs_pct_error"] == pytest.approx(0.0, abs=1e-6)
    assert report["overall"]["within_25pct"] == 1.0
    assert set(report["by_device"]) == {"raspberry-pi-4"}


def test_a_precision_with_its_own_rows_gets_its_own_scale(synthetic_profiles):
    fp32 = _synthetic_rows(synthetic_profiles, 0.4, noise=(1.0,))
    # int8 measured 10x slower than fp32: a runtime whose int8 falls back to slower kernels.
    # Its scale must not drag the fp32 entry, nor be lost in it.
    int8 = [
        dataclasses.replace(
            row, line=row.line + 100, precision="int8", latency_ms=10 * row.latency_ms
        )
        for row in fp32
    ]
    factors = fit(fp32 + int8, synthetic_profiles)
    keys = [factors.lookup("raspberry-pi-4", "cpu", p)[1] for p in ("fp32", "int8", "fp16")]
    assert keys == ["raspberry-pi-4/cpu/fp32", "raspberry-pi-4/cpu/int8", "raspberry-pi-4/cpu/*"]
    assert factors.lookup("raspberry-pi-4", "cpu", "int8")[0].fit["rows"] == len(int8)
    own = validate(int8, factors, synthetic_profiles)["overall"]["median_abs_pct_error"]
    assert own < 10
    fp32_scale = factors.lookup("raspberry-pi-4", "cpu", "fp32")[0].memory_efficiency
    int8_scale = factors.lookup("raspberry-pi-4", "cpu", "int8")[0].memory_efficiency
    assert int8_scale < fp32_scale  # slower than its peak says: a lower efficiency


def test_calibration_is_robust_to_one_wild_measurement(synthetic_profiles):
    rows = _synthetic_rows(synthetic_profiles, 0.5, noise=(1.0, 1.0, 20.0))
    entry, _ = fit(rows, synthetic_profiles).lookup("raspberry-pi-4", "cpu", "fp32")
    assert entry.memory_efficiency == pytest.approx(0.5, rel=1e-6)
    assert entry.band_high > 1.0  # the outlier widens the band, not the fit


def test_validation_lists_rows_it_cannot_estimate(synthetic_profiles):
    rows = [_row(2, "small"), dataclasses.replace(_row(3, "unknown"), architecture="vgg16")]
    unmapped = dataclasses.replace(_row(4, "x"), reason="model 'x' maps to no zoo architecture")
    report = validate([*rows, unmapped], load_factors(), synthetic_profiles)
    assert report["overall"]["rows"] == 1
    reasons = {item["line"]: item["reason"] for item in report["unmapped"]}
    assert reasons == {3: "no profile for vgg16", 4: "model 'x' maps to no zoo architecture"}


def test_split_is_deterministic_and_keeps_an_architecture_on_one_side():
    rows = [_row(line, name) for line, name in enumerate(["a", "b", "c", "d", "e", "f"] * 3)]
    sides = {(row.architecture, split(row)) for row in rows}
    assert len(sides) == 6  # each architecture on exactly one side
    assert {side for _, side in sides} <= {"fit", "validate"}
