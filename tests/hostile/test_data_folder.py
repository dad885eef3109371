"""Class 6 of issue 13, `--data`: a hostile or broken data folder is exit 2 with one line.

Object arrays are refused and never unpickled; an `.npz` whose headers promise more than the
memory budget is refused before any data is read; truncated or corrupt `.npy`/`.npz`/`.png`
files, NaN/Inf inputs and unusable file names are named as the data's problem.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from numpy.lib import format as npy
from onnx import TensorProto, helper

from edgeforge import cli


@pytest.fixture
def model(tmp_path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def _verify(model: Path, data: Path, capsys, *more: str) -> str:
    """verify with --data: exit 2 and exactly one line; returns the line."""
    assert cli.main(["verify", str(model), str(model), "--data", str(data), *more]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgeforge: error: --data"), err
    return err


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / "_pwned",))


def test_object_npy_refused_never_unpickled(model: Path, data: Path, capsys, tmp_path) -> None:
    marker = Path(__file__).parent / "_pwned"
    np.save(data / "x.npy", np.array([_Payload()], dtype=object), allow_pickle=True)
    assert "Python objects" in _verify(model, data, capsys)
    assert not marker.exists()


def test_object_array_in_npz_refused(model: Path, data: Path, capsys) -> None:
    np.savez(data / "a.npz", x=np.array([{"a": 1}], dtype=object))
    assert "Python objects" in _verify(model, data, capsys)


def test_truncated_npy_refused(model: Path, data: Path, capsys) -> None:
    np.save(data / "x.npy", np.ones((8, 4), np.float32))
    raw = (data / "x.npy").read_bytes()
    (data / "x.npy").write_bytes(raw[:-20])
    assert "truncated" in _verify(model, data, capsys)


def test_npy_header_cut_short_refused(model: Path, data: Path, capsys) -> None:
    np.save(data / "x.npy", np.ones((8, 4), np.float32))
    (data / "x.npy").write_bytes((data / "x.npy").read_bytes()[:30])
    assert "not a readable .npy" in _verify(model, data, capsys)


def test_garbage_npz_refused(model: Path, data: Path, capsys) -> None:
    (data / "a.npz").write_bytes(b"PK\x03\x04 not really a zip")
    assert "not a readable .npz" in _verify(model, data, capsys)


def test_truncated_png_refused(model: Path, data: Path, capsys, tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "image",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    image_model = tmp_path / "image.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), image_model)
    (data / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert "not a readable image" in _verify(image_model, data, capsys)


def test_npz_bomb_refused_before_loading(model: Path, data: Path, capsys) -> None:
    """A few hundred bytes whose header promises 4 TB: refused from the header alone."""
    member = io.BytesIO()
    npy.write_array_header_1_0(
        member, {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1 << 20)}
    )
    member.write(b"\0" * 64)
    with zipfile.ZipFile(data / "a.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", member.getvalue())
    assert "above the memory budget" in _verify(model, data, capsys)


def test_npy_larger_than_budget_refused(model: Path, data: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("EDGEFORGE_MEMORY_LIMIT", "2MB")  # restored after the test
    np.save(data / "x.npy", np.ones((1 << 20, 4), np.float32))  # 16 MB
    assert "above the memory budget" in _verify(model, data, capsys)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_in_data_named_as_data_problem(model: Path, data: Path, capsys, value) -> None:
    array = np.ones((3, 4), np.float32)
    array[1, 2] = value
    np.save(data / "x.npy", array)
    assert "holds NaN or Inf in x.npy[1]" in _verify(model, data, capsys)


def test_data_file_name_not_utf8(model: Path, data: Path, capsys) -> None:
    name = data / "\udcff.npz"  # the bytes b"\xff.npz" on disk
    np.savez(name, y=np.ones((1, 4), np.float32))
    assert "no array named 'x'" in _verify(model, data, capsys)


def test_data_path_too_long(model: Path, tmp_path: Path, capsys) -> None:
    long = tmp_path / ("d" * 300)
    assert cli.main(["verify", str(model), str(model), "--data", str(long)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "File name too long" in err


def test_good_data_still_verifies(model: Path, data: Path) -> None:
    np.save(data / "x.npy", np.ones((3, 4), np.float32))
    np.savez(data.parent / "unused.npz", x=np.ones((1, 4), np.float32))
    assert cli.main(["verify", str(model), str(model), "--data", str(data)]) == 0
