"""TensorRT: says plainly where it cannot run; builds and runs engines where it can.

On a machine without TensorRT (like the one CI runs on) the runtime must report itself not
installed, refuse to build in one line and still answer `check`; the engine tests run where
the tensorrt package and a CUDA GPU are both present.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from edgeforge.errors import EdgeforgeError
from edgeforge.recipe import Recipe
from edgeforge.runtimes import RuntimeUnavailable, get_runtime
from edgeforge.runtimes.base import Artifact

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = torch.cuda.is_available()
no_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
needs_gpu = pytest.mark.skipif(
    not (HAS_TENSORRT and HAS_CUDA), reason="TensorRT engines need the tensorrt package and a GPU"
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFORGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tensorrt():
    return get_runtime("tensorrt")


# -- where TensorRT is missing ------------------------------------------------------------------


@no_tensorrt
def test_availability_says_not_installed_and_how_to_get_it(tensorrt):
    available = tensorrt.availability()
    assert not available.installed and not available.can_execute
    assert available.reason == "tensorrt is not installed (pip install 'edgeforge[tensorrt]')"


@no_tensorrt
def test_build_is_refused_in_one_line_and_leaves_nothing(tensorrt, digits_model, tmp_path):
    with pytest.raises(RuntimeUnavailable) as raised:
        tensorrt.build(digits_model, Recipe("fp32"), tmp_path / "engine")
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith("runtime tensorrt: tensorrt is not installed")
    assert list(tmp_path.iterdir()) == []


@no_tensorrt
def test_check_answers_with_one_finding_instead_of_raising(tensorrt, digits_model):
    (finding,) = tensorrt.check(digits_model)
    assert finding.runtime == "tensorrt" and finding.severity == "info"
    assert "not checked" in finding.message and "not installed" in finding.message
    assert "GPU" in finding.workaround


@no_tensorrt
def test_open_refuses_an_engine_it_cannot_run(tensorrt, digits_model, tmp_path):
    # An artifact folder as another machine would have written it.
    folder = tmp_path / "engine"
    folder.mkdir()
    (folder / "model.engine").write_bytes(b"not for this machine")
    manifest = {
        "runtime": "tensorrt",
        "format": "tensorrt-engine",
        "file": "model.engine",
        "source": "digits",
        "source_sha256": "0" * 64,
        "recipe": Recipe().to_dict(),
        "inputs": [t.to_dict() for t in digits_model.inputs],
        "outputs": [t.to_dict() for t in digits_model.outputs],
        "tools": {"tensorrt": "10.0"},
        "created": "2026-01-01T00:00:00+00:00",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeUnavailable, match="cannot run here: tensorrt is not installed"):
        tensorrt.open(Artifact.load(folder))


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU")
def test_execution_blocker_names_the_missing_gpu(tensorrt):
    assert tensorrt.execution_blocker().startswith("no CUDA GPU")


# -- where TensorRT and a GPU are present -------------------------------------------------------


def _onnxruntime_reference(model, tmp_path):
    onnxruntime = get_runtime("onnxruntime")
    return onnxruntime.open(onnxruntime.build(model, Recipe(), tmp_path / "ort"))


@needs_gpu
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-3), ("fp16", 2e-2)])
def test_engine_matches_onnxruntime(tensorrt, digits_model, tmp_path, precision, tolerance):
    artifact = tensorrt.build(digits_model, Recipe(precision), tmp_path / precision)
    assert (artifact.folder / "model.engine").stat().st_size > 0
    assert artifact.manifest.tools["tensorrt"] != "not installed"
    assert any("optimization profile" in note for note in artifact.manifest.notes)
    reference = _onnxruntime_reference(digits_model, tmp_path)
    feeds = {"image": np.random.default_rng(0).standard_normal((4, 1, 8, 8), np.float32)}
    with tensorrt.open(artifact) as session:
        got = session.run(feeds)
    np.testing.assert_allclose(
        got["logits"], reference.run(feeds)["logits"], rtol=tolerance, atol=tolerance
    )


@needs_gpu
def test_feed_outside_the_optimization_profile_is_refused(tensorrt, digits_model, tmp_path):
    recipe = Recipe("fp32", {"tensorrt_max_dim": 2})
    artifact = tensorrt.build(digits_model, recipe, tmp_path / "small")
    with (
        tensorrt.open(artifact) as session,
        pytest.raises(EdgeforgeError, match="outside the engine's optimization profile"),
    ):
        session.run({"image": np.zeros((3, 1, 8, 8), np.float32)})


@needs_gpu
def test_check_finds_nothing_unsupported_in_a_plain_cnn(tensorrt, digits_model):
    findings = tensorrt.check(digits_model)
    assert not [f for f in findings if f.severity == "unsupported"]
