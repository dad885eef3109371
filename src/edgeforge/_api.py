"""The verbs as Python calls: `edgeforge.<verb>(...)` is `edgeforge <verb> ...`.

Each function takes the CLI verb's positional arguments in order and its options as keywords
named like the flags (`--max-accuracy-drop` -> `max_accuracy_drop`); a repeatable flag takes a
mapping or list under its plural (`--shape` -> `shapes={"image": (1, 3, 224, 224)}`, `--option`
-> `options={...}`, `--batch` -> `batches=(1, 8)`), a comma list may also be a Python list, and
`--no-cleanup` is `cleanup=False`. Other keywords pass through to the implementation named in
each docstring (load options for torch modules, for instance).

Invariants a caller can rely on: bad input raises `EdgeforgeError` (one line, what to change),
also when an optional extra is missing (it names the extra); every call returns a typed result
whose `to_dict()` is what `--json` prints under the verb's `schema` version. Implementations are
imported on first call, so `import edgeforge` stays light.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from edgeforge._extras import missing_extra
from edgeforge.errors import EdgeforgeError

if TYPE_CHECKING:
    from edgeforge.bench import BenchResult
    from edgeforge.convert import CheckReport, Conversion
    from edgeforge.decide import Decision
    from edgeforge.devices import Device
    from edgeforge.estimator import Estimate, Factors, Unavailable
    from edgeforge.estimator.here import HereCalibration
    from edgeforge.evaluate import Verification
    from edgeforge.hybrid import CascadeResult, SplitResult
    from edgeforge.optimize.search import OptimizeResult

__all__ = [
    "Calibration",
    "Estimates",
    "bench",
    "calibrate",
    "cascade",
    "check",
    "convert",
    "decide",
    "estimate",
    "optimize",
    "published_rows",
    "split",
    "verify",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def _verb(function: _F) -> _F:
    """A missing optional dependency becomes one line naming the extra that installs it."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ModuleNotFoundError as exc:
            error = missing_extra(exc)
            if error is None:
                raise
            raise error from exc

    return call  # type: ignore[return-value]


def _names(value: str | Sequence[str] | None) -> list[str] | None:
    """A comma list (`"onnxruntime,openvino"`) or a list of names; None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item and item.strip()] or None


def _runtimes(value: str | Sequence[str]) -> str | list[str]:
    """What `parse_targets` reads: a comma list or 'all' as text, or a list of names."""
    return value if isinstance(value, str) else list(value)


def published_rows() -> Path:
    """The published measurements shipped with the package (`calibrate`'s default rows)."""
    return Path(str(resources.files("edgeforge.estimator") / "data" / "edge_benchmarks.csv"))


# -- check, convert, verify, bench ---------------------------------------------------------------


@_verb
def check(
    model: Any,
    runtime: str | Sequence[str] = "all",
    *,
    timeout: float = 600,
    shapes: Mapping[str, Sequence[int]] | None = None,
    **more: Any,
) -> CheckReport:
    """`edgeforge check MODEL --runtime R,...`: what each runtime lacks, runs on a fallback, or
    trips over. Other keywords go to `edgeforge.convert.check`."""
    from edgeforge.convert import check as check_model

    return check_model(model, _runtimes(runtime), timeout=timeout, shapes=_shapes(shapes), **more)


@_verb
def convert(
    model: Any,
    runtime: str | Sequence[str],
    out: str | Path = "edgeforge-out",
    *,
    precision: str = "fp32",
    data: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    timeout: float = 600,
    shapes: Mapping[str, Sequence[int]] | None = None,
    max_samples: int | None = None,
    preprocess: Any = None,
    executor: str = "local",
    **more: Any,
) -> Conversion:
    """`edgeforge convert MODEL --runtime R,... --out DIR`: build, run and verify every target.
    `options` are the recipe's (`--option KEY=VALUE`); `preprocess` a `Preprocess` or its text
    (`--preprocess`), for verification and int8-static calibration alike; `executor` `local`,
    `ray` or `ray://ADDRESS` (`--executor`). Other keywords go to `edgeforge.convert.convert`."""
    from edgeforge.convert import convert as convert_model

    return convert_model(
        model,
        _runtimes(runtime),
        out,
        precision=precision,
        data=data,
        options=dict(options or {}),
        timeout=timeout,
        shapes=_shapes(shapes),
        max_samples=max_samples,
        preprocess=preprocess,
        executor=executor,
        **more,
    )


@_verb
def verify(
    reference: Any,
    candidate: Any,
    *,
    data: str | Path | None = None,
    precision: str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    min_cosine: float | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    **more: Any,
) -> Verification:
    """`edgeforge verify REFERENCE CANDIDATE`: compare a candidate (artifact folder or .onnx)
    with its reference. Other keywords go to `edgeforge.evaluate.verify`."""
    from edgeforge.evaluate import verify as verify_candidate

    return verify_candidate(
        reference,
        candidate,
        data=data,
        precision=precision,
        rtol=rtol,
        atol=atol,
        min_cosine=min_cosine,
        shapes=_shapes(shapes),
        **more,
    )


@_verb
def bench(
    model: Any,
    *,
    runtime: str = "onnxruntime",
    threads: int | None = None,
    warmup: int = 10,
    runs: int = 50,
    repeats: int = 3,
    batches: Sequence[int] | int = (1,),
    data: str | Path | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    **more: Any,
) -> BenchResult:
    """`edgeforge bench MODEL`: latency percentiles, throughput, memory and top layers, measured
    here. Other keywords go to `edgeforge.bench.bench`."""
    from edgeforge.bench import bench as bench_model

    return bench_model(
        model,
        runtime=runtime,
        threads=threads,
        warmup=warmup,
        runs=runs,
        repeats=repeats,
        batches=(batches,) if isinstance(batches, int) else tuple(batches),
        data=data,
        shapes=_shapes(shapes),
        **more,
    )


def _shapes(shapes: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in dims) for name, dims in (shapes or {}).items()}


# -- estimate ------------------------------------------------------------------------------------


@dataclass
class Estimates:
    """`estimate` on several devices: one `Estimate` per device, in the order asked."""

    estimates: list[Estimate | Unavailable] = field(default_factory=list)

    def __iter__(self) -> Iterator[Estimate | Unavailable]:
        return iter(self.estimates)

    def __len__(self) -> int:
        return len(self.estimates)

    def __getitem__(self, index: int) -> Estimate | Unavailable:
        return self.estimates[index]

    def to_dict(self) -> dict[str, Any]:
        return {"estimates": [e.to_dict() for e in self.estimates]}


@overload
def estimate(
    model: Any,
    device: str | Device,
    *,
    runtime: str | None = ...,
    precision: str | None = ...,
    shapes: Mapping[str, Sequence[int]] | None = ...,
    **more: Any,
) -> Estimate | Estimates: ...


@overload
def estimate(
    model: Any,
    device: Sequence[str | Device],
    *,
    runtime: str | None = ...,
    precision: str | None = ...,
    shapes: Mapping[str, Sequence[int]] | None = ...,
    **more: Any,
) -> Estimates: ...


@_verb
def estimate(
    model: Any,
    device: str | Device | Sequence[str | Device],
    *,
    runtime: str | None = None,
    precision: str | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    **more: Any,
) -> Estimate | Estimates:
    """`edgeforge estimate MODEL --device D`: predicted latency, peak memory and fit on a
    catalogue device, in one call: `edgeforge.estimate("model.onnx", "jetson-orin-nano")`.

    `model` is anything `inspect` takes, an artifact folder written by `convert` (its runtime
    and precision are then the defaults), or a `Profile`. One device id (or `Device`) returns an
    `Estimate` and raises when that device cannot run the precision; a comma list or a list
    returns `Estimates`, one per device, where a device that cannot run it is an `Unavailable`
    with its reason. Other keywords go to `edgeforge.estimator.estimate` (`factors`, `unit`)."""
    from edgeforge.analysis import Profile
    from edgeforge.devices import Device
    from edgeforge.estimator import estimate as estimate_one
    from edgeforge.estimator import estimate_devices

    if isinstance(model, Profile) and shapes:
        raise EdgeforgeError(
            "shapes= applies when estimate profiles the model; pass the model itself, or "
            "a Profile made with inspect(model, shapes=...)"
        )
    pinned = _shapes(shapes)
    one = isinstance(device, Device) or (isinstance(device, str) and "," not in device)
    if one:
        return estimate_one(
            model, device, runtime=runtime, precision=precision, shapes=pinned, **more
        )
    return Estimates(
        estimate_devices(
            model,
            _device_list(device),
            runtime=runtime,
            precision=precision,
            shapes=pinned,
            **more,
        )
    )


def _device_list(device: Any) -> list[Any]:
    from edgeforge.devices import Device

    items = device.split(",") if isinstance(device, str) else list(device)
    wanted = [d if isinstance(d, Device) else str(d).strip() for d in items]
    wanted = [d for d in wanted if d != ""]
    if not wanted:
        raise EdgeforgeError("no device named; pass a catalogue id (see `edgeforge devices`)")
    return wanted


# -- calibrate -----------------------------------------------------------------------------------


@dataclass
class Calibration:
    """What `calibrate` did: `mode` is "fit" (factors fitted on part of the rows and validated on
    the rest), "validate" (the shipped factors scored on every row), "here" (this machine's
    micro-benchmarks) or "device" (the transfer model adapted to one device's measurements).
    `report` is the validation report (fit, validate) or the adaptation's (device); `factors` the
    fitted factors (fit); `here` the measurements and fit (here)."""

    mode: str
    rows: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    factors: Factors | None = None
    here: HereCalibration | None = None
    saved_to: str | None = None

    def to_dict(self) -> dict[str, Any]:
        body = self.here.to_dict() if self.here is not None else dict(self.report)
        body.pop("schema", None)  # the stored calibration file's own version, not this object's
        return {"mode": self.mode, "rows_file": self.rows, "saved_to": self.saved_to, **body}


@_verb
def calibrate(
    rows: str | Path | None = None,
    *,
    out: str | Path | None = None,
    validate_only: bool = False,
    here: bool = False,
    quick: bool = False,
    threads: int | None = None,
    device: str | None = None,
    measurements: str | Path | None = None,
) -> Calibration:
    """`edgeforge calibrate`: fit the estimator's efficiency factors on published measurements
    (`rows`, default: the ones shipped with edgeforge), or score the shipped factors on every row
    (`validate_only`), or fit this machine's factors from micro-benchmarks (`here`), or adapt the
    transfer model to a catalogue `device` from a few measured reference models
    (`measurements`, a CSV in the published-rows format)."""
    if device is not None or measurements is not None:
        if device is None or measurements is None:
            raise EdgeforgeError(
                "--device and --measurements go together: pass the catalogue id and the CSV of "
                "its measured reference models"
            )
        if here or validate_only or rows is not None or out is not None or quick or threads:
            raise EdgeforgeError(
                "--device/--measurements stores the device's adapted terms in the cache folder; "
                "leave out --here, --rows, --out, --validate-only, --quick and --threads"
            )
        if not Path(measurements).is_file():
            raise EdgeforgeError(
                f"--measurements {measurements}: no such file; pass a CSV in the published "
                "format (device,runtime,model,input,precision,batch,latency_ms,fps,source)"
            )
        from edgeforge.estimator.transfer import calibrate_device

        report = calibrate_device(device, measurements)
        return Calibration(
            "device", rows=str(measurements), report=report, saved_to=report["saved_to"]
        )
    if here:
        if validate_only or rows is not None or out is not None:
            raise EdgeforgeError(
                "--here measures this machine and stores its factors in the cache folder; "
                "leave out --rows, --out and --validate-only"
            )
        from edgeforge.devices._this_machine import calibration_path
        from edgeforge.estimator.here import calibrate_here

        result = calibrate_here(quick=quick, threads=threads)
        return Calibration("here", here=result, saved_to=str(calibration_path()))
    if quick or threads is not None:
        raise EdgeforgeError("--quick and --threads apply to --here only; add --here or drop them")
    from edgeforge.estimator import calibrate as fit_rows
    from edgeforge.estimator import validate_file

    path = Path(rows) if rows is not None else published_rows()
    if not path.is_file():
        raise EdgeforgeError(
            f"--rows {path}: no such file; pass a CSV in the published-measurements format "
            "(device,runtime,model,input,precision,batch,latency_ms,fps,source)"
        )
    if validate_only:
        if out is not None:
            raise EdgeforgeError("--validate-only fits nothing to save; drop --out")
        return Calibration("validate", rows=str(path), report=validate_file(path))
    factors, report = fit_rows(path, out=out)
    return Calibration(
        "fit",
        rows=str(path),
        report=report,
        factors=factors,
        saved_to=None if out is None else str(out),
    )


# -- optimize, decide, split, cascade ------------------------------------------------------------


@_verb
def optimize(
    model: Any,
    device: str,
    data: str | Path,
    *,
    out: str | Path = "edgeforge-optimize",
    max_accuracy_drop: str | float | None = None,
    max_size: str | int | None = None,
    max_latency: str | float | None = None,
    max_memory: str | int | None = None,
    runtime: str | Sequence[str] | None = None,
    precision: str | Sequence[str] | None = None,
    passes: str | Sequence[str] | None = None,
    cleanup: bool = True,
    calibration_samples: int | None = None,
    runs: int = 30,
    timeout: float = 600,
    shapes: Mapping[str, Sequence[int]] | None = None,
    executor: str = "local",
    **more: Any,
) -> OptimizeResult:
    """`edgeforge optimize MODEL --device D --data DIR`: search recipes and runtimes for the
    device and choose the best within the limits. `runtime`/`precision` narrow the search (comma
    lists); `cleanup=False` is `--no-cleanup`; `executor` `local`, `ray` or `ray://ADDRESS`
    (`--executor`). Other keywords go to `edgeforge.optimize.search.optimize`."""
    from edgeforge.optimize.search import optimize as search

    return search(
        model,
        device,
        data,
        out=out,
        max_accuracy_drop=max_accuracy_drop,
        max_size=max_size,
        max_latency=max_latency,
        max_memory=max_memory,
        runtimes=_names(runtime),
        precisions=_names(precision),
        passes=_names(passes) or (),
        cleanup=cleanup,
        calibration_samples=calibration_samples,
        timeout=timeout,
        bench_runs=runs,
        shapes=_shapes(shapes),
        executor=executor,
        **more,
    )


@_verb
def decide(
    model: Any,
    device: str | Device,
    *,
    network: Any = None,
    payload: str | int | None = None,
    response: str | int | None = None,
    requests_per_day: float | None = None,
    users: int | None = None,
    privacy: str = "none",
    offline_required: bool = False,
    max_latency: float | None = None,
    cloud: Any = None,
    runtime: str | None = None,
    precision: str = "fp32",
    force: str | None = None,
    prices: str | Path | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    **more: Any,
) -> Decision:
    """`edgeforge decide MODEL --device D`: edge, cloud or hybrid for a workload. `network` is a
    profile name or spec (`"4g"`, `"rtt=80ms,up=5mbps,down=20mbps"`); `cloud` a cloud instance
    (`"g4dn-xlarge"`); `max_latency` in ms. Other keywords go to `edgeforge.decide.decide`."""
    from edgeforge.decide import decide as weigh

    return weigh(
        model,
        device,
        network=network,
        payload=payload,
        response=response,
        requests_per_day=requests_per_day,
        users=users,
        privacy=privacy,
        offline_required=offline_required,
        max_latency_ms=max_latency,
        cloud_instance=cloud,
        runtime=runtime,
        precision=precision,
        force=force,
        prices=prices,
        shapes=_shapes(shapes) or None,
        **more,
    )


def _network(value: Any) -> Any:
    """A network profile name or spec (as `--network` takes), or a network object as is."""
    if value is None or not isinstance(value, str):
        return value
    from edgeforge.decide import get_network

    return get_network(value)


def _cloud_server(value: Any) -> Any:
    """A cloud instance from decide's catalogue, or any catalogue device playing the server; a
    `Device` (or a callable pricing nodes) as is."""
    if not isinstance(value, str):
        return value
    from edgeforge.decide import get_cloud_instance, load_data
    from edgeforge.devices import get_device

    if value.strip().casefold().replace(".", "-") in load_data().instances:
        return get_cloud_instance(value).device()
    return get_device(value)


@_verb
def split(
    model: Any,
    device: str | Device,
    network: Any,
    *,
    cloud: Any = "g4dn-xlarge",
    out: str | Path | None = None,
    objective: str = "latency",
    compress: str | None = None,
    cut: str | Sequence[str] | None = None,
    max_tensors: int = 1,
    precision: str = "fp32",
    data: str | Path | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    **more: Any,
) -> SplitResult:
    """`edgeforge split MODEL --device D --network N`: cut the model between the device (head)
    and the cloud (tail). `network` as in `decide`; `cloud` a cloud instance or a catalogue
    device id. Other keywords go to `edgeforge.hybrid.split`."""
    from edgeforge.hybrid import split as cut_model

    return cut_model(
        model,
        device,
        _network(network),
        cloud=_cloud_server(cloud),
        out=out,
        objective=objective,
        compress=compress,
        cut=list(cut) if cut is not None and not isinstance(cut, str) else cut,
        max_tensors=max_tensors,
        precision=precision,
        data=data,
        shapes=_shapes(shapes) or None,
        **more,
    )


@_verb
def cascade(
    small: Any,
    large: Any,
    data: str | Path,
    *,
    target_accuracy: float,
    confidence: str = "softmax",
    network: Any = None,
    small_ms: float | None = None,
    large_ms: float | None = None,
    price_per_request: float | None = None,
    price_per_hour: float | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    max_samples: int | None = None,
    preprocess: Any = None,
    **more: Any,
) -> CascadeResult:
    """`edgeforge cascade SMALL LARGE --data DIR --target-accuracy A`: the small model on the
    device, escalating to the large one below a calibrated confidence threshold. Other keywords
    go to `edgeforge.hybrid.cascade`."""
    from edgeforge.hybrid import cascade as escalate

    return escalate(
        small,
        large,
        data,
        target_accuracy=target_accuracy,
        confidence=confidence,
        network=_network(network),
        small_ms=small_ms,
        large_ms=large_ms,
        price_per_request=price_per_request,
        price_per_hour=price_per_hour,
        shapes=_shapes(shapes),
        max_samples=max_samples,
        preprocess=preprocess,
        **more,
    )
