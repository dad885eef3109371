"""Does the server's drift verdict fire when part of a simulated fleet sees shifted inputs, and
stay quiet when none does? Everything runs for real: `edgeforge serve` (SQLite) in a subprocess,
the fleet simulator's agents (`edgeforge.fleet.simulate`) installing a tiny image classifier
through a rollout, each running it with `predict()` on synthetic images; their telemetry windows
(sketches) go signed to the server with each check-in; the verdicts are the server's own
(`/v1/admin/monitor`, per model version x device class x day) and its alerts.

A window is one simulated day (the devices' telemetry clock advances a day per round; the
server's per-day verdict is then the window's verdict); a round takes seconds of wall clock.
Each run is `--windows` windows on its own days and its own seed (its own images and, when
shifted, its own draw of shifted devices): the clean runs first, then `--shifted-runs` runs of
each shift (brightness, class mix), which starts at window 1 on `--fraction` of the devices.
The server's monitor read over all stored windows is timed too: first (decoding every window)
and again (each day memoised).
The issue asks: fires within 3 windows of the shift; at most 1 false alarm in 20 clean runs.

    PYTHONPATH=src .venv/bin/python bench/drift_bench.py [--devices 20] [--clean-runs 20]
        [--windows 4] [--out bench/results/drift.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from edgeforge.fleet.repository import Repository
from edgeforge.fleet.simulate import simulate
from edgeforge.fleet.workload import InputShift, SyntheticImages, Workload, publish_classifier

ADMIN = "bench-admin-token-0123456789abcdef"
ENROLL = "bench-enrol-token-0123456789abcdef"
NAME, CLASS = "colours", "sim-cam"
DAY = 86400.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(repo: Path, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    argv = ["serve", "--repo", str(repo), "--db", f"sqlite:///{folder / 'fleet.db'}"]
    argv += ["--port", str(port), "--gate-interval", "0.5"]
    env = {**os.environ, "EDGEFORGE_ADMIN_TOKEN": ADMIN, "EDGEFORGE_ENROLL_TOKEN": ENROLL}
    code = f"from edgeforge.cli import main; raise SystemExit(main({argv!r}))"
    log = open(folder / "serve.log", "wb")  # noqa: SIM115 (closed with the process)
    server = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"serve exited: {(folder / 'serve.log').read_text()[-2000:]}")
        try:
            httpx.get(f"{url}/repo/metadata/root.json", timeout=1)
            return server, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("serve did not answer in 60 s")


def _admin(url: str, method: str, path: str, body: object = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    return httpx.request(method, url + path, json=body, headers=headers, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--windows", type=int, default=4, help="windows per run")
    parser.add_argument("--clean-runs", type=int, default=20)
    parser.add_argument("--shifted-runs", type=int, default=3, help="per kind of shift")
    parser.add_argument("--brightness", type=float, default=0.1, help="added to every pixel")
    parser.add_argument("--mix", default="0.7/0.1/0.1/0.1", help="class mix of the shifted devices")
    parser.add_argument("--calls", type=int, default=4, help="predict() calls per window")
    parser.add_argument("--rows", type=int, default=32, help="images per predict() call")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="edgeforge-drift-bench-"))
    images = SyntheticImages()
    repo = Repository.init(folder / "repo")
    publish_classifier(repo, folder / "work", NAME, 1, CLASS, images)
    server, url = _serve(repo.path, folder)
    try:
        body = {"name": NAME, "version": 1, "device_class": CLASS, "waves": "100%",
                "gate": "failure_rate<90%", "min_devices": 1, "confidence": 0.5}  # fmt: skip
        assert _admin(url, "POST", "/v1/admin/rollouts", body).status_code == 201
        common = {
            "devices": args.devices, "classes": [CLASS], "state": folder / "fleet",
            "root": repo.path / "metadata" / "1.root.json", "token": ENROLL,
            "workers": args.workers,
        }  # fmt: skip
        warm = simulate(url, rounds=2, seed=0, **common)
        installed = sum(v for k, v in warm.active[CLASS].items() if k != "none")
        assert installed == args.devices and not warm.errors, warm.to_dict()
        shifts = {
            "brightness": InputShift(args.fraction, 1, brightness=args.brightness),
            "class-mix": InputShift(
                args.fraction, 1, class_mix=tuple(float(p) for p in args.mix.split("/"))
            ),
        }
        plan = [("clean", None)] * args.clean_runs + list(shifts.items()) * args.shifted_runs
        first_day = (int(time.time() // DAY) - len(plan) * args.windows + 1) * DAY
        runs = []
        for index, (kind, shift) in enumerate(plan):
            workload = Workload(
                images,
                calls=args.calls,
                rows=args.rows,
                start=first_day + index * args.windows * DAY,
                shift=shift,
            )
            # each run its own seed: its own images, and its own shifted devices
            result = simulate(url, rounds=args.windows, workload=workload, seed=index, **common)
            assert not result.errors, result.errors
            print(f"run {index + 1}/{len(plan)} ({kind}) done", file=sys.stderr, flush=True)
            assert result.telemetry_windows == args.devices * args.windows, result.to_dict()
            runs.append({"kind": kind, "start": workload.start, "shifted": result.shifted_devices})
        # the first read decodes every stored window; the second finds each day memoised
        reads = []
        for _ in range(2):
            t = time.perf_counter()
            monitor = _admin(url, "GET", f"/v1/admin/monitor?model={NAME}").json()
            reads.append(time.perf_counter() - t)
        alerts = _admin(url, "GET", "/v1/admin/alerts").json()["alerts"]
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
    (row,) = monitor["versions"]
    verdicts = {d["day"]: d for d in row["days"]}
    report_runs = []
    for run in runs:
        days = [
            time.strftime("%Y-%m-%d", time.gmtime(run["start"] + w * DAY))
            for w in range(args.windows)
        ]
        seen = [verdicts.get(day, {"drift": "missing"}) for day in days]
        fired = [i for i, d in enumerate(seen) if d["drift"] == "drift"]
        entry = {
            "kind": run["kind"],
            "days": days,
            "verdicts": [d["drift"] for d in seen],
            "reporters": [d.get("reporters") for d in seen],
            "drift_psi": [d.get("drift_psi") for d in seen],
            "classes_js": [d.get("classes_js") for d in seen],
            "reasons": [d.get("reasons", []) for d in seen],
        }
        if run["kind"] == "clean":
            entry["false_alarm"] = bool(fired)
        else:
            entry["shifted_devices"] = len(run["shifted"])
            entry["fired_before_shift"] = any(i < 1 for i in fired)
            after = [i for i in fired if i >= 1]
            entry["windows_to_fire"] = after[0] if after else None  # shift starts at window 1
        report_runs.append(entry)
    clean = [r for r in report_runs if r["kind"] == "clean"]
    shifted = [r for r in report_runs if r["kind"] != "clean"]
    result = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "setup": {
            "devices": args.devices,
            "shifted_fraction": args.fraction,
            "windows_per_run": args.windows,
            "predict_calls_per_window": args.calls,
            "images_per_call": args.rows,
            "brightness": args.brightness,
            "class_mix": args.mix,
            "min_reporters": monitor["min_reporters"],
            "thresholds": monitor["thresholds"],
        },
        "clean_runs": len(clean),
        "false_alarms": sum(r["false_alarm"] for r in clean),
        "windows_to_fire": {
            kind: [r["windows_to_fire"] for r in shifted if r["kind"] == kind] for kind in shifts
        },
        "fired_before_shift": sum(r["fired_before_shift"] for r in shifted),
        "drift_alerts_raised": sum(a["kind"] == "drift" for a in alerts),
        "monitor_read_s": {"first": reads[0], "again": reads[1], "windows": row["windows"]},
        "seconds": time.monotonic() - started,
        "runs": report_runs,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(
        f"false alarms {result['false_alarms']}/{result['clean_runs']} clean runs; windows to "
        f"fire after the shift: {result['windows_to_fire']}; {result['seconds']:.0f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
