"""`edgeforge fetch`: one variant through the TUF client, verified, written atomically."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_verbs"]


def add_verbs(verbs: Any) -> None:
    from edgeforge.cli import _output_options

    fetch = verbs.add_parser(
        "fetch", help="download one released variant, verified against the device's trusted root"
    )
    fetch.add_argument("--repo", required=True, help="the repository's URL or folder")
    fetch.add_argument(
        "--state",
        type=Path,
        required=True,
        help="the device's store of trusted metadata (what catches rollback and freeze)",
    )
    fetch.add_argument(
        "--root",
        type=Path,
        help="the root metadata the device ships with (first use only; keys init wrote it "
        "as REPO/metadata/1.root.json)",
    )
    fetch.add_argument("--name", required=True, help="the model's name")
    which = fetch.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int, help="a release version")
    which.add_argument("--alias", help="an alias, e.g. production")
    fetch.add_argument("--device-class", required=True, help="this device's class")
    fetch.add_argument("--out", type=Path, required=True, help="where the variant goes")
    _output_options(fetch)
    fetch.set_defaults(run=_fetch)


def _fetch(args: argparse.Namespace) -> int:
    from edgeforge.cli import _emit
    from edgeforge.fleet.client import fetch

    got = fetch(
        args.repo,
        args.state,
        args.name,
        args.device_class,
        args.out,
        version=args.version,
        alias=args.alias,
        root=args.root,
    )
    data = got.to_dict()

    def show() -> None:
        print(f"{got.name} version {got.version} for {got.device_class}: verified, in {got.out}")
        for rel in got.files:
            print(f"  {rel}")

    _emit(args, "fetch", data, show)
    return 0
