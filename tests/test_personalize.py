"""Personalisation: the package builder, the device side's training, and the guard.

A tiny MLP on a 3-class task stands in for a model; a "user" whose features are offset (a
miscalibrated sensor) is what the base model gets wrong and a personal head (with the input
adapter the package carries: `--reference`) can fix. The package is built once, through the
CLI, and every slow test reads it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgeforge
from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.personal import (
    PACKAGE_FILE,
    PersonalizationPackage,
    PersonalModel,
    head_backward,
    head_forward,
)
from edgeforge.personalize._split import split_module

# Shared by the tests and the factory file the CLI imports (written out as source).
TASK = textwrap.dedent(
    """
    import numpy as np
    import torch
    from torch import nn

    CENTRES = np.random.default_rng(0).normal(0, 2, (3, 8)).astype(np.float32)

    def task(count, seed, offset=0.0):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 3, count)
        x = CENTRES[y] + rng.normal(0, 1.0, (count, 8)).astype(np.float32) + offset
        return x.astype(np.float32), y.astype(np.int64)

    def factory():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                              nn.Linear(16, 3))
        x, y = task(600, 1)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(150):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
            optimizer.step()
        return model.eval(), (torch.from_numpy(x[:1]),), {"input_names": ["features"]}
    """
)
_names: dict = {}
exec(TASK, _names)  # our own source, shared with the factory file
task, factory = _names["task"], _names["factory"]
# The user's sensor reads every feature this much off: the base model stumbles.
OFFSET = np.array([2.5, -2.5, 2.0, -2.0, 2.5, -2.5, 2.0, -2.0], np.float32)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


# -- fast: the split and the numpy head ------------------------------------------------------


def test_default_head_is_the_last_layer_with_weights():
    model, inputs, _ = factory()
    split = split_module(model, inputs)
    assert [layer["name"] for layer in split.layers] == ["4"]
    assert split.embedding_size == 16 and split.classes == 3
    with torch.no_grad():
        logits, embedding = split.backbone(*inputs)
    assert torch.allclose(logits, model(*inputs))
    assert embedding.shape == (1, 16)


def test_named_layers_make_the_head_from_the_first_to_the_output():
    model, inputs, _ = factory()
    split = split_module(model, inputs, ["2", "4"])
    assert [(lay["name"], lay["kind"], lay["trainable"]) for lay in split.layers] == [
        ("2", "linear", True),
        ("3", "relu", False),
        ("4", "linear", True),
    ]


def test_a_head_with_a_layer_the_device_cannot_train_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    with pytest.raises(EdgeforgeError, match="Conv2d"):
        split_module(model, (torch.randn(1, 1, 8, 8),), ["0"])
    with pytest.raises(EdgeforgeError, match="no such layer"):
        split_module(model, (torch.randn(1, 1, 8, 8),), ["head"])


def test_numpy_head_gradients_are_torchs():
    model, inputs, _ = factory()
    split = split_module(model, inputs, ["2", "4"])
    x, y = task(5, 3)
    embedding = torch.relu(model[0](torch.from_numpy(x)))
    head = nn.Sequential(model[2], model[3], model[4])
    head.zero_grad()
    nn.functional.cross_entropy(head(embedding), torch.from_numpy(y)).backward()
    logits, cache = head_forward(split.layers, split.params, embedding.detach().numpy())
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    probs[np.arange(5), y] -= 1
    grads = head_backward(split.layers, split.params, cache, probs / 5)
    assert np.allclose(grads["2.weight"], model[2].weight.grad.numpy(), atol=1e-5)
    assert np.allclose(grads["4.bias"], model[4].bias.grad.numpy(), atol=1e-5)


def test_guard_refuses_a_lead_within_the_check_samples_noise():
    from edgeforge.fleet.personal import guard

    base = np.array([True] * 10 + [False] * 10)
    better = base.copy()
    better[10:12] = True  # two more check samples right
    # Confident everywhere it is right, but sure of the wrong class on one sample: the mean
    # log-probability gain is positive yet within one standard error (a head that forgot a
    # class).
    gains = np.array([0.3] * 19 + [-4.0])
    kept, why = guard(better, base, gains, {})
    assert not kept and "within the check's noise" in why
    # The same lead with a steady log-probability gain: kept.
    kept, why = guard(better, base, np.full(20, 0.3) + np.linspace(-0.1, 0.1, 20), {})
    assert kept and why.startswith("kept: it got 12 of 20")
    # No accuracy lead: discarded whatever the log-probabilities say.
    kept, why = guard(base, base, np.full(20, 0.5) + np.linspace(-0.1, 0.1, 20), {})
    assert not kept and "base model stays" in why


def test_the_device_side_imports_neither_torch_nor_a_converter():
    code = (
        "import sys, edgeforge.fleet.personal; "
        "bad = [m for m in ('torch', 'onnx', 'coremltools', 'executorch.exir') "
        "if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_personalization_package_is_a_lazy_top_level_name():
    assert edgeforge.PersonalizationPackage is PersonalizationPackage
    assert "PersonalizationPackage" in dir(edgeforge)


# -- slow: one package, built through the CLI --------------------------------------------------


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory) -> Path:
    from edgeforge.cli import main

    work = tmp_path_factory.mktemp("personalize")
    (work / "tiny.py").write_text(TASK)
    x, y = task(600, 1)  # what the factory trains on: the input adapter's reference
    np.savez(work / "reference.npz", x=x, y=y)
    out, report = work / "package", work / "report.html"
    stdout = work / "stdout.json"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(
            [
                "personalize",
                f"{work / 'tiny.py'}:factory",
                "--trainable",
                "2,4",
                "--reference",
                str(work / "reference.npz"),
                "--out",
                str(out),
                "--name",
                "tiny",
                "--version",
                "3",
                "--json",
                "--report",
                str(report),
            ]
        )
    stdout.write_text(buffer.getvalue())
    assert code == 0, buffer.getvalue()
    assert report.is_file()
    return out


def _printed(package_dir: Path) -> dict:
    return json.loads((package_dir.parent / "stdout.json").read_text())


@pytest.mark.slow
def test_cli_prints_the_package_and_every_form(package_dir):
    data = _printed(package_dir)
    assert data["schema"] == "edgeforge.personalize/1"
    assert data["release"]["name"] == "tiny" and data["release"]["version"] == 3
    assert set(data["forms"]) == {"executorch", "coreml", "head"}
    assert all("error" not in entry for entry in data["forms"].values()), data["forms"]
    assert "validated" in data["forms"]["coreml"]
    assert data["backbones"]["onnxruntime"]["file"].endswith("model.onnx")
    assert data["adapter"]["file"] == "input_stats.npz"


@pytest.mark.slow
def test_executorch_program_trains_and_its_loss_falls(package_dir):
    package = PersonalizationPackage.load(package_dir)
    # The head alone: the input adapter would undo this user's offset before the head trains,
    # leaving the program nothing to learn.
    package.input_stats = None
    x, y = task(40, 5, OFFSET)
    model = package.train(x, y, form="executorch")
    assert model.losses[-1] < 0.5 * model.losses[0]
    numpy_model = package.train(x, y, form="head")
    held_x, held_y = task(300, 6, OFFSET)
    # The same split, batches and settings: the numpy head reaches the program's accuracy.
    assert (
        abs(accuracy(model.predict(held_x), held_y) - accuracy(numpy_model.predict(held_x), held_y))
        <= 0.01
    )


@pytest.mark.slow
def test_coreml_form_says_why_it_does_not_train_here(package_dir):
    package = PersonalizationPackage.load(package_dir)
    reason = package.available_forms()["coreml"]
    assert reason and "MLUpdateTask" in reason
    with pytest.raises(EdgeforgeError, match="cannot train here"):
        package.train(*task(20, 5), form="coreml")


@pytest.mark.slow
def test_guard_keeps_a_head_that_helps_the_user(package_dir):
    package = PersonalizationPackage.load(package_dir)
    x, y = task(20, 7, OFFSET)
    model = package.train(x, y)
    held_x, held_y = task(300, 8, OFFSET)
    base = accuracy(package.embed(held_x)[0], held_y)
    assert model.kept, model.reason
    assert accuracy(model.predict(held_x), held_y) >= base + 0.10


@pytest.mark.slow
def test_guard_discards_a_head_that_does_not_beat_the_base_model(package_dir):
    package = PersonalizationPackage.load(package_dir)
    x, y = task(20, 9)  # the user is like the training data: nothing to gain
    model = package.train(x, y, form="head")
    assert not model.kept and "discarded" in model.reason
    held_x, _ = task(50, 10)
    assert np.array_equal(model.predict(held_x), package.embed(held_x)[0])
    assert model.telemetry() == {
        "kind": "personalize",
        "name": "tiny",
        "version": 3,
        "ok": False,
        "detail": "discarded",
        "metrics": {"form": "head", "train_seconds": round(model.train_seconds, 3)},
    }


@pytest.mark.slow
def test_a_personal_head_is_never_applied_to_another_backbone(package_dir, tmp_path):
    package = PersonalizationPackage.load(package_dir)
    x, y = task(20, 7, OFFSET)
    saved = package.train(x, y, form="head").save(tmp_path / "head")
    again = PersonalModel.load(saved, package)
    held_x, _ = task(20, 11, OFFSET)
    assert np.allclose(again.predict(held_x), package.train(x, y, form="head").predict(held_x))
    # The same package, released as version 4: the head was trained on version 3.
    other = tmp_path / "v4"
    shutil.copytree(package_dir, other)
    index = json.loads((other / PACKAGE_FILE).read_text())
    index["release"]["version"] = 4
    (other / PACKAGE_FILE).write_text(json.dumps(index))
    with pytest.raises(EdgeforgeError, match="trained on tiny version 3"):
        PersonalModel.load(saved, PersonalizationPackage.load(other))


@pytest.mark.slow
def test_a_tampered_package_file_is_refused(package_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(package_dir, copy)
    data = bytearray((copy / "head.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "head.npz").write_bytes(bytes(data))
    with pytest.raises(EdgeforgeError, match="differs from the package's record"):
        PersonalizationPackage.load(copy)


def test_an_onnx_source_is_refused_with_the_reason(tmp_path):
    from edgeforge.personalize import personalize

    with pytest.raises(EdgeforgeError, match="needs the module"):
        personalize(tmp_path / "model.onnx", tmp_path / "out")


@pytest.mark.slow
def test_agent_call_keeps_a_helpful_head_and_drops_it_when_the_release_changes(
    package_dir, tmp_path
):
    from edgeforge.fleet.personal import (
        BackboneRelease,
        drop_stale_head,
        personalize_on_device,
    )

    head = tmp_path / "personal"
    model = personalize_on_device(package_dir, *task(20, 7, OFFSET), head, form="head")
    assert model.kept and (head / "personal.json").is_file()
    same = PersonalizationPackage.load(package_dir).release
    assert not drop_stale_head(head, same)  # the release it was trained on: kept
    rolled_back = BackboneRelease(same.name, 2, "0" * 64)
    assert drop_stale_head(head, rolled_back) and not head.exists()


# -- the input adapter: a per-feature gain and offset before the backbone ----------------------

# A user whose sensor reads every feature with its own gain, and the offset above.
GAIN = np.array([0.6, 1.4, 0.7, 1.3, 0.5, 1.5, 0.8, 1.2], np.float32)


@pytest.mark.slow
def test_a_personal_model_with_an_adapter_round_trips_through_save_and_load(package_dir, tmp_path):
    package = PersonalizationPackage.load(package_dir)
    index = json.loads((package_dir / PACKAGE_FILE).read_text())
    assert index["adapter"]["file"] == "input_stats.npz" and package.input_stats is not None
    # Aggregates only: three class means and one spread per feature, no training row.
    assert package.input_stats.means.shape == (3, 8) and package.input_stats.spread.shape == (8,)
    x, y = task(20, 7)
    model = package.train(x * GAIN + OFFSET, y)
    assert model.kept and model.adapter is not None, model.reason
    held_x, held_y = task(300, 8)
    held_x = held_x * GAIN + OFFSET
    assert accuracy(model.predict(held_x), held_y) >= accuracy(package.embed(held_x)[0], held_y)
    saved = model.save(tmp_path / "head")
    assert (saved / "adapter.npz").is_file()
    again = PersonalModel.load(saved, package)
    assert np.allclose(again.adapter.gain, model.adapter.gain)
    assert np.array_equal(again.predict(held_x), model.predict(held_x))
    # The telemetry says only that it ran and was kept, as without an adapter.
    assert again.telemetry()["detail"] == "kept" and "adapter" not in json.dumps(again.telemetry())
    # A head trained on adapted inputs is never applied with another adapter.
    data = bytearray((saved / "adapter.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (saved / "adapter.npz").write_bytes(bytes(data))
    with pytest.raises(EdgeforgeError, match=r"adapter\.npz differs from its record"):
        PersonalModel.load(saved, package)


@pytest.mark.slow
def test_an_image_model_gets_no_adapter_and_the_package_says_why(tmp_path):
    from edgeforge.personalize import personalize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    images = np.random.default_rng(0).random((60, 1, 4, 4)).astype(np.float32)
    labels = np.arange(60) % 3
    result = personalize(
        model,
        tmp_path / "package",
        example_inputs=(torch.from_numpy(images[:1]),),
        input_names=["image"],
        forms="head",
        reference=(images, labels),
    )
    assert "not a flat feature vector" in result.adapter["reason"]
    assert not (tmp_path / "package" / "input_stats.npz").exists()
    package = PersonalizationPackage.load(result.out)
    assert package.input_stats is None
    trained = package.train(images[:20], labels[:20], form="head")
    assert trained.adapter is None
