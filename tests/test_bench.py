"""`bench`: every field measured in child processes; no timing is asserted here (see bench/)."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from edgeforge.bench import bench
from edgeforge.errors import EdgeforgeError
from edgeforge.recipe import Recipe
from edgeforge.runtimes import get_runtime

FIELDS = {
    "model",
    "runtime",
    "artifact",
    "artifact_bytes",
    "threads",
    "settings",
    "warmup",
    "runs",
    "repeats",
    "inputs",
    "load_ms",
    "first_inference_ms",
    "latency_ms",
    "median_spread",
    "throughput",
    "peak_rss_mb",
    "model_memory_mb",
    "top_layers",
    "warnings",
    "device",  # the fleet device that measured it (`bench --on`); null when measured here
}


def test_bench_reports_every_field_for_each_batch(digits_model):
    result = bench(digits_model, runs=5, warmup=1, repeats=2, batches=(1, 4), threads=1)
    data = result.to_dict()
    assert set(data) == FIELDS
    assert set(data["latency_ms"]) == {"p50", "p90", "p99", "mean", "std", "min", "max"}
    latency = data["latency_ms"]
    assert (
        0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    )
    assert [row["batch"] for row in data["throughput"]] == [1, 4]
    assert data["repeats"] == 2 and data["threads"] == 1
    assert data["peak_rss_mb"] > data["model_memory_mb"] > 0
    assert data["artifact_bytes"] > 100_000
    json.dumps(data)


def test_top_layers_come_from_onnx_runtimes_profiler(digits_model):
    result = bench(digits_model, runs=5, warmup=1, repeats=1)
    ops = {layer["op_type"] for layer in result.top_layers}
    assert ops & {"Conv", "FusedConv", "Gemm", "FusedGemm"}
    assert sum(layer["share"] for layer in result.top_layers) == pytest.approx(1.0, abs=0.05)


def test_a_fixed_batch_axis_skips_larger_batches_with_a_warning(tmp_path):
    import torch

    import edgeforge

    model = edgeforge.load(torch.nn.Linear(8, 2), torch.randn(1, 8), workdir=tmp_path)
    assert model.inputs[0].shape == (1, 8)
    result = bench(model, runs=3, warmup=0, repeats=1, batches=(1, 4))
    assert [row["batch"] for row in result.throughput] == [1]
    assert any("batch sizes [4] skipped" in w for w in result.warnings)


def test_an_artifact_folder_is_measured_as_built(digits_model, tmp_path):
    artifact = get_runtime("onnxruntime").build(digits_model, Recipe(), tmp_path / "ort")
    result = bench(str(artifact.folder), runs=3, warmup=0, repeats=1)
    assert result.artifact == str(artifact.path)
    assert onnx.load(result.artifact)


def test_bad_settings_are_refused(digits_model):
    with pytest.raises(EdgeforgeError, match="--runs >= 1"):
        bench(digits_model, runs=0)
    with pytest.raises(EdgeforgeError, match="unknown runtime 'tflite'"):
        bench(digits_model, runtime="tflite")


def test_cli_json_is_the_api_object(digits_model):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeforge.cli",
            "bench",
            str(digits_model.onnx_path),
            "--runs",
            "3",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed.pop("schema") == "edgeforge.bench/1"
    assert set(printed) == FIELDS


def test_openvino_top_layers_come_from_its_performance_counters(digits_model):
    result = bench(digits_model, runtime="openvino", runs=3, warmup=1, repeats=1)
    assert result.runtime == "openvino"
    ops = {layer["op_type"] for layer in result.top_layers}
    assert "Convolution" in ops


def test_shape_pins_a_dynamic_axis_and_refuses_contradictions(digits_model):
    (spec,) = digits_model.inputs
    assert not isinstance(spec.shape[0], int)  # the fixture exports a dynamic batch axis
    shape = (3, *spec.shape[1:])
    result = bench(digits_model, runs=3, warmup=1, repeats=1, shapes={spec.name: shape})
    assert f"{spec.name} 3x1x8x8 float32" in result.to_dict()["inputs"]
    with pytest.raises(
        EdgeforgeError, match=r"axis 1 is fixed at 1 in the model, the override gives 2"
    ):
        bench(digits_model, runs=3, repeats=1, shapes={spec.name: (1, 2, 8, 8)})
    with pytest.raises(EdgeforgeError, match="rank 4"):
        bench(digits_model, runs=3, repeats=1, shapes={spec.name: (1, 64)})
    with pytest.raises(EdgeforgeError, match="names no input 'pixels'"):
        bench(digits_model, runs=3, repeats=1, shapes={"pixels": (1, 1, 8, 8)})


@pytest.mark.parametrize("runtime", ["onnxruntime-mobile", "litert", "web"])
def test_every_runtime_that_runs_here_is_measured_the_same_way(digits_model, runtime):
    availability = get_runtime(runtime).availability()
    if not availability.can_execute:
        pytest.skip(availability.reason)
    result = bench(digits_model, runtime=runtime, runs=5, warmup=1, repeats=1)
    assert result.runtime == runtime
    assert result.latency_ms["p50"] > 0 and result.artifact_bytes > 0


def test_bench_records_the_openvino_precision_it_timed_with(digits_model):
    pytest.importorskip("openvino")
    result = bench(
        digits_model,
        runtime="openvino",
        threads=1,
        inference_precision="default",
        warmup=1,
        runs=2,
        repeats=1,
    )
    assert result.settings["inference_precision"] == "default"  # no hint: OpenVINO's own
    assert result.settings["threads"] == 1
    assert result.settings["effective_precision"] in ("f32", "bf16", "f16")
    pinned = bench(
        digits_model,
        runtime="openvino",
        inference_precision="f32",
        warmup=1,
        runs=2,
        repeats=1,
    )
    assert pinned.settings["effective_precision"] == "f32"
