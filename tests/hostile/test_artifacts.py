"""Class 4 of issue 13: an artifact is complete only when verified, and names only its own files.

Attack: edit an artifact's manifest.json so that `file` points outside the folder (`../x.onnx`,
an absolute path, a link): `verify` then passed on a model elsewhere. Every such manifest is
refused when the artifact is opened.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgeforge import EdgeforgeError, cli
from edgeforge.recipe import Recipe
from edgeforge.runtimes import Artifact, get_runtime
from edgeforge.runtimes.base import record_verification, settle_artifact


def _relu(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Artifact]:
    from edgeforge import load

    source = _relu(tmp_path / "model.onnx")
    artifact = get_runtime("onnxruntime").build(load(source), Recipe(), tmp_path / "art")
    return source, artifact


def _point_manifest_at(folder: Path, file: str) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data["file"] = file
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("where", ["../outside.onnx", "ABSOLUTE", "sub/../../outside.onnx"])
def test_manifest_file_outside_artifact_refused(built, tmp_path: Path, where: str, capsys) -> None:
    source, artifact = built
    outside = _relu(tmp_path / "outside.onnx")
    _point_manifest_at(artifact.folder, str(outside) if where == "ABSOLUTE" else where)
    assert cli.main(["verify", str(source), str(artifact.folder)]) == 2
    err = capsys.readouterr().err
    assert "lies outside the artifact folder" in err and err.count("\n") == 1


def test_manifest_file_linked_outside_artifact_refused(built, tmp_path: Path) -> None:
    _, artifact = built
    (artifact.folder / "link.onnx").symlink_to(_relu(tmp_path / "outside.onnx"))
    _point_manifest_at(artifact.folder, "link.onnx")
    with pytest.raises(EdgeforgeError, match="outside the artifact folder"):
        Artifact.load(artifact.folder)


@pytest.mark.parametrize("manifest", ['{"file": 3}', "[]", "not json", '{"runtime": 1}'])
def test_garbage_manifest_refused_in_one_line(tmp_path: Path, manifest: str) -> None:
    (tmp_path / "manifest.json").write_text(manifest)
    with pytest.raises(EdgeforgeError, match="manifest"):
        Artifact.load(tmp_path)


def test_manifest_lists_every_file_and_starts_unverified(built) -> None:
    _, artifact = built
    assert artifact.manifest.verification is None  # built is not verified
    assert artifact.manifest.files == ["model.onnx"]


def test_killed_check_leaves_artifact_marked_unverified(built) -> None:
    _, artifact = built
    settle_artifact(artifact.folder, "timed-out", "no result after 1 s", since=time.time() - 60)
    status = Artifact.load(artifact.folder).manifest.verification["status"]
    assert status == "timed-out"


def test_stale_artifact_from_an_earlier_run_not_relabelled(built) -> None:
    _, artifact = built
    record_verification(artifact, "verified", "earlier run")
    settle_artifact(artifact.folder, "crashed", "", since=time.time() + 60)
    assert Artifact.load(artifact.folder).manifest.verification["status"] == "verified"
