"""The TUF repository: init, open, publish (all or nothing), lock, rotate, re-sign."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.keys import private_keys_in
from edgeforge.fleet.repository import Repository


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


def test_init_writes_a_signed_repository_and_keys_beside_it(tmp_path):
    repo = Repository.init(tmp_path / "repo")
    assert repo.keys == (tmp_path / "repo-keys").resolve()
    meta = tmp_path / "repo" / "metadata"
    for name in ("1.root.json", "root.json", "1.targets.json", "1.snapshot.json"):
        assert (meta / name).is_file()
    root = Metadata.from_file(str(meta / "1.root.json"))
    assert root.signed.consistent_snapshot
    root.verify_delegate("root", root)
    for role in ("targets", "snapshot", "timestamp"):
        md = Metadata.from_file(str(meta / f"{role}.json"))
        root.verify_delegate(role, md)
    # keys: 0700 folders, 0600 files, online apart from offline, none in the served folder
    assert os.stat(repo.keys).st_mode & 0o777 == 0o700
    pems = list(repo.keys.rglob("*.pem"))
    assert len(pems) == 5
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in pems)
    assert {p.parent.name for p in pems} == {"root", "targets", "snapshot", "timestamp", "director"}
    assert private_keys_in(tmp_path / "repo") == []
    assert len(repo.director_public_key()) == 32


def test_default_expiry_and_configured_thresholds(tmp_path):
    repo = Repository.init(
        tmp_path / "repo",
        expiry={"timestamp": timedelta(hours=6)},
        thresholds={"targets": 2},
    )
    chain = repo.metadata()
    now = repo.clock()
    days = {role: (md.signed.expires - now).total_seconds() / 86400 for role, md in chain.items()}
    assert days["root"] == pytest.approx(365, abs=0.01)
    assert days["targets"] == pytest.approx(90, abs=0.01)
    assert days["snapshot"] == pytest.approx(7, abs=0.01)
    assert days["timestamp"] == pytest.approx(0.25, abs=0.01)
    assert chain["root"].signed.roles["targets"].threshold == 2
    assert len(chain["targets"].signatures) == 2


def test_publish_adds_hash_prefixed_targets_and_bumps_versions(tmp_path):
    repo = Repository.init(tmp_path / "repo")
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx bytes" * 100)
    custom = {"edgeforge": {"name": "m", "version": 1, "device_class": "linux-x86"}}
    with repo.lock():
        version = repo.publish(
            {"m/1/linux-x86/model.onnx": model}, {"m/1/linux-x86/model.onnx": custom}
        )
    assert version == 2
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert (tmp_path / "repo" / "targets" / "m" / "1" / "linux-x86" / f"{sha}.model.onnx").is_file()
    info = repo.targets()["m/1/linux-x86/model.onnx"]
    assert info == {"length": 1000, "hashes": {"sha256": sha}, "custom": custom}
    chain = repo.metadata()
    assert chain["snapshot"].signed.meta["targets.json"].version == 2
    assert chain["timestamp"].signed.snapshot_meta.version == chain["snapshot"].signed.version
    assert (tmp_path / "repo" / "metadata" / "2.targets.json").is_file()


def test_failed_publish_leaves_the_repository_as_it_was(tmp_path):
    repo = Repository.init(tmp_path / "repo")
    good = tmp_path / "good.bin"
    good.write_bytes(b"good")
    with repo.lock():
        repo.publish({"m/1/a/good.bin": good})
    before = _tree(tmp_path / "repo")
    with pytest.raises(EdgeforgeError, match="cannot read"):
        repo.publish({"m/2/a/good.bin": good, "m/2/a/missing.bin": tmp_path / "missing.bin"})
    assert _tree(tmp_path / "repo") == before

    # an exception while the metadata is being written (after targets were moved in)
    real = Repository._commit_chain

    def boom(self, tx, chain, **kw):
        real(self, tx, chain, **kw)
        raise RuntimeError("power cut in the middle")

    Repository._commit_chain = boom
    try:
        with pytest.raises(RuntimeError):
            repo.publish({"m/2/a/good.bin": good})
    finally:
        Repository._commit_chain = real
    assert _tree(tmp_path / "repo") == before


def test_open_refuses_what_is_not_a_repository_or_a_loose_key(tmp_path):
    with pytest.raises(EdgeforgeError, match="not an edgeforge repository"):
        Repository.open(tmp_path)
    Repository.init(tmp_path / "repo")
    pem = next((tmp_path / "repo-keys" / "online" / "timestamp").glob("*.pem"))
    pem.chmod(0o644)
    with pytest.raises(EdgeforgeError, match=f"chmod 600 {pem}"):
        Repository.open(tmp_path / "repo")
    pem.chmod(0o600)
    pem.rename(pem.with_suffix(".gone"))
    with pytest.raises(EdgeforgeError, match="timestamp keys"):
        Repository.open(tmp_path / "repo")


def test_keys_are_never_put_inside_the_served_folder(tmp_path):
    with pytest.raises(EdgeforgeError, match="inside the repository"):
        Repository.init(tmp_path / "repo", tmp_path / "repo" / "keys")
    Repository.init(tmp_path / "repo")
    stray = tmp_path / "repo" / "targets" / "oops.txt"
    stray.write_bytes(b"x" * 5000 + (tmp_path / "repo-keys").rglob("*.pem").__next__().read_bytes())
    assert private_keys_in(tmp_path / "repo") == [stray]


def test_concurrent_publishers_are_serialised(tmp_path):
    Repository.init(tmp_path / "repo")
    errors: list[BaseException] = []

    def release(index: int) -> None:
        try:
            repo = Repository.open(tmp_path / "repo")
            local = tmp_path / f"f{index}.bin"
            local.write_bytes(str(index).encode())
            with repo.lock():
                repo.publish({f"m/{index}/a/f.bin": local})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=release, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    repo = Repository.open(tmp_path / "repo")
    assert len(repo.targets()) == 6
    assert repo.metadata()["targets"].signed.version == 7


def test_resign_timestamp_only_when_expiring(tmp_path):
    repo = Repository.init(tmp_path / "repo")
    assert not repo.resign_timestamp(if_expiring_within=timedelta(hours=1))
    assert repo.resign_timestamp(if_expiring_within=timedelta(days=2))
    assert repo.metadata()["timestamp"].signed.version == 2
    assert repo.resign_online(if_expiring_within=timedelta(days=8)) == ["snapshot", "timestamp"]


@pytest.mark.parametrize("role", ["root", "targets", "snapshot", "timestamp"])
def test_rotate_signs_the_new_root_with_old_and_new_keys(tmp_path, role):
    repo = Repository.init(tmp_path / "repo")
    old_root = repo.metadata()["root"]
    new_ids = repo.rotate(role)
    chain = repo.metadata()
    new_root = chain["root"]
    assert new_root.signed.version == 2
    assert new_root.signed.roles[role].keyids == new_ids
    old_root.verify_delegate("root", new_root)  # the old threshold signed it
    new_root.verify_delegate("root", new_root)  # and the new one
    new_root.verify_delegate(role, chain[role])
    retired = list((repo.keys / "retired" / role).glob("*.pem"))
    assert len(retired) == 1


def test_director_key_signs(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    repo = Repository.init(tmp_path / "repo")
    signature = repo.director_sign(b"directive")
    Ed25519PublicKey.from_public_bytes(repo.director_public_key()).verify(signature, b"directive")
    json.dumps(repo.targets())


def test_keys_verbs(tmp_path, capsys):
    from edgeforge.cli import main

    repo = tmp_path / "repo"
    argv = ["keys", "init", "--repo", str(repo), "--expiry", "timestamp=0.5,snapshot=3"]
    assert main([*argv, "--threshold", "targets=2", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["schema"] == "edgeforge.keys/1"
    assert shown["roles"]["targets"]["threshold"] == 2
    assert shown["trusted_root"].endswith("metadata/1.root.json")
    assert main(["keys", "rotate", "timestamp", "--repo", str(repo), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["rotated"] == "timestamp"
    assert shown["trusted_root"].endswith("metadata/2.root.json")
    # bad input: one line, exit 2, the repository unchanged
    assert main(["keys", "init", "--repo", str(repo)]) == 2
    assert "already a repository" in capsys.readouterr().err
    assert main(["keys", "rotate", "--repo", str(tmp_path)]) == 2
    assert main(["keys", "rotate", "targets", "--repo", str(tmp_path)]) == 2
    assert "not an edgeforge repository" in capsys.readouterr().err
    assert main(["keys", "init", "--repo", str(tmp_path / "r2"), "--expiry", "nope=3"]) == 2
    assert "unknown role 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_external_signer_uri(tmp_path):
    """A targets key held outside the keys folder, named by a securesystemslib signer URI."""
    from securesystemslib.signer import CryptoSigner

    from edgeforge.fleet.keys import public_key_from_uri

    offline = tmp_path / "offline"
    offline.mkdir(mode=0o700)
    signer = CryptoSigner.generate_ed25519()
    pem = offline / "targets.pem"
    pem.write_bytes(signer.private_bytes)
    pem.chmod(0o600)
    uri = f"file2:{pem}"
    repo = Repository.init(
        tmp_path / "repo", signers={"targets": [(uri, public_key_from_uri(uri))]}
    )
    assert not list((repo.keys / "targets").glob("*.pem"))  # no key made for targets
    local = tmp_path / "a.bin"
    local.write_bytes(b"a")
    repo = Repository.open(tmp_path / "repo")
    with repo.lock():
        repo.publish({"m/1/c/a.bin": local})
    root = repo.metadata()["root"]
    assert root.signed.roles["targets"].keyids == [signer.public_key.keyid]
    root.verify_delegate("targets", repo.metadata()["targets"])
    pem.chmod(0o640)
    with pytest.raises(EdgeforgeError, match=f"chmod 600 {pem}"):
        repo.publish({"m/1/c/b.bin": local})


def test_publish_move_links_the_file_in_and_removes_it_only_on_success(tmp_path):
    repo = Repository.init(tmp_path / "repo")
    local = tmp_path / "release-tmp.bin"
    local.write_bytes(b"artifact")
    before = _tree(tmp_path / "repo")
    with pytest.raises(EdgeforgeError):
        repo.publish({"m/1/a/x.bin": local, "m/1/a/y.bin": tmp_path / "gone"}, move=True)
    assert local.read_bytes() == b"artifact" and _tree(tmp_path / "repo") == before
    repo.publish({"m/1/a/x.bin": local}, move=True)
    assert not local.exists()
    assert repo.target_file("m/1/a/x.bin").read_bytes() == b"artifact"


def test_failed_init_leaves_no_keys_behind(tmp_path):
    from securesystemslib.signer import CryptoSigner

    key = CryptoSigner.generate_ed25519().public_key
    with pytest.raises(EdgeforgeError, match="cannot use the signer"):
        Repository.init(tmp_path / "repo", signers={"targets": [(f"file2:{tmp_path}/no.pem", key)]})
    assert not (tmp_path / "repo").exists() and not (tmp_path / "repo-keys").exists()
    Repository.init(tmp_path / "repo")  # and a second try works


def test_private_keys_are_found_through_links(tmp_path):
    Repository.init(tmp_path / "repo")
    (tmp_path / "repo" / "targets" / "linked").symlink_to(tmp_path / "repo-keys")
    (tmp_path / "repo" / "targets" / "loop").symlink_to(tmp_path / "repo" / "targets")
    found = private_keys_in(tmp_path / "repo")
    assert len(found) == 5 and all("linked" in str(p) for p in found)
