"""The registry: migrations, versions with evidence and lineage, aliases (signed, forward only
unless --downgrade), diff, and the artifact store (a folder, or S3 on moto's real server).

Every registry test runs on SQLite (the file inside the repository) and on the PostgreSQL server
beside every development and CI machine, each test session in its own schema."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from release_helpers import (
    cli,
    labelled_samples,
    postgres_schema,
    registry_rows,
    tiny_classifier,
    tree,
)
from server_support import free_port

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.db import engine, sqlite_url, upgrade
from edgeforge.fleet.registry import Registry
from edgeforge.fleet.release import move_alias, release
from edgeforge.fleet.repository import Repository
from edgeforge.fleet.store import LocalStore, S3Store, open_store


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request, tmp_path_factory):
    """(the --db URL or None for the default SQLite file, the URL actually used)."""
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("sqlite")
        yield SimpleNamespace(db=None, folder=folder)
    else:
        for url in postgres_schema():
            yield SimpleNamespace(db=url, folder=tmp_path_factory.mktemp("pg"))


@pytest.fixture(scope="module")
def released(database):
    """A repository with tiny@1 (linux-x86 fp32, raspberry-pi-4 int8) and tiny@2 (linux-x86)."""
    base = database.folder
    source = tiny_classifier(base / "tiny.onnx")
    data = labelled_samples(source, base / "data")
    Repository.init(base / "repo")
    first = release(
        source,
        base / "repo",
        "tiny",
        "linux-x86=onnxruntime,raspberry-pi-4=onnxruntime:int8-dynamic",
        db=database.db,
        data=data,
        bench_runs=2,
        canary_count=8,
    )
    second = release(
        source,
        base / "repo",
        "tiny",
        "linux-x86=onnxruntime",
        db=database.db,
        bench_runs=0,
        canary_count=8,
    )
    assert first.released and second.released, (first.verdict, second.verdict)
    url = database.db or sqlite_url(base / "repo" / "registry.db")
    return SimpleNamespace(
        repo=base / "repo", db=database.db, url=url, first=first, second=second, data=data
    )


def _db_args(released) -> list[str]:
    return ["--db", released.db] if released.db else []


def test_migrations_ship_in_the_package_and_run_twice(database):
    package = resources.files("edgeforge.fleet.migrations")
    assert (package / "__init__.py").is_file()
    assert (package / "versions" / "__init__.py").is_file()
    assert (package / "versions" / "0001_registry.py").is_file()
    url = database.db or sqlite_url(database.folder / "migrations.db")
    upgrade(url)
    upgrade(url)  # a second run changes nothing
    from sqlalchemy import inspect, text

    names = set(inspect(engine(url)).get_table_names())
    assert {
        "registry_models",
        "registry_versions",
        "registry_variants",
        "registry_aliases",
        "registry_alias_events",
        "alembic_version",
    } <= names
    with engine(url).connect() as connection:
        heads = [r[0] for r in connection.execute(text("SELECT version_num FROM alembic_version"))]
    assert len(heads) == 1


def test_versions_variants_evidence_and_lineage_are_recorded(released):
    assert (released.first.version, released.second.version) == (1, 2)
    view = Registry(released.url).show("tiny@1").to_dict()
    assert view["version"] == 1
    classes = {v["device_class"]: v for v in view["variants"]}
    assert set(classes) == {"linux-x86", "raspberry-pi-4"}
    pi = classes["raspberry-pi-4"]
    assert pi["precision"] == "int8-dynamic"
    lineage = pi["lineage"]
    assert (
        lineage["source_sha256"] == view["source_sha256"] and len(lineage["artifact_sha256"]) == 64
    )
    assert lineage["recipe"]["precision"] == "int8-dynamic"
    assert lineage["release"] == "tiny@1"
    evidence = pi["evidence"]
    assert evidence["accuracy"]["metric"] == "top-1 accuracy"
    assert len(evidence["accuracy"]["data_sha256"]) == 64
    assert evidence["latency"]["device"] == "raspberry-pi-4"  # a class named like a device
    assert evidence["latency"]["estimated_ms"] > 0 and evidence["latency"]["measured_ms"] > 0
    assert evidence["verification"]["passed"] is True
    assert evidence["tools"]["onnxruntime"]
    # the registry's index hash is the signed target's
    targets = Repository.open(released.repo).targets()
    assert targets[pi["index"]]["hashes"]["sha256"] == pi["index_sha256"]


def test_list_show_history_and_diff_answer_in_json(released, capsys):
    args = ["--repo", released.repo, *_db_args(released), "--json"]
    assert cli("registry", "list", *args) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["schema"] == "edgeforge.registry.list/1"
    (model,) = listing["models"]
    assert model["name"] == "tiny" and model["versions"] == [1, 2]
    assert cli("registry", "history", "tiny", *args) == 0
    history = json.loads(capsys.readouterr().out)["history"]
    assert [row["version"] for row in history if row["event"] == "release"] == [1, 2]
    assert cli("registry", "diff", "tiny@1", "tiny@2", *args) == 0
    diff = json.loads(capsys.readouterr().out)
    rows = {row["device_class"]: row for row in diff["classes"]}
    assert rows["linux-x86"]["size_bytes"]["change"] == 0
    assert rows["raspberry-pi-4"]["size_bytes"]["b"] is None  # not in version 2
    assert rows["linux-x86"]["accuracy"]["a"] == 1.0
    assert cli("registry", "show", "tiny@2", "--repo", released.repo, *_db_args(released)) == 0
    assert "linux-x86: onnxruntime:fp32" in capsys.readouterr().out


def test_alias_moves_forward_and_back_only_with_downgrade(released, capsys):
    repo, db = released.repo, released.db
    moved = move_alias(repo, "tiny@2", "production", db=db)
    assert moved["changed"] and moved["from_version"] is None
    before_refusal = (tree(repo), registry_rows(released.url))
    args = ["--repo", repo, *_db_args(released)]
    assert cli("registry", "alias", "tiny@1", "production", *args) == 2
    err = capsys.readouterr().err
    assert "downgrade" in err and err.count("\n") == 1
    assert (tree(repo), registry_rows(released.url)) == before_refusal
    assert cli("registry", "alias", "tiny@1", "production", "--downgrade", *args, "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["downgrade"] and answer["to_version"] == 1
    # the signed aliases.json says what the registry says, with the downgrade in its history
    repository = Repository.open(repo)
    signed = json.loads(repository.target_file("tiny/aliases.json").read_bytes())
    assert signed["aliases"] == {"production": 1}
    assert [h["to_version"] for h in signed["history"]] == [2, 1]
    assert signed["history"][-1]["downgrade"] is True
    assert answer["targets_version"] == repository.metadata()["targets"].signed.version
    # moving it where it is publishes nothing
    unchanged = tree(repo)
    assert move_alias(repo, "tiny@1", "production", db=db)["changed"] is False
    assert tree(repo) == unchanged
    history = Registry(released.url).history("tiny").to_dict()["history"]
    moves = [row for row in history if row["event"] == "alias"]
    assert [(m["from_version"], m["to_version"], m["downgrade"]) for m in moves[-2:]] == [
        (None, 2, False),
        (2, 1, True),
    ]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["show", "tiny@nightly"], "no alias 'nightly'"),
        (["show", "tiny@9"], "no version 9"),
        (["show", "other"], "no model named 'other'"),
        (["alias", "tiny@9", "production"], "no version 9"),
        (["diff", "tiny@1", "tiny@nightly"], "no alias 'nightly'"),
    ],
)
def test_unknown_alias_version_or_model_is_one_line_and_exit_2(released, capsys, argv, says):
    before = (tree(released.repo), registry_rows(released.url))
    assert cli("registry", *argv, "--repo", released.repo, *_db_args(released)) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert (tree(released.repo), registry_rows(released.url)) == before


def test_local_store_is_content_addressed_and_refuses_tampered_objects(tmp_path):
    store = open_store(None, tmp_path / "repo")
    assert isinstance(store, LocalStore) and store.folder == (tmp_path / "repo-store").resolve()
    path = tmp_path / "a.bin"
    path.write_bytes(b"weights" * 100)
    digest = store.put(path)
    assert store.has(digest) and store.put(path) == digest
    assert store.get(digest, tmp_path / "out" / "a.bin").read_bytes() == path.read_bytes()
    (store.folder / "sha256" / digest[:2] / digest).write_bytes(b"evil")
    with pytest.raises(EdgeforgeError, match="does not hash to its name"):
        store.get(digest, tmp_path / "out" / "b.bin")
    assert not (tmp_path / "out" / "b.bin").exists()


@pytest.fixture
def s3_server(monkeypatch):
    """moto's S3 server on loopback (real HTTP), with a bucket."""
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="models")
    yield endpoint
    server.stop()


def test_release_into_an_s3_store_on_moto(tmp_path, s3_server):
    source = tiny_classifier(tmp_path / "tiny.onnx")
    Repository.init(tmp_path / "repo")
    result = release(
        source,
        tmp_path / "repo",
        "tiny",
        "linux-x86=onnxruntime",
        store="s3://models/releases",
        store_endpoint=s3_server,
        bench_runs=0,
        canary_count=4,
    )
    assert result.released and result.store == "s3://models/releases"
    store = S3Store("models", "releases", endpoint_url=s3_server)
    repository = Repository.open(tmp_path / "repo")
    for path, info in repository.targets().items():
        digest = info["hashes"]["sha256"]
        assert store.has(digest), path
        fetched = store.get(digest, tmp_path / "fetched" / digest)
        assert fetched.read_bytes() == repository.target_file(path).read_bytes()
    (variant,) = Registry.for_repository(tmp_path / "repo").show("tiny@1").to_dict()["variants"]
    assert variant["store"].startswith("s3://models/releases/sha256/")
    # a tampered object is refused on the way back
    store.client.put_object(Bucket="models", Key=store._object(digest), Body=b"evil")
    with pytest.raises(EdgeforgeError, match="does not hash"):
        store.get(digest, tmp_path / "evil")


def test_canary_set_is_plain_arrays(released):
    repository = Repository.open(released.repo)
    index = json.loads(repository.target_file("tiny/1/raspberry-pi-4/variant.json").read_bytes())
    with np.load(
        repository.target_file("tiny/1/raspberry-pi-4/canary.npz"), allow_pickle=False
    ) as canary:
        assert set(canary.files) == {"in/x", "out/logits"}
        assert canary["in/x"].shape[0] == index["canary"]["samples"] == 8
    assert index["canary"]["tolerance"]["rtol"] is None  # int8: judged on agreement
    assert Path(index["canary"]["file"]).name == "canary.npz"
