"""The Python API is the CLI: one top-level call per verb, typed results, one error type.

What these defend against: a verb's module import hiding the verb's function
(`edgeforge.convert` the module instead of the function), `dir(edgeforge)` leaking internals,
`import edgeforge` pulling in onnx or torch, a verb returning a bare list or dict, bad input
escaping as something other than `EdgeforgeError`, and the API and `--json` drifting apart.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import edgeforge
from edgeforge import EdgeforgeError
from edgeforge.cli import main

VERBS = (
    "bench",
    "calibrate",
    "cascade",
    "check",
    "convert",
    "decide",
    "estimate",
    "optimize",
    "split",
    "verify",
)

# Two rows of the published measurements that map to the zoo (SqueezeNet 1.1 on a Pi 4).
ROWS = """device,runtime,model,input,precision,batch,latency_ms,fps,source
Raspberry Pi 4B (Cortex-A72 1.8GHz x4),ncnn benchncnn CPU threads=4 powersave=0,squeezenet,227x227x3,fp32,1,46.65,21.44,https://example.org/a#L1
Raspberry Pi 4B (Cortex-A72 1.8GHz x4),ncnn benchncnn CPU threads=4 powersave=0,squeezenet_int8,227x227x3,int8,1,42.59,23.48,https://example.org/a#L2
"""


def fresh_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_dir_shows_only_the_public_names():
    import edgeforge.convert
    import edgeforge.devices

    assert dir(edgeforge) == sorted(edgeforge.__all__)
    assert set(VERBS) <= set(dir(edgeforge))
    assert not [name for name in dir(edgeforge) if name.startswith("_") and name != "__version__"]


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_is_a_function_even_after_its_module_is_imported(verb):
    import edgeforge.bench
    import edgeforge.convert
    import edgeforge.decide
    import edgeforge.optimize.search

    function = getattr(edgeforge, verb)
    assert isinstance(function, types.FunctionType), function
    assert function.__doc__ and f"edgeforge {verb}" in function.__doc__


def test_a_module_imported_first_does_not_hide_its_verb():
    # A fresh interpreter: the modules load before anyone asked for the functions.
    code = (
        "import edgeforge.convert, edgeforge.bench, edgeforge.decide, edgeforge.optimize.search\n"
        "import edgeforge, types\n"
        "from edgeforge.convert import parse_targets\n"
        "assert all(isinstance(getattr(edgeforge, v), types.FunctionType)\n"
        "           for v in ('convert', 'bench', 'decide', 'optimize')), 'hidden'\n"
        "print('ok')"
    )
    done = fresh_python(code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_no_code_imports_a_verb_module_under_an_alias():
    # `import edgeforge.bench as m` binds the package attribute, which is the verb function;
    # the module is reached with `from edgeforge.bench import ...` or importlib.
    root = Path(__file__).parents[1]
    pattern = re.compile(r"^\s*import edgeforge\.(convert|bench|decide|optimize)\s+as\b", re.M)
    offenders = [
        str(path.relative_to(root))
        for folder in ("src", "tests", "bench")
        for path in (root / folder).rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert offenders == []


def test_import_edgeforge_is_light():
    done = fresh_python(
        "import sys, edgeforge\n"
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'torch', 'numpy') if m in sys.modules))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_estimate_is_one_call_with_a_model_and_a_device_id(digits_model):
    one = edgeforge.estimate(digits_model.onnx_path, "jetson-orin-nano")
    assert type(one).__name__ == "Estimate"
    assert one.to_dict()["device"] == "jetson-orin-nano" and one.latency_ms > 0

    several = edgeforge.estimate(str(digits_model.onnx_path), "raspberry-pi-5,jetson-nano")
    assert [e.device for e in several] == ["raspberry-pi-5", "jetson-nano"]
    assert len(several) == 2 and several[0].to_dict() == several.to_dict()["estimates"][0]

    pinned = edgeforge.estimate(digits_model, ["raspberry-pi-5"], shapes={"image": (4, 1, 8, 8)})
    assert pinned[0].input_shapes == {"image": [4, 1, 8, 8]}


def test_estimate_json_is_the_api_result_with_its_schema(digits_model, capsys):
    assert (
        main(["estimate", str(digits_model.onnx_path), "--device", "raspberry-pi-5", "--json"]) == 0
    )
    printed = json.loads(capsys.readouterr().out)
    api = edgeforge.estimate(digits_model.onnx_path, ["raspberry-pi-5"]).to_dict()
    assert printed.pop("schema") == "edgeforge.estimate/1"
    for row in (*printed["estimates"], *api["estimates"]):
        row.pop("seconds", None)  # timings of the two calls, not results
    assert printed == json.loads(json.dumps(api, default=str))


def test_calibrate_validate_only_returns_a_typed_result(tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text(ROWS)
    result = edgeforge.calibrate(rows, validate_only=True)
    assert result.mode == "validate" and result.factors is None
    data = result.to_dict()
    assert data["rows_file"] == str(rows) and data["overall"]["rows"] == 2
    assert {r["architecture"] for r in data["rows"]} == {"squeezenet1_1"}


def test_calibrate_reads_the_published_rows_shipped_in_the_package():
    from edgeforge._api import published_rows

    path = published_rows()
    assert path.is_file() and path.parent.name == "data"
    assert path.read_text().startswith("device,runtime,model,input,precision,batch,latency_ms")
    assert (path.parent / "edge_benchmarks.md").is_file()  # the rows' source notes travel too


@pytest.mark.slow
def test_verbs_return_typed_results_with_to_dict(digits_model, tmp_path):
    onnx_path = digits_model.onnx_path
    checked = edgeforge.check(onnx_path, "onnxruntime")
    converted = edgeforge.convert(onnx_path, ["onnxruntime"], tmp_path / "out")
    assert converted.all_verified
    verified = edgeforge.verify(onnx_path, tmp_path / "out" / "onnxruntime")
    measured = edgeforge.bench(onnx_path, runs=3, warmup=1, repeats=1, batches=1)
    decided = edgeforge.decide(onnx_path, "raspberry-pi-5", network="4g", cloud="g4dn-xlarge")
    cut = edgeforge.split(onnx_path, "raspberry-pi-5", "4g", out=tmp_path / "split")
    for result in (checked, converted, verified, measured, decided, cut):
        data = result.to_dict()
        assert isinstance(data, dict) and json.dumps(data, default=str)
    assert verified.passed and cut.passed


def test_bad_input_raises_edgeforge_error_from_every_verb(digits_model, tmp_path):
    model = str(digits_model.onnx_path)
    missing = str(tmp_path / "missing.onnx")
    calls = {
        "check": lambda: edgeforge.check(model, "no-such-runtime"),
        "convert": lambda: edgeforge.convert(model, "no-such-runtime", tmp_path / "c"),
        "verify": lambda: edgeforge.verify(missing, tmp_path),
        "bench": lambda: edgeforge.bench(missing),
        "estimate": lambda: edgeforge.estimate(model, "pi9"),
        "optimize": lambda: edgeforge.optimize(model, "pi9", tmp_path),
        "decide": lambda: edgeforge.decide(model, "pi9"),
        "split": lambda: edgeforge.split(model, "raspberry-pi-5", "9g"),
        "cascade": lambda: edgeforge.cascade(missing, missing, tmp_path, target_accuracy=0.9),
        "calibrate": lambda: edgeforge.calibrate(tmp_path / "missing.csv"),
    }
    assert set(calls) == set(VERBS)
    for verb, call in calls.items():
        with pytest.raises(EdgeforgeError) as caught:
            call()
        assert "\n" not in str(caught.value), verb


def test_calibrate_refuses_options_that_do_not_go_together():
    with pytest.raises(EdgeforgeError, match="--here"):
        edgeforge.calibrate(here=True, validate_only=True)
    with pytest.raises(EdgeforgeError, match="--here only"):
        edgeforge.calibrate(quick=True)


def test_a_missing_extra_is_named(monkeypatch, capsys):
    bench_module = importlib.import_module("edgeforge.bench")

    def needs_torch(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(bench_module, "bench", needs_torch)
    with pytest.raises(EdgeforgeError, match=r"pip install 'edgeforge\[torch\]'"):
        edgeforge.bench("model.pt2")
    assert main(["bench", "model.pt2", "--json"]) == 2
    out, err = capsys.readouterr()
    assert "edgeforge[torch]" in err and len(err.strip().splitlines()) == 1
    assert json.loads(out)["error"]["kind"] == "bad-input"


def test_a_missing_module_no_extra_provides_is_a_bug_not_bad_input(monkeypatch, capsys):
    bench_module = importlib.import_module("edgeforge.bench")

    def broken(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'nonexistent'", name="nonexistent")

    monkeypatch.setattr(bench_module, "bench", broken)
    with pytest.raises(ModuleNotFoundError):
        edgeforge.bench("model.onnx")
    assert main(["bench", "model.onnx"]) == 1
    assert "internal error" in capsys.readouterr().err


def test_the_version_is_one_figure(capsys):
    from importlib.metadata import PackageNotFoundError, version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"edgeforge {edgeforge.__version__}"
    with contextlib.suppress(PackageNotFoundError):  # a bare checkout has no metadata
        assert version("edgeforge") == edgeforge.__version__  # pyproject reads it from here
    assert (
        'attr = "edgeforge.__version__"'
        in (Path(__file__).parents[1] / "pyproject.toml").read_text()
    )


def test_a_torch_factory_without_torch_names_the_extra(tmp_path, monkeypatch):
    factory = tmp_path / "models.py"
    factory.write_text("import torch\n\ndef build():\n    return torch.nn.Linear(2, 2), ()\n")
    monkeypatch.setitem(sys.modules, "torch", None)  # as in the base install: no torch
    monkeypatch.setattr(sys, "path", [*sys.path])
    with pytest.raises(EdgeforgeError, match=r"pip install 'edgeforge\[torch\]'"):
        edgeforge.inspect(f"{factory}:build")
