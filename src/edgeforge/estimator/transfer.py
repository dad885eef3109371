"""A latency model that transfers across devices and runtimes (issue 19, item 3).

The roofline of `roofline.py` gives each node a time at the priors' efficiencies (`PRIORS` x 1,
memory efficiency 1, no overhead); this module learns, in log space, how far each layer class's
measured time sits from that, and how it moves with the device, the runtime and the precision:

    ms = sum over classes c of  work_c x exp(theta_c + eta + g)  +  layers x exp(omega + g)
    eta   = kind[unit kind] + precision[(kind, precision)] + engine[runtime family]
            + beta . specs(device) + device[d] + device_unit[d, unit kind (, precision)]
    omega = omega0 + overhead_engine[runtime family] + overhead_device[d]
    g     = device_unit[d, runtime family, precision]    (set by `adapt` only)

Invariants a caller can rely on:

- Layer classes are `CLASSES` (attention and recurrent count as matmul; pooling, normalisation,
  elementwise and data movement as "other"); `work_c` is the sum over the class's nodes of the
  prior roofline time, scaled by the row's input pixels over the profile's.
- Shared terms (`theta`, `kind`, `beta`, `omega0`) carry a weak ridge penalty; every device
  and runtime term is shrunk toward zero (the pooled value) by a ridge penalty, `shrink` for
  devices, `GROUP_PENALTY` for runtimes and precisions: a device with few rows stays near the
  pooled prediction, one with many moves to its own data. Whether the pooled fit also has a
  term per device and unit kind (and precision) is chosen with `shrink`, inside the training
  rows (`fit_with_inner_split`). (An earlier version dropped them on the strength of the
  bench's test split, 20.1% -> 24.6% split by model; nested, the bench reads 23.6% split by
  model and 25.3% leave one device out, against 22.5% and 25.4% before.) A device the
  fit never saw predicts with its device terms at zero: from its specs, unit, runtime and
  precision alone.
- The fit minimises a soft-L1 loss of the log ratio measured / predicted (one outlier cannot
  drag a device), with `scipy.optimize.least_squares`; prediction needs only numpy-free Python,
  so the fitted model ships as JSON (`TransferModel.to_dict`).
- `adapt(rows)` sets only one device's terms, all shared terms fixed: the few-shot
  calibration of `calibrate --device ID --measurements FILE`. Each reference row's log ratio
  measured / transferred prediction is taken as a device offset plus an offset of its runtime
  group (runtime family, unit, precision) plus noise; the device's terms are the posterior
  means (a nested random-effects BLUP), so one row moves the estimate part of the way, and
  more rows, or rows of the same group, move it further. The three variances
  (`adapt_variances`) are empirical Bayes from the training rows only: each training device
  is predicted by a fit on the others (`_held_out_offsets`), and the variances are moments of
  those offsets (`_offset_variances`).
- Nothing here chooses a hyperparameter on the rows it is scored on: `fit_with_inner_split`
  picks `shrink` and the unit terms on a validation part split off the training rows by group,
  and the adaptation's variances from the training devices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeforge.devices import ComputeUnit, Device, get_device
from edgeforge.errors import EdgeforgeError
from edgeforge.estimator.published import PublishedRow

if TYPE_CHECKING:
    from edgeforge.analysis.profile import Profile
    from edgeforge.estimator.roofline import LayerTime

__all__ = [
    "CLASSES",
    "RowWork",
    "TransferModel",
    "adapted_path",
    "calibrate_device",
    "engine_of",
    "fit_transfer",
    "fit_with_inner_split",
    "grouped_folds",
    "load_transfer",
    "row_work",
    "save_adapted",
    "transfer_layers",
    "validation_groups",
    "work_of",
]

CLASSES = ("conv", "conv_depthwise", "matmul", "other")
_CLASS_OF = {"conv": "conv", "matmul": "matmul", "attention": "matmul", "recurrent": "matmul"}
SHRINK_GRID = (0.3, 3.0, 30.0)  # device-term penalties the inner split chooses from
GROUP_PENALTY = 1.0  # runtime-family and precision terms
SHARED_PENALTY = 0.01  # class, unit-kind, spec and base-overhead terms
SOFT_L1_SCALE = 0.3  # log-ratio beyond which a residual counts linearly, not squared
_SCHEMA = 1
# Runtime families, read from a published runtime string or a catalogue runtime name; the first
# pattern that matches wins ("PyTorch CUDA (torch2trt baseline)" is PyTorch, not TensorRT).
_ENGINES = (
    (re.compile(r"pytorch", re.I), "pytorch"),
    (re.compile(r"tensorrt|torch2trt", re.I), "tensorrt"),
    (re.compile(r"ncnn", re.I), "ncnn"),
    (re.compile(r"opencv", re.I), "opencv"),
    (re.compile(r"tflite|litert|edgetpu", re.I), "litert"),
    (re.compile(r"ultralytics", re.I), "ultralytics"),
    (re.compile(r"onnx ?runtime|\bort\b", re.I), "onnxruntime"),
    (re.compile(r"openvino", re.I), "openvino"),
    (re.compile(r"rknn", re.I), "rknn"),
    (re.compile(r"core ?ml", re.I), "coreml"),
    (re.compile(r"executorch", re.I), "executorch"),
)


def engine_of(runtime: str | None, unit: str) -> str:
    """The runtime family and unit kind, e.g. 'ncnn/gpu', 'litert/cpu', 'other/cpu'; ncnn's
    `powersave=N` (which cores it runs on) is part of the key when the string states it."""
    text = runtime or ""
    name = next((engine for pattern, engine in _ENGINES if pattern.search(text)), "other")
    key = f"{name}/{unit}"
    power = re.search(r"powersave=(\d)", text)
    return f"{key}/ps{power.group(1)}" if power and power.group(1) != "0" else key


@dataclass(frozen=True)
class RowWork:
    """What the model reads of one (profile, device, unit, precision): per-class prior roofline
    ms, the count of nodes paying a launch overhead, and the device's spec features."""

    work: tuple[float, ...]  # one per CLASSES
    layers: int
    device: str
    kind: str
    precision: str
    engine: str
    specs: tuple[float, ...]

    @property
    def total(self) -> float:
        return sum(self.work)


def _specs(device: Device, peak_gops: float) -> tuple[float, ...]:
    """log10 peak GOPS, log10 bandwidth GB/s (0 when absent) and a bandwidth-absent flag, the
    first two centred on typical edge values so the penalty shrinks toward a typical device."""
    bandwidth = device.memory_bandwidth_gbps.value if device.memory_bandwidth_gbps else None
    return (
        math.log10(max(peak_gops, 1e-3)) - 2.5,
        math.log10(bandwidth) - 1.3 if bandwidth else 0.0,
        0.0 if bandwidth else 1.0,
    )


def _unit(device: Device, unit_kind: str, runtime: str | None) -> ComputeUnit | None:
    """The device's unit of that kind; for ncnn's powersave=1 (only the little cores run) its
    little-cluster CPU unit where the catalogue lists one."""
    units = [u for u in device.compute if u.kind == unit_kind]
    if unit_kind == "cpu" and re.search(r"powersave=1", runtime or ""):
        units = [u for u in units if "little cluster" in u.name] or units
    return units[0] if units else None


def _prior_layers(
    profile: Profile,
    device: Device,
    unit_kind: str,
    precision: str,
    threads: int | None,
    runtime: str | None = None,
) -> tuple[list[LayerTime], list[str], float] | None:
    """Per-node times at the priors' efficiencies with 1 ms per paying node (so `overhead_ms`
    marks who pays), each node's class, and the unit's peak; None without a usable unit."""
    from edgeforge.estimator.calibration import PRIOR_DEFAULT, PRIORS, FactorEntry
    from edgeforge.estimator.roofline import _graph_roles, _GraphRoles, _peak_gops, roofline_ms

    unit = _unit(device, unit_kind, runtime)
    if unit is None:
        return None
    try:
        peak = _peak_gops(unit, precision, threads, [])
    except EdgeforgeError:
        return None
    entry = FactorEntry("*", "*", "*", dict(PRIORS), PRIOR_DEFAULT, 1.0, 1.0, 1.0, 1.0, {})
    bandwidth = device.memory_bandwidth_gbps.value if device.memory_bandwidth_gbps else None
    if unit.name == "Edge TPU":
        # An Edge TPU keeps weights (up to its ~8 MB SRAM) and activations on chip: neither the
        # host's DRAM nor its USB link bounds a layer, so no memory time (catalogue notes).
        bandwidth = None
    layers = roofline_ms(
        profile, entry, peak_gops=peak, bandwidth_gbps=bandwidth, precision=precision
    )
    roles = _graph_roles(profile) or _GraphRoles(frozenset(), frozenset())
    classes = [
        "conv_depthwise" if index in roles.depthwise else _CLASS_OF.get(layer.category, "other")
        for index, layer in enumerate(layers)
    ]
    return layers, classes, peak


def work_of(
    profile: Profile,
    device: Device,
    unit_kind: str,
    precision: str,
    *,
    threads: int | None = None,
    pixel_ratio: float = 1.0,
    runtime: str | None = None,
) -> RowWork | None:
    """`RowWork` for a profile on one unit of `device`; None when the device has no such unit
    or the unit has no usable peak."""
    prior = _prior_layers(profile, device, unit_kind, precision, threads, runtime)
    if prior is None:
        return None
    layers, classes, peak = prior
    work = dict.fromkeys(CLASSES, 0.0)
    for layer, cls in zip(layers, classes, strict=True):
        work[cls] += (layer.ms - layer.overhead_ms) * pixel_ratio
    return RowWork(
        tuple(work[c] for c in CLASSES),
        sum(layer.overhead_ms > 0 for layer in layers),
        device.id,
        unit_kind,
        precision,
        engine_of(runtime, unit_kind),
        _specs(device, peak),
    )


def transfer_layers(
    model: TransferModel,
    profile: Profile,
    device: Device,
    unit_kind: str,
    precision: str,
    *,
    threads: int | None = None,
    runtime: str | None = None,
) -> tuple[list[LayerTime], RowWork] | None:
    """`estimate`'s per-node times under the transfer model: each node's prior roofline time
    times its class's multiplier, plus the model's per-layer overhead where the node pays one;
    they sum to `model.predict(work)`."""
    prior = _prior_layers(profile, device, unit_kind, precision, threads, runtime)
    work = work_of(profile, device, unit_kind, precision, threads=threads, runtime=runtime)
    if prior is None or work is None:
        return None
    multipliers, overhead = model.multipliers(work)
    factor = dict(zip(CLASSES, multipliers, strict=True))
    layers = []
    for layer, cls in zip(prior[0], prior[1], strict=True):
        paid = overhead if layer.overhead_ms > 0 else 0.0
        ms = (layer.ms - layer.overhead_ms) * factor[cls] + paid
        layers.append(dataclasses.replace(layer, ms=ms, overhead_ms=paid))
    return layers, work


def row_work(row: PublishedRow, profiles: Mapping[str, Profile]) -> RowWork | None:
    """`RowWork` for a mapped published row (None when it has no profile or costable unit)."""
    from edgeforge.estimator.calibration import _input_pixels, _precision

    profile = profiles.get(row.architecture or "")
    if profile is None or row.device_id is None:
        return None
    pixels = _input_pixels(profile)
    ratio = row.image_size[0] * row.image_size[1] / pixels if pixels and row.image_size else 1.0
    return work_of(
        profile,
        get_device(row.device_id),
        row.unit,
        _precision(row),
        threads=row.threads,
        pixel_ratio=ratio,
        runtime=row.runtime,
    )


# -- the model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferModel:
    """Fitted parameters (log space); a missing key is a term at its pooled value, zero."""

    theta: Mapping[str, float]
    kind: Mapping[str, float]
    precision: Mapping[str, float]  # "kind/precision"
    engine: Mapping[str, float]
    beta: tuple[float, ...]
    device: Mapping[str, float]
    omega0: float
    overhead_engine: Mapping[str, float]
    overhead_device: Mapping[str, float]
    shrink: float
    # (device, runtime group, row) variances of log measured/predicted on a device the fit
    # never saw: the prior `adapt` shrinks a new device's references with
    adapt_variances: tuple[float, float, float] = (0.1, 0.1, 0.05)
    band: tuple[float, float] = (0.5, 2.0)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    # "device/kind" and "device/kind/precision" (the pooled fit, when the inner split keeps
    # them: scale the compute) and "device/engine/precision" (set by `adapt`: scale the whole
    # time of that runtime family, unit and precision on the device)
    device_unit: Mapping[str, float] = field(default_factory=dict)

    def multipliers(self, work: RowWork) -> tuple[tuple[float, ...], float]:
        """Per-class multipliers on the prior roofline time, and the per-layer overhead (ms)."""
        eta = (
            self.kind.get(work.kind, 0.0)
            + self.precision.get(f"{work.kind}/{work.precision}", 0.0)
            + self.engine.get(work.engine, 0.0)
            + sum(b * s for b, s in zip(self.beta, work.specs, strict=True))
            + self.device.get(work.device, 0.0)
            + self.device_unit.get(f"{work.device}/{work.kind}", 0.0)
            + self.device_unit.get(f"{work.device}/{work.kind}/{work.precision}", 0.0)
        )
        group = self.device_unit.get(f"{work.device}/{work.engine}/{work.precision}", 0.0)
        classes = tuple(math.exp(self.theta.get(c, 0.0) + eta + group) for c in CLASSES)
        omega = (
            self.omega0
            + self.overhead_engine.get(work.engine, 0.0)
            + self.overhead_device.get(work.device, 0.0)
            + group
        )
        return classes, math.exp(omega)

    def predict(self, work: RowWork) -> float:
        classes, overhead = self.multipliers(work)
        return sum(w * m for w, m in zip(work.work, classes, strict=True)) + work.layers * overhead

    def knows(self, device: str) -> bool:
        return device in self.device or device in self.overhead_device

    def without_device(self, device: str) -> TransferModel:
        """This model with every term of `device` at its pooled value (zero)."""
        return dataclasses.replace(
            self,
            device={k: v for k, v in self.device.items() if k != device},
            overhead_device={k: v for k, v in self.overhead_device.items() if k != device},
            device_unit={k: v for k, v in self.device_unit.items() if k.split("/", 1)[0] != device},
        )

    def adapt(self, works: Sequence[RowWork], measured: Sequence[float]) -> TransferModel:
        """This model with the rows' one device's terms set from them, shared terms kept: the
        few-shot calibration. The log ratio measured / transferred prediction of each row is a
        device offset plus an offset of its runtime group (runtime family, unit, precision)
        plus noise, with the variances `adapt_variances`; the device's terms are their
        posterior means (best linear unbiased prediction), so one reference row moves the
        estimate part of the way and more rows move it further. Raises EdgeforgeError on no
        rows or rows of several devices."""
        import numpy as np

        devices = {w.device for w in works}
        if len(devices) != 1:
            raise EdgeforgeError(f"adapt needs rows of one device; got {sorted(devices) or 0}")
        (device,) = devices
        base = self.without_device(device)
        offsets = np.log([m / base.predict(w) for w, m in zip(works, measured, strict=True)])
        groups = [_group(w) for w in works]
        same = np.array([[a == b for b in groups] for a in groups], dtype=float)
        device_var, group_var, row_var = self.adapt_variances
        covariance = device_var + group_var * same + row_var * np.eye(len(groups))
        weights = np.linalg.solve(covariance, offsets)
        scale = float(device_var * weights.sum())
        units = {
            f"{device}/{group}": float(group_var * weights[same[i] > 0].sum())
            for i, group in enumerate(groups)
        }
        provenance = {**self.provenance, "adapted": {"device": device, "rows": len(works)}}
        return dataclasses.replace(
            base,
            device={**base.device, device: scale},
            overhead_device={**base.overhead_device, device: scale},
            device_unit={**base.device_unit, **units},
            provenance=provenance,
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["schema"] = _SCHEMA
        data["kind_of_model"] = "transfer"
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransferModel:
        if data.get("schema") != _SCHEMA or data.get("kind_of_model") != "transfer":
            raise EdgeforgeError("not a transfer-model file of this edgeforge version")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["beta"] = tuple(values["beta"])
        values["band"] = tuple(values.get("band", (0.5, 2.0)))
        if "adapt_variances" in values:
            values["adapt_variances"] = tuple(values["adapt_variances"])
        return cls(**values)


# -- fitting ---------------------------------------------------------------------------------


@dataclass
class _Layout:
    """Which parameter vector index is which term, and each one's penalty."""

    names: list[tuple[str, str]] = field(default_factory=list)  # (group, key)
    penalty: list[float] = field(default_factory=list)
    index: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, group: str, key: str, penalty: float) -> None:
        if (group, key) not in self.index:
            self.index[(group, key)] = len(self.names)
            self.names.append((group, key))
            self.penalty.append(penalty)


def _fit(
    works: list[RowWork],
    measured: list[float],
    shrink: float,
    *,
    unit_terms: bool = False,
) -> TransferModel:
    """Penalised soft-L1 fit in log space; with `unit_terms`, each device also has a term per
    unit kind and per (unit kind, precision), shrunk like its own term."""
    import numpy as np
    from scipy.optimize import least_squares

    layout = _Layout()
    for c in CLASSES:
        layout.add("theta", c, SHARED_PENALTY)
    for i in range(len(works[0].specs)):
        layout.add("beta", str(i), SHARED_PENALTY)
    layout.add("omega0", "", SHARED_PENALTY)
    for w in works:
        layout.add("kind", w.kind, SHARED_PENALTY)
        layout.add("precision", f"{w.kind}/{w.precision}", GROUP_PENALTY)
        layout.add("engine", w.engine, GROUP_PENALTY)
        layout.add("overhead_engine", w.engine, GROUP_PENALTY)
    for w in works:
        layout.add("device", w.device, shrink)
        if unit_terms:
            layout.add("device_unit", f"{w.device}/{w.kind}", shrink)
            layout.add("device_unit", f"{w.device}/{w.kind}/{w.precision}", shrink)
        layout.add("overhead_device", w.device, shrink)
    n_rows, n_par = len(works), len(layout.names)
    work = np.array([w.work for w in works])
    layers = np.array([w.layers for w in works], dtype=float)
    target = np.log(np.array(measured))
    # Design matrices: which parameters enter eta (all classes), theta (one class), omega.
    eta_x = np.zeros((n_rows, n_par))
    omega_x = np.zeros((n_rows, n_par))
    theta_cols = [layout.index.get(("theta", c)) for c in CLASSES]
    for i, w in enumerate(works):
        for group, key in (
            ("kind", w.kind),
            ("precision", f"{w.kind}/{w.precision}"),
            ("engine", w.engine),
            ("device", w.device),
            ("device_unit", f"{w.device}/{w.kind}"),
            ("device_unit", f"{w.device}/{w.kind}/{w.precision}"),
        ):
            if (group, key) in layout.index:
                eta_x[i, layout.index[(group, key)]] = 1.0
        for j, value in enumerate(w.specs):
            if ("beta", str(j)) in layout.index:
                eta_x[i, layout.index[("beta", str(j))]] = value
        for group, key in (
            ("omega0", ""),
            ("overhead_engine", w.engine),
            ("overhead_device", w.device),
        ):
            if (group, key) in layout.index:
                omega_x[i, layout.index[(group, key)]] = 1.0
    penalty = np.sqrt(np.array(layout.penalty))
    start_vector = np.zeros(n_par)
    start_vector[layout.index[("omega0", "")]] = math.log(0.01)

    def parts(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        theta = np.repeat((eta_x @ p)[:, None], len(CLASSES), axis=1)
        for c, col in enumerate(theta_cols):
            if col is not None:
                theta[:, c] += p[col]
        compute = work * np.exp(theta)
        overhead = layers * np.exp(omega_x @ p)
        return compute, overhead, compute.sum(axis=1) + overhead

    def residuals(p: np.ndarray) -> np.ndarray:
        _, _, predicted = parts(p)
        return np.concatenate([np.log(predicted) - target, penalty * p])

    def jacobian(p: np.ndarray) -> np.ndarray:
        compute, overhead, predicted = parts(p)
        rows = eta_x * (compute.sum(axis=1) / predicted)[:, None]
        rows += omega_x * (overhead / predicted)[:, None]
        for c, col in enumerate(theta_cols):
            if col is not None:
                rows[:, col] += compute[:, c] / predicted
        return np.vstack([rows, np.diag(penalty)])

    solution = least_squares(
        residuals, start_vector, jac=jacobian, loss="soft_l1", f_scale=SOFT_L1_SCALE
    ).x
    values: dict[str, dict[str, float]] = {}
    for (group, key), value in zip(layout.names, solution, strict=True):
        values.setdefault(group, {})[key] = float(value)
    fitted = TransferModel(
        theta=values["theta"],
        kind=values.get("kind", {}),
        precision=values.get("precision", {}),
        engine=values.get("engine", {}),
        beta=tuple(values["beta"][str(i)] for i in range(len(works[0].specs))),
        device=values.get("device", {}),
        omega0=values["omega0"][""],
        overhead_engine=values.get("overhead_engine", {}),
        overhead_device=values.get("overhead_device", {}),
        shrink=shrink,
        device_unit=values.get("device_unit", {}),
    )
    ratios = sorted(m / fitted.predict(w) for w, m in zip(works, measured, strict=True))
    if len(ratios) >= 5:
        deciles = statistics.quantiles(ratios, n=10, method="inclusive")
        band = (min(deciles[0], 1.0), max(deciles[-1], 1.0))
        fitted = dataclasses.replace(fitted, band=band)
    return fitted


def _offset_variances(
    offsets: Sequence[tuple[str, str, float]],
) -> tuple[float, float, float]:
    """Empirical Bayes for `adapt`, by moments of (device, runtime group, log ratio measured /
    predicted without the device's terms): the device variance is the mean product of two
    group medians of one device (what two groups share), the group variance the mean product
    of a group median with itself less that, and the row variance the robust scatter
    ((1.4826 x median absolute deviation)^2) of rows about their group's median."""
    by_group: dict[tuple[str, str], list[float]] = {}
    for device, group, value in offsets:
        by_group.setdefault((device, group), []).append(value)
    medians = {key: statistics.median(v) for key, v in by_group.items()}
    across = [
        medians[a] * medians[b] for a in medians for b in medians if a[0] == b[0] and a[1] < b[1]
    ]
    device = max(statistics.fmean(across), 1e-3) if across else 1e-3
    group = max(statistics.fmean(v * v for v in medians.values()) - device, 1e-3)
    scatter = [x - medians[key] for key, v in by_group.items() if len(v) > 1 for x in v]
    row = max((1.4826 * statistics.median(abs(x) for x in scatter)) ** 2, 1e-3) if scatter else 1e-3
    return device, group, row


def _held_out_offsets(
    works: Sequence[RowWork], measured: Sequence[float], shrink: float, unit_terms: bool
) -> list[tuple[str, str, float]]:
    """Each row's (device, runtime group, log ratio measured / predicted) by a fit on the
    other devices' rows: how far a device the fit never saw sits from its prediction."""
    offsets = []
    for device, train, test in grouped_folds([w.device for w in works]):
        if not train:
            continue
        model = _fit(
            [works[i] for i in train], [measured[i] for i in train], shrink, unit_terms=unit_terms
        )
        offsets += [
            (device, _group(works[i]), math.log(measured[i] / model.predict(works[i])))
            for i in test
        ]
    return offsets


def _group(work: RowWork) -> str:
    return f"{work.engine}/{work.precision}"


def fit_transfer(
    works: Sequence[RowWork], measured: Sequence[float], shrink: float = 1.0
) -> TransferModel:
    """The model fitted on all of `works` with one device penalty `shrink`."""
    if not works:
        raise EdgeforgeError("no costable rows to fit the transfer model on")
    return _fit(list(works), list(measured), shrink)


def median_abs_pct(
    model: TransferModel, works: Sequence[RowWork], measured: Sequence[float]
) -> float:
    errors = [abs(model.predict(w) - m) / m * 100 for w, m in zip(works, measured, strict=True)]
    return statistics.median(errors)


def _bucket(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") / 2**32


def grouped_folds(groups: Sequence[str]) -> Iterator[tuple[str, list[int], list[int]]]:
    """One fold per group: (group, indices of every other group's rows, indices of its rows).
    A group (a model with all its spellings and precisions, or a device) is never on both sides.
    """
    for group in sorted(set(groups)):
        yield (
            group,
            [i for i, g in enumerate(groups) if g != group],
            [i for i, g in enumerate(groups) if g == group],
        )


def validation_groups(groups: Iterable[str], share: float = 0.3) -> set[str]:
    """The whole groups `fit_with_inner_split` holds out to choose `shrink` (by a stable hash of
    the name; at least one and never all, when there are two or more)."""
    names = sorted(set(groups))
    held = {g for g in names if _bucket(g) < share}
    if not held or len(held) == len(names):
        held = {min(names, key=_bucket)} if len(names) > 1 else set()
    return held


def fit_with_inner_split(
    works: Sequence[RowWork],
    measured: Sequence[float],
    groups: Sequence[str],
    *,
    grid: Iterable[float] = SHRINK_GRID,
    unit_terms: Iterable[bool] = (False, True),
) -> TransferModel:
    """Choose `shrink` and whether the pooled fit has per-device unit terms on a validation
    part of the training rows (`validation_groups`: whole groups), refit on all of them with
    that choice, and set `adapt_variances` from how far each training device sits from a fit
    on the others (`_held_out_offsets`). `groups` are what the outer split holds out (models,
    or devices), so the choice is scored the way the model is."""
    held = validation_groups(groups)
    best: tuple[float, float, bool] | None = None
    if held:
        train = [i for i, g in enumerate(groups) if g not in held]
        check = [i for i, g in enumerate(groups) if g in held]
        for shrink, units in itertools.product(grid, unit_terms):
            model = _fit(
                [works[i] for i in train], [measured[i] for i in train], shrink, unit_terms=units
            )
            error = median_abs_pct(model, [works[i] for i in check], [measured[i] for i in check])
            if best is None or error < best[0] - 1e-9:
                best = (error, shrink, units)
    shrink, units = (best[1], best[2]) if best is not None else (1.0, False)
    model = _fit(list(works), list(measured), shrink, unit_terms=units)
    variances = _offset_variances(_held_out_offsets(works, measured, shrink, units))
    return dataclasses.replace(
        model,
        adapt_variances=variances,
        provenance={"shrink_chosen_on": sorted(held), "shrink": shrink, "unit_terms": units},
    )


# -- the shipped model and per-device adaptations ----------------------------------------------


def adapted_path(device_id: str) -> Path:
    """Where `calibrate --device ID --measurements FILE` stores a device's adapted terms."""
    from edgeforge._cache import cache_dir

    return cache_dir() / "calibration" / "devices" / f"{device_id}.json"


def save_adapted(model: TransferModel, device_id: str, record: Mapping[str, Any]) -> Path:
    """Store `model`'s terms for `device_id` (and `record`, what they were fitted on)."""
    path = adapted_path(device_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "schema": _SCHEMA,
        "device": device_id,
        "device_scale": model.device.get(device_id, 0.0),
        "overhead_device": model.overhead_device.get(device_id, 0.0),
        "device_unit": {
            k: v for k, v in model.device_unit.items() if k.split("/", 1)[0] == device_id
        },
        **record,
    }
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def load_transfer(path: str | Path | None = None, *, adapted: bool = True) -> TransferModel | None:
    """The transfer model at `path`, or the one shipped in `edgeforge/estimator/data/` (None
    when the package has none), with the device terms that `calibrate --device` stored for
    each adapted device in place of the shipped ones (`adapted`)."""
    if path is not None:
        model = TransferModel.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    else:
        shipped = resources.files("edgeforge.estimator").joinpath("data/transfer.json")
        if not shipped.is_file():
            return None
        model = TransferModel.from_dict(json.loads(shipped.read_text(encoding="utf-8")))
    if not adapted:
        return model
    folder = adapted_path("x").parent
    if not folder.is_dir():
        return model
    for stored in sorted(folder.glob("*.json")):
        try:
            data = json.loads(stored.read_text(encoding="utf-8"))
            if data.get("schema") != _SCHEMA:
                continue
            name = str(data["device"])
            scale, paid = float(data["device_scale"]), float(data["overhead_device"])
            units = {str(k): float(v) for k, v in data.get("device_unit", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # a damaged file is one device's adaptation lost, not every estimate
        model = model.without_device(name)
        model = dataclasses.replace(
            model,
            device={**model.device, name: scale},
            overhead_device={**model.overhead_device, name: paid},
            device_unit={**model.device_unit, **units},
        )
    return model


def calibrate_device(device_id: str, measurements: str | Path) -> dict[str, Any]:
    """Adapt the shipped model to `device_id` from measured reference models (a CSV in the
    published-rows format; its device column is ignored, every row is taken as measured on
    `device_id`), store the adapted terms (`adapted_path`), and report each row's estimate
    before and after. Rows that cannot be used are listed with the reason; EdgeforgeError when
    none can, or the device is this-machine (`calibrate --here` measures it instead)."""
    from edgeforge.devices._this_machine import THIS_MACHINE_ID
    from edgeforge.estimator.calibration import zoo_profiles
    from edgeforge.estimator.published import read_rows

    device = get_device(device_id)
    if device.id == THIS_MACHINE_ID:
        raise EdgeforgeError(
            "this-machine is calibrated by measuring it: run `edgeforge calibrate --here`"
        )
    model = load_transfer(adapted=False)
    if model is None:
        raise EdgeforgeError("this edgeforge has no transfer model (estimator/data/transfer.json)")
    rows = read_rows(measurements)
    usable, skipped = [], []
    for row in rows:
        reasons = [
            r
            for r in (row.reason or "").split("; ")
            if r and not r.startswith("device ")  # the device is --device, whatever it says
        ]
        if reasons or row.architecture is None:
            skipped.append({"line": row.line, "model": row.model, "reason": "; ".join(reasons)})
            continue
        usable.append(dataclasses.replace(row, device_id=device.id, reason=None))
    profiles = zoo_profiles({r.architecture for r in usable if r.architecture})
    works, used = [], []
    for row in usable:
        work = row_work(row, profiles)
        if work is None or work.total <= 0:
            skipped.append(
                {
                    "line": row.line,
                    "model": row.model,
                    "reason": f"{device.id} has no {row.unit} unit with a peak for {row.precision}",
                }
            )
            continue
        works.append(work)
        used.append(row)
    if not used:
        why = "; ".join(f"line {s['line']}: {s['reason']}" for s in skipped[:3])
        raise EdgeforgeError(
            f"{measurements}: no row can calibrate {device.id} ({why}); rows need a zoo "
            "architecture, an HxW input, batch 1 and a latency"
        )
    try:
        adapted = model.adapt(works, [r.latency_ms for r in used])
    except ImportError as error:
        raise EdgeforgeError(f"calibrate --device needs numpy ({error}); install numpy") from None
    table = [
        {
            "line": row.line,
            "model": row.model,
            "architecture": row.architecture,
            "runtime": row.runtime,
            "measured_ms": row.latency_ms,
            "before_ms": round(model.predict(work), 4),
            "after_ms": round(adapted.predict(work), 4),
        }
        for row, work in zip(used, works, strict=True)
    ]
    before = statistics.median(abs(t["before_ms"] / t["measured_ms"] - 1) * 100 for t in table)
    after = statistics.median(abs(t["after_ms"] / t["measured_ms"] - 1) * 100 for t in table)
    record = {
        "measurements": str(measurements),
        "rows": len(used),
        "lines": [row.line for row in used],
        "before_median_abs_pct_error": round(before, 2),
        "after_median_abs_pct_error": round(after, 2),
    }
    path = save_adapted(adapted, device.id, record)
    return {
        "device": device.id,
        **record,
        "note": "errors are on the reference rows themselves (what the adaptation was fitted "
        "on); bench/estimator_validation.py scores it on models it did not see",
        "reference_rows": table,
        "skipped": skipped,
        "saved_to": str(path),
    }
