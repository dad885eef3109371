"""The `edgeforge` command: a thin layer over the Python API of the same verbs.

One vocabulary: each option that means the same thing in several verbs (model and `--shape`,
`--runtime`, `--precision`, `--device`, `--network`, `--cloud`, `--data`, `--out`, `--timeout`,
`--json`/`--report`) is defined once below and shared; older spellings (`convert --to`,
`optimize --runtimes`/`--precisions`, `decide --cloud-instance`) still work as aliases hidden
from the help. Help shows every default.

`--json` prints `{"schema": "edgeforge.<verb>/1", ...}`: the object the API returns
(`to_dict()`; a list is put under a name), never a bare list. Bad input exits with status 2 and
one line on stderr, never a traceback (`--debug` shows it); under `--json` the error is also a
JSON object on stdout.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgeforge import __version__
from edgeforge._children import Interrupted, adopt_orphans, raise_on_sigterm
from edgeforge._extras import missing_extra
from edgeforge.errors import EdgeforgeError, file_system_error

__all__ = ["SCHEMA_VERSION", "build_parser", "main"]

# The version of every verb's --json object; raise it when a field changes meaning or goes.
SCHEMA_VERSION = 1

# Old spellings that keep working, hidden from the help (scripts may use them).
_HIDDEN_ALIASES = {"--to", "--runtimes", "--precisions", "--cloud-instance"}

# Modules of this package that add verbs (the fleet half), in the order `--help` lists them.
_VERB_FAMILIES: tuple[str, ...] = (
    "keys",
    "release",
    "fetch",
    "serve",
    "agent",
    "monitor",
    "personalize",
)

# --json puts a verb's list result under this name, so the output is always an object.
_LIST_NAMES = {"devices": "devices", "estimate": "estimates"}


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default (unless its help already says it, or it has none) and
    leaves hidden aliases out of the help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or not action.option_strings
            or default in (None, False, [], argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = [s for s in action.option_strings if s not in _HIDDEN_ALIASES]
        if shown != action.option_strings:
            action = copy.copy(action)
            action.option_strings = shown
        return super()._format_action_invocation(action)


class _UsageError(Exception):
    """argparse's usage error, raised instead of exiting so that `main` can answer in JSON."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # type: ignore[override]
        for alias in _HIDDEN_ALIASES:  # "--runtime/--to" in "required: ..." names one flag
            message = message.replace(f"/{alias}", "")
        raise _UsageError(self, message)


# -- shared options: each flag defined once ----------------------------------------------------


def _model_options(parser: argparse.ArgumentParser, shape: bool = True) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "model",
        metavar="MODEL",
        help="an .onnx file, a saved torch.export program (.pt2), or a "
        "'package.module:factory' / 'file.py:factory' reference returning (module, inputs); "
        "a reference imports and runs that code: pass only code you trust",
    )
    group.add_argument("--memory-limit", metavar="BYTES", help=_MEMORY_HELP)
    if shape:
        _shape_option(group)


def _shape_option(group: Any) -> None:
    """`--shape NAME=DIMS`: pin an input's dims wherever a model is read."""
    group.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="pin an input's shape, e.g. --shape image=1x3x224x224 (repeatable; runtimes "
        "that convert from a torch program keep its own dims, and say so)",
    )


def _output_options(parser: argparse.ArgumentParser, report: bool = True) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object (with a 'schema' version)",
    )
    if report:
        group.add_argument(
            "--report",
            type=Path,
            metavar="FILE.html",
            help="also write an HTML report (and its JSON beside it)",
        )
    # decide's --force pins its recommendation; there --overwrite alone says it (issue 13)
    flags = ("--overwrite",) if "--force" in parser._option_string_actions else ("--force",)
    group.add_argument(*flags, dest="overwrite", action="store_true", help=_OVERWRITE_HELP)


_MEMORY_HELP = "memory budget for the model's work, e.g. 8GB (default: half this machine's RAM)"
_OVERWRITE_HELP = "replace existing outputs edgeforge did not write (inputs are never overwritten)"
_INPUTS = ("model", "reference", "candidate", "small", "large", "data", "prices", "rows")


def _runtime_option(
    parser: Any,
    help: str,
    *,
    default: str | None = None,
    required: bool = False,
    aliases: tuple[str, ...] = (),
) -> None:
    """`--runtime`: one runtime, or a comma list where a verb takes several."""
    parser.add_argument(
        "--runtime", *aliases, dest="runtime", default=default, required=required, help=help
    )


def _precision_option(
    parser: Any, help: str, *, default: str | None = "fp32", aliases: tuple[str, ...] = ()
) -> None:
    """`--precision`: fp32, fp16, int8 (estimates) or a recipe (int8-static, int4-weight...)."""
    parser.add_argument("--precision", *aliases, dest="precision", default=default, help=help)


def _device_option(parser: Any, help: str = "catalogue id (see `edgeforge devices`)") -> None:
    parser.add_argument("--device", required=True, help=help)


_NETWORKS = "3g, 4g, lte, 5g, wifi, offline, or rtt=80ms,up=5mbps,down=20mbps[,loss=1%%]"


def _network_option(parser: Any, *, required: bool = False, default_text: str = "") -> None:
    """`--network`: a network profile name or an rtt/up/down spec."""
    parser.add_argument(
        "--network",
        required=required,
        help=f"{_NETWORKS}{f' (default: {default_text})' if default_text else ''}",
    )


def _cloud_option(
    parser: Any, help: str, *, default: str | None = None, aliases: tuple[str, ...] = ()
) -> None:
    """`--cloud`: the server in the cloud, a cloud instance from decide's catalogue."""
    parser.add_argument("--cloud", *aliases, dest="cloud", default=default, help=help)


def _out_option(parser: Any, default: Path | None, help: str = "output folder") -> None:
    parser.add_argument("--out", type=Path, default=default, help=help)


def _timeout_option(parser: Any, what: str) -> None:
    parser.add_argument("--timeout", type=float, default=600, help=f"seconds per {what}")


def _executor_options(parser: Any, what: str) -> None:
    """Where each job runs (issue 19): local child processes, or tasks on a Ray cluster."""
    parser.add_argument(
        "--executor",
        default="local",
        metavar="WHERE",
        help=f"where each {what} runs: local (child processes, the default), ray (the cluster "
        "RAY_ADDRESS names, else a Ray instance started here) or ray://HOST:PORT; needs "
        "pip install 'edgeforge[ray]'",
    )
    parser.add_argument(
        "--task-cpus",
        type=float,
        default=1,
        metavar="N",
        help=f"CPUs each {what}'s Ray task reserves (--memory-limit is its memory)",
    )


def _milliseconds(text: str) -> float:
    """`10`, `10ms`, `0.5s` or `500us` as milliseconds."""
    value = text.strip().lower()
    scale = 1.0
    if value.endswith("ms"):
        value = value[:-2]
    elif value.endswith("us"):
        value, scale = value[:-2], 1e-3
    elif value.endswith("s"):
        value, scale = value[:-1], 1000.0
    try:
        return float(value) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time; write e.g. 10ms, 0.5s or 500us"
        ) from None


def _max_latency_option(parser: Any, help: str) -> None:
    parser.add_argument("--max-latency", type=_milliseconds, metavar="MS", help=help)


def _shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    from edgeforge.analysis import parse_shape

    shapes: dict[str, tuple[int, ...]] = {}
    for text in args.shape:
        name, shape = parse_shape(text)
        shapes[name] = shape
    return shapes


def _emit(args: argparse.Namespace, verb: str, data: Any, show: Callable[[], None]) -> None:
    """The one place a verb's result leaves: the HTML report (`--report`), then JSON or text."""
    if getattr(args, "report", None):
        from edgeforge.report import write_report

        inputs = [getattr(args, name, None) for name in _INPUTS]
        path = write_report(
            {verb: data},
            args.report,
            title=f"edgeforge {verb}",
            inputs=inputs,
            force=args.overwrite,
        )
        print(f"report: {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(_versioned(verb, data), indent=2, default=str))
    else:
        show()


def _schema(verb: str) -> str:
    return f"edgeforge.{verb}/{SCHEMA_VERSION}"


def _versioned(verb: str, data: Any) -> dict[str, Any]:
    """`data` as one object with its schema first; a list goes under its name."""
    if not isinstance(data, dict):
        data = {_LIST_NAMES.get(verb, "items"): data}
    return {"schema": _schema(verb), **{k: v for k, v in data.items() if k != "schema"}}


def _inspect(args: argparse.Namespace) -> int:
    from edgeforge.analysis import inspect
    from edgeforge.analysis.render import print_profile

    profile = inspect(args.model, shapes=_shapes(args))
    _emit(args, "inspect", profile.to_dict(), lambda: print_profile(profile, top=args.top))
    return 0


def _devices(args: argparse.Namespace) -> int:
    from edgeforge._progress import output_console
    from edgeforge.devices import devices_table, get_device, list_devices

    devices = [get_device(name) for name in args.names] if args.names else list_devices()
    data = [d.to_dict() for d in devices]
    _emit(args, "devices", data, lambda: output_console().print(devices_table(devices)))
    return 0


def _data_options(
    parser: argparse.ArgumentParser,
    *,
    required: bool = False,
    help: str | None = None,
    sampling: bool = False,
) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        type=Path,
        required=required,
        metavar="DIR",
        help=help
        or "samples: .npz files, <input>.npy files or images (class sub-folders = labels); "
        "without it, inputs are synthesised by role (token ids, masks with padding, audio, "
        "images); edge values run apart, as a robustness check",
    )
    if sampling:
        _sampling_options(group)


def _sampling_options(group: Any) -> None:
    """How a verb reads --data: how many samples, and how images become inputs."""
    group.add_argument(
        "--max-samples",
        type=int,
        metavar="N",
        help="use N samples drawn with a fixed seed, stratified by class (default: all)",
    )
    group.add_argument(
        "--preprocess",
        metavar="SPEC",
        help="for images: 'mean=0.485,0.456,0.406;std=0.229,0.224,0.225;layout=nchw;"
        "channels=rgb' (also scale=255, or hook=module:function / file.py:function)",
    )


def _tolerance_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("comparison")
    _precision_option(
        group, "judge as fp32, fp16, int8 or int4 (default: the artifact's recipe)", default=None
    )
    group.add_argument("--rtol", type=float, help="relative tolerance (times max |reference|)")
    group.add_argument("--atol", type=float, help="absolute tolerance")
    group.add_argument("--min-cosine", type=float, help="smallest acceptable cosine similarity")


def _check(args: argparse.Namespace) -> int:
    from edgeforge import check
    from edgeforge.render import print_check

    report = check(args.model, args.runtime, timeout=args.timeout, shapes=_shapes(args))
    _emit(args, "check", report.to_dict(), lambda: print_check(report))
    return report.exit_code


def _convert(args: argparse.Namespace) -> int:
    from edgeforge import convert
    from edgeforge.render import print_conversion

    result = convert(
        args.model,
        args.runtime,
        args.out,
        precision=args.precision,
        data=args.data,
        options=_recipe_options(args.option),
        timeout=args.timeout,
        require=args.require,
        force=args.overwrite,
        shapes=_shapes(args),
        max_samples=args.max_samples,
        preprocess=args.preprocess,
        executor=args.executor,
        task_cpus=args.task_cpus,
    )
    _emit(args, "convert", result.to_dict(), lambda: print_conversion(result))
    return result.exit_code


def _recipe_options(pairs: list[str]) -> dict[str, Any]:
    """`--option key=value` pairs; values read as JSON when they parse (numbers, true, lists)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EdgeforgeError(
                f"--option {pair!r}: write key=value, e.g. --option calibration_method=entropy"
            )
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


def _verify(args: argparse.Namespace) -> int:
    from edgeforge import verify
    from edgeforge.render import print_verification

    result = verify(
        args.reference,
        args.candidate,
        data=args.data,
        precision=args.precision,
        rtol=args.rtol,
        atol=args.atol,
        min_cosine=args.min_cosine,
        max_samples=args.max_samples,
        preprocess=args.preprocess,
        shapes=_shapes(args),
        timeout=args.timeout,
    )

    def show() -> None:
        print_verification(result)
        for note in result.notes:
            print(f"note: {note}")

    _emit(args, "verify", result.to_dict(), show)
    return result.exit_code


def _bench(args: argparse.Namespace) -> int:
    from edgeforge import bench
    from edgeforge.render import print_bench

    if args.on:  # on the user's own devices, through the fleet server
        from edgeforge.fleet.jobs import bench_on

        if not args.server:
            raise EdgeforgeError("bench --on needs --server URL (the fleet server)")
        result = bench_on(
            args.model, args.on, args.server, warmup=args.warmup, runs=args.runs,
            timeout=args.timeout, csv_path=args.csv,
        )  # fmt: skip
        _emit(args, "bench", result.to_dict(), lambda: print_bench(result))
        return 0
    batches = tuple(int(b) for text in args.batch for b in text.split(",") if b.strip())
    result = bench(
        args.model,
        runtime=args.runtime,
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
        repeats=args.repeats,
        batches=batches or (1,),
        data=args.data,
        shapes=_shapes(args),
        timeout=args.timeout,
    )
    _emit(args, "bench", result.to_dict(), lambda: print_bench(result))
    return 0


def _estimate(args: argparse.Namespace) -> int:
    from edgeforge import estimate
    from edgeforge.estimator.render import print_estimates

    results = estimate(
        args.model,
        args.device.split(","),  # always several: --json is {"estimates": [...]}
        runtime=args.runtime,
        precision=args.precision,
        unit=args.unit,
        shapes=_shapes(args),
        threads=args.threads,
    ).estimates
    data = [r.to_dict() for r in results]
    _emit(args, "estimate", data, lambda: print_estimates(results))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from edgeforge import calibrate

    result = calibrate(
        args.rows,
        out=args.out,
        validate_only=args.validate_only,
        here=args.here,
        quick=args.quick,
        threads=args.threads,
        device=args.device,
        measurements=args.measurements,
    )
    data = result.to_dict()

    def show() -> None:
        if result.mode == "device":
            for row in data["reference_rows"]:
                print(
                    f"{row['model']:28} measured {row['measured_ms']:9.3f} ms  before "
                    f"{row['before_ms']:9.3f} ms  after {row['after_ms']:9.3f} ms"
                )
            for row in data["skipped"]:
                print(f"line {row['line']}: skipped, {row['reason']}")
            print(
                f"{data['device']}: median abs error on these rows "
                f"{data['before_median_abs_pct_error']:.1f}% -> "
                f"{data['after_median_abs_pct_error']:.1f}%; saved: {data['saved_to']}"
            )
            return
        if result.here is None:
            print(json.dumps(data, indent=2, default=str))
            return
        for case in data["cases"]:
            print(
                f"{case['case']:40} measured {case['measured_ms']:9.3f} ms  "
                f"roofline {case['predicted_ms']:9.3f} ms"
            )
        entry = data["entry"]
        print(
            f"bandwidth {data['bandwidth_gbps']:.1f} GB/s, call "
            f"{entry.get('run_overhead_ms', 0.0) * 1e3:.1f} us per inference, layer overhead "
            f"{entry['layer_overhead_ms'] * 1e3:.2f} us, NCHWc block "
            f"{entry.get('nchwc_block') or 'none'}, fused activation pass "
            f"{entry.get('activation_pass', 0.0):.2f}, efficiencies "
            + ", ".join(f"{k} {v:.3g}" for k, v in entry["compute_efficiency"].items())
            + f", memory {entry['memory_efficiency']:.3g}"
        )
        print(f"saved for this-machine: {result.saved_to}")

    _emit(args, "calibrate", data, show)
    return 0


def _decide(args: argparse.Namespace) -> int:
    from edgeforge import decide
    from edgeforge.decide.render import print_decision

    decision = decide(
        args.model,
        args.device,
        network=args.network,
        payload=args.payload,
        response=args.response,
        requests_per_day=args.requests_per_day,
        users=args.users,
        privacy=args.privacy,
        offline_required=args.offline_required,
        max_latency=args.max_latency,
        cloud=args.cloud,
        runtime=args.runtime,
        precision=args.precision,
        force=args.force,
        prices=args.prices,
        shapes=_shapes(args),
    )
    _emit(args, "decide", decision.to_dict(), lambda: print_decision(decision))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from edgeforge.demo import run_demo

    report = run_demo(args.out)
    print(f"Report: {report}")
    return 0


def _setup(args: argparse.Namespace) -> int:
    from edgeforge.setup_web import setup_web

    result = setup_web(args.dir, install_browser=args.install_browser, timeout=args.timeout)

    def show() -> None:
        for line in result.done:
            print(line)
        print(
            f"onnxruntime-web: {result.ort_web_version or 'missing'} in {result.web_dir} "
            f"(pinned {result.ort_web_pinned}); chromium: {result.chromium or 'missing'}"
        )
        for line in result.missing:
            print(f"missing: {line}", file=sys.stderr)

    _emit(args, "setup", result.to_dict(), show)
    return 0 if result.ready else 1


# -- hybrid: split and cascade -----------------------------------------------------------------


def _split(args: argparse.Namespace) -> int:
    from edgeforge import split

    result = split(
        args.model,
        args.device,
        args.network,
        cloud=args.cloud,
        out=args.out,
        objective=args.objective,
        compress=args.compress,
        cut=args.cut,
        max_tensors=args.max_tensors,
        precision=args.precision,
        data=args.data,
        shapes=_shapes(args),
    )
    data = result.to_dict()

    def show() -> None:
        for key in ("all_edge", "split", "all_cloud"):
            p = data[key]
            print(
                f"{key:9} {','.join(p['tensors']) or '-':24} device {p['device_ms']:.2f} ms + "
                f"transfer {p['transfer_ms']:.2f} ms ({p['upload_bytes']:,} B up) + cloud "
                f"{p['cloud_ms']:.2f} ms = {p['total_ms']:.2f} ms"
            )
        print(f"chosen: {data['chosen']['kind']}; head∘tail verified: {data['check']['passed']}")
        for note in data["notes"]:
            print(f"note: {note}")
        if data["compression"]:
            print(f"{data['compress']} transfer within tolerance: {data['compression']['passed']}")
        if data["head"]:
            print(f"head: {data['head']}\ntail: {data['tail']}")

    _emit(args, "split", data, show)
    return 0 if result.passed else 1


def _cascade(args: argparse.Namespace) -> int:
    from edgeforge import cascade

    result = cascade(
        args.small,
        args.large,
        args.data,
        target_accuracy=args.target_accuracy,
        confidence=args.confidence,
        network=args.network,
        small_ms=args.small_ms,
        large_ms=args.large_ms,
        price_per_request=args.price_per_request,
        price_per_hour=args.price_per_hour,
        shapes=_shapes(args),
        max_samples=args.max_samples,
        preprocess=args.preprocess,
    )
    data = result.to_dict()

    def show() -> None:
        held = data["held_out"]
        print(
            f"target {data['target_accuracy']:.1%} {'met' if data['met'] else 'NOT met'}: "
            f"threshold {data['threshold']}, held-out accuracy {held['accuracy']:.1%} "
            f"(small {held['small_accuracy']:.1%}, large {held['large_accuracy']:.1%}), "
            f"escalated {held['escalated_share']:.1%}"
        )
        print(
            f"expected latency {data['latency']['expected_ms']:.2f} ms; cost per 1k "
            f"{data['cost_per_1k']}"
        )
        for note in data["notes"]:
            print(f"note: {note}")

    _emit(args, "cascade", data, show)
    return 0 if result.met else 1


# -- optimize (issue 5): one self-contained block ------------------------------------------------


def _optimize(args: argparse.Namespace) -> int:
    from edgeforge import optimize

    result = optimize(
        args.model,
        args.device,
        args.data,
        out=args.out,
        max_accuracy_drop=args.max_accuracy_drop,
        max_size=args.max_size,
        max_latency=args.max_latency,
        max_memory=args.max_memory,
        runtime=args.runtime,
        precision=args.precision,
        passes=args.passes,
        cleanup=not args.no_cleanup,
        calibration_samples=args.calibration_samples,
        max_samples=args.max_samples,
        preprocess=args.preprocess,
        metric=args.metric,
        timeout=args.timeout,
        runs=args.runs,
        force=args.overwrite,
        shapes=_shapes(args),
        executor=args.executor,
        task_cpus=args.task_cpus,
    )

    def show() -> None:
        from edgeforge._progress import output_console

        console = output_console()
        for c in result.candidates:
            drop = "—" if c.accuracy_drop is None else f"{100 * c.accuracy_drop:.2f}%"
            size = "—" if c.size_bytes is None else f"{c.size_bytes / 1e6:.3g} MB"
            device_ms = "—" if c.device_latency_ms is None else f"{c.device_latency_ms:.3g} ms"
            cached = " (cached)" if c.cached else ""
            console.print(
                f"{c.verdict:8} {c.id}{cached}: {size}, {device_ms} on {result.device}, drop "
                f"{drop} — {c.reason}",
                highlight=False,
                markup=False,
            )
        judged = result.reference
        console.print(
            f"judged by {judged['metric']} of {judged['output']} ({judged['why']}); "
            f"{result.data['source']}",
            markup=False,
        )
        if judged.get("near_chance"):
            console.print(f"note: {judged['near_chance']}", markup=False)
        if result.chosen:
            console.print(f"chosen: {result.chosen} -> {result.chosen_path}", markup=False)
        for unmet in result.unmet:
            console.print(f"not met: {unmet['text']}", markup=False)
        console.print(f"report: {result.report_path}", markup=False)

    _emit(args, "optimize", result.to_dict(), show)
    return 0 if result.met else 1


def _add_optimize(verbs: Any) -> None:
    optimize = verbs.add_parser(
        "optimize",
        help="search recipes and runtimes for a device; choose the best within your limits",
    )
    _model_options(optimize)
    _device_option(optimize)
    _data_options(
        optimize,
        required=True,
        help="samples (.npz, <input>.npy or images; labels optional): a part drawn with a "
        "fixed seed (stratified by class) calibrates, the rest judges accuracy",
    )
    _sampling_options(optimize)
    optimize.add_argument(
        "--metric",
        help="what judges accuracy: top1, top5, cosine, mae, psnr, iou, or module:function "
        "(default: the labels', else chosen from the output)",
    )
    limits = optimize.add_argument_group("limits (a candidate must meet every one given)")
    limits.add_argument("--max-accuracy-drop", metavar="SHARE", help="e.g. 1%% or 0.01")
    limits.add_argument("--max-size", metavar="BYTES", help="artifact size, e.g. 5MB")
    _max_latency_option(limits, "on the device (estimated), e.g. 10ms")
    limits.add_argument("--max-memory", metavar="BYTES", help="peak memory, e.g. 200MB")
    search = optimize.add_argument_group("search")
    _runtime_option(
        search,
        "only these of the device's runtimes (comma list; default: all it lists)",
        aliases=("--runtimes",),
    )
    _precision_option(
        search,
        "only these precisions (comma list; default: every one the runtimes take)",
        default=None,
        aliases=("--precisions",),
    )
    search.add_argument("--passes", help="prune,distill (torch sources: pruned/distilled models)")
    search.add_argument("--no-cleanup", action="store_true", help="skip the ONNX clean-up pass")
    search.add_argument(
        "--calibration-samples", type=int, help="samples that calibrate (default: min(64, half))"
    )
    search.add_argument("--runs", type=int, default=30, help="timed runs per candidate here")
    _timeout_option(search, "build")
    _executor_options(search, "candidate")
    _out_option(optimize, Path("edgeforge-optimize"), "output and cache folder")
    _output_options(optimize)
    optimize.set_defaults(run=_optimize)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgeforge",
        description="Take a trained model to a verified, measured model on edge devices.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--verbose", action="store_true", help="show what the runtimes' libraries print"
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    inspect = verbs.add_parser(
        "inspect", help="parameters, weight bytes, FLOPs/MACs, activation memory, op census"
    )
    _model_options(inspect)
    _output_options(inspect)
    inspect.add_argument("--top", type=int, default=10, help="how many nodes to list by work")
    inspect.set_defaults(run=_inspect)

    check = verbs.add_parser(
        "check", help="before converting: what each runtime lacks, runs on a fallback, trips on"
    )
    _model_options(check)
    _runtime_option(check, "comma-separated runtimes, or all", default="all")
    _timeout_option(check, "runtime")
    _output_options(check)
    check.set_defaults(run=_check)

    convert = verbs.add_parser(
        "convert", help="build every target, load and run it, and retest it against the source"
    )
    _model_options(convert)
    _runtime_option(
        convert, "comma-separated runtimes to build, or all", required=True, aliases=("--to",)
    )
    _out_option(convert, Path("edgeforge-out"))
    _precision_option(
        convert,
        "fp32, fp16, int8-dynamic, int8-static (calibrated on --data) or int4-weight, each by "
        "the runtime's own quantizer",
    )
    convert.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe option, e.g. calibration_method=entropy, per_channel=false, "
        "block_size=32 (repeatable)",
    )
    _timeout_option(convert, "target")
    _executor_options(convert, "target")
    convert.add_argument(
        "--require",
        metavar="R,...",
        help="targets that must verify here (exit 1 otherwise), or 'all'; by default a target "
        "this machine cannot run (Core ML off macOS, a runtime not installed) fails nothing",
    )
    _data_options(convert, sampling=True)
    _output_options(convert)
    convert.set_defaults(run=_convert)

    verify = verbs.add_parser(
        "verify", help="compare a candidate (artifact folder or .onnx) with its reference"
    )
    verify.add_argument("reference", metavar="REFERENCE", help="the source model")
    verify.add_argument("candidate", metavar="CANDIDATE", help="artifact folder or .onnx")
    _shape_option(verify.add_argument_group("model"))
    _data_options(verify, sampling=True)
    _tolerance_options(verify)
    limits = verify.add_argument_group("limits")
    limits.add_argument("--memory-limit", metavar="BYTES", help=_MEMORY_HELP)
    _timeout_option(limits, "verification (both models on every sample)")
    _output_options(verify)
    verify.set_defaults(run=_verify)

    bench = verbs.add_parser(
        "bench", help="latency percentiles, throughput, memory and top layers, measured here"
    )
    _model_options(bench)
    _runtime_option(bench, "the runtime to measure in", default="onnxruntime")
    bench.add_argument("--threads", type=int, help="CPU threads (default: the runtime's)")
    bench.add_argument("--warmup", type=int, default=10, help="untimed runs first")
    bench.add_argument("--runs", type=int, default=50, help="timed runs per repeat")
    bench.add_argument("--repeats", type=int, default=3, help="fresh processes to compare")
    bench.add_argument("--timeout", type=float, default=600, help="seconds per repeat")
    bench.add_argument(
        "--batch",
        action="append",
        default=[],
        help="batch sizes, e.g. --batch 1,8 (repeatable; default: 1)",
    )
    farm = bench.add_argument_group("on your own devices (fleet)")
    farm.add_argument(
        "--on", metavar="DEVICE_ID|CLASS", help="measure there; MODEL is NAME@VERSION"
    )
    farm.add_argument("--server", help="the fleet server's URL (admin: $EDGEFORGE_ADMIN_TOKEN)")
    farm.add_argument("--csv", type=Path, help="append the result to a published-measurements CSV")
    _data_options(bench)
    _output_options(bench)
    bench.set_defaults(run=_bench)

    estimate = verbs.add_parser(
        "estimate",
        help="latency and memory on catalogue devices from a calibrated roofline",
        description="MODEL may also be an artifact folder (with manifest.json), as for bench.",
    )
    _model_options(estimate)
    _device_option(estimate, "catalogue ids, comma-separated (see `edgeforge devices`)")
    _runtime_option(
        estimate, "the runtime on the device (default: the fastest unit's, or the artifact's)"
    )
    _precision_option(
        estimate, "fp32, fp16 or int8 (default: the artifact's, or fp32)", default=None
    )
    estimate.add_argument(
        "--unit", help="the compute unit: cpu, gpu, npu, tpu, ane (default: fastest)"
    )
    estimate.add_argument(
        "--threads",
        type=int,
        help="CPU threads the model runs with (default: all cores; on this-machine, the "
        "threads `calibrate --here` measured with)",
    )
    _output_options(estimate)
    estimate.set_defaults(run=_estimate)

    decide = verbs.add_parser(
        "decide", help="edge, cloud or hybrid: latency, cost, privacy and fit for a workload"
    )
    _model_options(decide)
    _device_option(decide, "catalogue id of the edge device")
    _runtime_option(decide, "the runtime on the device (default: any it lists)")
    _precision_option(decide, "fp32, fp16 or int8")
    workload = decide.add_argument_group("workload")
    _network_option(workload, default_text="4g")
    workload.add_argument(
        "--payload", help="bytes uploaded per request, e.g. 150KB (default: the raw input)"
    )
    workload.add_argument(
        "--response", help="bytes downloaded per request (default: the raw output)"
    )
    workload.add_argument(
        "--requests-per-day", type=float, help="requests per user (device) per day (default 100)"
    )
    workload.add_argument("--users", type=int, help="users, one device each (default 1000)")
    workload.add_argument(
        "--privacy", default="none", help="none, or sensitive: the input must stay on the device"
    )
    workload.add_argument(
        "--offline-required", action="store_true", help="the application must work offline"
    )
    _max_latency_option(workload, "the application's target, e.g. 100ms (default: 100)")
    cloud = decide.add_argument_group("cloud")
    _cloud_option(
        cloud,
        "the cloud instance: g4dn-xlarge, g5-xlarge, c6i-xlarge, c7g-xlarge (default: g4dn-xlarge)",
        aliases=("--cloud-instance",),
    )
    cloud.add_argument(
        "--prices",
        type=Path,
        metavar="FILE.toml",
        help="override prices and defaults: [defaults], [edge_hardware_usd], [networks.X], "
        "[cloud_instances.X]",
    )
    decide.add_argument(
        "--force", help="pin the recommendation to edge, cloud or hybrid (checked for conflicts)"
    )
    _output_options(decide)
    decide.set_defaults(run=_decide)

    calibrate = verbs.add_parser(
        "calibrate",
        help="fit the estimator's efficiency factors on published measurements, or on this "
        "machine's micro-benchmarks (--here)",
    )
    calibrate.add_argument(
        "--rows",
        type=Path,
        help="CSV of published measurements (device,runtime,model,input,precision,batch,...) "
        "(default: the published measurements shipped with edgeforge)",
    )
    _out_option(calibrate, None, "where to save the fitted factors (JSON)")
    calibrate.add_argument(
        "--validate-only",
        action="store_true",
        help="score the shipped factors on every row instead of fitting",
    )
    calibrate.add_argument(
        "--here",
        action="store_true",
        help="run micro-benchmarks and fit this machine's factors (device this-machine)",
    )
    calibrate.add_argument(
        "--quick", action="store_true", help="with --here: fewer, smaller micro-benchmarks"
    )
    calibrate.add_argument("--threads", type=int, help="with --here: ONNX Runtime threads")
    calibrate.add_argument(
        "--device", help="with --measurements: the catalogue device to adapt the estimates to"
    )
    calibrate.add_argument(
        "--measurements",
        type=Path,
        help="with --device: CSV of its measured reference models (published-rows format)",
    )
    _output_options(calibrate)
    calibrate.set_defaults(run=_calibrate)

    split = verbs.add_parser(
        "split", help="cut a model between the device (head) and the cloud (tail)"
    )
    _model_options(split)
    _device_option(split, "catalogue id of the device")
    _network_option(split, required=True)
    _cloud_option(
        split,
        "the server: a cloud instance (as in decide) or a catalogue device id "
        "(default: g4dn-xlarge, an NVIDIA T4)",
        default="g4dn-xlarge",
    )
    _out_option(split, Path("edgeforge-split"))
    split.add_argument("--objective", default="latency", choices=("latency", "bytes"))
    split.add_argument("--compress", choices=("fp16", "int8"), help="send cut tensors quantized")
    split.add_argument("--cut", metavar="TENSOR", help="force the cut (comma-separated tensors)")
    split.add_argument("--max-tensors", type=int, default=1, help="most tensors crossing a cut")
    _precision_option(split, "the device's: fp32, fp16 or int8")
    _data_options(split)
    _output_options(split)
    split.set_defaults(run=_split)

    cascade = verbs.add_parser(
        "cascade", help="small model on the device, escalate to a large cloud model when unsure"
    )
    cascade.add_argument("small", metavar="SMALL", help="the on-device model")
    cascade.add_argument("large", metavar="LARGE", help="the cloud model")
    _shape_option(cascade.add_argument_group("model"))
    _data_options(cascade, required=True, help="labelled samples", sampling=True)
    cascade.add_argument("--target-accuracy", type=float, required=True, help="e.g. 0.95")
    cascade.add_argument("--confidence", default="softmax", choices=("softmax", "margin"))
    _network_option(cascade, default_text="not counted")
    cascade.add_argument("--small-ms", type=float, help="small model time on the device")
    cascade.add_argument("--large-ms", type=float, help="large model time on the server")
    price = cascade.add_mutually_exclusive_group()
    price.add_argument("--price-per-request", type=float, help="cloud price per request")
    price.add_argument("--price-per-hour", type=float, help="cloud server price per hour")
    _output_options(cascade)
    cascade.set_defaults(run=_cascade)

    _add_optimize(verbs)

    devices = verbs.add_parser("devices", help="the device catalogue, each figure with a source")
    devices.add_argument("names", nargs="*", metavar="DEVICE", help="only these devices")
    _output_options(devices)
    devices.set_defaults(run=_devices)

    demo = verbs.add_parser("demo", help="build an example model and run every verb on it")
    _out_option(demo, Path("edgeforge-demo"))
    demo.set_defaults(run=_demo)

    setup = verbs.add_parser(
        "setup", help="install what a runtime needs beyond pip (web: Chromium, onnxruntime-web)"
    )
    setup.add_argument("what", choices=("web",), help="web: the browser runtime's assets")
    setup.add_argument(
        "--dir",
        type=Path,
        help="where onnxruntime-web goes (default: $EDGEFORGE_WEB_DIR, else "
        "~/.cache/edgeforge/web)",
    )
    setup.add_argument(
        "--install-browser",
        action="store_true",
        help="install Debian's chromium with apt-get when none is found (needs root)",
    )
    _timeout_option(setup, "install step")
    _output_options(setup, report=False)
    setup.set_defaults(run=_setup)
    # The fleet half's verbs: one module per family in this package, each with
    # `add_verbs(verbs)`; they import their machinery inside the handlers, so `--help` stays fast.
    for family in _VERB_FAMILIES:
        importlib.import_module(f"edgeforge.cli.{family}").add_verbs(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Interrupts (issue 13, class 5): SIGTERM unwinds like Ctrl-C (and the caller's handler
    # is back when main returns), so both end every process edgeforge started.
    previous = raise_on_sigterm()
    try:
        return _main(argv)
    except (KeyboardInterrupt, Interrupted) as exc:  # arrived outside the verb's own handler
        return _interrupted(exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupted(exc: BaseException) -> int:
    """The one line an interrupt ends with, and its exit code (128 + the signal)."""
    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    name = signal.Signals(signum).name
    print(f"edgeforge: interrupted ({name}); every process it started was ended", file=sys.stderr)
    return 128 + signum


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc}", file=sys.stderr)
        if "--json" in argv:
            _json_error("usage", str(exc), 2, _verb_in(argv))
        return 2
    _quiet_by_default(args.verbose)
    adopt_orphans()  # what a dying child leaves behind (a browser) is re-parented here
    try:
        from edgeforge._limits import set_limits

        set_limits(memory=getattr(args, "memory_limit", None))
        if getattr(args, "report", None):  # refuse a report path before the work, not after
            from edgeforge.report import check_report_path

            check_report_path(
                args.report, [getattr(args, n, None) for n in _INPUTS], args.overwrite
            )
        return args.run(args)
    except ModuleNotFoundError as exc:
        error = missing_extra(exc)
        if error is None or args.debug:
            return _internal_error(args, exc)
        return _bad_input(args, error)
    except EdgeforgeError as exc:
        if args.debug:
            raise
        return _bad_input(args, exc)
    except (KeyboardInterrupt, Interrupted) as exc:
        return _interrupted(exc)
    except OSError as exc:
        error = file_system_error(exc)
        if error is None or args.debug:
            return _internal_error(args, exc)
        return _bad_input(args, error)
    except Exception as exc:  # a bug, not bad input: say so in one line
        return _internal_error(args, exc)


def _bad_input(args: argparse.Namespace, exc: EdgeforgeError) -> int:
    print(f"edgeforge: error: {exc}", file=sys.stderr)
    if getattr(args, "json", False):
        _json_error("bad-input", str(exc), exc.exit_code, args.verb)
    return exc.exit_code


def _internal_error(args: argparse.Namespace, exc: Exception) -> int:
    if args.debug:
        raise exc
    message = (
        f"internal error: {type(exc).__name__}: {exc} "
        "(rerun with --debug for the traceback and report it)"
    )
    print(f"edgeforge: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        _json_error("internal", message, 1, args.verb)
    return 1


def _json_error(kind: str, message: str, exit_code: int, verb: str | None) -> None:
    """Under --json an error is an object on stdout too, so a script reads one JSON value."""
    error = {"kind": kind, "message": message, "exit_code": exit_code, "verb": verb}
    print(json.dumps({"schema": _schema("error"), "error": error}, indent=2))


def _verb_in(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _quiet_by_default(verbose: bool) -> None:
    from edgeforge._quiet import quiet_libraries, set_verbose, show_warning

    if verbose:
        set_verbose(True)
    quiet_libraries()
    warnings.showwarning = show_warning
