"""`edgeforge fleet simulate`: real agents, real HTTP to the real server, injected faults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fleet_agent_support import NAME, publish
from server_support import ENROLL, Server

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.simulate import parse_faults, simulate


def test_parse_faults():
    assert parse_faults("power-loss=1%,offline=5%,disk-full=0.01,liar=1%") == {
        "power-loss": 0.01, "offline": 0.05, "disk-full": 0.01, "liar": 0.01,
    }  # fmt: skip
    for bad in ("meteor=1%", "offline=lots", "offline=150%"):
        with pytest.raises(EdgeforgeError):
            parse_faults(bad)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from edgeforge.fleet.repository import Repository

    base = tmp_path_factory.mktemp("simulate")
    repo = Repository.init(base / "repo")
    for device_class in ("sim-a", "sim-b", "sim-cli"):
        publish(repo, base / "work", 1, device_class)
    server = Server(repo.path, f"sqlite:///{base / 'fleet.db'}").start()
    for device_class in ("sim-a", "sim-b", "sim-cli"):
        body = {"name": NAME, "version": 1, "device_class": device_class, "waves": "100%",
                "gate": "failure_rate<90%", "min_devices": 1, "confidence": 0.5}  # fmt: skip
        assert server.admin("POST", "/v1/admin/rollouts", body).status_code == 201
    yield server, repo, base
    server.stop()


@pytest.mark.slow
def test_simulated_fleet_with_faults_keeps_every_model(served):
    server, repo, base = served
    result = simulate(
        server.url,
        devices=12,
        classes=["sim-a", "sim-b"],
        faults=parse_faults("power-loss=15%,offline=20%,disk-full=10%,liar=10%"),
        rounds=5,
        state=base / "fleet",
        root=repo.path / "metadata" / "1.root.json",
        token=ENROLL,
        workers=4,
        seed=3,
    )
    print(result.to_dict())
    assert result.errors == []
    assert result.devices_without_model == 0
    assert result.checkins > 0 and result.offline_checkins > 0
    assert result.injected.get("power-loss", 0) > 0
    installed = sum(v for c in result.active.values() for k, v in c.items() if k != "none")
    assert installed >= 10  # most devices got version 1 despite the faults


def test_fleet_simulate_cli(served, tmp_path):
    server, repo, _ = served
    code = "import sys; from edgeforge.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code, "fleet", "simulate", "--server", server.url,
         "--devices", "2", "--classes", "sim-cli", "--rounds", "1", "--state", str(tmp_path),
         "--root", str(repo.path / "metadata/1.root.json"), "--token", ENROLL, "--json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["schema"] == "edgeforge.fleet-simulate/1"
    assert data["devices"] == 2 and data["devices_without_model"] == 0
    assert data["active"]["sim-cli"] == {f"{NAME}@1": 2}
