"""`calibrate --here`: micro-benchmarks fit this machine's factors, stored for this host only."""

from __future__ import annotations

import html
import json

import onnx
import pytest

import edgeforge
from edgeforge.cli import main
from edgeforge.devices import get_device
from edgeforge.devices._this_machine import calibration_path, read_calibration, this_machine
from edgeforge.estimator import estimate, load_factors
from edgeforge.estimator.calibration import FactorEntry
from edgeforge.estimator.here import _CHAIN, COMPUTE_CLASSES, _fit, calibrate_here, cases
from edgeforge.estimator.roofline import roofline_ms


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFORGE_CACHE", str(tmp_path))
    this_machine.cache_clear()
    yield tmp_path
    this_machine.cache_clear()


@pytest.fixture
def calibrated(fresh_cache):
    return calibrate_here(quick=True)


def test_calibration_measures_bandwidth_and_fits_every_class(calibrated):
    entry = calibrated.entry
    assert calibrated.bandwidth_gbps > 0.5  # any machine this runs on moves more than this
    assert 0 < entry.layer_overhead_ms < 1.0
    for kind in ("conv", "conv_depthwise", "matmul", "attention", "recurrent"):
        assert entry.compute_efficiency[kind] > 0
    assert entry.memory_efficiency > 0
    assert entry.band_low <= 0.8 and entry.band_high >= 1.25
    assert {case["kind"] for case in calibrated.cases} >= {"memory", "overhead", "matmul"}


def test_estimates_on_this_machine_use_the_stored_calibration(calibrated, digits_model):
    device = get_device("this-machine")
    assert device.memory_bandwidth_gbps is not None
    assert device.memory_bandwidth_gbps.tag == "measured"
    assert device.memory_bandwidth_gbps.value == pytest.approx(calibrated.bandwidth_gbps, 0.01)
    _, matched = load_factors().lookup("this-machine", "cpu", "fp32")
    assert matched == "this-machine/cpu/*"
    result = estimate(edgeforge.inspect(digits_model.onnx_path), device)
    assert result.factors["entry"] == "this-machine/cpu/*"
    assert not any("bandwidth" in note for note in result.notes)


def test_a_calibration_from_another_host_is_ignored(calibrated):
    stored = json.loads(calibration_path().read_text())
    stored["host"]["model_name"] = "Some Other CPU"
    calibration_path().write_text(json.dumps(stored))
    this_machine.cache_clear()
    assert read_calibration() is None
    assert get_device("this-machine").memory_bandwidth_gbps is None
    assert load_factors().lookup("this-machine", "cpu", "fp32")[1] != "this-machine/cpu/*"


def test_a_corrupt_calibration_file_is_ignored(fresh_cache):
    calibration_path().parent.mkdir(parents=True)
    calibration_path().write_text("{not json")
    assert read_calibration() is None
    assert get_device("this-machine").memory_bandwidth_gbps is None


def test_cli_calibrate_here_json(fresh_cache, capsys):
    report = fresh_cache / "calibration.html"
    assert main(["calibrate", "--here", "--quick", "--json", "--report", str(report)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["bandwidth_gbps"] > 0 and printed["entry"]["device"] == "this-machine"
    assert calibration_path().is_file()
    # The report is a page to read (figures, classes, every case), not the JSON dumped.
    page = report.read_text()
    assert "This machine's calibration" in page and "<pre>" not in page
    assert "the runtime call, once per inference" in page
    assert all(html.escape(case["case"]) in page for case in printed["cases"])


def test_the_fit_recovers_the_efficiencies_that_made_the_times(tmp_path):
    """Times made by the roofline itself at known efficiencies, one per class: the fit must give
    each back from its own cases -- the depthwise one not scaled by a prior, and the skip-norm
    and attention-product ones only if it reads each case's graph (the residual Add runs inside
    the norm; two activations make a batched MatMul) while the files are still there; and the
    runtime call's own cost and the pass a fused activation costs."""
    truth = {kind: 0.05 * (index + 1) for index, kind in enumerate(COMPUTE_CLASSES)}
    overhead, peak, bandwidth, call = 0.0005, 100.0, 20.0, 0.003
    made = FactorEntry(
        "*", "*", "*", truth, 1.0, 1.0, overhead, 1.0, 1.0, nchwc_block=16, activation_pass=1.5
    )
    measured = []
    for index, case in enumerate(cases(quick=True)):
        model, _ = case.build()
        path = tmp_path / f"case{index}.onnx"
        onnx.save(model, path)
        profile = edgeforge.inspect(path)
        if case.kind == "overhead call":
            ms = call + overhead
        elif case.kind.startswith("overhead"):
            ms = call + _CHAIN * overhead
        else:
            memory = case.kind in ("memory", "data movement")
            layers = roofline_ms(
                profile,
                made,
                peak_gops=1e12 if memory else peak,
                bandwidth_gbps=bandwidth if memory else None,
                precision="fp32",
            )
            ms = call + sum(layer.ms for layer in layers)
        measured.append((case, ms, profile))
    entry, _ = _fit(measured, peak, block=0)
    for kind in COMPUTE_CLASSES:
        assert entry.compute_efficiency[kind] == pytest.approx(truth[kind], rel=1e-6), kind
    assert entry.layer_overhead_ms == pytest.approx(overhead)
    assert entry.run_overhead_ms == pytest.approx(call)
    assert entry.activation_pass == pytest.approx(1.5)


def test_calibration_reads_each_case_graph_while_it_fits(calibrated):
    # The skip-norm case is one costed node (its residual Add runs inside the norm, which only
    # the case's graph file says) and the only case of its class: the fit reproduces its time.
    (row,) = [case for case in calibrated.cases if case["kind"] == "normalization_skip"]
    assert row["predicted_ms"] == pytest.approx(row["measured_ms"], rel=1e-6)


def test_the_nchwc_block_is_what_onnx_runtime_lays_out_here():
    from edgeforge.estimator.here import nchwc_block

    assert nchwc_block() in (0, 8, 16)


def test_this_machine_estimates_at_the_threads_it_was_calibrated_with(
    fresh_cache, digits_model, capsys
):
    calibrate_here(quick=True, threads=1)
    path = str(digits_model.onnx_path)
    at_one = estimate(edgeforge.inspect(path), "this-machine", threads=1).latency_ms
    assert main(["estimate", path, "--device", "this-machine", "--json"]) == 0
    (printed,) = json.loads(capsys.readouterr().out)["estimates"]
    assert printed["latency_ms"] == pytest.approx(at_one)
    assert any("1 thread(s) `calibrate --here` measured with" in n for n in printed["notes"])
    assert main(["estimate", path, "--device", "this-machine", "--threads", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "threads must be 1 or more" in error
