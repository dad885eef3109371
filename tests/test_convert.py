"""`convert` and `check`: targets in child processes, crashes and time-outs contained."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from edgeforge._children import in_child
from edgeforge.convert import Conversion, TargetResult, check, convert, parse_targets
from edgeforge.errors import EdgeforgeError

# What the CLI may print on stderr: its own lines. Progress bars draw only on a terminal.
EDGEFORGE_LINE = re.compile(r"^(edgeforge: |report: )")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgeforge.cli", *args], capture_output=True, text=True
    )


def _foreign_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not EDGEFORGE_LINE.match(line)]


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
    outcome = in_child(_exit_abruptly, {"runtime": "crashy"}, timeout=60)
    assert outcome["status"] == "crashed"
    assert "exit code 3" in outcome["detail"]


def test_a_converter_that_hangs_is_stopped_at_the_limit():
    outcome = in_child(_hang, {"runtime": "slow"}, timeout=3)
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


# -- the verdict and the exit code ------------------------------------------------------------

_CORE_ML_HERE = "cannot run here: Core ML runs only on macOS/iOS; signature validated"
_NO_TENSORRT = "runtime tensorrt: tensorrt is not installed (pip install 'edgeforge[tensorrt]')"


def _conversion(*statuses: tuple[str, str, str], required: tuple[str, ...] = ()) -> Conversion:
    targets = [TargetResult(runtime, status, detail) for runtime, status, detail in statuses]
    return Conversion("model.onnx", "out", "fp32", targets, list(required))


def test_a_target_that_cannot_run_here_fails_nothing():
    result = _conversion(
        ("onnxruntime", "verified", ""),
        ("coreml", "built-not-run", _CORE_ML_HERE),
        ("tensorrt", "not-installed", _NO_TENSORRT),
    )
    assert result.exit_code == 0
    assert result.verdict.startswith("PASS (exit 0): 1 of 3 targets verified")
    assert "built but not run here: coreml (Core ML runs only on macOS/iOS)" in result.verdict
    assert "not available here: tensorrt (tensorrt is not installed" in result.verdict


def test_a_required_target_that_did_not_verify_fails_the_run_and_is_named():
    result = _conversion(
        ("onnxruntime", "verified", ""),
        ("coreml", "built-not-run", _CORE_ML_HERE),
        required=("coreml",),
    )
    assert result.exit_code == 1
    assert result.verdict.startswith(
        "FAIL (exit 1): required but not verified: coreml (built-not-run: Core ML runs only"
    )


def test_a_target_that_failed_fails_the_run_even_when_not_required():
    result = _conversion(("onnxruntime", "verified", ""), ("litert", "parity-failed", "cos 0.2"))
    assert result.exit_code == 1
    assert result.verdict.startswith("FAIL (exit 1): litert parity-failed; 1 of 2")


def test_nothing_installed_is_not_a_pass():
    result = _conversion(("tensorrt", "not-installed", _NO_TENSORRT))
    assert result.exit_code == 1
    assert "nothing was built" in result.verdict


def test_require_must_name_targets_being_converted(digits_model, tmp_path):
    with pytest.raises(EdgeforgeError, match="--require coreml: not among the targets"):
        convert(digits_model, "onnxruntime", tmp_path, require="coreml")
    with pytest.raises(EdgeforgeError, match="unknown runtime 'coremel'"):
        convert(digits_model, "onnxruntime", tmp_path, require="coremel")


@pytest.mark.slow
def test_convert_all_exits_0_here_and_says_what_could_not_run(digits_factory, tmp_path):
    """Every runtime that can run on this machine verifies; Core ML (off macOS) and TensorRT
    (not installed, or no GPU) are named with their reasons, and fail nothing."""
    report = tmp_path / "report.html"
    out = tmp_path / "out"
    result = _cli(
        "convert",
        digits_factory,
        "--to",
        "all",
        "--out",
        str(out),
        "--report",
        str(report),
        "--json",
    )
    data = json.loads(result.stdout)  # nothing but the JSON on stdout
    by_name = {t["runtime"]: t for t in data["targets"]}
    assert result.returncode == 0, data["verdict"]
    assert data["exit_code"] == 0 and data["verdict"].startswith("PASS (exit 0)")
    if sys.platform != "darwin":
        assert by_name["coreml"]["status"] == "built-not-run"
        assert "built but not run here: coreml" in data["verdict"]
    if by_name["tensorrt"]["status"] == "not-installed":
        assert "not available here: tensorrt" in data["verdict"]
    for target in data["targets"]:
        assert target["status"] in ("verified", "built-not-run", "not-installed"), target
        if target["verification"]:
            assert target["verification"]["verdict"].startswith("PASS (exit 0)")
    assert _foreign_lines(result.stderr) == []  # quiet: only edgeforge's own lines
    html = report.read_text()
    assert html.index('class="verdict pass"') < html.index("<h2>")  # at the top
    assert data["verdict"].split(";")[0] in html


@pytest.mark.slow
def test_require_coreml_exits_1_off_macos_and_the_verdict_names_it(digits_factory, tmp_path):
    if sys.platform == "darwin":
        pytest.skip("Core ML runs on macOS, so it can verify here")
    result = _cli(
        "convert",
        digits_factory,
        "--to",
        "onnxruntime,coreml",
        "--require",
        "coreml",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 1, result.stdout
    verdict = result.stdout.strip().splitlines()[-1]
    assert verdict.startswith("FAIL (exit 1): required but not verified: coreml (built-not-run")
    assert _foreign_lines(result.stderr) == []
