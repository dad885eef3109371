"""`edgeforge monitor`'s JSON shape and its text rendering (the CLI verb wires them to the server).

JSON shape (format 1), what `monitor --json` prints and `/v1/admin/monitor` may return:

    {"format": 1, "min_reporters": 10, "thresholds": {"psi", "ks", "js"},
     "versions": [{"name", "version", "device_class", "reporters", "enough_reporters",
                   "windows", "rows", "latency_p50", "latency_p95", "confidence_p50",
                   "confidence_kind", "error_rate", "canary_pass_rate", "health_pass_rate",
                   "temperature_c_mean", "throttled_share", "battery_pct_mean", "drift_psi",
                   "drift",
                   "days": [{"day", "reporters", "drift", "drift_psi", "classes_js",
                             "reasons": [...]}]}]}

Every figure is null where fewer than `min_reporters` devices reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from edgeforge.fleet.monitor.aggregate import Aggregate, Reference
from edgeforge.fleet.monitor.drift import (
    DEFAULT_THRESHOLDS,
    MIN_REPORTERS,
    Thresholds,
    _reference_for,
    drift,
    gate_metrics,
)

__all__ = ["monitor_summary", "render_monitor_text"]


def monitor_summary(
    aggregates: Iterable[Aggregate],
    references: Mapping[Any, Reference] | None = None,
    *,
    model: str | None = None,
    min_reporters: int = MIN_REPORTERS,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """The monitor's JSON object: per version × class the gate metrics over all days given, and
    the drift verdict of each day."""
    aggs = [a for a in aggregates if model is None or a.name == model]
    metrics = gate_metrics(aggs, references, min_reporters=min_reporters, thresholds=thresholds)
    versions = []
    for key, row in metrics.items():
        days = []
        for agg in sorted(
            (a for a in aggs if f"{a.name}@{a.version}/{a.device_class}" == key),
            key=lambda a: a.day,
        ):
            rep = drift(
                agg,
                _reference_for(references, agg),
                thresholds=thresholds,
                min_reporters=min_reporters,
            )
            days.append(
                {
                    "day": agg.day,
                    "reporters": rep.reporters,
                    "drift": rep.verdict,
                    "drift_psi": rep.drift_psi,
                    "classes_js": rep.classes_js,
                    "reasons": rep.reasons,
                }
            )
        versions.append({**row, "days": days})
    return {
        "format": 1,
        "min_reporters": min_reporters,
        "thresholds": asdict(thresholds),
        "versions": versions,
    }


def _num(v: Any, fmt: str = "{:.3g}") -> str:
    return "-" if v is None else fmt.format(v)


def render_monitor_text(summary: Mapping[str, Any]) -> str:
    """A terminal table of `monitor_summary`, one line per version × class, then its days."""
    lines = [
        f"{'model':<24} {'class':<12} {'devices':>7} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'conf p50':>8} {'errors':>7} {'psi':>6}  drift"
    ]
    for v in summary.get("versions", []):
        err = None if v.get("error_rate") is None else 100 * v["error_rate"]
        lines.append(
            f"{v['name'] + '@' + str(v['version']):<24} {v['device_class']:<12} "
            f"{v['reporters']:>7} {_num(v.get('latency_p50')):>8} "
            f"{_num(v.get('latency_p95')):>8} {_num(v.get('confidence_p50')):>8} "
            f"{_num(err, '{:.1f}%'):>7} {_num(v.get('drift_psi'), '{:.3f}'):>6}  {v['drift']}"
        )
        for d in v.get("days", []):
            why = f"  ({'; '.join(d['reasons'])})" if d.get("reasons") else ""
            lines.append(
                f"  {d['day'] or 'all days':<22} {'':<12} {d['reporters']:>7} {'':>8} {'':>8} "
                f"{'':>8} {'':>7} {_num(d.get('drift_psi'), '{:.3f}'):>6}  {d['drift']}{why}"
            )
    if not summary.get("versions"):
        lines.append("(no telemetry yet)")
    lines.append(
        f"figures shown only where at least {summary.get('min_reporters', MIN_REPORTERS)} "
        "devices reported"
    )
    return "\n".join(lines)
