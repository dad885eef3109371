"""The comparison table of a `Decision` as plain text: one row per aspect, edge against cloud.

Invariants a caller can rely on:

- Each row is `{"aspect", "edge", "cloud"}` with plain-text (no markup) values; the aspects are
  latency, cost, offline, privacy, size fit and compute headroom, plus battery / thermal on a
  phone, in that order.
- Rows only format figures already in the decision (and compare latencies with the target).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeforge.decide._decision import Decision

__all__ = ["comparison_rows"]


def _mb(value: float | None) -> str:
    from edgeforge.report.html import human_bytes

    return human_bytes(value) if value is not None else "unknown"


def _pct(fraction: float) -> str:
    return "<0.01%" if 0 < fraction < 1e-4 else f"{fraction * 100:.3g}%"


def comparison_rows(d: Decision) -> list[dict[str, str]]:
    """The comparison table: one row per aspect, edge against cloud, as plain text."""
    e, c, w = d.edge, d.cloud, d.workload
    target = w["max_latency_ms"]

    def mark(ok: bool) -> str:
        return "meets" if ok else "misses"

    edge_latency = (
        f"{e['latency_ms']:.2f} ms on {e['unit']} (band {e['latency_low_ms']:.2f}-"
        f"{e['latency_high_ms']:.2f}); {mark(e['latency_ms'] <= target)} {target:.4g} ms"
    )
    if c["latency_ms"] is None:
        cloud_latency = "unreachable: the network is offline"
    else:
        cloud_latency = (
            f"{c['latency_ms']:.1f} ms = upload {c['upload_ms']:.1f} + RTT {c['rtt_ms']:.0f} + "
            f"download {c['download_ms']:.1f} + queue {c['queue_ms']:.2f} + batching "
            f"{c['batch_wait_ms']:.2f} + server {c['inference_ms']:.2f} (batch of "
            f"{c['batch_filled']} of {c['batch']}); {mark(c['latency_ms'] <= target)} "
            f"{target:.4g} ms"
        )
    months = d.assumptions["amortisation_months"]["value"]
    if e["dedicated"]:
        edge_cost = (
            f"${e['per_user_month_usd'] * w['users']:,.2f}/month: ${e['hardware_usd']:,.0f} per "
            f"device x {w['users']:,} one-time over {months:.0f} months"
            + (
                f" + ${e['energy_month_usd_per_device']:.2f}/month power each"
                if e["energy_month_usd_per_device"]
                else ""
            )
        )
    else:
        edge_cost = "none: runs on the users' own devices"
    cloud_cost = (
        f"${c['cost_month_usd']:,.2f}/month at {w['users']:,} users: {c['instance']} "
        f"${c['hourly_usd']:.3f}/h x {c['instances_mean']:.2f} instances on average "
        f"({c['instances_at_peak']} at peak), autoscaled"
    )
    leaving = c["bytes_leaving_per_day_per_user"]
    ram = {True: "fits", False: "does not fit", None: "unknown"}[e["fits_ram"]]
    rows = [
        {"aspect": "latency", "edge": edge_latency, "cloud": cloud_latency},
        {"aspect": "cost", "edge": edge_cost, "cloud": cloud_cost},
        {
            "aspect": "offline",
            "edge": "works offline",
            "cloud": "needs the network"
            + (" (offline required)" if w["offline_required"] else "")
            + (" (network offline)" if d.network["offline"] else ""),
        },
        {
            "aspect": "privacy",
            "edge": "the input stays on the device",
            "cloud": f"every input leaves: {_mb(w['payload_bytes'])} a request, "
            f"{_mb(leaving)} a day per user"
            + (" (not allowed: sensitive)" if w["privacy"] == "sensitive" else ""),
        },
        {
            "aspect": "size fit",
            "edge": f"weights {_mb(e['weight_bytes'])} of a {_mb(e['size_budget_bytes'])} budget; "
            f"RAM: {ram}",
            "cloud": f"fits ({d.cloud_instance['memory_gb']['value']:.0f} GB on the server)",
        },
        {
            "aspect": "compute headroom",
            "edge": f"{_pct(e['duty_at_peak'])} busy at the peak rate "
            f"({_pct(e['headroom'])} headroom)",
            "cloud": f"{_pct(c['utilisation_at_peak'])} busy at peak on {c['instances_at_peak']} "
            f"instance(s) of {c['throughput_per_instance_per_s']:,.0f} requests/s",
        },
    ]
    if e["phone"]:
        rows.append(
            {
                "aspect": "battery / thermal",
                "edge": f"{_pct(e['battery_share_per_day'])} of the battery a day "
                f"({e['battery_risk']} risk); thermal risk {e['thermal_risk']}",
                "cloud": "radio only (upload and download)",
            }
        )
    return rows
