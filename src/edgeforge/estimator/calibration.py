"""Efficiency factors for the roofline: the data `estimate` reads, and how they are fitted.

Model (what `fit` assumes and a caller can rely on):

- Relative efficiencies per layer class (`PRIORS`: conv and matmul 1.0, attention 0.5,
  recurrent 0.3, depthwise conv and everything else 0.25) are fixed priors, the same for
  every device; they are documented choices, not fitted.
- A per-layer overhead `o` is fitted per unit kind (cpu, gpu, ...) on the rows of every device,
  and a scale `s` per (device, compute unit) on that device's rows with its unit's `o`: every
  compute efficiency is `prior x s`, the memory efficiency is `s`. For a given `o`,
  each measured row gives `s_i = roofline_at_unit_scale / (measured - layers x o)` and `s` is
  the median of `s_i` in log space (a robust median-ratio fit: one outlier cannot move it;
  rows no slower than their overhead are left out of it). `o` is picked from
  `OVERHEAD_GRID_MS` by the smallest median |log(measured / predicted)|; a unit kind with fewer
  than `MIN_ROWS_FOR_OVERHEAD` rows keeps `PRIOR_OVERHEAD_MS`.
- A precision with at least `MIN_ROWS_FOR_PRECISION` fit rows on one (device, unit) gets its own
  scale there (same overhead): a precision may run on other kernels, or fall back to another
  unit (ncnn's int8 on a Vulkan GPU runs slower than its fp16), which one scale cannot follow.
- The band is the 10th-90th percentile of measured / predicted over the fit rows (min-max under
  five rows, widened to at least the unit kind's pooled band; 0.5-2.0 for a single row or the
  unfitted default), and always contains 1.
- A published row's input size differs from the zoo export's: its predicted time is scaled by
  the ratio of input pixels (CNN work grows with pixels), overhead excluded.
- `split(row)` sends a row to "fit" or "validate" by a hash of (architecture, device), so that
  on each device every row of one architecture lands on the same side (a device's entry is never
  validated on an architecture it was fitted on), the same on every machine and run. Hashing the
  architecture alone would, with the handful of architectures the published rows map to, leave
  most devices with nothing to fit on.
- `lookup` falls back from (device, unit, precision) to (device, unit, *), (*, unit, *) and
  (*, *, *); the file always has the last.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeforge.devices import get_device
from edgeforge.errors import EdgeforgeError
from edgeforge.estimator.published import PublishedRow
from edgeforge.estimator.roofline import _peak_gops, roofline_ms

if TYPE_CHECKING:
    from edgeforge.analysis.profile import Profile

__all__ = [
    "OVERHEAD_GRID_MS",
    "PRIORS",
    "PRIOR_OVERHEAD_MS",
    "FactorEntry",
    "Factors",
    "fit",
    "load_factors",
    "predict_row",
    "split",
    "validate",
    "validate_file",
    "zoo_profiles",
]

PRIORS: Mapping[str, float] = {
    "conv": 1.0,
    "conv_depthwise": 0.25,
    "matmul": 1.0,
    "attention": 0.5,
    "recurrent": 0.3,
}
PRIOR_DEFAULT = 0.25  # pooling, normalisation, softmax, elementwise, reduction, data movement
PRIOR_OVERHEAD_MS = 0.01
# Per-layer overheads the fit chooses from (the one with the smallest median |log residual|),
# when a group has at least MIN_ROWS_FOR_OVERHEAD rows; smaller groups keep the prior.
OVERHEAD_GRID_MS = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
MIN_ROWS_FOR_OVERHEAD = 5
MIN_ROWS_FOR_PRECISION = 3  # rows of one precision on one unit before it gets its own scale
PRIOR_SCALE = 0.3  # used only by the unfitted default entry: a typical fraction of peak
_SCHEMA = 1
_FIT_SHARE = 0.6  # about this share of architectures goes to the fit side


@dataclass(frozen=True)
class FactorEntry:
    """Efficiencies for one (device, unit, precision); '*' matches anything."""

    device: str
    unit: str
    precision: str
    compute_efficiency: Mapping[str, float]
    default_compute: float
    memory_efficiency: float
    layer_overhead_ms: float
    band_low: float
    band_high: float
    fit: Mapping[str, Any] = field(default_factory=dict)
    # Set by `calibrate --here` alone: a per-node overhead by cost class (classes absent pay
    # `layer_overhead_ms`, data movement nothing), the memory efficiency by the bytes a stream
    # moves (caches: (bytes, efficiency) points; empty: `memory_efficiency` for any size), and
    # a multiplier on the memory time of the data movement ops it measured (a Transpose's
    # strided copy is slower than a stream), and ONNX Runtime's NCHWc channel block on this
    # CPU (0: no layout reorders costed), and the fixed cost of one run of a model (the
    # runtime's call: feeds bound, outputs returned), paid once per inference, not per node;
    # `activation_pass`: where the runtime applies an activation fused into a conv (other than
    # Relu) as a pass over the conv's output, that pass's time over the activation's own compute
    # time as a node of its own (0: fused activations cost nothing).
    class_overhead_ms: Mapping[str, float] = field(default_factory=dict)
    memory_curve: tuple[tuple[float, float], ...] = ()
    memory_scale: Mapping[str, float] = field(default_factory=dict)
    nchwc_block: int = 0
    run_overhead_ms: float = 0.0
    activation_pass: float = 0.0

    @classmethod
    def scaled(
        cls,
        device: str,
        unit: str,
        precision: str,
        scale: float,
        *,
        overhead_ms: float = 0.01,
        **extra: Any,
    ) -> FactorEntry:
        """The entry the priors give for one fitted `scale`."""
        return cls(
            device=device,
            unit=unit,
            precision=precision,
            compute_efficiency={cat: prior * scale for cat, prior in PRIORS.items()},
            default_compute=PRIOR_DEFAULT * scale,
            memory_efficiency=scale,
            layer_overhead_ms=overhead_ms,
            **extra,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "unit": self.unit,
            "precision": self.precision,
            "compute_efficiency": dict(self.compute_efficiency),
            "default_compute": self.default_compute,
            "memory_efficiency": self.memory_efficiency,
            "layer_overhead_ms": self.layer_overhead_ms,
            "band_low": self.band_low,
            "band_high": self.band_high,
            "fit": dict(self.fit),
            **(
                {"class_overhead_ms": dict(self.class_overhead_ms)}
                if self.class_overhead_ms
                else {}
            ),
            **({"memory_curve": [list(p) for p in self.memory_curve]} if self.memory_curve else {}),
            **({"memory_scale": dict(self.memory_scale)} if self.memory_scale else {}),
            **({"nchwc_block": self.nchwc_block} if self.nchwc_block else {}),
            **({"run_overhead_ms": self.run_overhead_ms} if self.run_overhead_ms else {}),
            **({"activation_pass": self.activation_pass} if self.activation_pass else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FactorEntry:
        return cls(
            device=data["device"],
            unit=data["unit"],
            precision=data["precision"],
            compute_efficiency=dict(data["compute_efficiency"]),
            default_compute=float(data["default_compute"]),
            memory_efficiency=float(data["memory_efficiency"]),
            layer_overhead_ms=float(data["layer_overhead_ms"]),
            band_low=float(data["band_low"]),
            band_high=float(data["band_high"]),
            fit=dict(data.get("fit", {})),
            class_overhead_ms=dict(data.get("class_overhead_ms", {})),
            memory_curve=tuple(
                (float(size), float(efficiency))
                for size, efficiency in data.get("memory_curve", ())
            ),
            memory_scale=dict(data.get("memory_scale", {})),
            nchwc_block=int(data.get("nchwc_block", 0)),
            run_overhead_ms=float(data.get("run_overhead_ms", 0.0)),
            activation_pass=float(data.get("activation_pass", 0.0)),
        )


@dataclass(frozen=True)
class Factors:
    """A set of entries and the record of how they were fitted (`provenance`)."""

    entries: tuple[FactorEntry, ...]
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not any(e.device == e.unit == e.precision == "*" for e in self.entries):
            raise EdgeforgeError("factors need a default entry (device, unit, precision = '*')")

    def lookup(self, device: str, unit: str, precision: str) -> tuple[FactorEntry, str]:
        """The most specific entry and the key it matched ('device/unit/precision')."""
        index = {(e.device, e.unit, e.precision): e for e in self.entries}
        for key in (
            (device, unit, precision),
            (device, unit, "*"),
            ("*", unit, "*"),
            ("*", "*", "*"),
        ):
            if key in index:
                return index[key], "/".join(key)
        raise AssertionError("unreachable: __post_init__ checks the default entry")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": _SCHEMA,
            "provenance": dict(self.provenance),
            "entries": [e.to_dict() for e in self.entries],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Factors:
        if data.get("schema") != _SCHEMA:
            raise EdgeforgeError(f"factors schema {data.get('schema')!r}; expected {_SCHEMA}")
        entries = tuple(FactorEntry.from_dict(e) for e in data["entries"])
        return cls(entries, dict(data.get("provenance", {})))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")


def default_entry() -> FactorEntry:
    return FactorEntry.scaled(
        "*", "*", "*", PRIOR_SCALE, band_low=0.5, band_high=2.0, fit={"rows": 0}
    )


def load_factors(path: str | Path | None = None) -> Factors:
    """Factors from `path`; or the fitted ones shipped in `edgeforge/estimator/data/`, plus
    this machine's entry when `edgeforge calibrate --here` measured this host."""
    if path is not None:
        return Factors.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    text = resources.files("edgeforge.estimator").joinpath("data/factors.json").read_text()
    factors = Factors.from_dict(json.loads(text))
    from edgeforge.devices._this_machine import read_calibration

    stored = read_calibration()
    if stored is None:
        return factors
    here = FactorEntry.from_dict(stored["entry"])
    kept = tuple(e for e in factors.entries if e.device != here.device)
    return Factors((*kept, here), factors.provenance)


# -- fitting ---------------------------------------------------------------------------------


def split(row: PublishedRow) -> str:
    """'fit' or 'validate', from a stable hash of the row's architecture (or model name) and
    device."""
    key = f"{row.architecture or row.model}|{row.device_id or row.device}".encode()
    bucket = int.from_bytes(hashlib.sha256(key).digest()[:4], "big") / 2**32
    return "fit" if bucket < _FIT_SHARE else "validate"


def _input_pixels(profile: Profile) -> int | None:
    for spec in profile.inputs:
        shape = spec.get("shape") or []
        if len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]):
            return int(shape[2] * shape[3])
    return None


def _precision(row: PublishedRow) -> str:
    return row.precision if row.precision in ("fp32", "fp16", "int8") else "fp32"


def predict_row(
    row: PublishedRow, entry: FactorEntry, profiles: Mapping[str, Profile]
) -> tuple[float, float] | None:
    """(roofline ms, overhead ms) for a mapped row under `entry`, or None when the row's
    architecture has no profile or its device lacks the row's unit."""
    profile = profiles.get(row.architecture or "")
    if profile is None or row.device_id is None:
        return None
    device = get_device(row.device_id)
    unit = next((u for u in device.compute if u.kind == row.unit), None)
    if unit is None:
        return None
    precision = _precision(row)
    try:
        peak = _peak_gops(unit, precision, row.threads, [])
    except EdgeforgeError:
        return None
    bandwidth = device.memory_bandwidth_gbps.value if device.memory_bandwidth_gbps else None
    layers = roofline_ms(
        profile, entry, peak_gops=peak, bandwidth_gbps=bandwidth, precision=precision
    )
    overhead = sum(layer.overhead_ms for layer in layers)
    work = sum(layer.ms - layer.overhead_ms for layer in layers)
    pixels = _input_pixels(profile)
    ratio = 1.0
    if pixels and row.image_size:
        ratio = row.image_size[0] * row.image_size[1] / pixels
    return work * ratio, overhead


def _unit_entry() -> FactorEntry:
    # Scale 1 and 1 ms per layer: predict_row then returns (work at scale 1, layers paying).
    return FactorEntry.scaled("*", "*", "*", 1.0, overhead_ms=1.0, band_low=1.0, band_high=1.0)


def _band(ratios: list[float]) -> tuple[float, float]:
    if len(ratios) < 2:
        return 0.5, 2.0
    if len(ratios) < 5:
        return min(ratios), max(ratios)
    deciles = statistics.quantiles(ratios, n=10, method="inclusive")
    return deciles[0], deciles[-1]


def _scale_for(used: list[tuple[PublishedRow, float, float]], overhead_ms: float) -> float | None:
    """Median-ratio scale for one per-layer overhead; None when no row exceeds its overhead."""
    logs = [
        math.log(work / (row.latency_ms - layers * overhead_ms))
        for row, work, layers in used
        if row.latency_ms > layers * overhead_ms
    ]
    return math.exp(statistics.median(logs)) if logs else None


def _fit_group(
    device: str,
    unit: str,
    rows: list[PublishedRow],
    profiles: Mapping[str, Profile],
    grid: tuple[float, ...],
) -> FactorEntry | None:
    used: list[tuple[PublishedRow, float, float]] = []  # (row, work at scale 1, layers)
    for row in rows:
        predicted = predict_row(row, _unit_entry(), profiles)
        if predicted is not None and predicted[0] > 0:
            used.append((row, *predicted))
    if len(grid) > 1 and len(used) < MIN_ROWS_FOR_OVERHEAD:
        grid = (PRIOR_OVERHEAD_MS,)  # too few rows to choose an overhead
    best: tuple[float, float, float] | None = None  # (median |log residual|, overhead, scale)
    for overhead_ms in grid:
        scale = _scale_for(used, overhead_ms)
        if scale is None:
            continue
        residual = statistics.median(
            abs(math.log(row.latency_ms / (work / scale + layers * overhead_ms)))
            for row, work, layers in used
        )
        if best is None or residual < best[0] - 1e-12:
            best = (residual, overhead_ms, scale)
    if best is None:
        return None
    _, overhead_ms, scale = best
    ratios = [row.latency_ms / (work / scale + layers * overhead_ms) for row, work, layers in used]
    low, high = _band(ratios)
    return FactorEntry.scaled(
        device,
        unit,
        "*",
        scale,
        overhead_ms=overhead_ms,
        band_low=min(low, 1.0),
        band_high=max(high, 1.0),
        fit={
            "rows": len(used),
            "scale": scale,
            "layer_overhead_ms": overhead_ms,
            "lines": sorted(row.line for row, _, _ in used),
        },
    )


def fit(rows: Iterable[PublishedRow], profiles: Mapping[str, Profile]) -> Factors:
    """Fit one scale per (device, unit) on `rows` (all of them: `split` them first), plus a
    per-unit-kind and an overall fallback. Unmapped rows and rows without a profile are
    skipped; the result's provenance counts what was used."""
    mapped = [r for r in rows if r.mapped and r.architecture in profiles]
    groups: dict[tuple[str, str], list[PublishedRow]] = {}
    by_precision: dict[tuple[str, str, str], list[PublishedRow]] = {}
    for row in mapped:
        assert row.device_id is not None
        groups.setdefault((row.device_id, row.unit), []).append(row)
        groups.setdefault(("*", row.unit), []).append(row)
        groups.setdefault(("*", "*"), []).append(row)
        by_precision.setdefault((row.device_id, row.unit, _precision(row)), []).append(row)
    entries: list[FactorEntry] = []
    # Pooled groups first: a unit kind's overhead is fitted on every device's rows of that kind,
    # then each device's entry fits only its scale with that overhead (one number per device).
    overheads: dict[str, float] = {}
    pooled: dict[str, FactorEntry] = {}
    for (device, unit), members in sorted(groups.items(), key=lambda kv: kv[0][0] != "*"):
        grid = OVERHEAD_GRID_MS if device == "*" else (overheads.get(unit, PRIOR_OVERHEAD_MS),)
        entry = _fit_group(device, unit, members, profiles, grid)
        if entry is None:
            continue
        if device == "*":
            overheads[unit] = entry.layer_overhead_ms
            pooled[unit] = entry
        elif int(entry.fit["rows"]) < MIN_ROWS_FOR_OVERHEAD and unit in pooled:
            # A band from a handful of rows is overconfident: take at least the unit kind's.
            entry = dataclasses.replace(
                entry,
                band_low=min(entry.band_low, pooled[unit].band_low),
                band_high=max(entry.band_high, pooled[unit].band_high),
            )
        entries.append(entry)
    # A precision runs on other kernels (or falls back to another unit): with enough rows of
    # its own, a (device, unit, precision) entry fits its own scale, at the unit's overhead and
    # with at least the (device, unit) entry's band.
    by_device = {(e.device, e.unit): e for e in entries}
    for (device, unit, precision), members in sorted(by_precision.items()):
        parent = by_device.get((device, unit))
        if parent is None or len(members) < MIN_ROWS_FOR_PRECISION:
            continue
        entry = _fit_group(device, unit, members, profiles, (parent.layer_overhead_ms,))
        if entry is None:
            continue
        entries.append(
            dataclasses.replace(
                entry,
                precision=precision,
                band_low=min(entry.band_low, parent.band_low),
                band_high=max(entry.band_high, parent.band_high),
            )
        )
    if not any(e.device == e.unit == "*" for e in entries):
        entries.append(default_entry())
    provenance = {
        "method": "median ratio in log space: a per-layer overhead per unit kind (chosen from "
        "overhead_grid_ms), then one scale per (device, unit); see edgeforge.estimator.calibration",
        "split": "sha256(architecture|device) < 0.6 -> fit, else validate",
        "date": _dt.date.today().isoformat(),
        "rows_fit": sum(int(e.fit.get("rows", 0)) for e in entries if e.device != "*"),
        "priors": {**PRIORS, "other": PRIOR_DEFAULT, "layer_overhead_ms": PRIOR_OVERHEAD_MS},
        "overhead_grid_ms": list(OVERHEAD_GRID_MS),
    }
    return Factors(tuple(entries), provenance)


# -- validation ------------------------------------------------------------------------------


def _summary(errors: list[float]) -> dict[str, Any]:
    if not errors:
        return {"rows": 0, "median_abs_pct_error": None, "within_25pct": None}
    return {
        "rows": len(errors),
        "median_abs_pct_error": round(statistics.median(errors), 2),
        "within_25pct": round(sum(e <= 25 for e in errors) / len(errors), 3),
    }


def validate(
    rows: Iterable[PublishedRow], factors: Factors, profiles: Mapping[str, Profile]
) -> dict[str, Any]:
    """Estimate every row and compare with its measurement.

    Returns `{"overall": summary, "by_device": {id: summary}, "rows": [...], "unmapped":
    [{line, device, model, reason}]}`; a summary has `rows`, `median_abs_pct_error` (in %) and
    `within_25pct` (a share). A row that cannot be estimated is listed under `unmapped`.
    """
    checked: list[dict[str, Any]] = []
    unmapped: list[dict[str, Any]] = []
    by_device: dict[str, list[float]] = {}
    for row in rows:
        reason = row.reason
        predicted = None
        if reason is None:
            entry, matched = factors.lookup(row.device_id or "*", row.unit, _precision(row))
            predicted = predict_row(row, entry, profiles)
            if predicted is None:
                reason = (
                    f"no profile for {row.architecture}"
                    if row.architecture not in profiles
                    else f"device {row.device_id} has no usable {row.unit} unit"
                )
        if predicted is None:
            unmapped.append(
                {"line": row.line, "device": row.device, "model": row.model, "reason": reason}
            )
            continue
        estimate_ms = sum(predicted)
        error = abs(estimate_ms - row.latency_ms) / row.latency_ms * 100
        by_device.setdefault(row.device_id or "?", []).append(error)
        checked.append(
            {
                "line": row.line,
                "device": row.device_id,
                "unit": row.unit,
                "architecture": row.architecture,
                "measured_ms": row.latency_ms,
                "estimated_ms": round(estimate_ms, 3),
                "abs_pct_error": round(error, 2),
                "factors": matched,
            }
        )
    return {
        "overall": _summary([e for errors in by_device.values() for e in errors]),
        "by_device": {d: _summary(errors) for d, errors in sorted(by_device.items())},
        "rows": checked,
        "unmapped": unmapped,
    }


# -- the calibration run ---------------------------------------------------------------------

_PROFILES: dict[str, Profile] = {}


def zoo_profiles(architectures: Iterable[str]) -> dict[str, Profile]:
    """`inspect` profiles of zoo architectures, built once per process (a few seconds each).
    Without torch (the base install) the profiles shipped with the package stand in
    (`_zoo_snapshot`)."""
    import edgeforge
    from edgeforge.estimator import _zoo_snapshot

    wanted = sorted(set(architectures))
    if any(n not in _PROFILES for n in wanted) and _zoo_snapshot.torch_missing():
        _zoo_snapshot.preload()
    for name in wanted:
        if name not in _PROFILES:
            from edgeforge.zoo import catalog

            module, inputs, options = catalog.build(name)
            _PROFILES[name] = edgeforge.inspect(module, inputs, **options)
    return {name: _PROFILES[name] for name in architectures}


def calibrate(rows_path: str | Path, out: str | Path | None = None) -> tuple[Factors, dict]:
    """Read `rows_path`, fit on the 'fit' side of `split`, validate on the rest, and save the
    factors (with the validation summary in their provenance) to `out` when given."""
    from edgeforge.estimator.published import read_rows

    rows = read_rows(rows_path)
    profiles = zoo_profiles({r.architecture for r in rows if r.mapped and r.architecture})
    fit_rows = [r for r in rows if split(r) == "fit"]
    held_out = [r for r in rows if split(r) == "validate"]
    factors = fit(fit_rows, profiles)
    report = validate(held_out, factors, profiles)
    provenance = {
        **factors.provenance,
        "rows_file": Path(rows_path).name,
        "rows_total": len(rows),
        "rows_mapped": sum(r.mapped for r in rows),
        "fit_architectures": sorted({r.architecture for r in fit_rows if r.architecture}),
        "validate_architectures": sorted({r.architecture for r in held_out if r.architecture}),
        "validation": {"overall": report["overall"], "by_device": report["by_device"]},
    }
    factors = Factors(factors.entries, provenance)
    if out is not None:
        factors.save(out)
    return factors, report


def validate_file(rows_path: str | Path, factors: Factors | None = None) -> dict[str, Any]:
    """`validate` every row of a CSV in the published format (all of them are validation rows:
    for measurements published after the fit) against `factors` (default: the shipped ones)."""
    from edgeforge.estimator.published import read_rows

    rows = read_rows(rows_path)
    profiles = zoo_profiles({r.architecture for r in rows if r.mapped and r.architecture})
    return validate(rows, factors if factors is not None else load_factors(), profiles)
