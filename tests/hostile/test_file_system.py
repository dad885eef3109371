"""Class 6 of issue 13, the file system: a path it refuses is the user's to fix, in one line.

Read-only or full output folders, names too long and a file where a folder is needed surfaced
as internal errors; they are exit 2 with one line, in the CLI and from a child process.
"""

from __future__ import annotations

import errno
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgeforge import cli
from edgeforge.errors import file_system_error


@pytest.fixture
def model(tmp_path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize(
    "code, advice",
    [
        (errno.EROFS, "writable file system"),
        (errno.EACCES, "may write to"),
        (errno.ENOSPC, "free some space"),
        (errno.ENAMETOOLONG, "shorter name"),
    ],
)
def test_read_only_or_full_output_folder_is_one_line(
    model: Path, monkeypatch, capsys, code: int, advice: str
) -> None:
    def refused(args):
        raise OSError(code, "refused", "/out/report.html")

    monkeypatch.setattr(cli, "_inspect", refused)
    assert cli.main(["inspect", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgeforge: error: /out/report.html")
    assert advice in err


def test_other_os_errors_stay_internal() -> None:
    assert file_system_error(OSError(errno.EIO, "I/O error")) is None


def test_convert_out_that_is_a_file_refused(model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.write_text("mine")
    assert cli.main(["convert", str(model), "--to", "onnxruntime", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file" in err
    assert out.read_text() == "mine"
