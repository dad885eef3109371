"""`--shape` wherever a model is read, and `--preprocess`/`--max-samples` on convert: one pin
(`edgeforge._pin`), the same checks everywhere, and what was read recorded in every result."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeforge._pin import pin_shapes
from edgeforge.cli import main
from edgeforge.convert import check, convert
from edgeforge.errors import EdgeforgeError
from edgeforge.runtimes import get_runtime


def _run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    out = captured.out.strip()
    return code, json.loads(out) if out.startswith("{") else None, captured.err


def _image_folder(root: Path, classes: int = 2, per_class: int = 3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{index}.png")
    return root


def test_convert_with_shape_builds_onnxruntime_at_the_pinned_size(digits_model, tmp_path, capsys):
    source = str(digits_model.onnx_path)
    code, printed, err = _run(
        capsys, "convert", source, "--runtime", "onnxruntime", "--shape", "image=4x1x8x8",
        "--out", str(tmp_path / "out"), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert printed["shapes"] == {"image": [4, 1, 8, 8]}
    (target,) = printed["targets"]
    assert target["status"] == "verified", target["detail"]
    manifest = json.loads((tmp_path / "out" / "onnxruntime" / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [4, 1, 8, 8]
    graph = onnx.load(str(tmp_path / "out" / "onnxruntime" / "model.onnx")).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [4, 1, 8, 8]
    assert next(d.dim_value for d in graph.output[0].type.tensor_type.shape.dim) == 4
    # the source keeps its dynamic batch: the pin is a copy
    assert onnx.load(source).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize(
    ("shape", "says"),
    [
        ("image=4x1x8", "the input has rank 4"),
        ("image=4x2x8x8", "axis 1 is fixed at 1 in the model"),
        ("pixels=1x1x8x8", "names no input 'pixels'"),
    ],
)
def test_a_shape_that_does_not_fit_stops_convert_with_one_line(
    digits_model, tmp_path, capsys, shape, says
):
    code, _, err = _run(
        capsys, "convert", str(digits_model.onnx_path), "--runtime", "onnxruntime",
        "--shape", shape, "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], err
    assert not (tmp_path / "out" / "onnxruntime").exists()


def test_check_and_verify_take_shape(digits_model, tmp_path, capsys):
    source = str(digits_model.onnx_path)
    code, printed, err = _run(
        capsys, "check", source, "--runtime", "onnxruntime", "--shape", "image=2x1x8x8", "--json"
    )
    assert code == 0, err
    assert printed["shapes"] == {"image": [2, 1, 8, 8]}
    # An artifact built without a pin keeps its dynamic batch; verify feeds it the pinned size.
    convert(digits_model, "onnxruntime", tmp_path / "out")
    artifact = str(tmp_path / "out" / "onnxruntime")
    code, printed, err = _run(
        capsys, "verify", source, artifact, "--shape", "image=3x1x8x8", "--json"
    )
    assert code == 0, err
    assert printed["shapes"] == {"image": [3, 1, 8, 8]}
    assert printed["passed"] is True
    code, _, err = _run(capsys, "verify", source, artifact, "--shape", "image=3x1x8")
    assert code == 2 and "the input has rank 4" in err


def test_one_axis_name_pinned_to_two_sizes_is_refused(tmp_path):
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4]) for name in ("a", "b")
    ]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", inputs, [output])
    path = tmp_path / "add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    from edgeforge import load

    model = load(path)
    with pytest.raises(EdgeforgeError, match="an axis with one name has one size"):
        pin_shapes(model, {"a": (2, 4), "b": (3, 4)})
    pinned = pin_shapes(model, {"a": (2, 4)})  # b shares the name `batch`: pinned alike
    assert [t.shape for t in pinned.inputs] == [(2, 4), (2, 4)]
    assert pinned.outputs[0].shape == (2, 4)
    assert pinned.unpinned is model and pinned.onnx_path.parent != path.parent
    again = pin_shapes(pinned, {"b": (2, 4)})  # a second pin keeps the first
    assert again.pinned == {"a": (2, 4), "b": (2, 4)} and again.unpinned is model


@pytest.mark.slow
def test_a_torch_hub_runtime_ignores_the_pin_and_says_so(digits_model, tmp_path):
    if not get_runtime("litert").availability().can_execute:
        pytest.skip("litert is not installed here")
    result = convert(digits_model, "litert", tmp_path / "out", shapes={"image": (4, 1, 8, 8)})
    (target,) = result.targets
    assert target.status == "verified", target.detail
    assert "does not apply" in target.detail and "torch.export program" in target.detail
    manifest = json.loads((tmp_path / "out" / "litert" / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, 1, 8, 8]  # the program's example size
    assert any("does not apply" in note for note in manifest["notes"])
    report = check(digits_model, "litert", shapes={"image": (4, 1, 8, 8)})
    assert "does not apply" in report.runtimes["litert"]["detail"]


def test_convert_reads_images_as_preprocess_says_and_records_it(digits_model, tmp_path, capsys):
    data = _image_folder(tmp_path / "images")
    code, printed, err = _run(
        capsys, "convert", str(digits_model.onnx_path), "--runtime", "onnxruntime",
        "--data", str(data), "--preprocess", "mean=0.5;std=0.25", "--max-samples", "4",
        "--out", str(tmp_path / "out"), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert printed["data"]["preprocess"]["mean"] == [0.5]
    assert printed["data"]["preprocess"]["std"] == [0.25]
    assert printed["data"]["max_samples"] == 4
    (target,) = printed["targets"]
    assert target["status"] == "verified", target["detail"]
    verification = target["verification"]
    assert verification["preprocess"]["mean"] == [0.5]
    assert verification["samples"] == 4 and verification["samples_available"] == 6


def test_preprocess_without_data_is_refused(digits_model, tmp_path):
    with pytest.raises(EdgeforgeError, match="pass --data as well"):
        convert(digits_model, "onnxruntime", tmp_path, preprocess="mean=0.5")
    with pytest.raises(EdgeforgeError, match="--preprocess"):
        convert(digits_model, "onnxruntime", tmp_path, data=tmp_path, preprocess="mean=x")


def test_int8_static_calibrates_with_the_same_preprocessing(digits_model, tmp_path):
    data = _image_folder(tmp_path / "images")
    result = convert(
        digits_model,
        "onnxruntime",
        tmp_path / "out",
        precision="int8-static",
        data=data,
        preprocess="mean=0.5;std=0.25",
    )
    (target,) = result.targets
    assert target.status in ("verified", "parity-failed"), target.detail
    manifest = json.loads((tmp_path / "out" / "onnxruntime" / "manifest.json").read_text())
    assert manifest["recipe"]["options"]["preprocess"]["mean"] == [0.5]
    assert any("preprocessed" in note for note in manifest["notes"]), manifest["notes"]


@pytest.mark.skipif(importlib.util.find_spec("PIL") is None, reason="Pillow reads images")
def test_recipe_preprocess_option_is_checked():
    from edgeforge.recipe import Recipe

    with pytest.raises(EdgeforgeError, match="layout"):
        Recipe("int8-static", {"preprocess": "layout=chw"})
    assert Recipe("int8-static", {"preprocess": {"mean": [0.5], "std": None}})


def test_convert_table_says_what_was_pinned_and_read(capsys):
    from edgeforge.convert import Conversion
    from edgeforge.render import print_conversion

    result = Conversion(
        "m.onnx",
        "out",
        "fp32",
        shapes={"image": [4, 1, 8, 8]},
        data={"folder": "images", "max_samples": 4, "preprocess": {"mean": [0.5], "std": [0.25]}},
    )
    print_conversion(result)
    out = capsys.readouterr().out
    assert "inputs pinned with --shape image=4x1x8x8" in out
    assert "verified on images (at most 4 samples)" in out
    assert "- mean [0.5] / std [0.25]" in out and "{" not in out


def test_optimize_takes_shape_and_notes_the_pin(digits_model, tmp_path, capsys):
    from edgeforge import optimize

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.save(data / "image.npy", rng.standard_normal((8, 1, 8, 8)).astype(np.float32))
    with pytest.raises(EdgeforgeError, match="the input has rank 4"):
        optimize(digits_model, "laptop-cpu", data, out=tmp_path / "bad", shapes={"image": (1, 8)})
    result = optimize(
        str(digits_model.onnx_path),
        "laptop-cpu",
        data,
        out=tmp_path / "out",
        runtime="onnxruntime",
        precision="fp32",
        cleanup=False,
        runs=3,
        shapes={"image": (1, 1, 8, 8)},
    )
    assert any("inputs pinned with --shape image=1x1x8x8" in note for note in result.notes)
    assert result.chosen is not None
