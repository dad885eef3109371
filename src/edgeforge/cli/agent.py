"""`edgeforge agent [status | predict | personalize]` and `edgeforge fleet simulate`.

`edgeforge agent --server URL --device-class C --state DIR` runs the device agent (check in,
fetch, canary, activate, probe, commit or roll back); `agent status` shows the slots and the
journal; `agent predict --input FILE.npz` runs the active model; `agent personalize --data DIR`
trains a personal head on the user's labelled samples (kept only if it beats the base model on
the user's own check samples). The handlers import the agent only (no torch, no converter).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_verbs"]


def add_verbs(verbs: Any) -> None:
    from edgeforge.cli import _output_options

    # One parser for the three actions (as `keys` does), so each takes --json like every verb.
    agent = verbs.add_parser(
        "agent",
        help="run the device agent (check in, fetch a signed release, canary, activate, probe, "
        "commit or roll back); status: slots and journal; predict: run the active model; "
        "personalize: fit a personal head to the user's labelled samples",
    )
    agent.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=("run", "status", "predict", "personalize"),
        help="what to do (default: run the agent)",
    )
    agent.add_argument("--state", type=Path, required=True, help="the agent's state folder")
    run = agent.add_argument_group("run")
    run.add_argument("--server", help="the fleet server's URL (first run: enrols there)")
    run.add_argument("--device-class", help="this device's class, e.g. linux-arm")
    run.add_argument("--device-id", help="this device's id (default: generated at enrolment)")
    run.add_argument(
        "--root",
        type=Path,
        help="the TUF root metadata the device ships with (first run; REPO/metadata/1.root.json)",
    )
    run.add_argument(
        "--token", help="the enrolment token (default: $EDGEFORGE_ENROLL_TOKEN)", default=None
    )
    run.add_argument("--once", action="store_true", help="check in once, act, and exit")
    run.add_argument(
        "--memory-limit",
        dest="model_memory_limit",  # not `memory_limit`: that one caps this process's own
        metavar="SIZE",  # address space (cli main), which the agent must not do
        help="what the model may use (resident memory of the canary and probe child), e.g. 512MB",
    )
    run.add_argument("--interval", type=float, default=60.0, help="seconds between check-ins")
    run.add_argument(
        "--accept-jobs",
        action="store_true",
        help="run benchmark jobs the server queues for this device (`edgeforge bench --on`)",
    )
    run.add_argument("--probe-count", type=int, default=10, help="inferences the health probe runs")
    run.add_argument(
        "--canary-timeout", type=float, default=120.0, help="seconds the canary may take"
    )
    predict = agent.add_argument_group("predict")
    predict.add_argument("--input", type=Path, help="an .npz file: one array per model input")
    predict.add_argument("--output", type=Path, help="write the outputs to this .npz file")
    personal = agent.add_argument_group("personalize")
    personal.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="the user's labelled samples: .npz files (arrays named after the model's inputs "
        "and 'label'), <input>.npy files with labels.npy, or images in one sub-folder per class",
    )
    personal.add_argument(
        "--time-limit", type=float, default=60.0, help="seconds training may take (default 60)"
    )
    personal.add_argument(
        "--form", choices=("executorch", "coreml", "head"), help="the package form to train"
    )
    _output_options(agent, report=False)
    agent.set_defaults(run=_agent)

    fleet = verbs.add_parser(
        "fleet", help="simulate: many real agents against a real server, with injected faults"
    )
    fleet.add_argument("action", choices=("simulate",), help="what to do")
    fleet.add_argument("--server", required=True, help="the fleet server's URL")
    fleet.add_argument("--devices", type=int, default=10, help="how many simulated devices")
    fleet.add_argument(
        "--classes", default="sim", help="device classes, comma-separated (spread evenly)"
    )
    fleet.add_argument(
        "--faults",
        default="",
        metavar="KIND=P,...",
        help="fault rates per check-in: power-loss, offline, disk-full, liar (e.g. "
        "power-loss=1%%,offline=5%%)",
    )
    fleet.add_argument("--rounds", type=int, default=5, help="check-ins per device")
    fleet.add_argument("--state", type=Path, help="where the devices' state folders go")
    fleet.add_argument("--root", type=Path, help="the TUF root the devices ship with")
    fleet.add_argument("--token", help="the enrolment token (default: $EDGEFORGE_ENROLL_TOKEN)")
    fleet.add_argument("--workers", type=int, default=8, help="devices run at once (threads)")
    fleet.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    _output_options(fleet, report=False)
    fleet.set_defaults(run=_fleet)


def _agent(args: argparse.Namespace) -> int:
    from edgeforge.errors import EdgeforgeError

    if args.action == "status":
        return _status(args)
    if args.action == "predict":
        return _predict(args)
    if args.action == "personalize":
        return _personalize(args)
    from edgeforge.fleet.agent import Agent

    agent = Agent(
        args.state,
        server=args.server,
        device_class=args.device_class,
        device_id=args.device_id,
        token=args.token,
        root=args.root,
        memory_limit=args.model_memory_limit,
        interval=args.interval,
        probe_count=args.probe_count,
        canary_timeout=args.canary_timeout,
        accept_jobs=args.accept_jobs,
    )
    if args.interval <= 0 or args.probe_count < 1:
        raise EdgeforgeError("--interval must be positive and --probe-count at least 1")
    if not args.once:
        # The loop runs for days: re-execute as the agent alone, so the daemon's memory holds
        # no CLI machinery (issue 15's idle-RSS goal). Options were checked above.
        agent.enrol()  # bad input (no server, refused token) still exits 2 here, in one line
        forward = ["--state", str(args.state), "--interval", str(args.interval)]
        forward += ["--probe-count", str(args.probe_count)]
        forward += ["--canary-timeout", str(args.canary_timeout)]
        if args.model_memory_limit:
            forward += ["--memory-limit", str(args.model_memory_limit)]
        if args.accept_jobs:
            forward += ["--accept-jobs"]
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "edgeforge.fleet.agent", *forward])
    from edgeforge.fleet.agent._lock import exclusive

    with exclusive(args.state / ".agent.lock"):
        result = agent.step()
    status = agent.status()
    data = {"step": result, "status": status.to_dict()}

    def show() -> None:
        online = "online" if result.get("online") else f"offline ({result.get('detail')})"
        print(f"check-in: {online}; state {status.state}")
        _show_status(status.to_dict(), journal=5)

    from edgeforge.cli import _emit

    _emit(args, "agent", data, show)
    return 0


def _status(args: argparse.Namespace) -> int:
    from edgeforge.cli import _emit
    from edgeforge.errors import EdgeforgeError
    from edgeforge.fleet.agent import Agent

    if not args.state.is_dir():
        raise EdgeforgeError(f"{args.state} is not an agent state folder")
    data = Agent(args.state).status().to_dict()
    _emit(args, "agent-status", data, lambda: _show_status(data, journal=20))
    return 0


def _show_status(data: dict, journal: int) -> None:
    def release(pointer: dict | None) -> str:
        if not pointer:
            return "none"
        return f"{pointer['name']} version {pointer['version']} (slot {pointer['slot']})"

    print(f"device {data['device_id'] or '(not enrolled)'} class {data['device_class'] or '?'}")
    print(f"  state      {data['state']}")
    print(f"  active     {release(data['active'])}")
    print(f"  committed  {release(data['committed'])}")
    print(f"  staged     {release(data['staged'])}")
    print(f"  other slot {release(data['inactive'])}")
    for url, offset in data["downloads"].items():
        print(f"  download   {offset} bytes of {url} (resumes)")
    for release_id, why in data["failed"].items():
        print(f"  refused    {release_id}: {why}")
    if data.get("personal"):
        head = data["personal"]
        print(f"  personal   a head for {head['name']} version {head['version']} ({head['form']})")
    if data["outbox"]:
        print(f"  reports    {data['outbox']} waiting for the server")
    for entry in data["journal"][-journal:]:
        what = f"{entry.get('name')}@{entry.get('version')}" if entry.get("name") else ""
        detail = f" ({entry['detail']})" if entry.get("detail") else ""
        print(f"  journal    {entry['state']:<13} {what}{detail}")


def _predict(args: argparse.Namespace) -> int:
    import numpy as np

    from edgeforge.cli import _emit
    from edgeforge.errors import EdgeforgeError
    from edgeforge.fleet.agent import Agent

    if args.input is None:
        raise EdgeforgeError("agent predict needs --input FILE.npz (one array per model input)")
    try:
        with np.load(args.input, allow_pickle=False) as data:
            feed = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise EdgeforgeError(f"{args.input}: not a readable .npz file ({exc})") from exc
    agent = Agent(args.state)
    outputs = agent.predict(feed)
    if args.output is not None:
        np.savez(args.output, **outputs)
    active = agent.status().active
    data = {
        "active": active,
        "latency_ms": agent.stats["latency_ms"][-1],
        "outputs": {k: np.asarray(v).tolist() for k, v in outputs.items()},
    }

    def show() -> None:
        print(f"{active['name']} version {active['version']}: {data['latency_ms']:.2f} ms")
        for name, value in outputs.items():
            value = np.asarray(value)
            print(
                f"  {name} {list(value.shape)} {value.dtype}: {np.array2string(value.ravel()[:8])}"
            )

    _emit(args, "agent-predict", data, show)
    return 0


def _personalize(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from edgeforge.cli import _emit
    from edgeforge.errors import EdgeforgeError
    from edgeforge.evaluate.data import load_data
    from edgeforge.fleet.agent import Agent
    from edgeforge.model import TensorSpec

    if args.data is None:
        raise EdgeforgeError("agent personalize needs --data DIR (the user's labelled samples)")
    if not args.state.is_dir():
        raise EdgeforgeError(f"{args.state} is not an agent state folder")
    agent = Agent(args.state, memory_limit=args.model_memory_limit)
    package = agent.personalization_package()
    specs = json.loads((package / "personalize.json").read_text())["inputs"]
    inputs = tuple(
        TensorSpec(s["name"], s.get("dtype", "float32"), ("batch", *s["shape"][1:])) for s in specs
    )
    data = load_data(args.data, inputs)
    if data.labels is None or len(data.labels) != sum(len(f[specs[0]["name"]]) for f in data.feeds):
        raise EdgeforgeError(
            f"--data {args.data}: every sample needs a label ('label' in each .npz, labels.npy, "
            "or one sub-folder per class)"
        )
    samples = {s["name"]: np.concatenate([f[s["name"]] for f in data.feeds]) for s in specs}
    result = agent.personalize(samples, data.labels, time_limit_s=args.time_limit, form=args.form)

    def show() -> None:
        release = result["release"]
        verdict = "kept" if result["kept"] else "not kept"
        print(f"personal head for {release['name']} version {release['version']}: {verdict}")
        print(f"  {result['reason']}")

    _emit(args, "agent-personalize", result, show)
    return 0


def _fleet(args: argparse.Namespace) -> int:
    from edgeforge.cli import _emit
    from edgeforge.fleet.simulate import parse_faults, simulate

    result = simulate(
        args.server,
        devices=args.devices,
        classes=[c.strip() for c in args.classes.split(",") if c.strip()],
        faults=parse_faults(args.faults),
        rounds=args.rounds,
        state=args.state,
        root=args.root,
        token=args.token,
        workers=args.workers,
        seed=args.seed,
    )
    _emit(args, "fleet-simulate", result.to_dict(), result.print)
    return 0
