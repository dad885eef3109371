"""Class 3 of issue 13: never destroy what the user owns.

An output path that is an input, or an existing file or folder edgeforge did not write, is
refused (exit 2, one line) unless `--force`; inputs are never overwritten, even with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgeforge import EdgeforgeError, cli
from edgeforge._io import guard_output, written_by_edgeforge


@pytest.fixture
def model(tmp_path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model.onnx"
    onnx.save(proto, path)
    return path


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("edgeforge: error:") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def test_report_path_is_input_refused(model: Path, capsys) -> None:
    before = model.read_bytes()
    assert cli.main(["inspect", str(model), "--report", str(model)]) == 2
    assert "is also an input" in _one_line_error(capsys)
    assert model.read_bytes() == before


def test_report_path_is_input_refused_even_with_force(model: Path, capsys) -> None:
    before = model.read_bytes()
    assert cli.main(["inspect", str(model), "--report", str(model), "--force"]) == 2
    assert model.read_bytes() == before


def test_report_path_linked_to_input_refused(model: Path, tmp_path: Path, capsys) -> None:
    link = tmp_path / "report.html"
    link.symlink_to(model)
    before = model.read_bytes()
    assert cli.main(["inspect", str(model), "--report", str(link), "--force"]) == 2
    assert model.read_bytes() == before


def test_report_json_path_not_clobbered(model: Path, tmp_path: Path, capsys) -> None:
    report = tmp_path / "r.json"
    assert cli.main(["inspect", str(model), "--report", str(report)]) == 0
    data = json.loads(report.read_text())  # the JSON, not the HTML written over it
    assert set(data) == {"inspect"}
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")


def test_report_over_user_file_refused(model: Path, tmp_path: Path, capsys) -> None:
    notes = tmp_path / "notes.html"
    notes.write_text("<p>my notes</p>")
    assert cli.main(["inspect", str(model), "--report", str(notes)]) == 2
    assert "--force" in _one_line_error(capsys)
    assert notes.read_text() == "<p>my notes</p>"
    assert cli.main(["inspect", str(model), "--report", str(notes), "--force"]) == 0
    assert written_by_edgeforge(notes)


def test_report_sibling_json_of_user_refused(model: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "r.json").write_text('{"my": "settings"}')
    assert cli.main(["inspect", str(model), "--report", str(tmp_path / "r.html")]) == 2
    assert json.loads((tmp_path / "r.json").read_text()) == {"my": "settings"}
    assert not (tmp_path / "r.html").exists()


def test_report_rewritten_when_edgeforge_wrote_it(model: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.html"
    assert cli.main(["inspect", str(model), "--report", str(report)]) == 0
    assert cli.main(["inspect", str(model), "--report", str(report)]) == 0


def test_convert_out_with_user_files_refused(model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    (out / "onnxruntime").mkdir(parents=True)
    mine = out / "onnxruntime" / "thesis.tex"
    mine.write_text("years of work")
    code = cli.main(["convert", str(model), "--to", "onnxruntime", "--out", str(out)])
    assert code == 2
    assert "edgeforge did not write it" in _one_line_error(capsys)
    assert mine.read_text() == "years of work"


@pytest.mark.slow
def test_convert_twice_into_the_same_out_replaces_its_own_artifact(model: Path, tmp_path):
    out = tmp_path / "out"
    for _ in range(2):
        assert cli.main(["convert", str(model), "--to", "onnxruntime", "--out", str(out)]) == 0
    manifest = json.loads((out / "onnxruntime" / "manifest.json").read_text())
    assert manifest["verification"]["status"] == "verified"
    assert "model.onnx" in manifest["files"]


def test_convert_out_holding_the_model_refused(model: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "out" / "onnxruntime"
    folder.mkdir(parents=True)
    inside = folder / "model.onnx"
    model.rename(inside)
    code = cli.main(["convert", str(inside), "--to", "onnxruntime", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "holds the input" in _one_line_error(capsys)
    assert inside.is_file()


def test_convert_out_that_is_a_file_refused(model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.write_text("not a folder")
    code = cli.main(["convert", str(model), "--to", "onnxruntime", "--out", str(out)])
    assert code == 2
    assert "is a file" in _one_line_error(capsys)
    assert out.read_text() == "not a folder"


def test_guard_refuses_folder_with_unlisted_file(tmp_path: Path) -> None:
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "manifest.json").write_text(
        json.dumps({"runtime": "onnxruntime", "format": "onnx", "file": "m.onnx",
                    "files": ["m.onnx"]})
    )  # fmt: skip
    (folder / "m.onnx").write_bytes(b"x")
    guard_output(folder, folder=True)  # all listed: edgeforge's own
    (folder / "user.txt").write_text("mine")
    with pytest.raises(EdgeforgeError, match="did not write"):
        guard_output(folder, folder=True)


def test_inspect_never_writes_in_the_current_folder(tmp_path: Path, monkeypatch) -> None:
    # ONNX Runtime's symbolic shape inference saves "sym_shape_infer_temp.onnx" in the current
    # folder when it cannot infer every shape: over a user's file of that name.
    from edgeforge.analysis import inspect

    graph = helper.make_graph(
        [
            helper.make_node("NonZero", ["x"], ["n"]),
            helper.make_node("Foo", ["n"], ["y"], domain="custom"),
        ],
        "incomplete",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "k"])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)]
    path = tmp_path / "incomplete.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "sym_shape_infer_temp.onnx").write_text("mine")
    monkeypatch.chdir(work)
    inspect(path)
    assert [p.name for p in work.iterdir()] == ["sym_shape_infer_temp.onnx"]
    assert (work / "sym_shape_infer_temp.onnx").read_text() == "mine"


def test_optimize_chosen_with_user_files_refused(model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "search"
    (out / "chosen").mkdir(parents=True)
    (out / "chosen" / "notes.txt").write_text("mine")
    data = tmp_path / "data"
    data.mkdir()
    argv = ["optimize", str(model), "--device", "this-machine", "--data", str(data)]
    assert cli.main([*argv, "--out", str(out)]) == 2
    assert "did not write" in _one_line_error(capsys)
    assert (out / "chosen" / "notes.txt").read_text() == "mine"


def test_optimize_chosen_folder_with_its_candidate_record_is_ours(tmp_path: Path) -> None:
    folder = tmp_path / "chosen"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"x")
    manifest = {"runtime": "onnxruntime", "format": "onnx", "file": "model.onnx"}
    (folder / "manifest.json").write_text(json.dumps({**manifest, "files": ["model.onnx"]}))
    (folder / "candidate.json").write_text("{}")
    assert written_by_edgeforge(folder)
    (folder / "notes.txt").write_text("mine")
    assert not written_by_edgeforge(folder)
