"""`edgeforge release ... --personalize LAYERS`: each variant ships a personalisation package in
`personalize/`, signed with the model, that a device fetches with the variant and can train; a
variant whose runtime cannot run the package's backbone says why; bad layers are refused before
anything is touched."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from release_helpers import cli, tree
from server_support import ENROLL, Server

from edgeforge.fleet import Agent
from edgeforge.fleet.agent._personal import package_folder
from edgeforge.fleet.client import fetch
from edgeforge.fleet.personal import PersonalizationPackage
from edgeforge.fleet.repository import Repository
from edgeforge.runtimes.base import file_sha256

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def factory():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        return model.eval(), (torch.zeros(1, 8),), {"input_names": ["features"]}
    """
)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("personal-source")
    (folder / "classifier.py").write_text(FACTORY)
    return f"{folder / 'classifier.py'}:factory"


@pytest.fixture
def repo(tmp_path) -> Path:
    return Repository.init(tmp_path / "repo").path


@pytest.mark.slow
def test_release_ships_the_package_signed_with_the_variant_and_a_device_trains_it(
    source, repo, tmp_path, http_server, capsys
):
    reference = tmp_path / "reference.npz"  # the training data, for the input adapter
    np.savez(reference, x=user(60, seed=3)[0] * 0.5, y=user(60, seed=3)[1])
    code = cli(
        "release", source, "--repo", repo, "--name", "clf", "--variants",
        "linux-x86=onnxruntime", "--personalize", "2", "--bench-runs", "0",
        "--personalize-reference", reference, "--canary-samples", "4", "--json",
    )  # fmt: skip
    answer = json.loads(capsys.readouterr().out)
    assert code == 0, answer
    (variant,) = answer["variants"]
    assert variant["personalize"] == {
        "present": True, "path": "personalize", "layers": ["2"],
        "forms": {"head": "built"}, "backbone": "onnxruntime",
    }  # fmt: skip
    assert "clf/1/linux-x86/personalize/personalize.json" in answer["targets"]

    got = fetch(
        http_server(repo), tmp_path / "state", "clf", "linux-x86", tmp_path / "out",
        version=1, root=repo / "metadata" / "1.root.json",
    )  # fmt: skip
    assert {"personalize/personalize.json", "personalize/head.npz"} <= set(got.files)
    assert got.index["personalize"]["path"] == "personalize"
    assert got.index["evidence"]["personalize"]["layers"] == ["2"]
    # the agent's lookup finds it in the fetched variant, as in its verified slot
    folder = package_folder(tmp_path / "out", got.index)
    assert folder == tmp_path / "out" / "personalize"
    package = PersonalizationPackage.load(folder)  # checks every file's sha256
    # the adapter's statistics came with it: aggregates only (3 class means, 8 spreads)
    assert package.input_stats.means.shape == (3, 8) and package.input_stats.spread.shape == (8,)
    # bound to exactly this release: a head trained on it is never applied to another
    assert package.release.to_dict() == {
        "name": "clf", "version": 1, "sha256": file_sha256(got.files["model.onnx"]),
    }  # fmt: skip
    # the backbone's logits are the released model's own
    import onnxruntime

    x = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    released = onnxruntime.InferenceSession(str(got.files["model.onnx"]))
    expected = np.concatenate([released.run(None, {"features": row[None]})[0] for row in x])
    logits, _ = package.embed({"features": x})
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)

    # A device receives it with the model: the agent installs version 1 through a rollout and
    # finds the package in its verified slot, then trains a head for the user there.
    server = Server(repo, f"sqlite:///{tmp_path / 'fleet.db'}").start()
    try:
        agent = Agent(
            tmp_path / "device", server=server.url, device_class="linux-x86",
            device_id="personal-release-0", token=ENROLL,
            root=repo / "metadata" / "1.root.json", probe_count=2,
        )  # fmt: skip
        body = {"name": "clf", "version": 1, "device_class": "linux-x86", "waves": "100%"}
        lenient = {"gate": "failure_rate<50%", "confidence": 0.6, "min_devices": 1}
        made = server.admin("POST", "/v1/admin/rollouts", {**body, **lenient})
        assert made.status_code == 201, made.text
        deadline = time.monotonic() + 60
        while (agent.status().committed or {}).get("version") != 1:
            assert time.monotonic() < deadline, agent.status()
            agent.step()
            time.sleep(0.1)
    finally:
        server.stop()
    slot = agent.personalization_package()
    assert slot.name == "personalize" and agent.state in slot.parents
    assert json.loads((slot / "personalize.json").read_text())["release"]["version"] == 1
    samples, labels = user(40, seed=1)
    result = agent.personalize({"features": samples}, labels, time_limit_s=30)
    assert result["release"] == {"name": "clf", "version": 1}
    assert result["kept"], result["reason"]


def user(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A user's three kinds of input, far apart: the untrained base model mixes them up."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(0, 3, (3, 8)).astype(np.float32)
    labels = rng.integers(0, 3, count)
    x = centres[labels] + rng.normal(0, 0.3, (count, 8))
    return x.astype(np.float32), labels.astype(np.int64)


def test_a_layer_the_model_does_not_have_is_refused_before_anything_changes(source, repo, capsys):
    before = tree(repo)
    code = cli(
        "release", source, "--repo", repo, "--name", "clf", "--variants",
        "linux-x86=onnxruntime", "--personalize", "fc9",
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--personalize fc9" in err and "its layers are 0, 1, 2" in err
    assert tree(repo) == before and not (repo / "registry.db").exists()


def test_a_reference_that_is_not_npz_arrays_is_one_line_and_nothing_changes(
    source, repo, tmp_path, capsys
):
    before = tree(repo)
    bad = tmp_path / "reference.npz"
    bad.write_text("not an archive")
    code = cli(
        "release", source, "--repo", repo, "--name", "clf", "--variants",
        "linux-x86=onnxruntime", "--personalize", "2", "--personalize-reference", bad,
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'x'" in err and "'y'" in err
    assert tree(repo) == before


def test_an_onnx_source_with_personalize_is_refused(repo, tmp_path, capsys):
    from release_helpers import tiny_classifier

    onnx_source = tiny_classifier(tmp_path / "tiny.onnx")
    code = cli(
        "release", onnx_source, "--repo", repo, "--name", "tiny", "--variants",
        "linux-x86=onnxruntime", "--personalize", "fc",
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "module:factory" in err.replace("'", "")


def test_a_runtime_that_cannot_run_the_backbone_gets_the_reason_not_a_silent_skip(source, tmp_path):
    from edgeforge.personalize import release as personal

    outcomes = personal.build(source, {"android": "litert"}, ["2"], None, tmp_path, name="clf")
    summary = outcomes["android"].summary()
    assert summary["present"] is False
    assert "litert device cannot run the package's backbone" in summary["reason"]
    assert not (tmp_path / "personalize").exists()  # nothing was built for it
    # the numpy head always; an ExecuTorch variant also gets its training program
    assert personal.forms_for("onnxruntime", None) == ["head"]
    assert personal.forms_for("executorch", None) == ["executorch", "head"]
    assert personal.forms_for("onnxruntime", ["coreml"]) == ["coreml", "head"]
