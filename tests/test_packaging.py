"""An installed wheel works from any folder, and the base install works without torch.

What these defend against: a verb reading data from outside the package (the repository's
`../shared` folder), a data file the wheel leaves out, the torch-less snapshots of the zoo
drifting from what torch builds, and the base install importing torch for ONNX models.
The real wheel, in fresh venvs, is `scripts/check-wheel.sh` (output in
`bench/results/wheel_check.txt`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "src" / "edgeforge"

# Run Python as the base install sees it: torch cannot be imported.
WITHOUT_TORCH = "import sys; sys.modules['torch'] = None\n"


def without_torch(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH + code],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_no_source_reads_data_outside_the_package():
    outside = re.compile(r"\.\./shared|parents\[\d\]\s*/\s*[\"']shared")
    offenders = [
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if outside.search(path.read_text())
    ]
    assert offenders == []


def test_every_data_file_the_package_reads_is_declared_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["edgeforge"]
    shipped = {path for pattern in globs for path in PACKAGE.glob(pattern) if path.is_file()}
    needed = [
        "estimator/data/edge_benchmarks.csv",
        "estimator/data/edge_benchmarks.md",
        "estimator/data/factors.json",
        "estimator/data/transfer.json",
        "estimator/data/zoo_profiles.json",
        "devices/catalog/device_specs.md",
        "devices/catalog/jetson-orin-nano.toml",
        "decide/data/networks.toml",
        "report/templates/report.html.j2",
        "runtimes/web_page/runner.html",
    ]
    missing = [name for name in needed if PACKAGE / name not in shipped]
    assert missing == []
    snapshot = json.loads((PACKAGE / "estimator/data/zoo_profiles.json").read_text())
    for name in snapshot["profiles"]:
        assert PACKAGE / "estimator/data/zoo_graphs" / f"{name}.onnx" in shipped


def test_the_base_install_reads_onnx_models_and_calibrates_without_torch(tmp_path):
    done = without_torch(
        "import json, onnx\n"
        "from onnx import TensorProto, helper, numpy_helper\n"
        "import numpy as np\n"
        "w = numpy_helper.from_array(np.ones((4, 10), np.float32), 'w')\n"
        "x = helper.make_tensor_value_info('x', TensorProto.FLOAT, ['batch', 4])\n"
        "y = helper.make_tensor_value_info('y', TensorProto.FLOAT, ['batch', 10])\n"
        "n = helper.make_node('MatMul', ['x', 'w'], ['y'])\n"
        "g = helper.make_graph([n], 'g', [x], [y], [w])\n"
        "onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]), 'm.onnx')\n"
        "import edgeforge\n"
        "print(edgeforge.inspect('m.onnx').macs)\n"
        "print(edgeforge.estimate('m.onnx', 'raspberry-pi-5').latency_ms > 0)\n"
        "print(json.dumps(edgeforge.calibrate(validate_only=True).to_dict()['overall']))\n"
        "print([m for m, v in sys.modules.items() if m.split('.')[0] == 'torch' and v])\n",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    macs, fits, overall, torch_modules = done.stdout.strip().splitlines()
    assert macs == "40" and fits == "True" and torch_modules == "[]"
    assert json.loads(overall)["rows"] > 100


def test_a_verb_that_needs_torch_names_the_extra_in_the_base_install(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_TORCH + "from edgeforge.cli import main; sys.exit(main(sys.argv[1:]))",
            "inspect",
            "edgeforge.zoo:resnet18",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    assert "pip install 'edgeforge[torch]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


_SNAPSHOT_CHECK = """
import json
from edgeforge.estimator import _zoo_snapshot, calibration
from edgeforge.estimator.roofline import _graph_roles
from edgeforge.zoo import catalog

snapshot = json.loads(_zoo_snapshot.PROFILES.read_text())
assert snapshot["spellings"] == catalog._SPELLINGS, "spellings"
shipped = _zoo_snapshot.load()
fresh = calibration.zoo_profiles(shipped)  # built in torch (torch is installed here)

def comparable(profile):
    data = profile.to_dict()
    data["seconds"] = 0.0
    data["model"] = {**data["model"], "path": None, "onnx_path": None, "torch_program": None}
    # The export check's float differences (~1e-8) follow the threads' summation order.
    provenance = dict(data["model"].get("provenance") or {})
    provenance.pop("export_check", None)
    data["model"]["provenance"] = provenance
    # The file's size follows the exporter's names and metadata, not what is estimated.
    data["weights"] = {**data["weights"], "file_bytes": None}
    return data

for name, profile in shipped.items():
    assert comparable(profile) == comparable(fresh[name]), name
    roles = _graph_roles(profile)
    assert roles is not None and roles == _graph_roles(fresh[name]), name
from edgeforge._api import published_rows
print(json.dumps(calibration.validate_file(published_rows())["overall"]))
"""


@pytest.mark.slow
def test_zoo_snapshots_equal_what_torch_builds(tmp_path):
    """The torch-less calibration reads the same profiles and graphs as a fresh build, so it
    gives the same validation. When this fails, run scripts/snapshot_zoo_profiles.py. The build
    runs in a fresh interpreter: it is what a user's first build gives, whatever earlier tests
    in this process imported (the ONNX bridge's tests bring onnx2torch in)."""
    done = subprocess.run(
        [sys.executable, "-c", _SNAPSHOT_CHECK],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    with_torch = json.loads(done.stdout.strip().splitlines()[-1])
    done = without_torch(
        "import json, edgeforge\n"
        "print(json.dumps(edgeforge.calibrate(validate_only=True).to_dict()['overall']))",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == with_torch
