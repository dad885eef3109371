"""The `serve` family: `edgeforge serve` (the fleet server) and `edgeforge rollout ...`."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.server import ADMIN_ENV, ENROLL_ENV

__all__ = ["add_verbs", "duration", "server_token"]


def duration(text: str) -> float:
    """`30m`, `90s`, `2h`, `1d` or plain seconds, as seconds."""
    value = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(value[-1:])
    number = value[:-1] if scale else value
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write e.g. 30m, 90s or 2h"
        ) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return seconds


def server_token(env: str, path: Path) -> tuple[str, str]:
    """The token from `env`, else from `path`, else a new one written to `path` (mode 0600).
    Returns (token, where it came from)."""
    given = os.environ.get(env)
    if given:
        if len(given) < 16:
            raise EdgeforgeError(f"{env} is shorter than 16 characters; use a long random token")
        return given, env
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise EdgeforgeError(f"{path} is readable by others; chmod 600 {path}")
        token = path.read_text().strip()
        if len(token) < 16:
            raise EdgeforgeError(f"{path} holds no usable token; delete it to make a new one")
        return token, str(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token, str(path)


def _serve(args: argparse.Namespace) -> int:
    from datetime import timedelta

    import uvicorn

    from edgeforge.fleet import db
    from edgeforge.fleet.repository import Repository
    from edgeforge.fleet.server.app import ServerConfig, served_private_keys

    if args.min_reporters < 1:
        raise EdgeforgeError(f"--min-reporters {args.min_reporters}: give at least 1 (default 10)")
    repo = Repository.open(args.repo, args.keys)
    leaked = served_private_keys(repo.path, repo.keys)
    if leaked:
        raise EdgeforgeError(
            f"refusing to serve {repo.path}: {leaked[0]} holds a private key "
            f"({len(leaked)} such files); move keys out of metadata/ and targets/"
        )
    folder = args.state or repo.path.parent / f"{repo.path.name}-server"
    url = args.db or db.sqlite_url(repo.path / "registry.db")
    db.upgrade(url)
    if url.startswith("sqlite"):
        from sqlalchemy import text

        with db.engine(url).connect() as conn:  # readers never wait for the one writer
            conn.execute(text("PRAGMA journal_mode=WAL"))
    admin, admin_from = server_token(ADMIN_ENV, folder / "admin-token")
    enroll, enroll_from = server_token(ENROLL_ENV, folder / "enroll-token")
    config = ServerConfig(
        repo=repo.path,
        keys=repo.keys,
        db=url,
        admin_token=admin,
        enroll_token=enroll,
        gate_interval_s=args.gate_interval,
        resign_interval_s=args.resign_interval,
        resign_within=timedelta(seconds=args.resign_within),
        min_reporters=args.min_reporters,
        monitor_interval_s=args.monitor_interval,
    )
    os.environ["EDGEFORGE_SERVE_CONFIG"] = config.to_json()
    print(
        f"edgeforge serve: http://{args.host}:{args.port} repo {repo.path}, admin token from "
        f"{admin_from}, enrolment token from {enroll_from}",
        file=sys.stderr,
    )
    uvicorn.run(
        "edgeforge.fleet.server.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )
    return 0


def _admin_request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    import httpx

    token = args.token or os.environ.get(ADMIN_ENV)
    if not token and args.token_file:
        token = Path(args.token_file).read_text().strip()
    if not token:
        raise EdgeforgeError(
            f"no admin token: give --token or --token-file, or set {ADMIN_ENV} "
            "(`edgeforge serve` wrote one to REPO-server/admin-token)"
        )
    url = args.server.rstrip("/") + path
    try:
        response = httpx.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
    except httpx.HTTPError as exc:
        raise EdgeforgeError(
            f"cannot reach the server at {args.server} ({exc}); is it running?"
        ) from None
    try:
        data = response.json()
    except ValueError:
        data = {"error": response.text[:200]}
    if response.status_code >= 400:
        raise EdgeforgeError(
            f"the server refused ({response.status_code}): {data.get('error', data)}"
        )
    return data


def _show_rollout(rollout: dict[str, Any]) -> None:
    waves = ",".join(f"{w * 100:g}%" for w in rollout["waves"])
    print(
        f"rollout {rollout['id']}: {rollout['name']}@{rollout['version']} on "
        f"{rollout['device_class']} {rollout['state']}, wave {rollout['wave']} of {waves} "
        f"(reach {rollout['reach']:.1%})"
    )
    if rollout.get("reason"):
        print(f"  {rollout['reason']}")
    devices = rollout.get("devices")
    if devices:
        print(
            "  devices: {in_class} in class, {reached} reached, {told} told, {success} committed, "
            "{failed} failed, {timeout} timed out, {pending} pending, {rollback_pending} to roll "
            "back".format(**devices)
        )
    gate = rollout.get("gate_now")
    if gate:
        print(f"  gate {rollout['gate']}: {gate['status']} ({gate['reason']})")


def _rollout_start(args: argparse.Namespace) -> int:
    from edgeforge.cli import _emit

    name, _, version = args.release.rpartition("@")
    if not name or not version.isdigit():
        raise EdgeforgeError(f"{args.release!r}: write the release as NAME@VERSION, e.g. demo@2")
    body = {
        "name": name,
        "version": int(version),
        "device_class": args.device_class,
        "waves": args.waves,
        "gate": args.gate,
        "min_devices": args.min_devices,
        "report_timeout_s": args.report_timeout,
        "confidence": args.confidence,
    }
    from edgeforge.fleet.server.gates import parse_gate, parse_waves

    parse_waves(args.waves)  # refuse bad input before the network
    parse_gate(args.gate)
    data = _admin_request(args, "POST", "/v1/admin/rollouts", body)
    _emit(args, "rollout", data, lambda: [_show_rollout(r) for r in data["rollouts"]])
    return 0


def _rollout_status(args: argparse.Namespace) -> int:
    from edgeforge.cli import _emit

    if args.id is None:
        data = _admin_request(args, "GET", "/v1/admin/rollouts")
        _emit(
            args,
            "rollout",
            data,
            lambda: [_show_rollout(r) for r in data["rollouts"]] or print("no rollouts"),
        )
    else:
        data = _admin_request(args, "GET", f"/v1/admin/rollouts/{args.id}")
        _emit(args, "rollout", data, lambda: _show_rollout(data))
    return 0


def _rollout_verb(args: argparse.Namespace) -> int:
    from edgeforge.cli import _emit

    data = _admin_request(args, "POST", f"/v1/admin/rollouts/{args.id}/{args.rollout_verb}")
    _emit(args, "rollout", data, lambda: _show_rollout(data))
    return 0


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        required=True,
        metavar="URL",
        help="the fleet server, e.g. http://127.0.0.1:8080",
    )
    parser.add_argument("--token", help=f"admin token (default: ${ADMIN_ENV})")
    parser.add_argument(
        "--token-file", type=Path, help="a file holding the admin token (serve's admin-token)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object (with a 'schema' version)",
    )


def add_verbs(verbs: Any) -> None:
    serve = verbs.add_parser("serve", help="the fleet server: device API, TUF repository, rollouts")
    serve.add_argument(
        "--repo", type=Path, required=True, help="the TUF repository folder to serve"
    )
    serve.add_argument("--keys", type=Path, help="its keys folder (default: REPO-keys beside it)")
    serve.add_argument(
        "--db", metavar="URL", help="database URL (default: sqlite REPO/registry.db)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument(
        "--state", type=Path, help="the server's folder for generated tokens (default: REPO-server)"
    )
    serve.add_argument(
        "--gate-interval", type=float, default=5.0, help="seconds between gate checks"
    )
    serve.add_argument(
        "--resign-within",
        type=duration,
        default=43200.0,
        help="re-sign the timestamp when it expires within this (12h, 30m)",
    )
    serve.add_argument(
        "--resign-interval", type=duration, default=300.0, help="how often to look (5m, 10s)"
    )
    serve.add_argument(
        "--min-reporters",
        type=int,
        default=10,
        help="devices a telemetry figure needs before it is shown or judged",
    )
    serve.add_argument(
        "--monitor-interval", type=duration, default=60.0, help="how often drift alerts are checked"
    )
    serve.set_defaults(run=_serve)

    rollout = verbs.add_parser(
        "rollout", help="staged rollouts: start, status, pause, resume, abort"
    )
    sub = rollout.add_subparsers(dest="rollout_verb", required=True, metavar="ACTION")
    start = sub.add_parser("start", help="roll NAME@VERSION out in waves, each behind a gate")
    start.add_argument("release", metavar="NAME@VERSION")
    _server_options(start)
    start.add_argument(
        "--waves", default="1%,10%,50%,100%", help="cumulative share of devices per wave"
    )
    start.add_argument(
        "--gate",
        default="failure_rate<2%",
        help="conditions each wave must show at the confidence bound, e.g. "
        "failure_rate<2%%,canary_pass>=99%%,latency_p95<+10%%",
    )
    start.add_argument(
        "--min-devices", type=int, default=20, help="decided devices needed before a gate judges"
    )
    start.add_argument(
        "--report-timeout",
        type=duration,
        default=1800.0,
        help="a device silent this long counts as failed (30m, 2h)",
    )
    start.add_argument(
        "--confidence", type=float, default=0.95, help="one-sided confidence of the gate's bounds"
    )
    start.add_argument(
        "--device-class", help="one class only (default: every class the release has)"
    )
    start.set_defaults(run=_rollout_start)

    status = sub.add_parser(
        "status", help="one rollout's waves, devices and gate (all rollouts without ID)"
    )
    status.add_argument("id", type=int, nargs="?", help="rollout id")
    _server_options(status)
    status.set_defaults(run=_rollout_status)
    for verb, text in (
        ("pause", "stop telling new devices; those told keep the new version"),
        ("resume", "go on (a wave the gate found unsure is accepted)"),
        ("abort", "stop, and roll back every device that took the new version"),
    ):
        parser = sub.add_parser(verb, help=text)
        parser.add_argument("id", type=int, help="rollout id")
        _server_options(parser)
        parser.set_defaults(run=_rollout_verb)
