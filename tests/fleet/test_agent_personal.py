"""The agent's personal head through a real rollout and a rollback (`edgeforge serve` in a
subprocess, real HTTP, a real TUF repository): a head is kept only when it beats the base
model on the user's own check samples, is used by `predict` for the release it was trained
on, and is never applied to another backbone: dropped when version 2 commits, dropped again
when the abort rolls the device back to version 1, refused when planted under a forged record.
The report says that personalisation ran and whether the head was kept, nothing else."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from agent_harness import expected
from fleet_agent_support import NAME, canary_feed, publish
from server_support import ENROLL, Server

from edgeforge.fleet import Agent
from edgeforge.fleet.personal import SCHEMA

# Every test shares one `edgeforge serve` (started in the module's fixture): slow together.
pytestmark = pytest.mark.slow

CLASS = "cls-personal"
# The user's three kinds of input: the base model (y = x @ W * version) calls them all
# class 0 or 7; a personal head on the embedding (here the input itself) tells them apart.
CENTRES = {1: np.full(8, 1.5), 4: np.tile([1.5, -1.5], 4), 6: np.repeat([-1.5, 1.5], 4)}


def user_samples(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(sorted(CENTRES), size=count)
    x = np.stack([CENTRES[int(k)] for k in labels]) + rng.normal(0, 0.3, (count, 8))
    return x.astype(np.float32).reshape(count, 1, 8), labels.astype(np.int64)


def make_package(folder: Path, version: int) -> Path:
    """A personalisation package in the builder's layout for `make_model(version)`: an ONNX
    backbone returning (logits = x @ W * version, embedding = x) and a linear head whose
    base weights reproduce the logits (what `edgeforge personalize` writes, made by hand
    here so that the test needs no torch export)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = (np.arange(64, dtype=np.float32).reshape(8, 8) / 64.0) * version
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
            helper.make_node("Identity", ["x"], ["embedding"]),
        ],
        "backbone",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 8]),
        ],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    (folder / "backbone" / "onnxruntime").mkdir(parents=True)
    onnx.save(model, folder / "backbone" / "onnxruntime" / "model.onnx")
    np.savez(folder / "head.npz", **{"fc.weight": weight.T.copy(), "fc.bias": np.zeros(8)})

    def sha(path: str) -> str:
        return hashlib.sha256((folder / path).read_bytes()).hexdigest()

    backbone = "backbone/onnxruntime/model.onnx"
    index = {
        "schema": SCHEMA,
        "release": {"name": NAME, "version": version, "sha256": sha(backbone)},
        "inputs": [{"name": "x", "shape": [1, 8], "dtype": "float32"}],
        "classes": 8,
        "embedding_size": 8,
        "head": {
            "layers": [{"name": "fc", "kind": "linear", "trainable": True}],
            "params": "head.npz",
        },
        "backbones": {"onnxruntime": {"file": backbone, "sha256": sha(backbone)}},
        "forms": {"head": {"file": "head.npz", "trainer": "numpy SGD on the head"}},
        "training": {"lr": 0.05, "epochs": 40, "batch": 8, "folds": 5, "margin": 1, "seed": 0},
        "files": [{"path": p, "sha256": sha(p)} for p in (backbone, "head.npz")],
    }  # fmt: skip
    (folder / "personalize.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from edgeforge.fleet.repository import Repository

    base = tmp_path_factory.mktemp("agent-personal")
    repo = Repository.init(base / "repo")
    for version in (1, 2):
        package = make_package(base / f"package-{version}", version)
        publish(repo, base / "work", version, CLASS, personalize=package)
    server = Server(repo.path, f"sqlite:///{base / 'fleet.db'}").start()
    agent = Agent(
        base / "device",
        server=server.url,
        device_class=CLASS,
        device_id="personal-0",
        token=ENROLL,
        root=repo.path / "metadata" / "1.root.json",
        probe_count=2,
    )
    yield server, agent
    server.stop()


def rollout(server, version: int) -> int:
    body = {"name": NAME, "version": version, "device_class": CLASS, "waves": "100%"}
    lenient = {"gate": "failure_rate<50%", "confidence": 0.6, "min_devices": 1}
    answer = server.admin("POST", "/v1/admin/rollouts", {**body, **lenient})
    assert answer.status_code == 201, answer.text
    return answer.json()["rollouts"][0]["id"]


def until(agent: Agent, version: int, server=None, rollout_id: int | None = None) -> None:
    """Check in until the agent runs `version` (and the rollout, if given, completed)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        agent.step()
        committed = agent.status().committed
        done = committed and committed["version"] == version and agent.status().state == "idle"
        if done and rollout_id is not None:
            status = server.admin("GET", f"/v1/admin/rollouts/{rollout_id}").json()
            done = status["state"] == "completed"
        if done:
            return
        time.sleep(0.1)
    raise AssertionError(f"the agent never committed version {version}: {agent.status()}")


def accuracy(agent: Agent, x: np.ndarray, y: np.ndarray) -> float:
    right = [agent.predict({"x": s})["y"].argmax() == k for s, k in zip(x, y, strict=True)]
    return float(np.mean(right))


def test_head_is_never_applied_to_a_backbone_it_was_not_trained_on(fleet):
    server, agent = fleet
    first = rollout(server, 1)
    until(agent, 1, server, first)
    x, y = user_samples(30, seed=1)
    held_x, held_y = user_samples(30, seed=2)
    base = accuracy(agent, held_x, held_y)

    result = agent.personalize({"x": x.reshape(-1, 8)}, y, time_limit_s=30)
    assert result["kept"], result["reason"]
    assert result["release"] == {"name": NAME, "version": 1}
    assert accuracy(agent, held_x, held_y) > base + 0.5  # predict uses the head
    # The report: that it ran and that the head was kept; nothing of the samples.
    event = json.loads((agent.state / "outbox.json").read_text())[-1]
    assert {k: event[k] for k in ("kind", "version", "ok", "detail", "metrics")} == {
        "kind": "personalize", "version": 1, "ok": True, "detail": "kept", "metrics": {},
    }  # fmt: skip
    kept_v1 = agent.state / "kept-v1"
    shutil.copytree(agent.state / "personal", kept_v1)

    # Version 2 (another backbone) commits: the head trained on version 1 goes.
    second = rollout(server, 2)
    until(agent, 2)
    assert not (agent.state / "personal").exists()
    np.testing.assert_allclose(agent.predict(canary_feed())["y"], expected(2), rtol=1e-5)
    assert agent.status().outbox == 0  # the server took the personalize report

    # A head planted under a forged record (bound to version 2, trained on version 1's
    # backbone) is refused by the backbone check, and dropped.
    shutil.copytree(kept_v1, agent.state / "personal")
    (agent.state / "personal" / "bound.json").write_text(json.dumps({"name": NAME, "version": 2}))
    np.testing.assert_allclose(agent.predict(canary_feed())["y"], expected(2), rtol=1e-5)
    assert not (agent.state / "personal").exists()

    # A head for version 2, then the abort rolls the device back to version 1: dropped.
    assert agent.personalize({"x": x.reshape(-1, 8)}, y, time_limit_s=30)["kept"]
    assert agent.status().personal["version"] == 2
    answer = server.admin("POST", f"/v1/admin/rollouts/{second}/abort")
    assert answer.status_code == 200, answer.text
    until(agent, 1)
    assert agent.status().active["version"] == 1
    assert not (agent.state / "personal").exists()
    assert agent.status().personal is None
    np.testing.assert_allclose(agent.predict(canary_feed())["y"], expected(1), rtol=1e-5)
    assert first != second


def test_personalize_discards_a_head_that_does_not_beat_the_base_model(fleet, tmp_path):
    server, agent = fleet
    if agent.status().active is None:
        until(agent, 1, server, rollout(server, 1))
    # Labels the base model already gets right: a head cannot do strictly better.
    x = np.random.default_rng(3).normal(size=(12, 8)).astype(np.float32)
    labels = np.array([agent.predict({"x": s[None]})["y"].argmax() for s in x])
    result = agent.personalize({"x": x}, labels, time_limit_s=30)
    assert not result["kept"]
    assert "discarded" in result["reason"] and "base model" in result["reason"]
    assert accuracy(agent, x[:, None], labels) == 1.0
    event = json.loads((agent.state / "outbox.json").read_text())[-1]
    assert (event["kind"], event["ok"], event["detail"]) == ("personalize", False, "discarded")


def test_agent_personalize_cli_reads_a_data_folder_and_refuses_unlabelled_data(
    fleet, tmp_path, capsys
):
    from edgeforge.cli import main

    server, agent = fleet
    if agent.status().active is None:
        until(agent, 1, server, rollout(server, 1))
    x, y = user_samples(20, seed=5)
    data = tmp_path / "data"
    data.mkdir()
    for i, (sample, label) in enumerate(zip(x, y, strict=True)):
        np.savez(data / f"{i:02}.npz", x=sample, label=np.array([label]))
    assert main(["agent", "personalize", "--state", str(agent.state), "--data", str(data),
                 "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["kept"] and result["train_samples"] == 20, result

    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    np.savez(unlabelled / "a.npz", x=x[0])
    assert main(["agent", "personalize", "--state", str(agent.state), "--data",
                 str(unlabelled)]) == 2  # fmt: skip
    assert "needs a label" in capsys.readouterr().err
