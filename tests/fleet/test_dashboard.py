"""The fleet dashboard in real Chromium: each view loaded with the data of a simulated fleet
(devices speaking the real protocol, telemetry windows built by the device library), what it
shows checked in the DOM, screenshots saved in the test's folder. Also: the admin token guards
every view, stays out of page URLs, and the pages fetch nothing from anywhere."""

from __future__ import annotations

import html
import re

import httpx
import pytest
from monitor_support import capture_views, publish_reference, seed_fleet
from server_support import ADMIN, HTTP, Server, make_repository

from edgeforge.fleet.db import sqlite_url
from edgeforge.fleet.server.dashboard import COOKIE, distribution_svg, line_svg

MIN = 5


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dashboard")
    repo = make_repository(folder, {"cam": {1: ["pi"], 2: ["pi"]}, "kws": {1: ["mcu"]}})
    for name, version, device_class in (("cam", 1, "pi"), ("cam", 2, "pi"), ("kws", 1, "mcu")):
        publish_reference(repo, name, version, device_class)
    server = Server(repo, sqlite_url(folder / "fleet.db"), "--min-reporters", str(MIN)).start()
    story = seed_fleet(server, folder, min_reporters=MIN)
    yield server, story
    server.stop()


@pytest.mark.slow  # the simulated fleet takes ~10 s to play on a loaded machine
def test_every_view_needs_the_admin_token_and_login_keeps_it_out_of_urls(fleet):
    server, _ = fleet
    for path in ("/dashboard", "/dashboard/rollouts", "/dashboard/monitor", "/dashboard/alerts"):
        page = HTTP.get(server.url + path)
        assert page.status_code == 401 and "Sign in" in page.text and "pi-00" not in page.text
        with httpx.Client(cookies={COOKIE: "not-the-token-0123456789"}) as stranger:
            assert stranger.get(server.url + path).status_code == 401
    browser = httpx.Client()  # its own cookie jar: the shared client stays logged out
    refused = browser.post(server.url + "/dashboard/login", data={"token": "wrong"})
    assert refused.status_code == 401 and "not the server" in refused.text
    login = browser.post(
        server.url + "/dashboard/login", data={"token": ADMIN}, follow_redirects=False
    )
    assert login.status_code == 303 and login.headers["location"] == "/dashboard"
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    # a `next` outside the dashboard is not followed
    assert browser.get(server.url + "/dashboard/alerts").status_code == 200  # the cookie works
    away = browser.get(
        server.url + "/dashboard/login",
        params={"token": ADMIN, "next": "https://elsewhere.example/"},
        follow_redirects=False,
    )
    assert away.headers["location"] == "/dashboard"
    page = server.admin("GET", "/dashboard")
    assert page.status_code == 200 and ADMIN not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    # nothing is fetched from anywhere: no script, no external stylesheet, font or image
    assert not re.search(r"<script|<link|src=\"http|url\(", page.text)


def test_the_charts_are_plain_svg():
    import numpy as np

    from edgeforge.fleet.monitor import LogHistogram

    h = LogHistogram()
    h.add(np.random.default_rng(0).normal(10, 1, 500))
    svg = distribution_svg(h, h, title="latency")
    assert svg.startswith("<svg") and svg.count("<rect") == 40 and 'class="reference"' in svg
    line = line_svg([("2026-12-01", 0.05), ("2026-12-02", 0.4)], title="drift", threshold=0.2)
    assert line.count('class="point"') == 2 and "#e45756" in line
    assert distribution_svg(LogHistogram(), None, title="empty") == ""


@pytest.mark.slow
def test_each_view_renders_in_chromium_with_a_simulated_fleet(fleet, tmp_path):
    server, story = fleet
    doms = capture_views(server, ADMIN, tmp_path)
    for view in doms:
        png = tmp_path / f"dashboard-{view}.png"
        assert png.stat().st_size > 10_000, view  # a real picture, not a blank page
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert ADMIN not in doms[view]
    text = {view: html.unescape(re.sub(r"<[^>]+>", " ", dom)) for view, dom in doms.items()}
    overview = text["overview"]
    assert "Fleet overview" in overview and "20 devices enrolled in 2 classes" in overview
    assert re.search(r"pi\s+cam@1\s+12", overview) and re.search(r"mcu\s+kws@1\s+8", overview)
    rollouts = text["rollouts"]
    assert f"#{story['rollout']} cam@2" in rollouts and "aborted" in rollouts
    assert "latency_p95<+10%" in rollouts and "telemetry of" in rollouts
    monitor = doms["monitor"]
    assert "kws@1 on mcu" in monitor and "cam@1 on pi" in monitor
    assert monitor.count("<svg") >= 5  # latency + confidence + drift per version shown
    assert "release reference" in monitor and "drift over time" in monitor
    # cam@2 reached only the first wave's devices: shown only if at least MIN reported
    section = monitor.split('id="v-cam-2-pi"')[1].split("</section>")[0]
    assert "reporting devices" in section or "Fewer than" in section
    alerts = text["alerts"]
    assert "drift" in alerts and "kws@1" in alerts and "rollout-aborted" in alerts
