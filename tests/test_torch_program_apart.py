"""The torch program is obtained on its own path, whichever exporter wrote the ONNX file
(issue 18, class 2): a model the dynamo ONNX exporter cannot translate (T5, Swin, BEiT) falls
back to the TorchScript exporter, and used to reach no torch runtime (LiteRT, ExecuTorch,
Core ML) although its torch module was right there."""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_transformers import swin_classifier, t5_encoder

import edgeforge
from edgeforge.convert import convert
from edgeforge.recipe import Recipe
from edgeforge.runtimes import get_runtime

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def t5(tmp_path_factory) -> edgeforge.Model:
    module, inputs = t5_encoder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's warning: asserted through provenance
        return edgeforge.load(module, inputs, workdir=tmp_path_factory.mktemp("t5"))


def test_torchscript_fallback_still_gives_a_torch_program(t5):
    assert t5.provenance.exporter == "torch.onnx torchscript"
    assert "the torch program comes from torch.export" in t5.provenance.exporter_note
    assert t5.torch_program is not None and t5.torch_program.is_file()
    program = torch.export.load(str(t5.torch_program))
    assert program.call_spec.out_spec.type is tuple  # flat outputs, as the dynamo path saves
    assert len(program.graph_signature.user_inputs) == len(t5.inputs) == 2


def test_a_fresh_export_leaves_no_stale_program(t5, tmp_path):
    # A module torch.export cannot trace gets no program, even where an earlier one lay.
    class Untraceable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
                return x * 2
            return x - 1

    (tmp_path / "model.pt2").write_bytes(t5.torch_program.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = edgeforge.load(Untraceable(), torch.ones(2, 3), workdir=tmp_path)
    assert model.provenance.exporter == "torch.onnx torchscript"
    assert "torch.export cannot trace the module either" in model.provenance.exporter_note
    assert model.torch_program is None and not (tmp_path / "model.pt2").exists()
    # The torch runtimes then say why, not "load the torch module" (it was loaded).
    with pytest.raises(edgeforge.EdgeforgeError, match=r"torch\.export cannot trace the module"):
        get_runtime("executorch").build(model, Recipe(), tmp_path / "executorch")


@pytest.mark.slow
def test_program_is_traced_before_the_torchscript_exporter_touches_the_module(tmp_path):
    # After torch.onnx's TorchScript exporter has traced a two-stage Swin, torch.export fails
    # on it (a data-dependent guard): the program must be traced first.
    module, inputs = swin_classifier()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = edgeforge.load(module, inputs, workdir=tmp_path)
    assert model.provenance.exporter == "torch.onnx torchscript"
    assert model.torch_program is not None, model.provenance.exporter_note


@pytest.mark.slow
def test_t5_encoder_verifies_on_executorch_without_data(tmp_path):
    module, inputs = t5_encoder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = convert(module, "executorch", tmp_path, example_inputs=inputs)
    (target,) = result.targets
    assert target.status == "verified", target.detail
