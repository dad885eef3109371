"""Drift seen through the fleet simulator: real agents (issue 15's simulator) install a tiny image
classifier through a rollout on the real server, run it with `predict()` on synthetic images,
and upload their telemetry windows signed with their check-ins; the server's own per-day drift
verdict (one window = one simulated day) fires on the days part of the fleet sees brighter
images, not on the day before, and raises a drift alert. `bench/drift_bench.py` measures the
rates (windows to fire, false alarms in 20 clean runs) at a larger scale."""

from __future__ import annotations

import time

import pytest
from server_support import ENROLL, Server

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.db import sqlite_url
from edgeforge.fleet.simulate import simulate
from edgeforge.fleet.workload import InputShift, SyntheticImages, Workload, parse_shift

NAME, CLASS, MIN = "colours", "sim-drift", 4
DAY = 86400.0


def test_parse_shift():
    assert parse_shift("30%@2:brightness=0.2") == InputShift(0.3, 2, brightness=0.2)
    mixed = parse_shift("0.5@1:mix=0.7/0.1/0.1/0.1,brightness=-0.1")
    assert mixed == InputShift(0.5, 1, brightness=-0.1, class_mix=(0.7, 0.1, 0.1, 0.1))
    for bad in ("30%@2", "30%@x:brightness=1", "150%@1:brightness=0.1", "30%:mix=0.5/0.1",
                "30%@1:contrast=2"):  # fmt: skip
        with pytest.raises(EdgeforgeError):
            parse_shift(bad)


def test_shifted_images_are_brighter_or_of_another_mix():
    import numpy as np

    images = SyntheticImages()
    plain = images.batch(np.random.default_rng(0), 500)
    bright = images.batch(np.random.default_rng(0), 500, brightness=0.1)
    assert plain.shape == (500, 3, 8, 8) and plain.min() >= 0 and plain.max() <= 1
    assert 0.08 < float(bright.mean() - plain.mean()) <= 0.1
    workload = Workload(images, shift=InputShift(0.3, 2, class_mix=(1.0, 0.0, 0.0, 0.0)))
    before = workload.feed(np.random.default_rng(1), 1, shifted=True)["x"]
    after = workload.feed(np.random.default_rng(1), 2, shifted=True)["x"]
    colour = images.prototypes()[0]
    assert np.abs(after.mean((2, 3)) - colour).max() < 0.25  # all class 0 from window 2 on
    assert np.abs(before.mean((2, 3)) - colour).max() > 0.25


@pytest.mark.slow  # five real agents install a model and play three windows: ~15 s unloaded
def test_the_servers_drift_verdict_fires_on_the_simulated_shift_and_not_before(tmp_path):
    from edgeforge.fleet.repository import Repository
    from edgeforge.fleet.workload import publish_classifier

    images = SyntheticImages()
    repo = Repository.init(tmp_path / "repo")
    publish_classifier(repo, tmp_path / "work", NAME, 1, CLASS, images, eval_rows=1000)
    server = Server(repo.path, sqlite_url(tmp_path / "fleet.db"), "--min-reporters", str(MIN))
    server.start()
    try:
        body = {"name": NAME, "version": 1, "device_class": CLASS, "waves": "100%",
                "gate": "failure_rate<90%", "min_devices": 1, "confidence": 0.5}  # fmt: skip
        assert server.admin("POST", "/v1/admin/rollouts", body).status_code == 201
        # Windows on the days before yesterday, yesterday and today: the shift (2 of the 5
        # devices, from window 1 on) lands on the two days the server's alert check looks at.
        today = int(time.time() // DAY) * DAY
        workload = Workload(
            images,
            calls=3,
            rows=32,
            start=today - 2 * DAY,
            shift=InputShift(0.4, 1, brightness=0.25),
        )
        common = {"devices": 5, "classes": [CLASS], "state": tmp_path / "fleet",
                  "root": repo.path / "metadata" / "1.root.json", "token": ENROLL,
                  "workers": 5}  # fmt: skip
        warm = simulate(server.url, rounds=1, **common)
        assert warm.errors == [] and warm.active[CLASS] == {f"{NAME}@1": 5}
        result = simulate(server.url, rounds=3, workload=workload, **common)
        assert result.errors == [] and result.telemetry_windows == 15
        assert len(result.shifted_devices) == 2

        monitor = server.admin("GET", f"/v1/admin/monitor?model={NAME}").json()
        (row,) = monitor["versions"]
        days = row["days"]
        assert [d["reporters"] for d in days] == [5, 5, 5]
        assert [d["drift"] for d in days] == ["ok", "drift", "drift"], days
        # the brighter images show in the per-channel input statistics
        assert all(any(r.startswith("in") for r in d["reasons"]) for d in days[1:]), days
        alerts = server.admin("GET", "/v1/admin/alerts").json()["alerts"]
        drifted = sorted(a["day"] for a in alerts if a["kind"] == "drift")
        assert drifted == sorted(d["day"] for d in days[1:])
    finally:
        server.stop()
