"""The CLI as a user runs it: a subprocess, its exit code, stdout, stderr and files."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeforge.cli import build_parser, main


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeforge.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_inspect_prints_tables_and_writes_a_report(digits_model, tmp_path):
    report = tmp_path / "out" / "inspect.html"
    result = run("inspect", str(digits_model.onnx_path), "--report", str(report))
    assert result.returncode == 0, result.stderr
    assert "MACs" in result.stdout and "work by op type" in result.stdout
    assert "Conv" in result.stdout
    html = report.read_text()
    assert "<svg" in html and "Op census" in html
    data = json.loads(report.with_suffix(".json").read_text())
    assert data["inspect"]["macs"] > 0


def test_inspect_shape_override_reaches_the_counts(digits_model):
    one = json.loads(run("inspect", str(digits_model.onnx_path), "--json").stdout)
    eight = run("inspect", str(digits_model.onnx_path), "--json", "--shape", "image=8x1x8x8")
    assert eight.returncode == 0, eight.stderr
    assert json.loads(eight.stdout)["macs"] == 8 * one["macs"]


def test_devices_lists_the_catalogue_with_sources():
    result = run("devices", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["schema"] == "edgeforge.devices/1"  # an object, never a bare list
    devices = {d["id"]: d for d in printed["devices"]}
    for required in (
        "jetson-nano",
        "jetson-orin-nano",
        "coral-dev-board",
        "raspberry-pi-4",
        "raspberry-pi-5",
        "iphone-15-pro",
        "pixel-8",
        "laptop-cpu",
        "browser-wasm",
        "browser-webgpu",
        "this-machine",
    ):
        assert required in devices
    table = run("devices", "jetson-nano")
    assert "Jetson Nano" in table.stdout


def test_devices_unknown_name_lists_the_valid_ones():
    result = run("devices", "jetson-nanoo")
    assert result.returncode == 2
    assert "jetson-nano" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_demo_builds_its_model_and_says_where_the_report_is(tmp_path):
    result = run("demo", "--out", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    report = tmp_path / "demo" / "report.html"
    assert f"Report: {report}" in result.stdout
    data = json.loads(report.with_suffix(".json").read_text())
    assert set(data) >= {"demo", "inspect", "devices", "convert", "bench", "estimate", "decide"}
    assert len(data["estimate"]) == 3
    assert data["bench"]["latency_ms"]["p50"] > 0
    assert data["inspect"]["macs"] > 0
    facts = data["demo"]["facts"]
    assert float(facts["test accuracy (torch)"].split("%")[0]) > 90
    # shipped: released for two device classes, the Raspberry Pi's variant fetched back verified
    assert facts["release"].startswith("RELEASED") and "raspberry-pi-4" in facts["fetched"]
    fetched = {p.name for p in (tmp_path / "demo" / "fleet" / "device" / "digits").iterdir()}
    assert fetched >= {"variant.json", "model.onnx", "canary.npz"}


def test_estimate_on_several_devices(digits_model):
    result = run(
        "estimate", str(digits_model.onnx_path), "--device", "raspberry-pi-5,jetson-nano", "--json"
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["schema"] == "edgeforge.estimate/1"
    estimates = printed["estimates"]
    assert [e["device"] for e in estimates] == ["raspberry-pi-5", "jetson-nano"]
    for e in estimates:
        assert 0 < e["latency_low_ms"] <= e["latency_ms"] <= e["latency_high_ms"]
        assert e["ram"]["fits"] is True
        assert e["input_shapes"] == {"image": [1, 1, 8, 8]}
        assert [(d["name"], d["value"]) for d in e["assumed_dims"]] == [("batch", 1)]


def test_estimate_says_which_shapes_it_assumed(digits_model):
    args = ("estimate", str(digits_model.onnx_path), "--device", "raspberry-pi-5")
    assumed = run(*args)
    assert assumed.returncode == 0, assumed.stderr
    assert "at input shapes image 1x1x8x8 (dynamic axes assumed: batch=1" in assumed.stdout
    pinned = run(*args, "--shape", "image=4x1x8x8")
    assert "at input shapes image 4x1x8x8\n" in pinned.stdout.replace("\r", "") + "\n"
    assert "assumed" not in pinned.stdout


def test_estimate_unknown_device_lists_the_valid_ones(digits_model):
    result = run("estimate", str(digits_model.onnx_path), "--device", "pi9")
    assert result.returncode == 2
    assert "raspberry-pi-5" in result.stderr and "Traceback" not in result.stderr


# -- one vocabulary -------------------------------------------------------------------------------


def verb_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


# Each meaning has one flag; the old spellings are hidden aliases of it.
ALIASES = {"--to": "--runtime", "--runtimes": "--runtime", "--precisions": "--precision"}
ALIASES["--cloud-instance"] = "--cloud"


def test_one_flag_per_meaning_across_verbs():
    parsers = verb_parsers()
    for verb, parser in parsers.items():
        for action in parser._actions:
            for alias in set(action.option_strings) & set(ALIASES):
                assert ALIASES[alias] in action.option_strings, (verb, action.option_strings)
        shown = parser.format_help()
        for alias in ALIASES:
            assert f"{alias} " not in shown and f"{alias}," not in shown, (verb, alias)
    # --runtime names the runtime(s) everywhere a verb takes one.
    for verb in ("check", "convert", "bench", "estimate", "decide", "optimize"):
        assert "--runtime" in options_of(parsers[verb]), verb
    for verb in ("decide", "split", "cascade"):
        assert "--network" in options_of(parsers[verb]), verb
    for verb in ("decide", "split"):
        assert "--cloud" in options_of(parsers[verb]), verb
    for verb in ("inspect", "bench", "estimate", "decide", "split"):
        assert "--shape" in options_of(parsers[verb]), verb


def sub_verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


# Verbs that write no report: a demo, an installer, daemons (the server, the device agent's
# loop), and the registry's and rollouts' small answers, which are --json only.
NO_HTML = {"demo", "setup", "serve", "agent", "fleet", "registry", "rollout"}


def test_every_verb_that_reports_takes_json_and_report():
    for verb, parser in verb_parsers().items():
        for name, sub in (sub_verbs(parser) or {verb: parser}).items():
            options = options_of(sub)
            if verb not in ("demo", "serve"):
                assert "--json" in options, name
            if verb not in NO_HTML:
                assert "--report" in options, name


def test_old_spellings_still_parse():
    parser = build_parser()
    assert parser.parse_args(["convert", "m.onnx", "--to", "onnxruntime"]).runtime == "onnxruntime"
    args = parser.parse_args(["optimize", "m", "--device", "d", "--data", "x", "--runtimes", "a"])
    assert args.runtime == "a"
    args = parser.parse_args(
        ["optimize", "m", "--device", "d", "--data", "x", "--precisions", "fp16"]
    )
    assert args.precision == "fp16"
    args = parser.parse_args(["decide", "m", "--device", "d", "--cloud-instance", "g5-xlarge"])
    assert args.cloud == "g5-xlarge"
    assert (
        parser.parse_args(["decide", "m", "--device", "d", "--max-latency", "0.1s"]).max_latency
        == 100
    )


@pytest.mark.parametrize("text, ms", [("100", 100), ("10ms", 10), ("0.5s", 500), ("500us", 0.5)])
def test_max_latency_reads_one_time_format_in_every_verb(text, ms):
    parser = build_parser()
    decide = parser.parse_args(["decide", "m", "--device", "d", "--max-latency", text])
    optimize = parser.parse_args(
        ["optimize", "m", "--device", "d", "--data", "x", "--max-latency", text]
    )
    assert decide.max_latency == optimize.max_latency == pytest.approx(ms)


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--out OUT output folder (default: edgeforge-out)" in shown
    assert "(default: fp32)" in shown and "(default: 600)" in shown
    assert "--to" not in shown


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("edgeforge 0.")


def test_a_usage_error_under_json_is_a_json_object_too(capsys):
    assert main(["convert", "model.onnx", "--json"]) == 2
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert printed["schema"] == "edgeforge.error/1"
    assert printed["error"]["kind"] == "usage" and printed["error"]["verb"] == "convert"
    assert "--runtime" in printed["error"]["message"] and "--to" not in printed["error"]["message"]
    assert "required: --runtime" in err


def test_a_bad_input_error_under_json_is_a_json_object_too(capsys):
    assert main(["devices", "pi9", "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["message"] in err
    assert err.startswith("edgeforge: error: unknown device 'pi9'")
