"""Drift verdicts and the rollout gates' metrics, from fleet aggregates and a release reference.

Tests (each also given on raw arrays, to check the sketches against):
- population stability index (PSI) over the reference's deciles (10 bins), proportions floored
  at 1e-4; bands: < 0.1 stable, 0.1-0.2 watch, > `psi` (0.2) drift;
- Kolmogorov-Smirnov distance: the largest gap between the two CDFs;
- Jensen-Shannon distance (base 2, in [0, 1]) between predicted-class frequencies, the classes
  a device did not track pooled as "other".

Invariant: no verdict and no metric from fewer than `min_reporters` distinct devices (default
10): with fewer, `verdict` is "insufficient" and every figure is None, so no single device's
data can be read off a chart or the API.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgeforge.fleet.monitor.aggregate import Aggregate, LogHistogram, Reference
from edgeforge.fleet.telemetry import INPUT_SLOTS, OUTPUT_SLOTS

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MIN_REPORTERS",
    "DriftReport",
    "Thresholds",
    "drift",
    "gate_metrics",
    "js_distance",
    "ks_distance",
    "ks_raw",
    "psi",
    "psi_raw",
]

MIN_REPORTERS = 10
PSI_BINS = 10
_FLOOR = 1e-4
DRIFT_SLOTS = (
    "confidence",
    *(f"in{i}" for i in range(INPUT_SLOTS)),
    *(f"out{i}" for i in range(OUTPUT_SLOTS)),
)


@dataclass(frozen=True)
class Thresholds:
    psi: float = 0.2
    ks: float = 0.1
    js: float = 0.1


DEFAULT_THRESHOLDS = Thresholds()


def _psi_from(ref_p: np.ndarray, cur_p: np.ndarray) -> float:
    r = np.maximum(ref_p, _FLOOR)
    c = np.maximum(cur_p, _FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def _edges_from_quantiles(q: Iterable[float]) -> np.ndarray:
    return np.unique(np.asarray(list(q), dtype=np.float64))


def psi(reference: LogHistogram, current: LogHistogram, bins: int = PSI_BINS) -> float | None:
    """PSI of `current` against `reference`, both histograms; None if either is empty."""
    if reference.n == 0 or current.n == 0:
        return None
    edges = _edges_from_quantiles(reference.quantile([i / bins for i in range(1, bins)]))
    ref_cdf = np.concatenate([[0.0], reference.cdf(edges), [1.0]])
    cur_cdf = np.concatenate([[0.0], current.cdf(edges), [1.0]])
    return _psi_from(np.diff(ref_cdf), np.diff(cur_cdf))


def psi_raw(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """The same PSI on raw values (reference deciles by the same rule: the smallest value whose
    CDF reaches the level)."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    cur = np.sort(np.asarray(current, dtype=np.float64))
    levels = np.array([i / bins for i in range(1, bins)])
    edges = np.unique(ref[np.ceil(levels * len(ref)).astype(int) - 1])
    ref_cdf = np.concatenate([[0.0], np.searchsorted(ref, edges, side="right") / len(ref), [1.0]])
    cur_cdf = np.concatenate([[0.0], np.searchsorted(cur, edges, side="right") / len(cur), [1.0]])
    return _psi_from(np.diff(ref_cdf), np.diff(cur_cdf))


def ks_distance(reference: LogHistogram, current: LogHistogram) -> float | None:
    """sup |F_ref - F_cur| over both histograms' bucket values; None if either is empty."""
    if reference.n == 0 or current.n == 0:
        return None
    x = np.union1d(reference.points()[0], current.points()[0])
    return float(np.max(np.abs(reference.cdf(x) - current.cdf(x))))


def ks_raw(reference: np.ndarray, current: np.ndarray) -> float:
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    cur = np.sort(np.asarray(current, dtype=np.float64))
    x = np.union1d(ref, cur)
    return float(
        np.max(
            np.abs(
                np.searchsorted(ref, x, side="right") / len(ref)
                - np.searchsorted(cur, x, side="right") / len(cur)
            )
        )
    )


def js_distance(reference: Mapping[str, float], current: Mapping[str, float]) -> float | None:
    """Jensen-Shannon distance (sqrt of the divergence, base 2) of two count tables."""
    keys = sorted(set(reference) | set(current))
    p = np.array([reference.get(k, 0) for k in keys], dtype=np.float64)
    q = np.array([current.get(k, 0) for k in keys], dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return None
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(np.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))


@dataclass
class DriftReport:
    """One aggregate against its reference. `verdict`: "drift", "ok", "insufficient" (fewer
    than `min_reporters` devices: nothing else is filled in) or "no-reference"."""

    name: str
    version: int
    device_class: str
    day: str
    verdict: str
    reporters: int
    min_reporters: int
    features: dict[str, dict[str, float | bool | None]] = field(default_factory=dict)
    classes_js: float | None = None
    drift_psi: float | None = None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drift(
    current: Aggregate,
    reference: Reference | None,
    *,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    min_reporters: int = MIN_REPORTERS,
) -> DriftReport:
    """Compare an aggregate with its reference: PSI and KS per summary (confidence, input and
    output statistics present on both sides), JS on classes. Drift when any PSI > psi, any KS >
    ks or JS > js. `drift_psi` is the largest PSI."""
    reporters = current.reporters()
    report = DriftReport(
        current.name,
        current.version,
        current.device_class,
        current.day,
        "insufficient",
        reporters,
        min_reporters,
    )
    if reporters < min_reporters:
        return report
    if reference is None:
        report.verdict = "no-reference"
        return report
    psis = []
    for slot in DRIFT_SLOTS:
        ref_h, cur_h = reference.slots[slot], current.slots[slot]
        if ref_h.n == 0 or cur_h.n == 0:
            continue
        p, k = psi(ref_h, cur_h), ks_distance(ref_h, cur_h)
        flagged = bool((p or 0) > thresholds.psi or (k or 0) > thresholds.ks)
        report.features[slot] = {"psi": p, "ks": k, "drift": flagged}
        psis.append(p or 0.0)
        if flagged:
            report.reasons.append(f"{slot}: psi {p:.3f}, ks {k:.3f}")
    if reference.classes and current.classes:
        cur = dict(current.classes)
        if current.class_other:
            cur["other"] = current.class_other
        report.classes_js = js_distance(reference.classes, cur)
        if report.classes_js is not None and report.classes_js > thresholds.js:
            report.reasons.append(f"classes: js {report.classes_js:.3f}")
    report.drift_psi = max(psis) if psis else None
    report.verdict = "drift" if report.reasons else "ok"
    return report


def _reference_for(references: Mapping[Any, Reference] | None, agg: Aggregate) -> Reference | None:
    if not references:
        return None
    for key in ((agg.name, agg.version, agg.device_class), (agg.name, agg.version)):
        if key in references:
            return references[key]
    return None


def _rate(agg: Aggregate, kind: str) -> float | None:
    ok, bad = agg.counters[f"{kind}_pass"], agg.counters[f"{kind}_fail"]
    return ok / (ok + bad) if ok + bad else None


def _mean(agg: Aggregate, fact: str) -> float | None:
    total, count = agg.facts[fact]
    return total / count if count else None


def gate_metrics(
    aggregates: Iterable[Aggregate],
    references: Mapping[Any, Reference] | None = None,
    *,
    min_reporters: int = MIN_REPORTERS,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> dict[str, dict[str, Any]]:
    """What the rollout gates read, per "NAME@VERSION/CLASS" (aggregates of several days are
    merged first): latency_p50/p95 (ms), confidence_p50, drift_psi, drift verdict, error_rate,
    canary and health pass rates, mean temperature, throttled share, battery, reporters, rows.
    Every figure is None below `min_reporters` devices. `references` maps
    (name, version, device_class) or (name, version) to a `Reference`."""
    merged: dict[tuple[str, int, str], Aggregate] = {}
    for agg in sorted(aggregates, key=lambda a: a.key):
        k = agg.key[:3]
        merged[k] = agg if k not in merged else merged[k].merge(agg)
    out: dict[str, dict[str, Any]] = {}
    for (name, version, dclass), agg in sorted(merged.items()):
        reporters = agg.reporters()
        enough = reporters >= min_reporters
        report = drift(
            agg, _reference_for(references, agg), thresholds=thresholds, min_reporters=min_reporters
        )
        calls = agg.counters["calls"] + agg.counters["errors"]
        lat, conf = agg.slots["latency_ms"], agg.slots["confidence"]
        out[f"{name}@{version}/{dclass}"] = {
            "name": name,
            "version": version,
            "device_class": dclass,
            "reporters": reporters,
            "enough_reporters": enough,
            "windows": agg.windows if enough else None,
            "rows": agg.counters["rows"] if enough else None,
            "latency_p50": lat.quantile(0.5) if enough and lat.n else None,
            "latency_p95": lat.quantile(0.95) if enough and lat.n else None,
            "confidence_p50": conf.quantile(0.5) if enough and conf.n else None,
            "confidence_kind": agg.confidence_kind,
            "error_rate": (agg.counters["errors"] / calls) if enough and calls else None,
            "canary_pass_rate": _rate(agg, "canary") if enough else None,
            "health_pass_rate": _rate(agg, "health") if enough else None,
            "temperature_c_mean": _mean(agg, "temperature_c") if enough else None,
            "throttled_share": _mean(agg, "throttled") if enough else None,
            "battery_pct_mean": _mean(agg, "battery_pct") if enough else None,
            "drift_psi": report.drift_psi,
            "drift": report.verdict,
        }
    return out
