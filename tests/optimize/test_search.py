"""`optimize` on a digits CNN that plain int8 breaks: the accuracy limit holds on the held-out
part, limits nothing meets are a result, re-runs reuse the cache, bad data is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeforge import load
from edgeforge.cli import main
from edgeforge.errors import EdgeforgeError
from edgeforge.optimize.search import optimize
from edgeforge.recipe import Recipe
from edgeforge.runtimes import Artifact, get_runtime

# Small and quick: the two ONNX-hub runtimes of the laptop, float and int8-static.
SEARCH = {
    "runtimes": ["onnxruntime", "openvino"],
    "precisions": ["fp32", "int8-static"],
    "bench_runs": 5,
}


@pytest.fixture(scope="module")
def searched(outlier_digits, digits_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("optimize") / "out"
    result = optimize(
        outlier_digits, "laptop-cpu", digits_folder, out=out, max_accuracy_drop="1%", **SEARCH
    )
    return result, out


def _held_out_accuracy(artifact: Artifact, folder: Path, held_out: list[str]) -> float:
    """Top-1 on the rows that `data.holdout_files` names ("image.npy[12]")."""
    rows = [int(name.split("[")[1].rstrip("]")) for name in held_out]
    images, labels = np.load(folder / "image.npy"), np.load(folder / "labels.npy")
    with get_runtime(artifact.runtime).open(artifact) as session:
        logits = [session.run({"image": images[i : i + 1]})["logits"] for i in rows]
    predicted = np.concatenate(logits).argmax(1)
    return float(np.mean(predicted == labels[rows]))


def test_accuracy_limit_holds_on_held_out_where_plain_int8_breaks_it(
    searched, outlier_digits, digits_folder, tmp_path
):
    result, out = searched
    int8 = [c for c in result.candidates if c.precision == "int8-static" and c.accuracy_drop]
    assert int8 and max(c.accuracy_drop for c in int8) > 0.01  # plain int8 breaks the limit
    assert all(c.verdict == "dropped" for c in int8 if c.accuracy_drop > 0.01)
    assert result.chosen is not None
    chosen = result.candidate(result.chosen)
    assert chosen.accuracy_drop is not None and chosen.accuracy_drop <= 0.01
    # Check independently: the written artifact against the float model on the held-out part.
    calibration = result.data["calibration_samples"]
    held_out = result.data["holdout_files"]
    assert len(held_out) == 450 - calibration
    assert not set(held_out) & set(result.data["calibration_files"])
    candidate = _held_out_accuracy(Artifact.load(out / "chosen"), digits_folder, held_out)
    reference_artifact = get_runtime("onnxruntime").build(
        load(outlier_digits), Recipe(), tmp_path / "reference"
    )
    reference = _held_out_accuracy(reference_artifact, digits_folder, held_out)
    assert reference - candidate <= 0.01
    assert result.data["held_out_samples"] == 450 - calibration


def test_rerun_builds_nothing(searched, outlier_digits, digits_folder):
    first, out = searched
    again = optimize(
        outlier_digits, "laptop-cpu", digits_folder, out=out, max_accuracy_drop="1%", **SEARCH
    )
    assert [c.id for c in again.candidates] == [c.id for c in first.candidates]
    assert all(c.cached for c in again.candidates if c.status in ("evaluated", "built-not-run"))
    assert again.chosen == first.chosen


def test_limit_no_candidate_meets_is_a_result_naming_the_closest(
    searched, outlier_digits, digits_folder
):
    _, out = searched
    result = optimize(
        outlier_digits,
        "laptop-cpu",
        digits_folder,
        out=out,
        max_accuracy_drop="1%",
        max_size="1KB",
        **SEARCH,
    )
    assert result.chosen is None and not (out / "chosen").exists()
    (unmet,) = result.unmet
    assert unmet["flag"] == "--max-size" and unmet["closest"]
    assert "no candidate meets --max-size" in unmet["text"]
    smallest = min(c.size_bytes for c in result.candidates if c.size_bytes)
    assert unmet["closest_value"] == smallest
    assert json.loads((out / "optimize.json").read_text())["met"] is False


def test_json_fields_and_html_pareto(searched, outlier_digits, digits_folder, capsys):
    _, out = searched
    code = main(
        [
            "optimize", str(outlier_digits), "--device", "laptop-cpu",
            "--data", str(digits_folder), "--out", str(out), "--max-accuracy-drop", "1%",
            "--runtimes", "onnxruntime,openvino", "--precisions", "fp32,int8-static",
            "--runs", "5", "--json",
        ]
    )  # fmt: skip
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["met"] and data["chosen"] and data["device"] == "laptop-cpu"
    assert data["limits"]["max_accuracy_drop"] == pytest.approx(0.01)
    assert "held" in data["data"]["split"] and data["reference"]["metric"] == "top1_accuracy"
    first = data["candidates"][0]
    for key in (
        "id",
        "size_bytes",
        "latency_here_ms",
        "device_latency_ms",
        "memory_bytes",
        "accuracy_drop",
        "cached",
        "on_front",
        "verdict",
        "reason",
    ):
        assert key in first
    assert all(c["cached"] for c in data["candidates"])
    html = Path(data["report_path"]).read_text()
    assert "<svg" in html and "Pareto" in html and data["chosen"] in html


def test_empty_data_folder_is_refused_with_the_layout(outlier_digits, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(
        [
            "optimize",
            str(outlier_digits),
            "--device",
            "laptop-cpu",
            "--data",
            str(empty),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "empty" in err and ".npz" in err and ".npy" in err


def test_wrong_shaped_data_names_the_input(outlier_digits, digits_folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(digits_folder, bad)
    np.save(bad / "image.npy", np.zeros((10, 1, 7, 7), np.float32))
    with pytest.raises(EdgeforgeError, match=r"'image'.*expects 8"):
        optimize(outlier_digits, "laptop-cpu", bad, out=tmp_path / "out", **SEARCH)


def test_wrong_dtype_data_names_the_input(outlier_digits, digits_folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(digits_folder, bad)
    np.save(bad / "image.npy", np.zeros((10, 1, 8, 8), np.int64))
    with pytest.raises(EdgeforgeError, match="'image' is int64, the model expects float32"):
        optimize(outlier_digits, "laptop-cpu", bad, out=tmp_path / "out", **SEARCH)


def test_one_sample_cannot_be_split(outlier_digits, digits_folder, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    np.save(one / "image.npy", np.load(digits_folder / "image.npy")[:1])
    with pytest.raises(EdgeforgeError, match="at least 2"):
        optimize(outlier_digits, "laptop-cpu", one, out=tmp_path / "out", **SEARCH)


def test_pruned_candidates_from_a_torch_source(
    trained_digits_for_optimize, digits_folder, tmp_path
):
    import torch

    module, data, _ = trained_digits_for_optimize
    result = optimize(
        module,
        "laptop-cpu",
        digits_folder,
        out=tmp_path / "out",
        example_inputs=torch.from_numpy(data.test_x[:1]),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}},
        runtimes=["onnxruntime"],
        precisions=["fp32"],
        passes=["prune"],
        bench_runs=5,
    )
    pruned = result.candidate("pruned/onnxruntime/fp32")
    assert pruned.status == "evaluated" and pruned.model == "pruned"
    assert pruned.size_bytes < result.candidate("onnxruntime/fp32").size_bytes
    assert pruned.accuracy_drop is not None


def test_torch_passes_on_an_onnx_file_say_why_they_were_skipped(
    searched, outlier_digits, digits_folder
):
    _, out = searched
    result = optimize(
        outlier_digits, "laptop-cpu", digits_folder, out=out, passes=["prune"], **SEARCH
    )
    assert any("--passes prune skipped" in note for note in result.notes)
    assert all(c.cached for c in result.candidates)
