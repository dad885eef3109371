"""The `monitor` family: `edgeforge monitor --server URL [--model NAME] [--json]`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_verbs"]


def _monitor(args: argparse.Namespace) -> int:
    from edgeforge.cli import _emit
    from edgeforge.cli.serve import _admin_request
    from edgeforge.fleet.monitor import render_monitor_text

    path = "/v1/admin/monitor" + (f"?model={args.model}" if args.model else "")
    data = _admin_request(args, "GET", path)
    alerts = _admin_request(args, "GET", "/v1/admin/alerts")["alerts"]
    if args.model:
        alerts = [a for a in alerts if a.get("name") == args.model]
    data = {**data, "alerts": alerts}

    def show() -> None:
        print(render_monitor_text(data))
        for alert in alerts[:20]:
            print(f"alert {alert['kind']}: {alert['message']}")

    _emit(args, "monitor", data, show)
    return 0


def add_verbs(verbs: Any) -> None:
    from edgeforge.cli import _output_options
    from edgeforge.fleet.server import ADMIN_ENV

    monitor = verbs.add_parser(
        "monitor",
        help="the fleet's telemetry per model version and device class: latency, confidence, "
        "drift, alerts",
    )
    monitor.add_argument(
        "--server",
        required=True,
        metavar="URL",
        help="the fleet server, e.g. http://127.0.0.1:8080",
    )
    monitor.add_argument("--model", metavar="NAME", help="one model only")
    monitor.add_argument("--token", help=f"admin token (default: ${ADMIN_ENV})")
    monitor.add_argument(
        "--token-file", type=Path, help="a file holding the admin token (serve's admin-token)"
    )
    _output_options(monitor)
    monitor.set_defaults(run=_monitor)
