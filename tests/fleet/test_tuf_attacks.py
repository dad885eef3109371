"""Attacks on a release, one test each, in the manner of python-tuf's tests.

Each test's docstring says what the attacker controls. "The mirror" is the server (or folder)
the device downloads from: it can serve any bytes under any name, but holds no key. Unless said
otherwise the device has already verified one release, so its state folder remembers versions.
Every refusal leaves `out` unwritten (or the earlier fetch in place).
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, MetaFile, TargetFile
from tuf.api.serialization.json import JSONSerializer

from edgeforge.fleet import keys as keystore
from edgeforge.fleet.client import UpdateRefused, fetch

# `repo` below is tests/fleet/conftest.py's TufRepo (repo, path, root, scratch).


# ------------------------------------------------------------------------------------ helpers


def _meta(repo: Any, name: str) -> Metadata:
    return Metadata.from_file(str(repo.path / "metadata" / name))


def _put(repo: Any, name: str, md: Metadata) -> None:
    (repo.path / "metadata" / name).write_bytes(md.to_bytes(JSONSerializer(compact=True)))


def _stolen(repo: Any, role: str) -> list[Signer]:
    """The private keys of `role` that an attacker has taken from the keys folder."""
    root = repo.repo.metadata()["root"].signed
    public = {keyid: root.keys[keyid] for keyid in root.roles[role].keyids}
    return keystore.load_signers(repo.repo.keys, role, public)


def _resign(md: Metadata, signers: list[Signer]) -> None:
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)


def _fetch(repo: Any, where: str | Path, state: Path, out: Path, **kw) -> object:
    kw.setdefault("version", None if "alias" in kw else 1)
    kw.setdefault("device_class", "linux-x86")
    return fetch(where, state, "demo", kw.pop("device_class"), out, root=repo.root, **kw)


def _refused(cause: type[Exception], call, *args, **kw) -> UpdateRefused:
    with pytest.raises(UpdateRefused) as caught:
        call(*args, **kw)
    assert isinstance(caught.value.__cause__, cause), repr(caught.value.__cause__)
    return caught.value


@pytest.fixture
def device(tuf_repo, http_server, tmp_path):
    """A device that has fetched demo 1 over HTTP: (url, state, out)."""
    url = http_server(tuf_repo.path)
    state, out = tmp_path / "state", tmp_path / "out"
    _fetch(tuf_repo, url, state, out)
    return url, state, out


def _release_two(repo: Any) -> None:
    repo.publish_variant("demo", 2, "linux-x86", {"model.onnx": b"version two" * 40})
    repo.set_aliases("demo", {"production": 2})


# ------------------------------------------------------------------------- arbitrary artifact


def test_arbitrary_artifact_hash_mismatch(tuf_repo, device):
    """The mirror serves other bytes of the same length in place of the signed model."""
    url, state, out = device
    _release_two(tuf_repo)
    model = tuf_repo.repo.target_file("demo/2/linux-x86/model.onnx")
    model.write_bytes(b"X" * model.stat().st_size)
    _refused(tuf_errors.LengthOrHashMismatchError, _fetch, tuf_repo, url, state, out, version=2)
    assert (out / "model.onnx").read_bytes() == b"demo 1 linux-x86" * 50  # the earlier fetch


def test_arbitrary_artifact_length_mismatch(tuf_repo, device):
    """The mirror serves a shorter file in place of the signed model."""
    url, state, out = device
    _release_two(tuf_repo)
    model = tuf_repo.repo.target_file("demo/2/linux-x86/model.onnx")
    model.write_bytes(model.read_bytes()[:-7])
    _refused(tuf_errors.LengthOrHashMismatchError, _fetch, tuf_repo, url, state, out, version=2)


# ---------------------------------------------------------------- unsigned and wrongly signed


def test_unsigned_metadata(tuf_repo, http_server, tmp_path):
    """The mirror serves a newer timestamp with its signatures stripped."""
    timestamp = _meta(tuf_repo, "timestamp.json")
    timestamp.signed.version += 1
    timestamp.signatures.clear()
    _put(tuf_repo, "timestamp.json", timestamp)
    url = http_server(tuf_repo.path)
    _refused(
        tuf_errors.UnsignedMetadataError, _fetch, tuf_repo, url, tmp_path / "s", tmp_path / "o"
    )
    assert not (tmp_path / "o").exists()


def test_wrongly_signed_metadata(tuf_repo, http_server, tmp_path):
    """The mirror adds its own target to the signed targets metadata (keeping the old
    signature), and separately signs a timestamp with a key of its own making."""
    version = _meta(tuf_repo, "snapshot.json").signed.meta["targets.json"].version
    name = f"{version}.targets.json"
    original = (tuf_repo.path / "metadata" / name).read_bytes()
    targets = _meta(tuf_repo, name)
    targets.signed.targets["demo/1/linux-x86/evil.bin"] = TargetFile(3, {"sha256": "0" * 64}, "x")
    _put(tuf_repo, name, targets)
    url = http_server(tuf_repo.path)
    _refused(
        tuf_errors.UnsignedMetadataError, _fetch, tuf_repo, url, tmp_path / "s", tmp_path / "o"
    )

    (tuf_repo.path / "metadata" / name).write_bytes(original)
    timestamp = _meta(tuf_repo, "timestamp.json")
    timestamp.signed.version += 1
    _resign(timestamp, [CryptoSigner.generate_ed25519()])
    _put(tuf_repo, "timestamp.json", timestamp)
    _refused(
        tuf_errors.UnsignedMetadataError, _fetch, tuf_repo, url, tmp_path / "t", tmp_path / "o"
    )


# ------------------------------------------------------------------------------------ rollback


def test_timestamp_version_rollback(tuf_repo, device):
    """The mirror replays an older timestamp (validly signed, not expired) to a device that has
    seen a newer one, to hide release 2."""
    url, state, out = device
    old = (tuf_repo.path / "metadata" / "timestamp.json").read_bytes()
    _release_two(tuf_repo)
    _fetch(tuf_repo, url, state, out, alias="production")  # the device sees release 2
    (tuf_repo.path / "metadata" / "timestamp.json").write_bytes(old)
    _refused(tuf_errors.BadVersionNumberError, _fetch, tuf_repo, url, state, out, version=1)


def test_snapshot_version_rollback(tuf_repo, device):
    """The server and its online timestamp key: a fresh timestamp that points at an older
    snapshot (one that does not list release 2)."""
    url, state, out = device
    old_snapshot = _meta(tuf_repo, "timestamp.json").signed.snapshot_meta.version
    _release_two(tuf_repo)
    _fetch(tuf_repo, url, state, out, alias="production")
    timestamp = _meta(tuf_repo, "timestamp.json")
    timestamp.signed.version += 1
    timestamp.signed.snapshot_meta = MetaFile(old_snapshot)
    _resign(timestamp, _stolen(tuf_repo, "timestamp"))
    _put(tuf_repo, "timestamp.json", timestamp)
    _refused(tuf_errors.BadVersionNumberError, _fetch, tuf_repo, url, state, out, version=1)


def test_targets_version_rollback(tuf_repo, device):
    """The server and its online snapshot and timestamp keys: a fresh snapshot that lists an
    older targets version (one without release 2), and a timestamp for it."""
    url, state, out = device
    old_targets = _meta(tuf_repo, "snapshot.json").signed.meta["targets.json"].version
    _release_two(tuf_repo)
    _fetch(tuf_repo, url, state, out, alias="production")
    snapshot = _meta(tuf_repo, "snapshot.json")
    snapshot.signed.version += 1
    snapshot.signed.meta["targets.json"] = MetaFile(old_targets)
    _resign(snapshot, _stolen(tuf_repo, "snapshot"))
    _put(tuf_repo, f"{snapshot.signed.version}.snapshot.json", snapshot)
    timestamp = _meta(tuf_repo, "timestamp.json")
    timestamp.signed.version += 1
    timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
    _resign(timestamp, _stolen(tuf_repo, "timestamp"))
    _put(tuf_repo, "timestamp.json", timestamp)
    _refused(tuf_errors.BadVersionNumberError, _fetch, tuf_repo, url, state, out, version=1)


# -------------------------------------------------------------------------------------- freeze


def test_freeze_expired_timestamp(tuf_repo, tmp_path):
    """The mirror keeps serving the same valid metadata forever (withholding new releases);
    the device's clock moves two days on, past the timestamp's one-day expiry."""
    state, out = tmp_path / "state", tmp_path / "out"
    _fetch(tuf_repo, tuf_repo.path, state, out)
    later = tuf_repo.repo.clock() + timedelta(days=2)
    with freeze_time(later):
        _refused(tuf_errors.ExpiredMetadataError, _fetch, tuf_repo, tuf_repo.path, state, out)


def test_freeze_expired_snapshot(tuf_repo, tmp_path):
    """The server and its online timestamp key: it keeps the timestamp fresh but freezes the
    snapshot; eight days on, the snapshot (seven days) has expired."""
    state, out = tmp_path / "state", tmp_path / "out"
    _fetch(tuf_repo, tuf_repo.path, state, out)
    later = tuf_repo.repo.clock() + timedelta(days=8)
    tuf_repo.repo.clock = lambda: later
    assert tuf_repo.repo.resign_timestamp()  # timestamp only: the snapshot stays frozen
    with freeze_time(later):
        _refused(tuf_errors.ExpiredMetadataError, _fetch, tuf_repo, tuf_repo.path, state, out)
        tuf_repo.repo.resign_online()  # the honest server's schedule: both fresh again
        _fetch(tuf_repo, tuf_repo.path, state, out)


# -------------------------------------------------------------------------------- mix and match


def test_mix_and_match(tuf_repo, http_server, tmp_path):
    """The mirror serves the current snapshot with the targets metadata of an earlier release
    (under the current version's file name)."""
    _release_two(tuf_repo)
    current = _meta(tuf_repo, "snapshot.json").signed.meta["targets.json"].version
    meta = tuf_repo.path / "metadata"
    shutil.copy(meta / f"{current - 2}.targets.json", meta / f"{current}.targets.json")
    url = http_server(tuf_repo.path)
    _refused(
        tuf_errors.BadVersionNumberError,
        _fetch,
        tuf_repo,
        url,
        tmp_path / "s",
        tmp_path / "o",
        version=2,
    )


# -------------------------------------------------------------------------------- endless data


def test_endless_data_metadata(tuf_repo, device):
    """The mirror serves a timestamp far longer than any timestamp may be (16 kB cap)."""
    url, state, out = device
    path = tuf_repo.path / "metadata" / "timestamp.json"
    path.write_bytes(path.read_bytes() + b" " * (1 << 20))
    _refused(tuf_errors.DownloadLengthMismatchError, _fetch, tuf_repo, url, state, out)


def test_endless_data_artifact(tuf_repo, device):
    """The mirror serves the signed model followed by endless extra bytes."""
    url, state, out = device
    _release_two(tuf_repo)
    model = tuf_repo.repo.target_file("demo/2/linux-x86/model.onnx")
    model.write_bytes(model.read_bytes() + b"\0" * (4 << 20))
    _refused(tuf_errors.DownloadLengthMismatchError, _fetch, tuf_repo, url, state, out, version=2)


# --------------------------------------------------------------------------------- thresholds


def test_key_compromise_below_threshold(tmp_path, http_server, tuf_repo_factory):
    """The server with its online keys, and one of the two targets keys the root requires:
    it signs a targets version that swaps the model, with that one key."""
    made = tuf_repo_factory(tmp_path, thresholds={"targets": 2})
    repo, scratch = made.repo, made.scratch
    url = http_server(repo.path)
    state, out = tmp_path / "state", tmp_path / "out"
    _fetch(made, url, state, out)

    evil = scratch / "evil.onnx"
    evil.write_bytes(b"evil")
    chain = repo.metadata()
    targets, snapshot, timestamp = chain["targets"], chain["snapshot"], chain["timestamp"]
    targets.signed.targets["demo/1/linux-x86/model.onnx"] = TargetFile.from_file(
        "demo/1/linux-x86/model.onnx", str(evil)
    )
    targets.signed.version += 1
    _resign(targets, _stolen(made, "targets")[:1])
    _put(made, f"{targets.signed.version}.targets.json", targets)
    snapshot.signed.version += 1
    snapshot.signed.meta["targets.json"] = MetaFile(targets.signed.version)
    _resign(snapshot, _stolen(made, "snapshot"))
    _put(made, f"{snapshot.signed.version}.snapshot.json", snapshot)
    timestamp.signed.version += 1
    timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
    _resign(timestamp, _stolen(made, "timestamp"))
    _put(made, "timestamp.json", timestamp)
    _refused(tuf_errors.UnsignedMetadataError, _fetch, made, url, state, out)


# ------------------------------------------------------------------------------ root rotation


def test_root_rotation_is_followed_from_the_shipped_root(tuf_repo, http_server, tmp_path):
    """No attacker: root and targets keys are rotated; a device that shipped with root 1 walks
    to root 3 (each signed by the old and new keys) and verifies the release."""
    tuf_repo.repo.rotate("root")
    tuf_repo.repo.rotate("targets")
    url = http_server(tuf_repo.path)
    state = tmp_path / "state"
    got = _fetch(tuf_repo, url, state, tmp_path / "out", alias="production")
    assert got.version == 1
    trusted = Metadata.from_file(str(state / "metadata" / "root.json"))
    assert trusted.signed.version == 3


def test_root_rotation_with_a_compromised_old_root_key(tuf_repo, device):
    """The old root key (rotated out, then stolen) and the mirror: a root version 3 that hands
    the targets role to the attacker, signed by the old root key. A device that has seen the
    rotation to root 2 needs root 2's keys and refuses it."""
    url, state, out = device
    old_root_keys = _stolen(tuf_repo, "root")
    tuf_repo.repo.rotate("root")
    _fetch(tuf_repo, url, state, out)  # the device now trusts root 2
    root = _meta(tuf_repo, "root.json")
    attacker = CryptoSigner.generate_ed25519()
    for keyid in list(root.signed.roles["targets"].keyids):
        root.signed.revoke_key(keyid, "targets")
    root.signed.add_key(attacker.public_key, "targets")
    for keyid in list(root.signed.roles["root"].keyids):
        root.signed.revoke_key(keyid, "root")
    for signer in old_root_keys:
        root.signed.add_key(signer.public_key, "root")
    root.signed.version = 3
    _resign(root, old_root_keys)
    _put(tuf_repo, "3.root.json", root)
    _refused(tuf_errors.UnsignedMetadataError, _fetch, tuf_repo, url, state, out)


# ------------------------------------------------------------------------- model-specific ones


def test_wrong_device_class(tuf_repo, http_server, tmp_path):
    """What one release pipeline uploads, not the keys: an android build filed under ios,
    first with variant.json saying android, then with the signed label saying android."""
    tuf_repo.publish_variant("demo", 2, "ios", index={"device_class": "android"})
    url = http_server(tuf_repo.path)
    state, out = tmp_path / "state", tmp_path / "out"
    with pytest.raises(UpdateRefused, match="built for device class 'android'"):
        _fetch(tuf_repo, url, state, out, version=2, device_class="ios")
    tuf_repo.publish_variant("demo", 3, "ios", label="android")
    with pytest.raises(UpdateRefused, match="signed for"):
        _fetch(tuf_repo, url, state, out, version=3, device_class="ios")
    assert not out.exists()


def test_stale_alias(tuf_repo, device):
    """The mirror serves the old aliases.json (production -> 1) after production moved to 2,
    under the name the signed metadata gives the new one."""
    url, state, out = device
    old = tuf_repo.repo.target_file("demo/aliases.json").read_bytes()
    _release_two(tuf_repo)
    tuf_repo.repo.target_file("demo/aliases.json").write_bytes(old)
    _refused(
        tuf_errors.LengthOrHashMismatchError, _fetch, tuf_repo, url, state, out, alias="production"
    )
    assert json.loads((out / "variant.json").read_text())["version"] == 1


def test_evidence_tamper(tuf_repo, http_server, tmp_path):
    """The mirror edits the evidence in variant.json after it was signed (a better accuracy)."""
    path = tuf_repo.repo.target_file("demo/1/linux-x86/variant.json")
    index = json.loads(path.read_text())
    index["evidence"]["accuracy"]["top1"] = 0.99
    path.write_text(json.dumps(index, indent=2))
    url = http_server(tuf_repo.path)
    _refused(
        tuf_errors.LengthOrHashMismatchError, _fetch, tuf_repo, url, tmp_path / "s", tmp_path / "o"
    )
