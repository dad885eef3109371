"""The `edgeforge` command: a thin layer over the Python API of the same verbs.

Option groups (model, output) are defined once and shared by every verb, so a flag means the
same thing everywhere. `--json` prints exactly the object the API returns (`to_dict()`).
Bad input exits with status 2 and one line on stderr, never a traceback (`--debug` shows it).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgeforge.errors import EdgeforgeError

__all__ = ["main"]


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
    if not shape:
        return
    group.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="pin an input's shape, e.g. --shape image=1x3x224x224 (repeatable)",
    )


def _output_options(parser: argparse.ArgumentParser, report: bool = True) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--json", action="store_true", help="print the result as JSON")
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


def _shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    from edgeforge.analysis import parse_shape

    shapes: dict[str, tuple[int, ...]] = {}
    for text in args.shape:
        name, shape = parse_shape(text)
        shapes[name] = shape
    return shapes


def _emit(args: argparse.Namespace, verb: str, data: Any, show: Callable[[], None]) -> None:
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
        print(json.dumps(data, indent=2, default=str))
    else:
        show()


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


def _data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="samples: .npz files, <input>.npy files or images (class sub-folders = labels); "
        "without it, inputs are synthesised from the signature, edge values included",
    )


def _tolerance_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("comparison")
    group.add_argument("--precision", help="judge as fp32, fp16, int8 or int4 (default: recipe)")
    group.add_argument("--rtol", type=float, help="relative tolerance (times max |reference|)")
    group.add_argument("--atol", type=float, help="absolute tolerance")
    group.add_argument("--min-cosine", type=float, help="smallest acceptable cosine similarity")


def _check(args: argparse.Namespace) -> int:
    from edgeforge.convert import check
    from edgeforge.render import print_check

    report = check(args.model, args.runtime, timeout=args.timeout)
    _emit(args, "check", report.to_dict(), lambda: print_check(report))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from edgeforge.convert import convert
    from edgeforge.render import print_conversion

    result = convert(
        args.model,
        args.to,
        args.out,
        precision=args.precision,
        data=args.data,
        options=_recipe_options(args.option),
        timeout=args.timeout,
        force=args.overwrite,
    )
    _emit(args, "convert", result.to_dict(), lambda: print_conversion(result))
    return 0 if result.all_verified else 1


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
    from edgeforge.evaluate import verify
    from edgeforge.render import print_verification

    result = verify(
        args.reference,
        args.candidate,
        data=args.data,
        precision=args.precision,
        rtol=args.rtol,
        atol=args.atol,
        min_cosine=args.min_cosine,
    )
    _emit(args, "verify", result.to_dict(), lambda: print_verification(result))
    return 0 if result.passed else 1


def _bench(args: argparse.Namespace) -> int:
    from edgeforge.bench import bench
    from edgeforge.render import print_bench

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
    from edgeforge.analysis import inspect
    from edgeforge.devices import get_device
    from edgeforge.estimator import estimate
    from edgeforge.render import print_estimate

    profile = inspect(args.model, shapes=_shapes(args))
    results = [
        estimate(profile, get_device(name), runtime=args.runtime, precision=args.precision)
        for name in args.device.split(",")
    ]
    data = [r.to_dict() for r in results]
    _emit(args, "estimate", data, lambda: print_estimate(results))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from edgeforge.estimator import calibrate, validate_file

    if args.here:
        from edgeforge.devices._this_machine import calibration_path
        from edgeforge.estimator.here import calibrate_here

        result = calibrate_here(quick=args.quick, threads=args.threads)
        data = result.to_dict()

        def show() -> None:
            for case in data["cases"]:
                print(
                    f"{case['case']:28} measured {case['measured_ms']:9.3f} ms  "
                    f"roofline {case['predicted_ms']:9.3f} ms"
                )
            entry = data["entry"]
            print(
                f"bandwidth {data['bandwidth_gbps']:.1f} GB/s, layer overhead "
                f"{entry['layer_overhead_ms'] * 1e3:.1f} us, efficiencies "
                + ", ".join(f"{k} {v:.2f}" for k, v in entry["compute_efficiency"].items())
                + f", memory {entry['memory_efficiency']:.2f}"
            )
            print(f"saved for this-machine: {calibration_path()}")

        _emit(args, "calibrate", data, show)
        return 0
    if not args.rows.is_file():
        raise EdgeforgeError(
            f"--rows {args.rows}: no such file; pass a CSV in the published-measurements format"
        )
    if args.validate_only:
        report = validate_file(args.rows)
    else:
        _, report = calibrate(args.rows, out=args.out)
    _emit(args, "calibrate", report, lambda: print(json.dumps(report, indent=2, default=str)))
    return 0


def _decide(args: argparse.Namespace) -> int:
    from edgeforge.decide import decide
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
        max_latency_ms=args.max_latency,
        cloud_instance=args.cloud_instance,
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


# -- hybrid: split and cascade -----------------------------------------------------------------


def _hybrid_network(name: str | None) -> Any:
    from edgeforge.decide import get_network

    return None if name is None else get_network(name)


def _hybrid_cloud(name: str) -> Any:
    """A cloud instance from decide's catalogue, or any catalogue device playing the server."""
    from edgeforge.decide import get_cloud_instance, load_data
    from edgeforge.devices import get_device

    if name.strip().casefold().replace(".", "-") in load_data().instances:
        return get_cloud_instance(name).device()
    return get_device(name)


def _split(args: argparse.Namespace) -> int:
    from edgeforge.hybrid import split

    result = split(
        args.model,
        args.device,
        _hybrid_network(args.network),
        cloud=_hybrid_cloud(args.cloud),
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
        for key in ("chosen", "all_edge", "all_cloud"):
            p = data[key]
            print(
                f"{key:9} {','.join(p['tensors']) or '-':24} device {p['device_ms']:.2f} ms + "
                f"transfer {p['transfer_ms']:.2f} ms ({p['upload_bytes']:,} B up) + cloud "
                f"{p['cloud_ms']:.2f} ms = {p['total_ms']:.2f} ms"
            )
        print(f"fastest: {data['fastest']}; head∘tail verified: {data['check']['passed']}")
        if data["compression"]:
            print(f"{data['compress']} transfer within tolerance: {data['compression']['passed']}")
        if data["head"]:
            print(f"head: {data['head']}\ntail: {data['tail']}")

    _emit(args, "split", data, show)
    return 0 if result.passed else 1


def _cascade(args: argparse.Namespace) -> int:
    from edgeforge.hybrid import cascade

    result = cascade(
        args.small,
        args.large,
        args.data,
        target_accuracy=args.target_accuracy,
        confidence=args.confidence,
        network=_hybrid_network(args.network),
        small_ms=args.small_ms,
        large_ms=args.large_ms,
        price_per_request=args.price_per_request,
        price_per_hour=args.price_per_hour,
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
    from edgeforge.optimize.search import optimize

    def names(text: str | None) -> list[str] | None:
        return [n.strip() for n in text.split(",") if n.strip()] if text else None

    result = optimize(
        args.model,
        args.device,
        args.data,
        out=args.out,
        max_accuracy_drop=args.max_accuracy_drop,
        max_size=args.max_size,
        max_latency=args.max_latency,
        max_memory=args.max_memory,
        runtimes=names(args.runtimes),
        precisions=names(args.precisions),
        passes=names(args.passes) or (),
        cleanup=not args.no_cleanup,
        calibration_samples=args.calibration_samples,
        timeout=args.timeout,
        bench_runs=args.runs,
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
    _model_options(optimize, shape=False)
    optimize.add_argument("--device", required=True, help="a catalogue device (edgeforge devices)")
    optimize.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="samples (.npz, <input>.npy or images; labels optional): the first part "
        "calibrates, the rest judges accuracy",
    )
    limits = optimize.add_argument_group("limits (a candidate must meet every one given)")
    limits.add_argument("--max-accuracy-drop", metavar="SHARE", help="e.g. 1%% or 0.01")
    limits.add_argument("--max-size", metavar="BYTES", help="artifact size, e.g. 5MB")
    limits.add_argument("--max-latency", metavar="MS", help="on the device (estimated), e.g. 10ms")
    limits.add_argument("--max-memory", metavar="BYTES", help="peak memory, e.g. 200MB")
    search = optimize.add_argument_group("search")
    search.add_argument("--runtimes", help="only these of the device's runtimes (comma list)")
    search.add_argument("--precisions", help="only these precisions (comma list)")
    search.add_argument("--passes", help="prune,distill (torch sources: pruned/distilled models)")
    search.add_argument("--no-cleanup", action="store_true", help="skip the ONNX clean-up pass")
    search.add_argument(
        "--calibration-samples", type=int, help="samples that calibrate (default: min(64, half))"
    )
    search.add_argument("--runs", type=int, default=30, help="timed runs per candidate here")
    search.add_argument("--timeout", type=float, default=600, help="seconds per build")
    optimize.add_argument(
        "--out", type=Path, default=Path("edgeforge-optimize"), help="output and cache folder"
    )
    optimize.add_argument("--json", action="store_true", help="print the result as JSON")
    optimize.set_defaults(run=_optimize)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeforge",
        description="Take a trained model to a verified, measured model on edge devices.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
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
    _model_options(check, shape=False)
    check.add_argument("--runtime", default="all", help="comma-separated runtimes (default: all)")
    check.add_argument("--timeout", type=float, default=600, help="seconds per runtime")
    _output_options(check)
    check.set_defaults(run=_check)

    convert = verbs.add_parser(
        "convert", help="build every target, load and run it, and retest it against the source"
    )
    _model_options(convert, shape=False)
    convert.add_argument("--to", required=True, help="comma-separated runtimes, or 'all'")
    convert.add_argument("--out", type=Path, default=Path("edgeforge-out"), help="output folder")
    convert.add_argument(
        "--precision",
        default="fp32",
        help="fp32 (default), fp16, int8-dynamic, int8-static (calibrated on --data) or "
        "int4-weight, each by the runtime's own quantizer",
    )
    convert.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe option, e.g. calibration_method=entropy, per_channel=false, "
        "block_size=32 (repeatable)",
    )
    convert.add_argument("--timeout", type=float, default=600, help="seconds per target")
    _data_options(convert)
    _output_options(convert)
    convert.set_defaults(run=_convert)

    verify = verbs.add_parser(
        "verify", help="compare a candidate (artifact folder or .onnx) with its reference"
    )
    verify.add_argument("reference", metavar="REFERENCE", help="the source model")
    verify.add_argument("candidate", metavar="CANDIDATE", help="artifact folder or .onnx")
    _data_options(verify)
    _tolerance_options(verify)
    _output_options(verify)
    verify.set_defaults(run=_verify)

    bench = verbs.add_parser(
        "bench", help="latency percentiles, throughput, memory and top layers, measured here"
    )
    _model_options(bench)
    bench.add_argument("--runtime", default="onnxruntime", help="runtime to measure in")
    bench.add_argument("--threads", type=int, help="CPU threads (default: the runtime's)")
    bench.add_argument("--warmup", type=int, default=10, help="untimed runs first")
    bench.add_argument("--runs", type=int, default=50, help="timed runs per repeat")
    bench.add_argument("--repeats", type=int, default=3, help="fresh processes to compare")
    bench.add_argument("--timeout", type=float, default=600, help="seconds per repeat")
    bench.add_argument(
        "--batch", action="append", default=[], help="batch sizes, e.g. --batch 1,8 (default 1)"
    )
    _data_options(bench)
    _output_options(bench)
    bench.set_defaults(run=_bench)

    estimate = verbs.add_parser(
        "estimate", help="latency and memory on catalogue devices from a calibrated roofline"
    )
    _model_options(estimate)
    estimate.add_argument(
        "--device", required=True, help="catalogue ids, comma-separated (see `edgeforge devices`)"
    )
    estimate.add_argument("--runtime", help="the runtime on the device (default: its first)")
    estimate.add_argument("--precision", default="fp32", help="fp32, fp16 or int8")
    _output_options(estimate)
    estimate.set_defaults(run=_estimate)

    decide = verbs.add_parser(
        "decide", help="edge, cloud or hybrid: latency, cost, privacy and fit for a workload"
    )
    _model_options(decide)
    decide.add_argument("--device", required=True, help="catalogue id of the edge device")
    decide.add_argument("--runtime", help="the runtime on the device (default: any)")
    decide.add_argument("--precision", default="fp32", help="fp32, fp16 or int8")
    workload = decide.add_argument_group("workload")
    workload.add_argument(
        "--network",
        help="3g, 4g, lte, 5g, wifi, offline, or rtt=80ms,up=5mbps,down=20mbps[,loss=1%%] "
        "(default: 4g)",
    )
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
    workload.add_argument(
        "--max-latency", type=float, metavar="MS", help="the application's target (default 100)"
    )
    cloud = decide.add_argument_group("cloud")
    cloud.add_argument(
        "--cloud-instance", help="g4dn-xlarge, g5-xlarge, c6i-xlarge, c7g-xlarge (default g4dn)"
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
        default=Path("../shared/data/edge_benchmarks.csv"),
        help="CSV of published measurements (device,runtime,model,input,precision,batch,...)",
    )
    calibrate.add_argument("--out", type=Path, help="where to save the fitted factors (JSON)")
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
    _output_options(calibrate, report=False)
    calibrate.set_defaults(run=_calibrate)

    split = verbs.add_parser(
        "split", help="cut a model between the device (head) and the cloud (tail)"
    )
    _model_options(split)
    split.add_argument("--device", required=True, help="catalogue id of the device")
    split.add_argument(
        "--network", required=True, help="3g, 4g, lte, 5g, wifi, offline, or rtt=..,up=..,down=.."
    )
    split.add_argument(
        "--cloud",
        default="g4dn-xlarge",
        help="server: a cloud instance (as in decide --cloud-instance) or a device id "
        "(default g4dn-xlarge, an NVIDIA T4)",
    )
    split.add_argument("--out", type=Path, default=Path("edgeforge-split"), help="output folder")
    split.add_argument("--objective", default="latency", choices=("latency", "bytes"))
    split.add_argument("--compress", choices=("fp16", "int8"), help="send cut tensors quantized")
    split.add_argument("--cut", metavar="TENSOR", help="force the cut (comma-separated tensors)")
    split.add_argument("--max-tensors", type=int, default=1, help="most tensors crossing a cut")
    split.add_argument("--precision", default="fp32", help="the device's: fp32, fp16 or int8")
    _data_options(split)
    _output_options(split)
    split.set_defaults(run=_split)

    cascade = verbs.add_parser(
        "cascade", help="small model on the device, escalate to a large cloud model when unsure"
    )
    cascade.add_argument("small", metavar="SMALL", help="the on-device model")
    cascade.add_argument("large", metavar="LARGE", help="the cloud model")
    cascade.add_argument("--data", type=Path, required=True, metavar="DIR", help="labelled samples")
    cascade.add_argument("--target-accuracy", type=float, required=True, help="e.g. 0.95")
    cascade.add_argument("--confidence", default="softmax", choices=("softmax", "margin"))
    cascade.add_argument("--network", help="3g, 4g, 5g, wifi or offline (default: not counted)")
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
    demo.add_argument("--out", type=Path, default=Path("edgeforge-demo"), help="output folder")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _one_line_warnings()
    try:
        from edgeforge._limits import set_limits

        set_limits(memory=getattr(args, "memory_limit", None))
        if getattr(args, "report", None):  # refuse a report path before the work, not after
            from edgeforge.report import check_report_path

            check_report_path(
                args.report, [getattr(args, n, None) for n in _INPUTS], args.overwrite
            )
        return args.run(args)
    except EdgeforgeError as exc:
        if args.debug:
            raise
        print(f"edgeforge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgeforge: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: say so in one line
        if args.debug:
            raise
        print(
            f"edgeforge: internal error: {type(exc).__name__}: {exc} "
            "(rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1


def _one_line_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"edgeforge: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
