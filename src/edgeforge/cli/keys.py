"""`edgeforge keys init | rotate`: the keys and the TUF repository a release is signed into."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["add_verbs"]


def add_verbs(verbs: Any) -> None:
    from edgeforge.cli import _output_options

    # One parser for both actions (not sub-verbs), so `keys` takes --json/--report like
    # every verb; the options of one action are refused with the other.
    keys = verbs.add_parser(
        "keys",
        help="init: a new TUF repository with Ed25519 keys (root/targets apart from the online "
        "ones); rotate ROLE: new keys for a role, the new root signed by the old and new keys",
    )
    keys.add_argument("action", choices=("init", "rotate"), help="what to do")
    keys.add_argument(
        "role",
        nargs="?",
        choices=("root", "targets", "snapshot", "timestamp", "director"),
        metavar="ROLE",
        help="rotate: the role whose keys are replaced",
    )
    keys.add_argument("--repo", type=Path, required=True, help="the repository folder")
    keys.add_argument(
        "--keys", type=Path, help="the keys folder (default: REPO-keys beside the repository)"
    )
    keys.add_argument(
        "--expiry",
        type=_role_values("expiry", float),
        default={},
        metavar="ROLE=DAYS,...",
        help="init: days each role's metadata lasts (default: root=365,targets=90,snapshot=7,"
        "timestamp=1)",
    )
    keys.add_argument(
        "--threshold",
        type=_role_values("threshold", int),
        default={},
        metavar="ROLE=N,...",
        help="init: signatures each role needs; as many keys are made (default: 1 each)",
    )
    keys.add_argument(
        "--signer",
        action="append",
        default=[],
        metavar="ROLE=URI[,PUBLIC.pem]",
        help="init: a key held elsewhere (a securesystemslib signer URI, e.g. "
        "file2:/offline/t.pem) instead of a new key for ROLE; URIs other than file2: need "
        "the public key (repeatable)",
    )
    _output_options(keys)
    keys.set_defaults(run=_keys)


def _keys(args: argparse.Namespace) -> int:
    from edgeforge.errors import EdgeforgeError

    if args.action == "init":
        if args.role:
            raise EdgeforgeError(f"keys init takes no role ({args.role}); did you mean rotate?")
        return _init(args)
    if not args.role:
        raise EdgeforgeError("keys rotate needs the ROLE to rotate, e.g. keys rotate targets")
    if args.expiry or args.threshold or args.signer:
        raise EdgeforgeError("--expiry, --threshold and --signer are for keys init only")
    return _rotate(args)


def _role_values(what: str, kind: type) -> Any:
    def parse(text: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for item in filter(None, text.split(",")):
            role, sep, value = item.partition("=")
            try:
                if not sep:
                    raise ValueError
                values[role.strip()] = kind(value)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{item!r} is not ROLE=VALUE; write e.g. targets=2"
                ) from None
        return values

    parse.__name__ = what
    return parse


def _external(items: list[str]) -> dict[str, list[tuple[str, Any]]]:
    from edgeforge.errors import EdgeforgeError
    from edgeforge.fleet.keys import public_key_from_uri

    signers: dict[str, list[tuple[str, Any]]] = {}
    for item in items:
        role, sep, rest = item.partition("=")
        if not sep or not rest:
            raise EdgeforgeError(f"--signer {item!r} is not ROLE=URI; e.g. targets=file2:/k.pem")
        uri, _, public = rest.partition(",")
        key = public_key_from_uri(uri, Path(public) if public else None)
        signers.setdefault(role, []).append((uri, key))
    return signers


def _summary(repo: Any) -> dict[str, Any]:
    chain = repo.metadata()
    root = chain["root"].signed
    return {
        "repo": str(repo.path),
        "keys": str(repo.keys),
        "trusted_root": str(repo.path / "metadata" / f"{root.version}.root.json"),
        "roles": {
            role: {
                "keyids": list(info.keyids),
                "threshold": info.threshold,
                "version": chain[role].signed.version,
                "expires": chain[role].signed.expires.isoformat(),
            }
            for role, info in root.roles.items()
        },
        "director_key": repo.director_public_key().hex(),
    }


def _init(args: argparse.Namespace) -> int:
    from edgeforge.cli import _emit
    from edgeforge.fleet.repository import Repository

    repo = Repository.init(
        args.repo,
        args.keys,
        expiry={role: timedelta(days=days) for role, days in args.expiry.items()},
        thresholds=args.threshold,
        signers=_external(args.signer),
    )
    data = _summary(repo)

    def show() -> None:
        print(f"repository: {data['repo']}")
        print(f"keys:       {data['keys']} (keep root/ and targets/ offline)")
        print(f"device root: {data['trusted_root']} (ship it with each device)")
        for role, info in data["roles"].items():
            print(f"  {role:<9} threshold {info['threshold']}, expires {info['expires']}")

    _emit(args, "keys", data, show)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from edgeforge.cli import _emit
    from edgeforge.fleet.repository import Repository

    repo = Repository.open(args.repo, args.keys)
    new = repo.rotate(args.role)
    data = {**_summary(repo), "rotated": args.role, "new_keyids": new}

    def show() -> None:
        print(f"rotated {args.role}: new key {', '.join(k[:16] for k in new)}")
        print(f"root is now version {data['trusted_root']}")

    _emit(args, "keys", data, show)
    return 0
