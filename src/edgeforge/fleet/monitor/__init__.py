"""Server side of fleet telemetry: merge device windows, test drift, feed the rollout gates.

    aggs = aggregate_windows([(device_id, payload_b64), ...])     # per version × class × day
    ref = reference_from_data(outputs, inputs)                      # at release time
    report = drift(aggs[key], ref, min_reporters=10)                # "drift" | "ok" | ...
    gate_metrics(aggs.values(), {(name, version): ref})             # latency_p95, drift_psi, ...
    print(render_monitor_text(monitor_summary(aggs.values(), refs)))

Imports numpy and datasketches only (and the device-side `edgeforge.fleet.telemetry`).
"""

from __future__ import annotations

from edgeforge.fleet.monitor.aggregate import (
    Aggregate,
    LogHistogram,
    Reference,
    aggregate_windows,
    day_of,
    reference_from_data,
)
from edgeforge.fleet.monitor.drift import (
    MIN_REPORTERS,
    DriftReport,
    Thresholds,
    drift,
    gate_metrics,
    js_distance,
    ks_distance,
    ks_raw,
    psi,
    psi_raw,
)
from edgeforge.fleet.monitor.render import monitor_summary, render_monitor_text

__all__ = [
    "MIN_REPORTERS",
    "Aggregate",
    "DriftReport",
    "LogHistogram",
    "Reference",
    "Thresholds",
    "aggregate_windows",
    "day_of",
    "drift",
    "gate_metrics",
    "js_distance",
    "ks_distance",
    "ks_raw",
    "monitor_summary",
    "psi",
    "psi_raw",
    "reference_from_data",
    "render_monitor_text",
]
