"""The device client: fetch a variant over HTTP or from a folder, verified, written atomically."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.client import UpdateRefused, check, fetch


def test_fetch_by_version_over_http(tuf_repo, http_server, tmp_path):
    url = http_server(tuf_repo.path)
    got = fetch(
        url,
        tmp_path / "state",
        "demo",
        "linux-x86",
        tmp_path / "out",
        version=1,
        root=tuf_repo.root,
    )
    assert got.version == 1 and got.device_class == "linux-x86"
    assert got.index["device_class"] == "linux-x86"
    assert set(got.files) == {"model.onnx"}
    data = (tmp_path / "out" / "model.onnx").read_bytes()
    assert hashlib.sha256(data).hexdigest() == got.index["files"][0]["sha256"]
    assert json.loads((tmp_path / "out" / "variant.json").read_text()) == got.index
    assert (tmp_path / "state" / "metadata" / "timestamp.json").is_file()
    json.dumps(got.to_dict())


def test_fetch_by_alias_from_a_folder_and_later_without_root(tuf_repo, tmp_path):
    state = tmp_path / "state"
    got = fetch(
        tuf_repo.path,
        state,
        "demo",
        "linux-x86",
        tmp_path / "out",
        alias="production",
        root=tuf_repo.root,
    )
    assert got.version == 1
    tuf_repo.publish_variant("demo", 2, "linux-x86", {"model.onnx": b"v2" * 10})
    tuf_repo.set_aliases("demo", {"production": 2})
    # the second run trusts the state, not a root passed again
    got = fetch(tuf_repo.path, state, "demo", "linux-x86", tmp_path / "out", alias="production")
    assert got.version == 2
    assert (tmp_path / "out" / "model.onnx").read_bytes() == b"v2" * 10
    assert check(tuf_repo.path, state, "demo", alias="production") == 2


def test_bad_requests_get_one_line(tuf_repo, tmp_path):
    state = tmp_path / "state"
    with pytest.raises(EdgeforgeError, match="pass --root"):
        fetch(tuf_repo.path, state, "demo", "linux-x86", tmp_path / "out", version=1)
    with pytest.raises(EdgeforgeError, match=r"no alias 'beta'.*production"):
        fetch(
            tuf_repo.path,
            state,
            "demo",
            "linux-x86",
            tmp_path / "out",
            alias="beta",
            root=tuf_repo.root,
        )
    with pytest.raises(EdgeforgeError, match="no variant for device class ios"):
        fetch(tuf_repo.path, state, "demo", "ios", tmp_path / "out", version=1)
    with pytest.raises(EdgeforgeError, match="not a repository folder"):
        fetch(tmp_path, state, "demo", "ios", tmp_path / "out", version=1)
    with pytest.raises(EdgeforgeError, match="either a version or an alias"):
        fetch(tuf_repo.path, state, "demo", "ios", tmp_path / "out")


def test_a_refused_fetch_leaves_the_earlier_one_in_place(tuf_repo, tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    fetch(tuf_repo.path, state, "demo", "linux-x86", out, version=1, root=tuf_repo.root)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    tuf_repo.publish_variant("demo", 2, "linux-x86", {"model.onnx": b"two" * 100})
    target = tuf_repo.repo.target_file("demo/2/linux-x86/model.onnx")
    target.write_bytes(b"TWO" * 100)  # the mirror serves other bytes
    with pytest.raises(UpdateRefused):
        fetch(tuf_repo.path, state, "demo", "linux-x86", out, version=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_client_imports_no_torch(tmp_path):
    code = (
        "import sys, edgeforge.fleet.client; "
        "bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'openvino') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fetch_verb(tuf_repo, http_server, tmp_path, capsys):
    from edgeforge.cli import main

    url = http_server(tuf_repo.path)
    argv = [
        "fetch",
        "--repo",
        url,
        "--state",
        str(tmp_path / "state"),
        "--root",
        str(tuf_repo.root),
        "--name",
        "demo",
        "--alias",
        "production",
        "--device-class",
        "linux-x86",
        "--out",
        str(tmp_path / "out"),
        "--json",
    ]
    assert main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["schema"] == "edgeforge.fetch/1"
    assert shown["version"] == 1
    argv[argv.index("production")] = "nope"
    assert main(argv) == 2
    assert "no alias 'nope'" in capsys.readouterr().err
