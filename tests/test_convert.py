"""`convert` and `check`: targets in child processes, crashes and time-outs contained."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from edgeforge.convert import _in_child, check, convert, parse_targets
from edgeforge.errors import EdgeforgeError


def _exit_abruptly(job):
    os._exit(3)  # what a converter that segfaults or calls exit() looks like from outside


def _hang(job):
    import time

    time.sleep(60)


def test_onnx_runtimes_build_load_run_and_verify(digits_model, tmp_path):
    result = convert(digits_model, "onnxruntime,onnxruntime-mobile", tmp_path)
    by_name = {t.runtime: t for t in result.targets}
    for name, file in (("onnxruntime", "model.onnx"), ("onnxruntime-mobile", "model.ort")):
        target = by_name[name]
        assert target.status == "verified", target.detail
        assert target.artifact.endswith(file)
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert manifest["tools"]["onnxruntime"]
        assert manifest["inputs"][0]["name"] == "image"
        assert target.verification["passed"]
    assert result.all_verified


def test_a_converter_that_dies_costs_only_its_own_target():
    outcome = _in_child(_exit_abruptly, {"runtime": "crashy"}, timeout=60)
    assert outcome["status"] == "crashed"
    assert "exit code 3" in outcome["detail"]


def test_a_converter_that_hangs_is_stopped_at_the_limit():
    outcome = _in_child(_hang, {"runtime": "slow"}, timeout=3)
    assert outcome["status"] == "timed-out"
    assert outcome["seconds"] < 30


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_a_missing_runtime_is_reported_not_skipped(digits_model, tmp_path):
    result = convert(digits_model, "tensorrt,onnxruntime", tmp_path)
    by_name = {t.runtime: t for t in result.targets}
    assert by_name["onnxruntime"].status == "verified"
    assert by_name["tensorrt"].status == "not-installed"
    assert "tensorrt" in by_name["tensorrt"].detail


def test_unknown_runtime_lists_the_valid_names():
    with pytest.raises(EdgeforgeError, match="choose from onnxruntime, onnxruntime-mobile"):
        parse_targets("onnxruntime,tflite")


def test_check_reports_each_runtime(digits_model):
    report = check(digits_model, "onnxruntime,onnxruntime-mobile")
    assert set(report.runtimes) == {"onnxruntime", "onnxruntime-mobile"}
    assert all(r["status"] == "checked" for r in report.runtimes.values())
    assert report.findings == []


def test_convert_cli_prints_the_summary_table(digits_model, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeforge.cli",
            "convert",
            str(digits_model.onnx_path),
            "--to",
            "onnxruntime",
            "--out",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["targets"][0]["status"] == "verified"


def test_int8_static_calibrates_on_data_and_takes_recipe_options(digits_model, tmp_path):
    import numpy as np

    from edgeforge.cli import main

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        np.savez(data / f"{i}.npz", image=rng.random((1, 1, 8, 8), dtype=np.float32))
    out = tmp_path / "out"
    code = main(
        [
            "convert",
            str(digits_model.onnx_path),
            "--to",
            "onnxruntime,openvino",
            "--precision",
            "int8-static",
            "--data",
            str(data),
            "--option",
            "calibration_samples=4",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    for runtime in ("onnxruntime", "openvino"):
        recipe = json.loads((out / runtime / "manifest.json").read_text())["recipe"]
        assert recipe == {
            "precision": "int8-static",
            "options": {"data": str(data), "calibration_samples": 4},
        }


def test_a_malformed_recipe_option_is_one_line(digits_model, tmp_path, capsys):
    from edgeforge.cli import main

    args = ["convert", str(digits_model.onnx_path), "--to", "onnxruntime", "--out", str(tmp_path)]
    assert main([*args, "--option", "per_channel"]) == 2
    assert "write key=value" in capsys.readouterr().err


def test_a_misspelt_recipe_option_is_refused_with_the_closest_name(digits_model, tmp_path, capsys):
    from edgeforge.cli import main

    out = tmp_path / "out"
    args = ["convert", str(digits_model.onnx_path), "--to", "onnxruntime", "--out", str(out)]
    assert main([*args, "--option", "calibraton_method=entropy"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown recipe option 'calibraton_method'" in err
    assert "did you mean calibration_method?" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
