"""The device agent's footprint: idle resident memory and install size besides its runtime.

Idle RSS: `edgeforge agent` runs as a daemon against a loopback fleet server (the agent tests'
server, a real TUF repository), installs a tiny ONNX model (download, canary and probe in
children, activate, commit), uploads 16 spooled telemetry windows (as bytes: the daemon
imports neither numpy nor datasketches), then sleeps to its next check-in; its VmRSS is
sampled then. A second figure is the idle RSS after an offline check-in only (nothing installed
in this process).

Install size: the files (from each distribution's RECORD) of what the agent imports besides the
runtime: tuf, securesystemslib, cryptography (+cffi, pycparser), urllib3, and the edgeforge
package's own Python files. numpy is counted apart: every device runtime (onnxruntime, openvino,
ai-edge-litert) depends on it anyway. Goals (issue 15): idle RSS <= 40 MB, install <= 60 MB.

    PYTHONPATH=src .venv/bin/python bench/agent_footprint.py [--json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENT_DISTRIBUTIONS = ("tuf", "securesystemslib", "cryptography", "cffi", "pycparser", "urllib3")


def distribution_bytes(name: str) -> int:
    dist = importlib.metadata.distribution(name)
    total = 0
    for file in dist.files or []:
        path = Path(dist.locate_file(file))
        if path.is_file() and "__pycache__" not in path.parts:
            total += path.stat().st_size
    return total


def edgeforge_bytes() -> int:
    package = ROOT / "src" / "edgeforge"
    return sum(
        p.stat().st_size for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def idle_rss(installed: bool) -> dict:
    sys.path.insert(0, str(ROOT / "tests" / "fleet"))
    from fleet_agent_support import FleetServer, publish

    from edgeforge.fleet.repository import Repository

    work = Path(tempfile.mkdtemp(prefix="agent-footprint-"))
    repo = Repository.init(work / "repo")
    publish(repo, work / "work", 1, "bench")
    server = FleetServer(repo)
    if installed:
        server.set_directive("bench", 1)
    state = work / "state"
    spool = state / "telemetry" / "spool"
    if installed:  # windows the application spooled: the daemon uploads them as bytes
        from edgeforge.fleet.telemetry import PAYLOAD_SIZE

        spool.mkdir(parents=True)
        for i in range(16):
            (spool / f"{i:020d}-{i:032x}.win").write_bytes(os.urandom(PAYLOAD_SIZE))
    command = [
        sys.executable, "-c", "import sys; from edgeforge.cli import main; sys.exit(main())",
        "agent", "--server", server.url, "--device-class", "bench", "--state", str(state),
        "--root", str(repo.path / "metadata" / "1.root.json"), "--interval", "3600",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    agent = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = (state / "committed.json").exists() and not list(spool.glob("*.win"))
            if server.checkins and (not installed or done):
                break
            time.sleep(0.1)
        time.sleep(3)  # let it settle into its sleep
        samples = [rss(agent.pid)]
        for _ in range(4):
            time.sleep(0.5)
            samples.append(rss(agent.pid))
    finally:
        agent.kill()
        agent.wait()
        server.close()
    return {"installed": installed, "rss_bytes": max(samples), "rss_mb": max(samples) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = {name: distribution_bytes(name) for name in AGENT_DISTRIBUTIONS}
    sizes["edgeforge (whole package)"] = edgeforge_bytes()
    agent_files = ROOT / "src" / "edgeforge" / "fleet"
    result = {
        "install_bytes": sizes,
        "install_mb": sum(sizes.values()) / 2**20,
        "numpy_mb (shared with the runtime)": (distribution_bytes("numpy") / 2**20),
        "agent_source_kb": sum(
            p.stat().st_size for p in agent_files.rglob("*.py") if "agent" in p.parts
        )
        / 1024,
        "idle": [idle_rss(installed=False), idle_rss(installed=True)],
        "python": sys.version.split()[0],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"install besides the runtime: {result['install_mb']:.1f} MB (goal <= 60 MB)")
    for name, size in sizes.items():
        print(f"  {name:<28} {size / 2**20:6.1f} MB")
    numpy_mb = result["numpy_mb (shared with the runtime)"]
    print(f"  numpy (the runtime needs it anyway): {numpy_mb:.1f} MB")
    for entry in result["idle"]:
        what = "after installing a model" if entry["installed"] else "after a check-in"
        print(f"idle RSS {what}: {entry['rss_mb']:.1f} MB (goal <= 40 MB)")


if __name__ == "__main__":
    main()
