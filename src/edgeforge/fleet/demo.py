"""The demo's fleet step: a real server, a few real agents, a rollout in two waves.

`roll_out(repo, folder)` starts `edgeforge serve` on a free loopback port (a child process, its
own SQLite database and generated tokens in `folder`), enrols `devices` agents of one class (the
real `Agent`, each with its own state folder, key and slots), rolls the release out in two waves
and drives the agents' check-ins until the rollout completes. The server is stopped before it
returns, whatever happens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.server import ADMIN_ENV, ENROLL_ENV

__all__ = ["roll_out"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def roll_out(
    repo: Path,
    folder: Path,
    name: str,
    version: int,
    device_class: str,
    *,
    devices: int = 4,
    timeout: float = 180.0,
) -> dict[str, Any]:
    """Roll `name@version` out to `devices` simulated devices of `device_class` in two waves
    (50%, 100%); returns the rollout's status as the server reports it."""
    from edgeforge.fleet.agent import Agent

    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    again = ["serve", "--repo", str(repo), "--db", f"sqlite:///{folder / 'fleet.db'}"]
    again += ["--state", str(folder / "server")]
    argv = [*again, "--port", str(port), "--gate-interval", "0.5"]
    # The server writes its own tokens (0600) into its folder, where a second start finds them.
    env = {k: v for k, v in os.environ.items() if k not in (ADMIN_ENV, ENROLL_ENV)}
    code = f"from edgeforge.cli import main; raise SystemExit(main({argv!r}))"
    with open(folder / "serve.log", "wb") as log:  # a file, not a pipe: it never blocks
        server = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=log)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            _wait_until_up(http, server, folder / "serve.log")
            admin = (folder / "server" / "admin-token").read_text().strip()
            enrol = (folder / "server" / "enroll-token").read_text().strip()
            agents = [
                Agent(
                    folder / "devices" / f"{device_class}-{i}",
                    server=url,
                    device_class=device_class,
                    device_id=f"demo-{device_class}-{i}",
                    token=enrol,
                    root=repo / "metadata" / "1.root.json",
                    probe_count=2,
                )
                for i in range(devices)
            ]
            # A demo fleet is tiny: its gate is judged at 60% confidence from two devices, or
            # no bound could ever show anything (real fleets keep the defaults).
            body = {
                "name": name,
                "version": version,
                "device_class": device_class,
                "waves": "50%,100%",
                "gate": "failure_rate<50%",
                "min_devices": 1,
                "confidence": 0.6,
            }
            headers = {"Authorization": f"Bearer {admin}"}
            answer = http.post("/v1/admin/rollouts", json=body, headers=headers)
            if answer.status_code != 201:
                raise EdgeforgeError(f"the demo's rollout was refused: {answer.text}")
            rollout = answer.json()["rollouts"][0]["id"]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for agent in agents:
                    agent.step()
                status = http.get(f"/v1/admin/rollouts/{rollout}", headers=headers).json()
                if status["state"] in ("completed", "aborted"):
                    return {
                        "server": url,
                        "status": status,
                        "devices": [a.status() for a in agents],
                        "again": "edgeforge " + " ".join(again),
                        "admin_token_file": str(folder / "server" / "admin-token"),
                    }
                time.sleep(0.3)
            raise EdgeforgeError(f"the demo's rollout did not finish in {timeout:.0f} s: {status}")
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def _wait_until_up(http: httpx.Client, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise EdgeforgeError(f"the demo's server exited: {log.read_text()[-500:]}")
        try:
            http.get("/repo/metadata/root.json", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise EdgeforgeError("the demo's server did not answer within 60 s")
