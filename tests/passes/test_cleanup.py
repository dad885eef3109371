"""ONNX graph clean-up keeps the outputs and never grows the graph."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgeforge.errors import EdgeforgeError
from edgeforge.passes import get_pass, pass_names
from edgeforge.passes.cleanup import cleanup


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def test_portable_cleanup_keeps_outputs_and_does_not_add_nodes(digits_model, tmp_path):
    result = cleanup(digits_model, workdir=tmp_path)
    made = result.model
    assert made.onnx_path.parent == tmp_path
    assert made.inputs == digits_model.inputs and made.outputs == digits_model.outputs
    assert result.after.nodes <= result.before.nodes
    assert all(n.domain in ("", "ai.onnx") for n in made.proto().graph.node)
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(made.onnx_path, x), _run(digits_model.onnx_path, x), atol=1e-4)
    assert result.metrics["max_abs_error[logits]"] < 1e-3


def test_extended_level_names_its_onnxruntime_only_ops(digits_model, tmp_path):
    result = cleanup(digits_model, slim=False, onnxruntime_level="extended", workdir=tmp_path)
    assert result.after.nodes <= result.before.nodes
    contrib = {n.op_type for n in result.model.proto().graph.node if n.domain == "com.microsoft"}
    if contrib:  # Conv+ReLU becomes FusedConv in ONNX Runtime 1.32
        assert any("ONNX Runtime-only ops" in note for note in result.notes)


def test_a_torch_module_is_refused_with_how_to_load_it():
    with pytest.raises(EdgeforgeError, match=r"edgeforge.load"):
        cleanup(torch.nn.Linear(2, 2))


def test_an_unknown_level_is_refused(digits_model):
    with pytest.raises(EdgeforgeError, match="choose none, basic"):
        cleanup(digits_model, onnxruntime_level="all")


def test_the_registry_names_every_pass_and_imports_none_of_them():
    assert pass_names() == ["prune", "distill", "cleanup"]
    assert get_pass("prune", ratio=0.3).ratio == 0.3
    with pytest.raises(EdgeforgeError, match="choose from prune, distill, cleanup"):
        get_pass("quantize")
    code = "import sys, edgeforge.passes; print('torch' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
