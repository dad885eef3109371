"""The `release` family: `release` (the evidence-gated release into a TUF repository) and
`registry` (list, show, history, alias, diff). Handlers import the fleet machinery when they run,
so `edgeforge --help` stays fast."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeforge.errors import EdgeforgeError

__all__ = ["add_verbs"]


def add_verbs(verbs: Any) -> None:
    from edgeforge.cli import _data_options, _output_options, _timeout_option

    release = verbs.add_parser(
        "release",
        help="retest each variant, gather its evidence and canary set, and publish it signed",
    )
    release.add_argument(
        "source",
        metavar="SOURCE",
        help="the model released: an .onnx file, a .pt2, or a 'module:factory' reference",
    )
    _repository_options(release)
    release.add_argument("--name", required=True, help="the model's name in the registry")
    release.add_argument(
        "--variants",
        required=True,
        metavar="CLASS=RUNTIME[:PRECISION],...",
        help="one variant per device class, e.g. linux-x86=openvino,linux-arm=onnxruntime:"
        "int8-static,android=litert",
    )
    release.add_argument(
        "--from",
        dest="sources",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="take the artifacts optimize/convert built in DIR (repeatable; a variant not "
        "found there is built)",
    )
    _data_options(release, sampling=False)
    release.add_argument(
        "--max-samples", type=int, metavar="N", help="retest on N samples of --data (default: all)"
    )
    limits = release.add_argument_group("limits (a value for every class, or CLASS:VALUE,...)")
    limits.add_argument("--max-accuracy-drop", metavar="SHARE", help="e.g. 1%% or android:2%%")
    limits.add_argument("--max-size", metavar="BYTES", help="artifact size, e.g. 5MB")
    limits.add_argument(
        "--max-latency",
        metavar="MS",
        help="estimated on the class's catalogue device (else measured here), e.g. 20ms",
    )
    limits.add_argument(
        "--device",
        dest="devices",
        action="append",
        default=[],
        metavar="CLASS=ID",
        help="the catalogue device a class stands for, for the latency estimate (a class "
        "named like a catalogue id needs none)",
    )
    release.add_argument(
        "--bench-runs",
        type=int,
        metavar="N",
        default=20,
        help="timed runs to measure each variant's latency here (0: do not measure)",
    )
    release.add_argument(
        "--canary-samples",
        type=int,
        default=32,
        metavar="N",
        help="inputs in each variant's canary set",
    )
    personal = release.add_argument_group("personalisation (a package beside each variant)")
    personal.add_argument(
        "--personalize",
        metavar="LAYERS",
        help="ship a personalisation package in each variant: the head is these layers "
        "(comma list, e.g. fc or 2,4; SOURCE must be a 'module:factory' reference)",
    )
    personal.add_argument(
        "--personalize-form",
        metavar="FORM,...",
        help="the head's trainable forms (executorch, coreml, head); the numpy head is always "
        "in; default: it plus the variant runtime's own training form",
    )
    personal.add_argument(
        "--personalize-reference",
        metavar="FILE.npz",
        help="training inputs 'x' [N, F] and labels 'y' [N] for the input adapter (a "
        "per-feature gain and offset fitted on the device); the package keeps only per-class "
        "feature means and within-class spread",
    )
    _timeout_option(release, "build or retest")
    _output_options(release)  # --json, and --report: the evidence of every variant in HTML
    release.set_defaults(run=_release)

    registry = verbs.add_parser("registry", help="the registry: list, show, history, alias, diff")
    actions = registry.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every model with its versions and aliases")
    show = actions.add_parser("show", help="a model, or one version with its evidence")
    show.add_argument("reference", metavar="NAME[@VERSION|@ALIAS]")
    history = actions.add_parser("history", help="releases and alias moves, oldest first")
    history.add_argument("name", metavar="NAME")
    alias = actions.add_parser(
        "alias", help="point an alias at a version (signed; an older version needs --downgrade)"
    )
    alias.add_argument("reference", metavar="NAME@VERSION")
    alias.add_argument("alias", metavar="ALIAS")
    alias.add_argument(
        "--downgrade", action="store_true", help="allow moving the alias to an older version"
    )
    diff = actions.add_parser("diff", help="compare two versions' evidence per device class")
    diff.add_argument("a", metavar="NAME@A")
    diff.add_argument("b", metavar="NAME@B")
    for action in (listing, show, history, alias, diff):
        _repository_options(action)
        _json_option(action)
        action.set_defaults(run=_registry)


def _json_option(parser: argparse.ArgumentParser) -> None:
    """`--json` as every verb has it (these verbs write no report and overwrite nothing)."""
    parser.add_argument_group("output").add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object (with a 'schema' version)",
    )


def _repository_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("repository")
    group.add_argument("--repo", type=Path, required=True, metavar="DIR", help="the repository")
    group.add_argument(
        "--keys", type=Path, metavar="DIR", help="its keys (default: DIR-keys beside it)"
    )
    group.add_argument(
        "--db",
        metavar="URL",
        help="the registry's database (default: sqlite:///DIR/registry.db), e.g. "
        "postgresql+psycopg://user@host:5432/db",
    )
    if parser.prog.split()[-1] == "release":
        group.add_argument(
            "--store",
            metavar="URI",
            help="where the registry keeps the released files: a folder or s3://bucket/prefix "
            "(endpoint from AWS_ENDPOINT_URL; default: DIR-store beside the repository)",
        )


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise EdgeforgeError(f"{flag} {item!r}: write CLASS=ID, e.g. {flag} android=pixel-8")
        pairs[key.strip()] = value.strip()
    return pairs


def _release(args: argparse.Namespace) -> int:
    from edgeforge.cli import _emit
    from edgeforge.fleet.release import release

    result = release(
        args.source,
        args.repo,
        args.name,
        args.variants,
        keys=args.keys,
        db=args.db,
        store=args.store,
        sources=args.sources,
        data=args.data,
        max_accuracy_drop=args.max_accuracy_drop,
        max_size=args.max_size,
        max_latency=args.max_latency,
        devices=_pairs(args.devices, "--device"),
        max_samples=args.max_samples,
        bench_runs=args.bench_runs,
        canary_count=args.canary_samples,
        timeout=args.timeout,
        personalize=args.personalize,
        personalize_forms=args.personalize_form,
        personalize_reference=args.personalize_reference,
    )

    def show() -> None:
        for variant in result.variants:
            mark = "ok " if variant["passed"] else "NO "
            figures = [c["detail"] for c in variant["checks"]]
            print(
                f"{mark} {variant['device_class']}={variant['runtime']}:{variant['precision']}: "
                + "; ".join(figures)
            )
            package = variant.get("personalize")
            if package is None:
                continue
            if package["present"]:
                forms = ", ".join(f"{f} {state}" for f, state in package["forms"].items())
                print(f"    personalisation package: head {', '.join(package['layers'])}; {forms}")
            else:
                print(f"    no personalisation package: {package['reason']}")
        print(result.verdict)

    _emit(args, "release", result.to_dict(), show)
    return result.exit_code


def _registry(args: argparse.Namespace) -> int:
    from edgeforge.cli import _emit

    verb = f"registry.{args.action}"
    if args.action == "alias":
        from edgeforge.fleet.release import move_alias

        moved = move_alias(
            args.repo,
            args.reference,
            args.alias,
            keys=args.keys,
            db=args.db,
            downgrade=args.downgrade,
        )

        def said() -> None:
            if not moved["changed"]:
                print(f"{moved['name']}@{moved['alias']} is already version {moved['to_version']}")
                return
            was = moved["from_version"]
            print(
                f"{moved['name']}@{moved['alias']}: {was if was is not None else '(new)'} -> "
                f"{moved['to_version']}{' (downgrade)' if moved['downgrade'] else ''}; "
                f"signed as targets version {moved['targets_version']}"
            )

        _emit(args, verb, moved, said)
        return 0
    registry = _open_registry(args.repo, args.db)
    if args.action == "list":
        view = registry.list()
    elif args.action == "show":
        view = registry.show(args.reference)
    elif args.action == "history":
        view = registry.history(args.name)
    else:
        view = registry.diff(args.a, args.b)
    data = view.to_dict()
    _emit(args, verb, data, lambda: _print_view(view.kind, data))
    return 0


def _open_registry(repo: Path, db: str | None) -> Any:
    """The registry of a repository, for reading: no keys are needed to read it."""
    from edgeforge.fleet.registry import Registry
    from edgeforge.fleet.release import _check_db

    _check_db(db)
    if not (Path(repo) / "metadata" / "root.json").is_file():
        raise EdgeforgeError(
            f"{repo} is not an edgeforge repository (no metadata/root.json); make one with: "
            f"edgeforge keys init --repo {repo}"
        )
    return Registry.for_repository(Path(repo), db)


def _print_view(kind: str, data: dict[str, Any]) -> None:
    if kind == "list":
        if not data["models"]:
            print("the registry is empty")
        for model in data["models"]:
            aliases = ", ".join(f"{a}={v}" for a, v in model["aliases"].items()) or "no aliases"
            print(
                f"{model['name']}: versions {', '.join(map(str, model['versions']))}; "
                f"classes {', '.join(model['device_classes'])}; {aliases}"
            )
    elif kind == "show" and "versions" in data:
        print(f"{data['name']}: aliases {data['aliases'] or 'none'}")
        for version in data["versions"]:
            _print_version(version)
    elif kind == "show":
        _print_version(data)
    elif kind == "history":
        for row in data["history"]:
            if row["event"] == "release":
                print(f"{row['at']}  release {row['version']} ({', '.join(row['device_classes'])})")
            else:
                print(
                    f"{row['at']}  alias {row['alias']}: {row['from_version']} -> "
                    f"{row['to_version']}{' (downgrade)' if row['downgrade'] else ''}"
                )
    else:
        print(
            f"{data['a']} -> {data['b']}" + ("  (source changed)" if data["source_changed"] else "")
        )
        for row in data["classes"]:
            figures = [
                f"{key} {_figure(row[key]['a'])} -> {_figure(row[key]['b'])}"
                for key in ("accuracy", "size_bytes", "estimated_latency_ms", "measured_latency_ms")
            ]
            print(f"  {row['device_class']}: " + "; ".join(figures))


def _print_version(version: dict[str, Any]) -> None:
    print(f"{version['name']}@{version['version']}  source {version['source_sha256'][:12]}")
    for variant in version["variants"]:
        evidence = variant["evidence"]
        accuracy = (evidence.get("accuracy") or {}).get("candidate")
        latency = evidence.get("latency") or {}
        print(
            f"  {variant['device_class']}: {variant['runtime']}:{variant['precision']}, "
            f"{variant['size_bytes']} bytes, accuracy {_figure(accuracy)}, latency "
            f"{_figure(latency.get('estimated_ms'))} ms estimated / "
            f"{_figure(latency.get('measured_ms'))} ms here; artifact "
            f"{variant['lineage']['artifact_sha256'][:12]}"
        )


def _figure(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
