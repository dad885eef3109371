"""The edge side of a decision: the device's latency, whether it can run the model at all, and
what it costs a month.

Invariants a caller can rely on:

- Cost per user per month = hardware / amortisation months + electricity for a dedicated device
  (one with a hardware price above 0). A phone, laptop or browser with no hardware price is the
  users' own device and costs 0; any other device with no hardware price is refused, naming the
  `--prices` entry to add. A dedicated device that states no power gets a note, not a made-up
  figure.
- `blocked` lists, in words, each constraint the device breaks: RAM, size budget, or not keeping
  up (busy 100% or more at the peak rate); `meets_target` is False whenever `blocked` is not
  empty.
- Battery share and the battery / thermal risks are computed for phones only, None otherwise.
"""

from __future__ import annotations

from typing import Any

from edgeforge.decide._data import DecideData
from edgeforge.devices import Device, Figure
from edgeforge.errors import EdgeforgeError

__all__ = ["edge_side"]

_USERS_OWN = ("phone", "laptop", "browser")


def edge_side(
    est: Any,
    device: Device,
    data: DecideData,
    rpd: float,
    users: int,
    target: float,
    notes: list[str],
) -> dict[str, Any]:
    """The device's figures for this workload (`Decision.edge`); may append to `notes`."""
    dflt = data.defaults
    hardware = data.hardware_usd.get(device.id)
    if hardware is None:
        if device.kind in _USERS_OWN:
            hardware = Figure(0.0, "policy", "the users' own device: no hardware to buy")
        else:
            raise EdgeforgeError(
                f"no hardware price for device {device.id!r}; add it under [edge_hardware_usd] "
                f"in a --prices file (e.g. {device.id} = 300)"
            )
    dedicated = hardware.value > 0
    energy_month = 0.0
    if dedicated:
        if device.power_w is not None:
            energy_month = (
                device.power_w.value
                / 1000
                * dflt["hours_per_month"].value
                * dflt["electricity_usd_per_kwh"].value
            )
        else:
            notes.append(f"{device.id} states no power: its electricity is not counted")
    per_user = hardware.value / dflt["amortisation_months"].value + energy_month
    peak_rate = rpd / 86400 * dflt["peak_to_mean"].value
    duty = peak_rate * est.latency_ms / 1000
    blocked: list[str] = []
    if est.ram.fits is False:
        blocked.append(f"the model needs {est.ram.short_bytes / 1e6:.1f} MB more than its RAM")
    if est.size_budget.fits is False:
        blocked.append(
            f"the weights exceed its size budget by {est.size_budget.short_bytes / 1e6:.1f} MB"
        )
    if duty >= 1:
        blocked.append(
            f"it cannot keep up: {peak_rate:.3g} requests/s at peak x {est.latency_ms:.3g} ms "
            f"= {duty:.0%} busy"
        )
    phone = device.kind == "phone"
    battery_share = battery_risk = thermal_risk = None
    if phone:
        power = device.power_w.value if device.power_w else dflt["phone_power_w"].value
        wh_per_day = rpd * est.latency_ms / 1000 * power / 3600
        battery_share = wh_per_day / dflt["phone_battery_wh"].value
        battery_risk = "high" if battery_share >= dflt["battery_share_high"].value else "low"
        thermal_risk = "high" if duty >= dflt["duty_high"].value else "low"
    return {
        "device": device.id,
        "unit": est.unit,
        "latency_ms": est.latency_ms,
        "latency_low_ms": est.latency_low_ms,
        "latency_high_ms": est.latency_high_ms,
        "meets_target": est.latency_ms <= target and not blocked,
        "blocked": blocked,
        "fits_ram": est.ram.fits,
        "fits_size_budget": est.size_budget.fits,
        "weight_bytes": est.weight_bytes,
        "peak_memory_bytes": est.peak_memory_bytes,
        "size_budget_bytes": est.size_budget.limit_bytes,
        "duty_at_peak": duty,
        "headroom": max(0.0, 1 - duty),
        "phone": phone,
        "battery_share_per_day": battery_share,
        "battery_risk": battery_risk,
        "thermal_risk": thermal_risk,
        "dedicated": dedicated,
        "hardware_usd": hardware.value,
        "hardware_figure": hardware.to_dict(),
        "energy_month_usd_per_device": energy_month,
        "per_user_month_usd": per_user,
        "cost_month_usd": per_user * users,
        "one_time_usd": hardware.value * users,
    }
