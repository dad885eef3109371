"""`transformers` models, whose forward returns a `ModelOutput`, on every runtime.

The models are built from small configs (hidden size 32, 2 layers, random weights; nothing is
downloaded). A `ModelOutput` class is registered with torch's pytree only in a process that
imported it: the runtimes' child processes have not, so a saved program that kept it could
not be loaded there. These tests defend against that and check that the outputs are named
after the fields.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tiny_transformers import SEQUENCE as _SEQUENCE
from tiny_transformers import bert_classifier as _bert_classifier
from tiny_transformers import padded_mask as _padded_mask
from tiny_transformers import vit_classifier as _vit_classifier
from tiny_transformers import whisper_encoder as _whisper_encoder

import edgeforge
from edgeforge._torch_export import load_program
from edgeforge.convert import convert
from edgeforge.errors import EdgeforgeError
from edgeforge.runtimes import get_runtime

transformers = pytest.importorskip("transformers")

TARGETS = "onnxruntime,openvino,litert,executorch,web"


@pytest.fixture(scope="module")
def bert_classifier(tmp_path_factory) -> edgeforge.Model:
    module, inputs = _bert_classifier()
    return edgeforge.load(module, inputs, workdir=tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def bert_samples(tmp_path_factory) -> Path:
    """Token ids with real attention masks (1s, then a padded tail of 0s), as `--data`.

    (Without `--data`, verify synthesises such masks itself: tests/test_synthesis.py.)"""
    folder = tmp_path_factory.mktemp("bert-data")
    rng = np.random.default_rng(0)
    for i, length in enumerate((16, 12, 9, 4)):
        ids = rng.integers(1, 100, (1, _SEQUENCE))
        np.savez(folder / f"{i}.npz", input_ids=ids, attention_mask=_padded_mask(length).numpy())
    return folder


# -- names and the saved program -------------------------------------------------------------


def test_model_output_fields_name_the_outputs(bert_classifier):
    assert [t.name for t in bert_classifier.outputs] == ["logits"]
    assert [t.name for t in bert_classifier.inputs] == ["input_ids", "attention_mask"]
    graph = onnx.load(str(bert_classifier.onnx_path), load_external_data=False).graph
    assert [o.name for o in graph.output] == ["logits"]
    # The weights keep torch's names: flattening adds no wrapper prefix.
    assert "classifier.weight" in {t.name for t in graph.initializer}


def test_saved_program_loads_where_transformers_was_never_imported(bert_classifier):
    # The runtimes' child processes are such a process.
    script = textwrap.dedent(
        f"""
        import sys, torch
        program = torch.export.load({str(bert_classifier.torch_program)!r})
        assert "transformers" not in sys.modules
        print(program.call_spec.out_spec.type.__name__, len(program.graph_signature.user_outputs))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["tuple", "1"]


def test_inspect_names_the_base_models_fields(tmp_path):
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    ids = torch.randint(1, 100, (1, _SEQUENCE))
    profile = edgeforge.inspect(
        transformers.BertModel(config).eval(),
        {"input_ids": ids, "attention_mask": _padded_mask(10)},
        workdir=tmp_path,
    )
    assert [o["name"] for o in profile.outputs] == ["last_hidden_state", "pooler_output"]


def test_hidden_states_become_numbered_outputs(tmp_path):
    module, inputs = _vit_classifier()
    module.config.output_hidden_states = True
    model = edgeforge.load(module, inputs, workdir=tmp_path)
    # Two layers: the embeddings' output, then each layer's.
    assert [t.name for t in model.outputs] == [
        "logits",
        "hidden_states_0",
        "hidden_states_1",
        "hidden_states_2",
    ]
    assert set(model.provenance.export_check) == {t.name for t in model.outputs}


@pytest.mark.slow
def test_user_saved_program_with_a_model_output_is_flattened(tmp_path, bert_classifier):
    module, inputs = _bert_classifier()
    program = torch.export.export(module, (), kwargs=inputs)
    assert program.call_spec.out_spec.type.__name__ == "SequenceClassifierOutput"
    torch.export.save(program, tmp_path / "bert.pt2")
    model = edgeforge.load(tmp_path / "bert.pt2", workdir=tmp_path / "out")
    assert [t.name for t in model.outputs] == ["logits"]
    assert [t.name for t in model.inputs] == ["input_ids", "attention_mask"]
    resaved = torch.export.load(str(model.torch_program))
    assert resaved.call_spec.out_spec.type is tuple


@pytest.mark.slow
def test_model_output_program_loads_in_a_fresh_process_by_importing_its_class(tmp_path):
    # A .pt2 the user saved from a transformers model names the ModelOutput class; loading it
    # imports that class's transformers module instead of failing.
    module, inputs = _bert_classifier()
    torch.export.save(torch.export.export(module, (), kwargs=inputs), tmp_path / "bert.pt2")
    script = textwrap.dedent(
        f"""
        from edgeforge._torch_export import load_program
        program = load_program({str(tmp_path / "bert.pt2")!r}, "hint")
        print(program.call_spec.out_spec.type.__name__)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "SequenceClassifierOutput"
    assert "warnings above" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_unloadable_program_error_names_the_real_cause(tmp_path):
    # Programs whose output class only the saving process knew: torch's own message says
    # "check the warnings above"; ours says what the warning said. A class named after a
    # transformers module that is not an output module is not imported (files never pick
    # the code we run).
    script = textwrap.dedent(
        f"""
        import torch, torch.utils._pytree as pytree

        class Net(torch.nn.Module):
            def forward(self, x):
                return Pair(x + 1, x * 2)

        for name in ("somewhere_else.Pair", "transformers.debug_utils.Pair"):
            class Pair:
                def __init__(self, a, b):
                    self.a, self.b = a, b

            pytree.register_pytree_node(
                Pair,
                lambda p: ([p.a, p.b], None),
                lambda children, _: Pair(*children),
                serialized_type_name=name,
            )
            program = torch.export.export(Net(), (torch.randn(2),))
            torch.export.save(program, {str(tmp_path)!r} + "/" + name + ".pt2")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # The file names a real module: loading it must not import it (another test may have).
    sys.modules.pop("transformers.debug_utils", None)
    for name in ("somewhere_else.Pair", "transformers.debug_utils.Pair"):
        with pytest.raises(EdgeforgeError) as caught:
            load_program(tmp_path / f"{name}.pt2", "save it again")
        message = str(caught.value)
        assert f"{name} in pytree is not registered" in message
        assert "warnings above" not in message and message.endswith("save it again")
    assert "transformers.debug_utils" not in sys.modules


def test_truncated_program_error_says_so(tmp_path, bert_classifier):
    data = bert_classifier.torch_program.read_bytes()
    (tmp_path / "cut.pt2").write_bytes(data[: len(data) // 3])
    with pytest.raises(EdgeforgeError, match=r"cannot load as a torch\.export program .*zip"):
        load_program(tmp_path / "cut.pt2", "save it again")


# -- plain modules keep working ----------------------------------------------------------------


class _Pair(torch.nn.Module):
    def __init__(self, returns: str) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.returns = returns

    def forward(self, x: torch.Tensor):
        y = self.linear(x)
        if self.returns == "tuple":
            return y, y.relu()
        if self.returns == "dict":
            return {"scores": y, "unused": None, "probs": y.softmax(-1)}
        if self.returns == "named":
            return _Detections(y, y.sigmoid())
        return y, (y.relu(), {"double": y * 2})


_Detections = collections.namedtuple("_Detections", "boxes scores")


@pytest.mark.parametrize(
    ("returns", "names"),
    [
        ("tuple", ["linear", "relu"]),  # the exporter's own names, as before
        ("dict", ["scores", "probs"]),  # None fields are not outputs
        ("named", ["boxes", "scores"]),
        ("nested", ["output_0", "output_1_0", "output_1_1_double"]),
    ],
)
def test_plain_module_outputs(returns, names, tmp_path):
    module = _Pair(returns).eval()
    model = edgeforge.load(module, torch.randn(2, 4), workdir=tmp_path)
    assert [t.name for t in model.outputs] == names
    assert [t.name for t in model.inputs] == ["x"]
    assert "forward" not in vars(module) and type(module) is _Pair  # left as it was
    program = torch.export.load(str(model.torch_program))
    assert program.call_spec.out_spec.type is tuple
    assert list(program.state_dict) == ["linear.weight", "linear.bias"]


@pytest.mark.slow
@pytest.mark.parametrize("returns", ["tuple", "nested"])
def test_plain_module_outputs_verify_on_the_torch_runtimes(returns, tmp_path):
    module = _Pair(returns).eval()
    result = convert(
        module, "onnxruntime,litert,executorch", tmp_path, example_inputs=torch.randn(2, 4)
    )
    assert {t.runtime: t.status for t in result.targets} == dict.fromkeys(
        ("onnxruntime", "litert", "executorch"), "verified"
    ), [t.detail for t in result.targets]
    outputs = len(result.targets[1].verification["outputs"])
    assert outputs == (2 if returns == "tuple" else 3)


def test_user_output_names_win_over_field_names(tmp_path):
    module = _Pair("dict").eval()
    model = edgeforge.load(module, torch.randn(2, 4), output_names=["a", "b"], workdir=tmp_path)
    assert [t.name for t in model.outputs] == ["a", "b"]


# -- every runtime -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def every_runtime_runs_here() -> None:
    blocker = get_runtime("web").execution_blocker()
    if blocker:
        pytest.skip(f"web runtime cannot run here: {blocker}")


def _assert_verified(result, expected_output: str) -> dict[str, str]:
    details = {t.runtime: f"{t.status}: {t.detail}" for t in result.targets}
    assert [t.runtime for t in result.targets] == TARGETS.split(",")
    for target in result.targets:
        assert target.status == "verified", details
        (output,) = target.verification["outputs"]
        assert output["name"] == expected_output
    return details


@pytest.mark.slow
@pytest.mark.usefixtures("every_runtime_runs_here")
def test_bert_classifier_verifies_on_every_runtime(tmp_path, bert_samples):
    module, inputs = _bert_classifier()
    result = convert(module, TARGETS, tmp_path, example_inputs=inputs, data=bert_samples)
    _assert_verified(result, "logits")
    assert all(t.verification["samples"] == 4 for t in result.targets)


@pytest.mark.slow
@pytest.mark.usefixtures("every_runtime_runs_here")
def test_vit_classifier_verifies_on_every_runtime(tmp_path):
    module, inputs = _vit_classifier()
    _assert_verified(convert(module, TARGETS, tmp_path, example_inputs=inputs), "logits")


@pytest.mark.slow
@pytest.mark.usefixtures("every_runtime_runs_here")
def test_whisper_encoder_verifies_on_every_runtime(tmp_path):
    module, inputs = _whisper_encoder()
    _assert_verified(convert(module, TARGETS, tmp_path, example_inputs=inputs), "last_hidden_state")


@pytest.mark.slow
def test_bert_classifier_builds_for_core_ml(tmp_path, bert_samples):
    # coremltools has no converter for the `new_ones` BERT's mask uses; the core ATen
    # decompositions replace it. Core ML runs only on macOS: elsewhere the package is built and
    # its signature validated.
    pytest.importorskip("coremltools")
    module, inputs = _bert_classifier()
    result = convert(module, "coreml", tmp_path, example_inputs=inputs, data=bert_samples)
    (target,) = result.targets
    assert target.status in ("verified", "built-not-run"), target.detail
    if target.status == "built-not-run":
        assert target.detail.endswith("signature validated"), target.detail
