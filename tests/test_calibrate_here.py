"""`calibrate --here`: micro-benchmarks fit this machine's factors, stored for this host only."""

from __future__ import annotations

import json

import pytest

import edgeforge
from edgeforge.cli import main
from edgeforge.devices import get_device
from edgeforge.devices._this_machine import calibration_path, read_calibration, this_machine
from edgeforge.estimator import estimate, load_factors
from edgeforge.estimator.here import calibrate_here


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
    assert main(["calibrate", "--here", "--quick", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["bandwidth_gbps"] > 0 and printed["entry"]["device"] == "this-machine"
    assert calibration_path().is_file()
