"""Screenshot each view of the fleet dashboard, with the data of a small simulated fleet.

    python scripts/screenshot_dashboard.py [OUT_DIR]      # default docs/screenshots

Starts `edgeforge serve` on a loopback port with a fresh repository and SQLite database in a
temporary folder, plays the story of `tests/fleet/monitor_support.seed_fleet` (class "pi" runs
cam@1, a rollout of a slower cam@2 is aborted by its latency gate from telemetry; class "mcu"
runs kws@1 and its inputs drift today), then renders /dashboard, /dashboard/rollouts,
/dashboard/monitor and /dashboard/alerts in Chromium (Playwright when installed, else Chromium's
headless screenshot) into OUT_DIR/dashboard-VIEW.png. `tests/fleet/test_dashboard.py` does the
same and checks what each view shows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fleet"))  # the tests' fleet helpers

MIN_REPORTERS = 5


def main() -> None:
    from monitor_support import capture_views, publish_reference, seed_fleet
    from server_support import ADMIN, Server, make_repository

    from edgeforge.fleet.db import sqlite_url

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dashboard-") as scratch:
        folder = Path(scratch)
        repo = make_repository(folder, {"cam": {1: ["pi"], 2: ["pi"]}, "kws": {1: ["mcu"]}})
        for name, version, device_class in (("cam", 1, "pi"), ("cam", 2, "pi"), ("kws", 1, "mcu")):
            publish_reference(repo, name, version, device_class)
        url = sqlite_url(folder / "fleet.db")
        server = Server(repo, url, "--min-reporters", str(MIN_REPORTERS)).start()
        try:
            seed_fleet(server, folder, min_reporters=MIN_REPORTERS)
            capture_views(server, ADMIN, args.out)
        finally:
            server.stop()
    for png in sorted(args.out.glob("dashboard-*.png")):
        print(png)


if __name__ == "__main__":
    main()
