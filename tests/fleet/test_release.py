"""`edgeforge release`: the evidence gate, the canary set, publishing, and refusals that leave
the repository and the registry exactly as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper
from release_helpers import (
    cli,
    labelled_samples,
    postgres_schema,
    registry_rows,
    tiny_classifier,
    tree,
)

import edgeforge
from edgeforge.fleet.client import fetch
from edgeforge.fleet.db import sqlite_url
from edgeforge.fleet.registry import Registry
from edgeforge.fleet.release import release as release_api
from edgeforge.fleet.repository import Repository
from edgeforge.runtimes.base import file_sha256


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    source = tiny_classifier(folder / "tiny.onnx")
    return source, labelled_samples(source, folder / "data")


@pytest.fixture
def repo(tmp_path) -> Path:
    return Repository.init(tmp_path / "repo").path


def _state(repo: Path, db: str | None = None) -> tuple:
    """Everything a release could change: the repository, the store beside it, the registry."""
    url = db or sqlite_url(repo / "registry.db")
    rows = registry_rows(url) if db or (repo / "registry.db").exists() else None
    return tree(repo), tree(repo.parent / f"{repo.name}-store"), rows


def test_release_then_fetch_one_variant_through_the_client_over_http(
    tiny, repo, tmp_path, http_server, capsys
):
    source, data = tiny
    code = cli(
        "release",
        source,
        "--repo",
        repo,
        "--name",
        "tiny",
        "--variants",
        "linux-x86=onnxruntime,raspberry-pi-4=onnxruntime:int8-dynamic",
        "--data",
        data,
        "--max-accuracy-drop",
        "2%",
        "--max-size",
        "1MB",
        "--bench-runs",
        "2",
        "--canary-samples",
        "12",
        "--json",
    )
    answer = json.loads(capsys.readouterr().out)
    assert code == 0, answer
    assert answer["schema"] == "edgeforge.release/1" and answer["version"] == 1
    checks = {c["name"] for v in answer["variants"] for c in v["checks"]}
    assert checks == {"retest", "accuracy_drop", "size", "canary"}
    assert cli("registry", "alias", "tiny@1", "production", "--repo", repo) == 0
    capsys.readouterr()
    url = http_server(repo)
    got = fetch(
        url,
        tmp_path / "state",
        "tiny",
        "raspberry-pi-4",
        tmp_path / "out",
        alias="production",
        root=repo / "metadata" / "1.root.json",
    )
    assert got.version == 1 and got.index["precision"] == "int8-dynamic"
    assert set(got.files) == {"model.onnx", "manifest.json", "canary.npz", "reference.json"}
    # the monitor's baseline: the variant's outputs on the evaluation data, a signed target
    from edgeforge.fleet.monitor import Reference

    assert got.index["reference"] == "reference.json"
    reference = Reference.from_dict(json.loads(got.files["reference.json"].read_text()))
    assert reference.rows >= 12 and reference.slots["confidence"].n == reference.rows
    evidence = got.index["evidence"]
    assert evidence["lineage"]["artifact_sha256"] == file_sha256(got.files["model.onnx"])
    assert evidence["accuracy"]["data_sha256"]
    # the device's canary check: the fetched model on the canary inputs, within tolerance
    session = onnxruntime.InferenceSession(str(got.files["model.onnx"]))
    with np.load(got.files["canary.npz"], allow_pickle=False) as canary:
        inputs, expected = canary["in/x"], canary["out/logits"]
    outputs = np.stack([session.run(None, {"x": x})[0] for x in inputs])
    assert inputs.shape[0] == got.index["canary"]["samples"] == 12
    agreement = np.mean(outputs.argmax(-1) == expected.argmax(-1))
    assert agreement >= got.index["canary"]["tolerance"]["min_top1"]


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request):
    if request.param == "sqlite":
        yield None
    else:
        yield from postgres_schema()


def test_a_variant_that_fails_its_retest_is_refused_and_nothing_changes(
    tiny, repo, tmp_path, db, capsys
):
    """An artifact whose weights were changed after it was built (it no longer computes what
    its source computes) is refused: exit 1 naming the variant and the figure, and the
    repository, the store and the registry are byte for byte as they were."""
    source, data = tiny
    db_args = ["--db", db] if db else []
    common = ["--repo", repo, "--name", "tiny", "--bench-runs", "0", *db_args]
    assert cli("release", source, *common, "--variants", "linux-x86=onnxruntime") == 0
    conversion = edgeforge.convert(source, "onnxruntime", tmp_path / "built")
    artifact = tmp_path / "built" / "onnxruntime" / "model.onnx"
    proto = onnx.load(artifact)
    for initializer in proto.graph.initializer:
        if initializer.name == "W":
            tampered = numpy_helper.to_array(initializer) * 1.5
            initializer.CopyFrom(numpy_helper.from_array(tampered, "W"))
    onnx.save(proto, artifact)
    assert conversion.exit_code == 0
    capsys.readouterr()
    before = _state(repo, db)
    code = cli(
        "release",
        source,
        *common,
        "--from",
        tmp_path / "built",
        "--data",
        data,
        "--json",
        "--variants",
        "linux-x86=onnxruntime,arm=onnxruntime:int8-dynamic",
    )
    answer = json.loads(capsys.readouterr().out)
    out = answer["verdict"]
    assert code == 1 and answer["version"] is None
    passed = {v["device_class"]: v["passed"] for v in answer["variants"]}
    assert passed == {"linux-x86": False, "arm": True}  # one failing variant refuses them all
    assert "linux-x86=onnxruntime:fp32: retest failed" in out
    assert "max abs error" in out  # the figure
    assert "nothing was published" in out
    assert _state(repo, db) == before
    versions = [m["versions"] for m in json.loads(_registry_list(repo, db, capsys))["models"]]
    assert versions == [[1]]


def _registry_list(repo: Path, db: str | None, capsys) -> str:
    assert cli("registry", "list", "--repo", repo, *(["--db", db] if db else []), "--json") == 0
    return capsys.readouterr().out


def test_limits_refuse_naming_the_variant_and_the_figure(tiny, repo):
    source, _ = tiny
    before = _state(repo)
    result = release_api(
        source,
        repo,
        "tiny",
        "linux-x86=onnxruntime,raspberry-pi-4=onnxruntime",
        max_size="linux-x86:100B",
        max_latency="raspberry-pi-4:0.0001ms",
        bench_runs=0,
        canary_count=4,
    )
    assert not result.released and result.exit_code == 1
    (size,) = [r for r in result.refused if r.startswith("linux-x86=")]
    (latency,) = [r for r in result.refused if r.startswith("raspberry-pi-4=")]
    assert "size" in size and "> 100 B" in size
    assert "latency" in latency and "estimated on raspberry-pi-4" in latency
    assert _state(repo) == before


def test_release_takes_artifacts_from_convert_output_and_checks_their_source(
    tiny, repo, tmp_path, capsys
):
    source, data = tiny
    edgeforge.convert(source, "onnxruntime", tmp_path / "built", precision="int8-dynamic")
    result = release_api(
        source,
        repo,
        "tiny",
        "arm=onnxruntime:int8-dynamic",
        sources=[tmp_path / "built"],
        data=data,
        bench_runs=0,
        canary_count=4,
    )
    assert result.released, result.verdict
    (variant,) = result.variants
    assert variant["status"] == "verified" and variant["recipe"]["precision"] == "int8-dynamic"
    # an artifact built from another model is not this model's evidence
    other = tiny_classifier(tmp_path / "other.onnx", seed=7)
    before = _state(repo)
    code = cli(
        "release",
        other,
        "--repo",
        repo,
        "--name",
        "tiny",
        "--bench-runs",
        "0",
        "--variants",
        "arm=onnxruntime:int8-dynamic",
        "--from",
        tmp_path / "built",
    )
    assert code == 2
    assert "built from another source" in capsys.readouterr().err
    assert _state(repo) == before


def _bad_data(folder: Path) -> Path:
    folder.mkdir()
    np.savez(folder / "0.npz", x=np.zeros((1, 5), np.float32))
    return folder


@pytest.mark.parametrize(
    "case",
    [
        "source-does-not-load",
        "runtime-not-installed",
        "data-does-not-fit",
        "not-a-repository",
        "keys-missing",
        "key-permissions",
        "bad-variants",
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tiny, repo, tmp_path, capsys, case):
    source, data = tiny
    args = {
        "source": source,
        "--repo": repo,
        "--variants": "linux-x86=onnxruntime",
        "--data": data,
    }
    says = ""
    if case == "source-does-not-load":
        (tmp_path / "broken.onnx").write_bytes(b"not a model")
        args["source"] = tmp_path / "broken.onnx"
    elif case == "runtime-not-installed":
        args["--variants"] = "linux-x86=onnxruntime,jetson=tensorrt"
        says = "tensorrt is not installed"
    elif case == "data-does-not-fit":
        args["--data"] = _bad_data(tmp_path / "bad-data")
    elif case == "not-a-repository":
        (tmp_path / "plain").mkdir()
        args["--repo"] = tmp_path / "plain"
        says = "not an edgeforge repository"
    elif case == "keys-missing":
        args["--keys"] = tmp_path / "no-keys"
        says = "keys folder"
    elif case == "key-permissions":
        (pem,) = list((repo.parent / "repo-keys").rglob("timestamp/*.pem"))
        pem.chmod(0o644)
    else:
        args["--variants"] = "linux-x86"
        says = "CLASS=RUNTIME"
    before = _state(repo)
    argv = ["release", args.pop("source"), "--name", "tiny", "--bench-runs", "0"]
    for flag, value in args.items():
        argv += [flag, value]
    assert cli(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeforge: error: ") and err.count("\n") == 1, err
    assert says in err
    assert _state(repo) == before


@pytest.mark.slow
def test_concurrent_releases_are_serialised_by_the_lock(tiny, repo):
    """Two processes release into one repository at once: both succeed, with versions 1 and 2,
    and the signed targets hold both (neither overwrote the other's metadata)."""
    source, _ = tiny
    code = "import sys; from edgeforge.cli import main; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": str(Path(edgeforge.__file__).parents[1])}
    argv = [
        sys.executable,
        "-c",
        code,
        "release",
        str(source),
        "--repo",
        str(repo),
        "--name",
        "tiny",
        "--variants",
        "linux-x86=onnxruntime",
        "--bench-runs",
        "0",
        "--json",
    ]
    runs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
    answers = [json.loads(out) for out, _ in outputs]
    assert sorted(a["version"] for a in answers) == [1, 2]
    targets = Repository.open(repo).targets()
    assert {"tiny/1/linux-x86/variant.json", "tiny/2/linux-x86/variant.json"} <= set(targets)
    view = Registry.for_repository(repo).list().to_dict()
    assert view["models"][0]["versions"] == [1, 2]


def test_a_publish_that_fails_rolls_the_registry_back(tiny, repo, monkeypatch):
    """Fault injected at the seam: the repository cannot publish (a full disk). The registry's
    transaction, opened before publishing, must not commit the version."""
    source, _ = tiny
    release = release_api
    assert release(source, repo, "tiny", "a=onnxruntime", bench_runs=0, canary_count=4).released
    before = _state(repo)

    def full_disk(self, files, custom=None, *, move=False):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Repository, "publish", full_disk)
    with pytest.raises(OSError, match="No space left"):
        release(source, repo, "tiny", "a=onnxruntime", bench_runs=0, canary_count=4)
    assert _state(repo) == before
    monkeypatch.undo()
    again = release(source, repo, "tiny", "a=onnxruntime", bench_runs=0, canary_count=4)
    assert again.version == 2  # the failed attempt took no version
