"""Helpers for the monitor's server tests: devices that build real telemetry windows with the
device library (`edgeforge.fleet.telemetry.Telemetry`) and send them signed, as the agent does."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from server_support import Device, Server

from edgeforge.fleet.monitor import reference_from_data
from edgeforge.fleet.repository import Repository
from edgeforge.fleet.telemetry import Telemetry

CLASSES = 5


def outputs(rng: np.random.Generator, rows: int, *, sharp: float = 3.0) -> np.ndarray:
    """Softmax outputs of a 5-class model; `sharp` sets how confident it is."""
    logits = rng.normal(size=(rows, CLASSES)) * sharp
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def inputs(rng: np.random.Generator, rows: int, *, shift: float = 0.0) -> np.ndarray:
    return (rng.normal(size=(rows, 3, 4, 4)) + shift).astype(np.float32)


def windows(
    folder: Path,
    device: Device,
    name: str,
    version: int,
    *,
    latency_ms: float,
    seed: int,
    sharp: float = 3.0,
    shift: float = 0.0,
    calls: int = 6,
    at: float | None = None,
) -> list[dict[str, str]]:
    """One closed window of `calls` inference calls on `device` (at time `at`, default now), as
    `drain` gives it."""
    rng = np.random.default_rng(seed)
    clock = time.time if at is None else (lambda: at)
    state = folder / device.device_id / f"tel-{version}-{seed}"
    tel = Telemetry(state, device_class=device.device_class, clock=clock)
    tel.set_model(name, version, output_kind="probabilities", input_kind="image")
    for _ in range(calls):
        tel.observe(
            inputs(rng, 8, shift=shift),
            outputs(rng, 8, sharp=sharp),
            float(latency_ms * rng.uniform(0.9, 1.1)),
        )
    return tel.drain(flush=True)


def send(server: Server, device: Device, events: list[dict[str, Any]], telemetry: list) -> Any:
    body = json.dumps({"events": events, "telemetry": telemetry}).encode()
    return device.signed(server, "/v1/report", body)


def publish_reference(repo_path: Path, name: str, version: int, device_class: str) -> None:
    """`NAME/VERSION/CLASS/reference.json` from evaluation-like data, as release writes it."""
    rng = np.random.default_rng(1234)
    ref = reference_from_data(
        outputs(rng, 400), inputs(rng, 400), output_kind="probabilities", input_kind="image"
    )
    local = repo_path.parent / f"reference-{name}-{version}-{device_class}.json"
    local.write_text(json.dumps(ref.to_dict()))
    repo = Repository.open(repo_path)
    with repo.lock():
        repo.publish({f"{name}/{version}/{device_class}/reference.json": local})


def seed_fleet(server: Server, folder: Path, *, min_reporters: int) -> dict[str, Any]:
    """A small fleet with a story, for the dashboard: class "pi" (12 devices) ran cam@1 for
    three days, then a rollout of cam@2 (slower on the devices) was aborted by its latency gate;
    class "mcu" (8 devices) runs kws@1 and its inputs shifted today (a drift alert). Needs a
    repository made with `make_repository(..., {"cam": {1: ["pi"], 2: ["pi"]}, "kws": {1:
    ["mcu"]}})` and references published for cam@1, cam@2 and kws@1."""
    day = 86400.0
    now = time.time()
    pi = [Device(f"pi-{i:02d}", "pi") for i in range(12)]
    mcu = [Device(f"mcu-{i:02d}", "mcu") for i in range(8)]
    for d in pi + mcu:
        assert d.enrol(server).status_code in (200, 201)
    for i, d in enumerate(pi):
        d.active = ("cam", 1)
        d.checkin(server)
        entries = []
        for back in (3, 2, 1):
            entries += windows(
                folder,
                d,
                "cam",
                1,
                latency_ms=10,
                seed=1000 * back + i,
                at=now - back * day,
                calls=16,
            )
        assert send(server, d, [], entries).status_code == 202
    for i, d in enumerate(mcu):
        d.active = ("kws", 1)
        d.checkin(server)
        entries = []
        for back in (3, 2, 1, 0):
            shift = 1.5 if back == 0 else 0.0
            entries += windows(
                folder,
                d,
                "kws",
                1,
                latency_ms=4,
                seed=2000 * back + i,
                shift=shift,
                sharp=0.6 if back == 0 else 3.0,
                at=now - back * day,
                calls=16,
            )
        assert send(server, d, [], entries).status_code == 202
    started = server.admin(
        "POST",
        "/v1/admin/rollouts",
        {
            "name": "cam",
            "version": 2,
            "device_class": "pi",
            "waves": "50%,100%",
            "gate": "failure_rate<50%,latency_p95<+10%",
            "min_devices": min_reporters,
            "report_timeout_s": 600,
            "confidence": 0.95,
        },
    )
    assert started.status_code == 201, started.text
    rollout = started.json()["rollouts"][0]["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for i, d in enumerate(pi):
            directive = d.checkin(server)
            if directive["action"] == "install" and d.active != ("cam", 2):
                d.active = ("cam", 2)
                t = time.time()
                events = [
                    {"kind": k, "name": "cam", "version": 2, "ok": True, "at": t}
                    for k in ("download", "canary", "activate", "health", "commit")
                ]
                entries = windows(folder, d, "cam", 2, latency_ms=25, seed=3000 + i, calls=16)
                assert send(server, d, events, entries).status_code == 202
            elif directive["action"] == "rollback":
                d.active = ("cam", 1)
        status = server.admin("GET", f"/v1/admin/rollouts/{rollout}").json()
        if status["state"] != "running":
            break
        time.sleep(0.3)
    for d in pi:  # the devices that took cam@2 go back at their next check-in
        if d.checkin(server)["action"] == "rollback":
            d.active = ("cam", 1)
            d.checkin(server)
    return {"rollout": rollout, "pi": pi, "mcu": mcu}


VIEWS = {
    "overview": "/dashboard",
    "rollouts": "/dashboard/rollouts",
    "monitor": "/dashboard/monitor",
    "alerts": "/dashboard/alerts",
}
CHROMIUM = "/usr/bin/chromium"


def capture_views(server: Server, token: str, out: Path) -> dict[str, str]:
    """Each dashboard view as a real Chromium shows it: its DOM (after the page loaded) and a
    full-page screenshot `out/dashboard-VIEW.png`. With Playwright (PyPI) installed, it drives
    Chromium through the login form as a person would; without, Chromium's own headless
    `--dump-dom`/`--screenshot`, logged in through `/dashboard/login?token=...&next=VIEW`."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return _capture_cli(server, token, out)
    doms = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(server.url + "/dashboard")
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        page.wait_for_url(server.url + "/dashboard")
        assert token not in page.url
        for view, path in VIEWS.items():
            page.goto(server.url + path)
            page.screenshot(path=str(out / f"dashboard-{view}.png"), full_page=True)
            doms[view] = page.content()
        browser.close()
    return doms


def _capture_cli(server: Server, token: str, out: Path) -> dict[str, str]:
    import shutil
    import subprocess
    import tempfile
    from urllib.parse import quote

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"]
    doms = {}
    for view, path in VIEWS.items():
        url = f"{server.url}/dashboard/login?token={quote(token)}&next={quote(path)}"
        profile = tempfile.mkdtemp(prefix="dash-shot-")
        try:
            dom = subprocess.run(
                [CHROMIUM, *flags, f"--user-data-dir={profile}", "--dump-dom", url],
                capture_output=True,
                timeout=120,
                check=True,
            ).stdout.decode()
            height = 900 + 60 * dom.count("<tr") + 260 * dom.count("<svg")
            subprocess.run(
                [
                    CHROMIUM,
                    *flags,
                    f"--user-data-dir={profile}",
                    f"--window-size=1200,{min(height, 6000)}",
                    f"--screenshot={out / f'dashboard-{view}.png'}",
                    url,
                ],
                capture_output=True,
                timeout=120,
                check=True,
            )
        finally:
            shutil.rmtree(profile, ignore_errors=True)
        doms[view] = dom
    return doms
