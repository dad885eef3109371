"""`edgeforge fleet simulate`: many real agents against a real server, with injected faults.

Each simulated device is the real `Agent` (its own state folder, key, slots and journal; real
HTTP; downloads, canaries and probes in real child processes, forked from one warm process that
imported numpy, onnxruntime and the TUF client once, so that a child starts in milliseconds: see
`agent/_spawn.py`), run in a thread pool for a number of rounds.
Each round, each device draws its faults (independently, at the rates given):

- `power-loss`: the round runs as `python -m edgeforge.fleet.agent --once` in a child process,
  killed with SIGKILL at a random moment (a power cut); the next round recovers from the journal;
- `offline`: the device cannot reach the server this round (connection refused); it keeps
  running its active model (`predict`);
- `disk-full`: the round's downloads may write only 1 kB per file (RLIMIT_FSIZE on the download
  child): the download fails as a full disk and the device keeps its model;
- `liar`: the device tells the server it runs the release it was told to install and reports a
  commit, whatever it did (what a compromised or buggy device does; the server must cope).

Invariant checked after every round: a device that ever committed a model has an active model
whose files match their signed hashes (`devices_without_model` counts the ones that do not).

With a `workload` (`edgeforge.fleet.workload.Workload`), each round is also one telemetry window:
before its check-in, each device with an active model runs `workload.calls` predictions through
the agent's own `predict()` on synthetic images (shifted ones on the devices the workload's
`InputShift` picks, from its `start` window on), at the window's simulated time, and closes the
window into its spool; the check-in that follows uploads it, signed, as the agent always does.
The server then merges and judges these windows like any others.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.agent import Agent, verify_slot
from edgeforge.fleet.agent._http import ServerClient
from edgeforge.fleet.agent._spawn import ForkServer

if TYPE_CHECKING:
    from edgeforge.fleet.workload import Workload

__all__ = ["FAULTS", "SimulationResult", "parse_faults", "simulate"]

FAULTS = ("power-loss", "offline", "disk-full", "liar")
_REFUSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused


def parse_faults(text: str) -> dict[str, float]:
    """`power-loss=1%,offline=5%` (or fractions, `offline=0.05`) as {fault: probability}."""
    faults: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in FAULTS:
            raise EdgeforgeError(f"unknown fault {name!r}; faults: {', '.join(FAULTS)}")
        try:
            rate = float(value.strip().rstrip("%")) / (100 if value.strip().endswith("%") else 1)
        except ValueError:
            raise EdgeforgeError(f"fault {item!r}: give a rate, e.g. {name}=1%") from None
        if not 0 <= rate <= 1:
            raise EdgeforgeError(f"fault {item!r}: the rate must be between 0% and 100%")
        faults[name] = rate
    return faults


class _Device(Agent):
    """The real agent, with the network cut here when the round says offline, and the lies of
    a liar told at check-in and report time."""

    offline = False
    liar = False
    told: dict[str, Any] | None = None

    def _client(self, device: dict) -> ServerClient:
        return ServerClient(_REFUSED if self.offline else device["server"], timeout=5)

    def _checkin_body(self) -> dict[str, Any]:
        body = super()._checkin_body()
        if self.liar and self.told and self.told.get("action") == "install":
            body["active"] = {"name": self.told["name"], "version": self.told["version"]}
        return body

    def act(self, directive: dict[str, Any]) -> None:
        self.told = directive
        super().act(directive)
        if self.liar and directive.get("action") == "install":
            self._event("commit", directive.get("name"), directive.get("version"), True, "")


@dataclasses.dataclass
class SimulationResult:
    """What a simulation did, and whether every device kept a working model."""

    server: str
    devices: int
    rounds: int
    classes: list[str]
    faults: dict[str, float]
    checkins: int
    offline_checkins: int
    injected: dict[str, int]
    active: dict[str, dict[str, int]]  # class -> "name@version" (or "none") -> devices
    devices_without_model: int
    seconds: float
    errors: list[str]
    telemetry_windows: int = 0  # windows closed by the devices' telemetry (with a workload)
    shifted_devices: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def print(self) -> None:
        rate = self.checkins / self.seconds if self.seconds else 0.0
        print(
            f"{self.devices} devices, {self.rounds} rounds: {self.checkins} check-ins "
            f"({self.offline_checkins} offline) in {self.seconds:.1f} s ({rate:.1f}/s)"
        )
        if self.injected:
            print("  faults   " + ", ".join(f"{k} {v}" for k, v in sorted(self.injected.items())))
        for device_class, versions in sorted(self.active.items()):
            spread = ", ".join(f"{k}: {v}" for k, v in sorted(versions.items()))
            print(f"  {device_class:<12} {spread}")
        print(f"  devices without a working model: {self.devices_without_model}")
        if self.telemetry_windows:
            print(
                f"  telemetry {self.telemetry_windows} windows, "
                f"{len(self.shifted_devices)} devices with shifted inputs"
            )
        for error in self.errors[:10]:
            print(f"  error    {error}")


def _root(server: str, state: Path, root: Path | None) -> Path:
    if root is not None:
        return root
    # Trust on first use, for a simulation only: a real device ships with its root.
    path = state / "1.root.json"
    if not path.exists():
        import urllib.request

        with urllib.request.urlopen(f"{server.rstrip('/')}/repo/metadata/1.root.json") as answer:
            path.write_bytes(answer.read())
    return path


def _power_cut(agent: _Device, rng: random.Random) -> None:
    """One round in a child process, killed with SIGKILL at a random moment."""
    command = [sys.executable, "-m", "edgeforge.fleet.agent", "--state", str(agent.state)]
    command += ["--once", "--probe-count", str(agent.probe_count)]
    child = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    time.sleep(rng.uniform(0.0, 1.5))
    if child.poll() is None:
        os.killpg(child.pid, signal.SIGKILL)  # the agent and its children: the power is gone
    child.wait()


def _run_window(
    agent: _Device, workload: Workload, window: int, shifted: bool, rng: random.Random
) -> int:
    """One telemetry window on one device: predictions at the window's simulated time, then
    the window closed into the device's spool. Returns the windows spooled (0 without a model)."""
    import numpy as np

    if agent._pointer("active") is None:
        return 0
    telemetry = agent.telemetry
    if not telemetry:
        return 0  # telemetry failed on this device (said on stderr); inference goes on
    at = workload.window_time(window)
    telemetry.clock = lambda: at
    draw = np.random.default_rng(rng.getrandbits(64))
    for _ in range(workload.calls):
        agent.predict(workload.feed(draw, window, shifted))
    return agent.flush_telemetry()


def _working(agent: Agent) -> bool:
    active = agent.status().active
    if active is None:
        return False
    index = verify_slot(agent.state / "slots" / active["slot"])
    return index is not None and index.get("version") == active["version"]


def simulate(
    server: str,
    *,
    devices: int = 10,
    classes: list[str] | None = None,
    faults: dict[str, float] | None = None,
    rounds: int = 5,
    state: Path | None = None,
    root: Path | None = None,
    token: str | None = None,
    workers: int = 8,
    seed: int = 0,
    interval: float = 0.0,
    workload: Workload | None = None,
) -> SimulationResult:
    """Run `devices` real agents for `rounds` check-ins each against `server` (and, with a
    `workload`, `rounds` telemetry windows). The same `state` folder again continues the same
    devices (enrolled, with their models)."""
    classes = classes or ["sim"]
    faults = faults or {}
    if devices < 1 or rounds < 1 or workers < 1:
        raise EdgeforgeError("--devices, --rounds and --workers must be at least 1")
    state = Path(state) if state is not None else Path(tempfile.mkdtemp(prefix="edgeforge-sim-"))
    state.mkdir(parents=True, exist_ok=True)
    trusted = _root(server, state, root)
    rng = random.Random(seed)
    launcher = ForkServer()
    fleet: list[_Device] = []
    for i in range(devices):
        device_class = classes[i % len(classes)]
        agent = _Device(
            state / f"{device_class}-{i:05d}",
            server=server,
            device_class=device_class,
            device_id=f"sim-{device_class}-{i:05d}",
            token=token,
            root=trusted,
            probe_count=3,
            launcher=launcher,
            telemetry_window_s=workload.window_s if workload else 3600.0,
        )
        agent.liar = rng.random() < faults.get("liar", 0.0)
        fleet.append(agent)
    injected = {"liar": sum(a.liar for a in fleet)} if faults.get("liar") else {}
    shifted: set[int] = set()
    if workload is not None and workload.shift is not None:
        # its own generator: the fault draws stay the same with or without a shift
        count = round(workload.shift.fraction * devices)
        shifted = set(random.Random(f"shift-{seed}").sample(range(devices), count))
    lock = threading.Lock()
    counts = {"checkins": 0, "offline": 0, "windows": 0}
    errors: list[str] = []
    ever_committed: set[int] = set()

    def one_round(index: int, seeded: random.Random, window: int) -> None:
        agent = fleet[index]
        drawn = {
            fault
            for fault in ("power-loss", "offline", "disk-full")
            if seeded.random() < faults.get(fault, 0.0)
        }
        with lock:
            for fault in drawn:
                injected[fault] = injected.get(fault, 0) + 1
        try:
            if workload is not None:
                spooled = _run_window(agent, workload, window, index in shifted, seeded)
                with lock:
                    counts["windows"] += spooled
            if "power-loss" in drawn and agent._device().get("director_key"):
                _power_cut(agent, seeded)
                return
            agent.offline = "offline" in drawn
            agent.file_limit = 1024 if "disk-full" in drawn else None
            result = agent.step()
            with lock:
                counts["checkins"] += 1
                counts["offline"] += 0 if result.get("online") else 1
            if not result.get("online") and workload is None and agent.status().active:
                from edgeforge.fleet.agent._child import load_canary

                active = agent.status().active
                slot = agent.state / "slots" / active["slot"]
                index_json = verify_slot(slot) or {}
                feeds, _, _ = load_canary(slot, index_json)
                agent.predict(feeds[0])  # offline, inference goes on
        except Exception as exc:  # one device's trouble is a finding, not the end of the run
            with lock:
                errors.append(f"{agent.state.name}: {type(exc).__name__}: {exc}"[:300])

    started = time.monotonic()
    without = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for window in range(rounds):
            seeds = [random.Random(rng.random()) for _ in fleet]
            list(pool.map(one_round, range(len(fleet)), seeds, [window] * len(fleet)))
            # Checked as the round left them, before any recovery: what a power cut leaves.
            for i, agent in enumerate(fleet):
                if agent.status().committed is not None:
                    ever_committed.add(i)
            without = sum(1 for i in ever_committed if not _working(fleet[i]))
            if interval:
                time.sleep(interval)
    seconds = time.monotonic() - started
    active: dict[str, dict[str, int]] = {}
    for agent in fleet:
        pointer = agent.status().active
        key = f"{pointer['name']}@{pointer['version']}" if pointer else "none"
        spread = active.setdefault(str(agent.device_class), {})
        spread[key] = spread.get(key, 0) + 1
    return SimulationResult(
        server=server,
        devices=devices,
        rounds=rounds,
        classes=classes,
        faults=faults,
        checkins=counts["checkins"],
        offline_checkins=counts["offline"],
        injected=injected,
        active=active,
        devices_without_model=without,
        seconds=seconds,
        errors=errors,
        telemetry_windows=counts["windows"],
        shifted_devices=sorted(fleet[i].device_id for i in shifted),
    )
