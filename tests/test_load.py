"""Model import: every source kind enters ONNX with its signature intact and checked."""

from __future__ import annotations

import textwrap
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import edgeforge


def test_torch_module_keeps_names_dtypes_and_dynamic_axes(digits_model, digits_module):
    assert [t.name for t in digits_model.inputs] == ["image"]
    assert [t.name for t in digits_model.outputs] == ["logits"]
    assert digits_model.inputs[0].dtype == "float32"
    assert digits_model.inputs[0].shape == ("batch", 1, 8, 8)
    assert digits_model.inputs[0].dynamic_dims == {0: "batch"}
    assert digits_model.provenance.exporter == "torch.onnx dynamo"
    assert digits_model.provenance.export_check["logits"] < 1e-4

    # The dynamic axis is real: ONNX Runtime runs a batch of 5 and matches torch.
    batch = torch.randn(5, 1, 8, 8)
    session = ort.InferenceSession(str(digits_model.onnx_path))
    (got,) = session.run(None, {"image": batch.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, digits_module(batch).numpy(), rtol=1e-4, atol=1e-5)


def test_integer_inputs_and_keyword_inputs_survive(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    ids = torch.randint(0, 100, (2, 7))
    model = edgeforge.load(
        BertModel(config).eval(),
        {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        dynamic_axes={"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}},
        workdir=tmp_path,
    )
    assert [(t.name, t.dtype) for t in model.inputs] == [
        ("input_ids", "int64"),
        ("attention_mask", "int64"),
    ]
    assert model.inputs[0].shape == (2, "sequence")
    assert model.torch_parameters is not None


def test_saved_torch_export_program_loads(tmp_path, digits_module):
    program = torch.export.export(digits_module, (torch.randn(2, 1, 8, 8),))
    torch.export.save(program, tmp_path / "digits.pt2")
    model = edgeforge.load(tmp_path / "digits.pt2", workdir=tmp_path / "out")
    assert model.provenance.source_kind == "torch-export"
    assert model.inputs[0].shape == (2, 1, 8, 8)
    assert model.torch_parameters.parameters == sum(p.numel() for p in digits_module.parameters())
    onnx.checker.check_model(str(model.onnx_path))


def test_factory_reference_from_a_file_and_from_a_package(tmp_path, monkeypatch):
    source = textwrap.dedent(
        """
        import torch

        def make():
            return torch.nn.Linear(4, 3), torch.randn(1, 4)

        def make_named():
            return {"model": torch.nn.Linear(4, 3), "example_inputs": torch.randn(1, 4),
                    "input_names": ["features"], "dynamic_axes": {"features": {0: "n"}}}
        """
    )
    (tmp_path / "my_factories.py").write_text(source)
    from_file = edgeforge.load(f"{tmp_path}/my_factories.py:make", workdir=tmp_path / "a")
    assert from_file.provenance.source_kind == "factory"
    assert from_file.inputs[0].shape == (1, 4)

    monkeypatch.syspath_prepend(str(tmp_path))
    named = edgeforge.load("my_factories:make_named", workdir=tmp_path / "b")
    assert named.inputs[0].name == "features"
    assert named.inputs[0].shape == ("n", 4)


def test_dynamo_failure_falls_back_to_torchscript_with_a_warning(tmp_path):
    class DataDependent(torch.nn.Module):
        """Python control flow on a tensor's value: torch.export cannot trace it."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return x * 2
            return x - 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = edgeforge.load(DataDependent(), torch.ones(2, 3), workdir=tmp_path)
    assert model.provenance.exporter == "torch.onnx torchscript"
    assert "data-dependent" in model.provenance.exporter_note
    messages = [str(w.message) for w in caught]
    assert any("falling back to the TorchScript exporter" in m for m in messages)
    assert any("GuardOnDataDependentSymNode" in m for m in messages)


def test_onnx_file_with_external_data_loads(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
    exported = edgeforge.load(module, torch.randn(1, 64), workdir=tmp_path / "src")
    proto = onnx.load(str(exported.onnx_path))
    folder = tmp_path / "external"
    folder.mkdir()
    onnx.save_model(
        proto,
        folder / "model.onnx",
        save_as_external_data=True,
        location="model.data",
        size_threshold=0,
    )
    model = edgeforge.load(folder / "model.onnx")
    assert model.uses_external_data
    assert [t.name for t in model.inputs] == [t.name for t in exported.inputs]


def test_a_model_object_is_returned_as_is(digits_model):
    assert edgeforge.load(digits_model) is digits_model


def test_unknown_source_type_is_refused():
    with pytest.raises(edgeforge.EdgeforgeError, match="cannot load a int"):
        edgeforge.load(42)
