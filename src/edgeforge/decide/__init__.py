"""`decide`: run a model on the edge device, in the cloud, or both (hybrid)?

`decide(model, device, ...)` compares, for one workload, the device (the calibrated roofline of
`estimate`) with a priced cloud instance reached over a network profile, and returns a `Decision`
whose `to_dict()` is the JSON contract of `edgeforge decide`. Invariants a caller can rely on:

- Every price and default comes from the data files in `decide/data/` (or a `--prices` file),
  each with a tag and a source; `Decision.assumptions` lists the ones used.
- Cloud latency = upload (payload) + round trip + download (response) + queueing at the peak
  rate (Erlang C over the autoscaled instances) + inference on the server (a full batch).
- Cost per month: edge = users x (hardware / amortisation months + electricity) for a dedicated
  device, 0 on the users' own phones, laptops or browsers; cloud = hourly price x hours a month x
  max(min_instances, mean rate / (per-instance throughput x target utilisation)), i.e. autoscaled
  instance-hours at the mean rate with a warm floor.
- The recommendation follows one rule (`_recommend`): constraints first (offline, privacy, fit,
  the device keeping up), then the latency target, then cost (a tie goes to the edge). The
  cross-over points it reports are where that rule flips: `crossovers.users` (cost) and
  `crossovers.uplink_mbps` (latency).
- Contradictory options raise EdgeforgeError in one line naming the option to change.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeforge.decide._data import DecideData, load_data
from edgeforge.decide.cloud import CloudInstance, get_cloud_instance, list_cloud_instances
from edgeforge.decide.network import Network, get_network, parse_network_spec
from edgeforge.decide.queueing import erlang_c, instances_needed, mean_wait_s
from edgeforge.devices import Device, Figure
from edgeforge.errors import EdgeforgeError

if TYPE_CHECKING:
    from edgeforge.analysis.profile import Profile

__all__ = [
    "CloudInstance",
    "Decision",
    "Network",
    "decide",
    "erlang_c",
    "get_cloud_instance",
    "get_network",
    "list_cloud_instances",
    "mean_wait_s",
    "parse_bytes",
    "parse_network_spec",
]

PRIVACY = ("none", "sensitive")
CHOICES = ("edge", "cloud", "hybrid")
_USERS_OWN = ("phone", "laptop", "browser")
_BYTES = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20}
_DTYPE_BYTES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}


def parse_bytes(text: str | int | float, option: str = "--payload") -> int:
    """'2048', '150KB', '1.5MB', '64KiB' -> bytes (KB = 1000, KiB = 1024); above 0."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _BYTES:
            raise EdgeforgeError(f"{option}: cannot read {text!r}; write bytes like 2048 or 150KB")
        value = float(match.group(1)) * _BYTES[unit]
    if not value > 0:
        raise EdgeforgeError(f"{option} must be above 0 bytes (got {text!r})")
    return math.ceil(value)


def _tensor_bytes(specs: list[dict[str, Any]]) -> int:
    total = 0
    for spec in specs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in (spec.get("shape") or [])]
        total += math.prod(shape) * _DTYPE_BYTES.get(str(spec.get("dtype")), 4)
    return total


@dataclass
class Decision:
    """What `decide` found; `to_dict()` is the JSON contract."""

    model: str
    device: dict[str, Any]
    network: dict[str, Any]
    cloud_instance: dict[str, Any]
    workload: dict[str, Any]
    edge: dict[str, Any]
    cloud: dict[str, Any]
    recommendation: str
    meets_all: bool
    reasons: list[str]
    crossovers: dict[str, Any]
    rows: list[dict[str, str]]
    curves: dict[str, Any]
    assumptions: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _profile_of(model: Any, shapes: dict[str, tuple[int, ...]] | None) -> Profile:
    from edgeforge.analysis.profile import Profile, inspect

    if isinstance(model, Profile):
        return model
    return inspect(model, shapes=shapes)


def _positive(value: float, option: str, example: str) -> float:
    if isinstance(value, bool) or not value > 0 or math.isinf(value):
        raise EdgeforgeError(f"{option} must be above 0 (got {value}); e.g. {option} {example}")
    return float(value)


@dataclass(frozen=True)
class _Costs:
    """Monthly cost as a function of users, at one per-user request rate."""

    edge_per_user: float  # USD per user per month
    cloud_floor: float  # USD per month for min_instances
    cloud_per_user: float  # USD per user per month at the mean rate, autoscaled

    def edge(self, users: float) -> float:
        return users * self.edge_per_user

    def cloud(self, users: float) -> float:
        return max(self.cloud_floor, users * self.cloud_per_user)

    def users_crossover(self) -> tuple[float | None, str]:
        """(users, where edge is cheaper): 'below' / 'above' users, 'always' or 'never'."""
        e, a, floor = self.edge_per_user, self.cloud_per_user, self.cloud_floor
        if e <= a:
            return None, "always"  # edge <= cloud at every user count
        if floor <= 0:
            return None, "never"
        return floor / e, "below"


def decide(
    model: Any,
    device: str | Device,
    *,
    network: str | Network | None = None,
    payload: str | int | None = None,
    response: str | int | None = None,
    requests_per_day: float | None = None,
    users: int | None = None,
    privacy: str = "none",
    offline_required: bool = False,
    max_latency_ms: float | None = None,
    cloud_instance: str | CloudInstance | None = None,
    runtime: str | None = None,
    precision: str = "fp32",
    force: str | None = None,
    prices: str | Path | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> Decision:
    """Edge, cloud or hybrid for `model` (a Profile or anything `inspect` takes) on `device`.

    `requests_per_day` is per user (one device per user); `payload`/`response` are bytes per
    request (default: the model's input / output tensors, raw); `privacy` "sensitive" means the
    input must not leave the device; `force` pins the recommendation (edge, cloud, hybrid) and is
    refused when it contradicts a constraint. Other unset options come from defaults.toml.
    """
    from edgeforge.devices import get_device
    from edgeforge.estimator import estimate

    data = load_data(prices)
    dflt = data.defaults
    if privacy not in PRIVACY:
        raise EdgeforgeError(f"--privacy {privacy!r}: use one of {', '.join(PRIVACY)}")
    if force is not None and force not in CHOICES:
        raise EdgeforgeError(f"--force {force!r}: use one of {', '.join(CHOICES)}")
    net = get_network(network if network is not None else data.choices["network"].value, data)
    _check_contradictions(force, net, offline_required, privacy)
    rpd = _positive(
        requests_per_day if requests_per_day is not None else dflt["requests_per_day"].value,
        "--requests-per-day",
        "500",
    )
    n_users = users if users is not None else int(dflt["users"].value)
    if isinstance(n_users, bool) or not isinstance(n_users, int) or n_users < 1:
        raise EdgeforgeError(f"--users must be a whole number of at least 1 (got {n_users!r})")
    target = _positive(
        max_latency_ms if max_latency_ms is not None else dflt["max_latency_ms"].value,
        "--max-latency",
        "100",
    )
    instance = get_cloud_instance(
        cloud_instance if cloud_instance is not None else data.choices["cloud_instance"].value,
        data,
    )
    target_device = device if isinstance(device, Device) else get_device(device)
    profile = _profile_of(model, shapes)
    request_bytes = parse_bytes(payload) if payload is not None else _tensor_bytes(profile.inputs)
    response_bytes = (
        parse_bytes(response, "--response")
        if response is not None
        else _tensor_bytes(profile.outputs)
    )
    notes: list[str] = []
    if payload is None:
        notes.append(
            "payload = the model's raw input tensors; an app that uploads a compressed image "
            "sends less: pass --payload"
        )

    # --- edge
    est = estimate(profile, target_device, runtime=runtime, precision=precision)
    edge = _edge_side(est, target_device, data, rpd, n_users, target, notes)
    if force == "edge" and edge["blocked"]:
        raise EdgeforgeError(
            f"--force edge: {edge['blocked'][0]}; choose a larger device or a lower precision"
        )

    # --- cloud
    cloud_est = instance.estimate(profile, precision=precision)
    batch_est = instance.estimate(profile, precision=precision, batch=instance.batch_size)
    cloud = _cloud_side(
        instance,
        cloud_est.latency_ms,
        batch_est.latency_ms,
        net,
        data,
        rpd,
        n_users,
        target,
        request_bytes,
        response_bytes,
        privacy,
        offline_required,
    )
    if cloud_est.ram.fits is False:
        cloud["blocked"].append(f"the model does not fit {instance.id}'s memory")
        cloud["meets_target"] = False

    costs = _Costs(
        edge["per_user_month_usd"], cloud["floor_month_usd"], cloud["per_user_month_usd"]
    )
    recommendation, meets_all, reasons = _recommend(edge, cloud, costs, n_users, target, force)
    crossovers = _crossovers(costs, cloud, net, request_bytes, target)
    assumptions = {
        **{key: fig.to_dict() for key, fig in dflt.items()},
        **{key: choice.to_dict() for key, choice in data.choices.items()},
        f"edge_hardware_usd.{target_device.id}": edge["hardware_figure"],
        "prices": {"value": data.origin, "tag": "policy", "source": "files read"},
    }
    workload = {
        "payload_bytes": request_bytes,
        "payload_from": "--payload" if payload is not None else "model input tensors (raw)",
        "response_bytes": response_bytes,
        "requests_per_day_per_user": rpd,
        "users": n_users,
        "privacy": privacy,
        "offline_required": offline_required,
        "max_latency_ms": target,
        "force": force,
        "precision": precision,
    }
    decision = Decision(
        model=str(profile.model.get("provenance", {}).get("source") or profile.model.get("path")),
        device={"id": target_device.id, "name": target_device.name, "kind": target_device.kind},
        network=net.to_dict(),
        cloud_instance=instance.to_dict(),
        workload=workload,
        edge=edge,
        cloud=cloud,
        recommendation=recommendation,
        meets_all=meets_all,
        reasons=reasons,
        crossovers=crossovers,
        rows=[],
        curves=_curves(costs, cloud, net, request_bytes, n_users, crossovers, edge, target),
        assumptions=assumptions,
        notes=notes + est.notes,
    )
    decision.rows = _rows(decision)
    return decision


def _check_contradictions(
    force: str | None, net: Network, offline_required: bool, privacy: str
) -> None:
    if force not in ("cloud", "hybrid"):
        return
    if offline_required:
        raise EdgeforgeError(
            f"--offline-required contradicts --force {force}: the cloud needs a network; "
            f"drop one of them (or use --force edge)"
        )
    if net.offline:
        raise EdgeforgeError(
            f"--network offline contradicts --force {force}: the cloud cannot be reached; "
            "pass a network profile (e.g. --network 4g) or drop --force"
        )
    if force == "cloud" and privacy == "sensitive":
        raise EdgeforgeError(
            "--privacy sensitive contradicts --force cloud: the input would leave the device; "
            "use --force hybrid (only features leave) or --privacy none"
        )


def _edge_side(
    est: Any,
    device: Device,
    data: DecideData,
    rpd: float,
    users: int,
    target: float,
    notes: list[str],
) -> dict[str, Any]:
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


def _queue(
    instance: CloudInstance, batch_ms: float, rate_per_s: float, data: DecideData
) -> tuple[int, float, float]:
    """(instances at this rate, mean wait ms, utilisation) for an autoscaled fleet."""
    dflt = data.defaults
    per_server = 1000 / batch_ms
    per_instance = per_server * instance.batch_size
    count = instances_needed(
        rate_per_s, per_instance, dflt["target_utilisation"].value, int(dflt["min_instances"].value)
    )
    wait = mean_wait_s(rate_per_s, per_server, count * instance.batch_size) * 1000
    return count, wait, rate_per_s / (count * per_instance)


def _cloud_side(
    instance: CloudInstance,
    server_ms: float,
    batch_ms: float,
    net: Network,
    data: DecideData,
    rpd: float,
    users: int,
    target: float,
    request_bytes: int,
    response_bytes: int,
    privacy: str,
    offline_required: bool,
) -> dict[str, Any]:
    dflt = data.defaults
    hours = dflt["hours_per_month"].value
    hourly = instance.hourly_usd.value
    per_instance = 1000 / batch_ms * instance.batch_size
    mean_rate = users * rpd / 86400
    peak_rate = mean_rate * dflt["peak_to_mean"].value
    count, wait_ms, utilisation = _queue(instance, batch_ms, peak_rate, data)
    util_target = dflt["target_utilisation"].value
    floor = hourly * hours * dflt["min_instances"].value
    per_user = hourly * hours * rpd / 86400 / (per_instance * util_target)
    blocked: list[str] = []
    if offline_required:
        blocked.append("--offline-required: the cloud needs a network")
    if net.offline:
        blocked.append("the network is offline")
    if privacy == "sensitive":
        blocked.append("--privacy sensitive: the input must not leave the device")
    upload = net.upload_ms(request_bytes) if not net.offline else None
    download = net.download_ms(response_bytes) if not net.offline else None
    latency = None if net.offline else upload + net.rtt_ms + download + wait_ms + batch_ms
    return {
        "instance": instance.id,
        "available": not net.offline and not offline_required,
        "blocked": blocked,
        "upload_ms": upload,
        "rtt_ms": None if net.offline else net.rtt_ms,
        "download_ms": download,
        "queue_ms": wait_ms,
        "server_ms": server_ms,
        "inference_ms": batch_ms,
        "batch": instance.batch_size,
        "latency_ms": latency,
        "meets_target": latency is not None and latency <= target,
        "throughput_per_instance_per_s": per_instance,
        "mean_rate_per_s": mean_rate,
        "peak_rate_per_s": peak_rate,
        "instances_at_peak": count,
        "instances_mean": max(
            dflt["min_instances"].value, mean_rate / (per_instance * util_target)
        ),
        "utilisation_at_peak": utilisation,
        "hourly_usd": hourly,
        "floor_month_usd": floor,
        "per_user_month_usd": per_user,
        "cost_month_usd": max(floor, per_user * users),
        "bytes_leaving_per_day_per_user": request_bytes * rpd,
    }


def _recommend(
    edge: dict[str, Any],
    cloud: dict[str, Any],
    costs: _Costs,
    users: int,
    target: float,
    force: str | None,
) -> tuple[str, bool, list[str]]:
    edge_ok = edge["meets_target"]
    cloud_ok = cloud["meets_target"] and not cloud["blocked"]
    reasons: list[str] = []
    for why in edge["blocked"]:
        reasons.append(f"edge: {why}")
    if not edge["blocked"] and not edge_ok:
        reasons.append(f"edge: {edge['latency_ms']:.3g} ms misses the {target:.4g} ms target")
    for why in cloud["blocked"]:
        reasons.append(f"cloud: {why}")
    if cloud["latency_ms"] is not None and not cloud["meets_target"]:
        reasons.append(f"cloud: {cloud['latency_ms']:.3g} ms misses the {target:.4g} ms target")
    edge_cost, cloud_cost = costs.edge(users), costs.cloud(users)
    if force is not None:
        return (
            force,
            _meets(force, edge_ok, cloud_ok, edge, cloud),
            [f"forced by --force {force}", *reasons],
        )
    if edge_ok and cloud_ok:
        if edge["phone"] and "high" in (edge["battery_risk"], edge["thermal_risk"]):
            reasons.append(
                "both meet the target, but the phone runs a battery or thermal risk: run on the "
                "device while it is cool and charged, in the cloud otherwise"
            )
            return "hybrid", True, reasons
        if edge_cost <= cloud_cost:
            reasons.append(
                f"both meet the target; edge costs ${edge_cost:,.2f}/month against the cloud's "
                f"${cloud_cost:,.2f} at {users} users"
            )
            return "edge", True, reasons
        reasons.append(
            f"both meet the target; cloud costs ${cloud_cost:,.2f}/month against the edge's "
            f"${edge_cost:,.2f} at {users} users"
        )
        return "cloud", True, reasons
    if edge_ok:
        reasons.append("only the edge meets every constraint and the latency target")
        return "edge", True, reasons
    if cloud_ok:
        reasons.append("only the cloud meets every constraint and the latency target")
        return "cloud", True, reasons
    only_privacy = cloud["available"] and all("--privacy" in why for why in cloud["blocked"])
    if only_privacy and cloud["blocked"]:
        reasons.append(
            "the device alone falls short and the raw input may not leave it: split the model "
            "(first layers on the device, features to the cloud; see `edgeforge split`)"
        )
        return "hybrid", False, reasons
    if not cloud["available"]:
        reasons.append(
            "no network is allowed or available: the edge is the only option, short of its target"
        )
        return "edge", False, reasons
    if edge["blocked"] or (
        cloud["latency_ms"] is not None and cloud["latency_ms"] < edge["latency_ms"]
    ):
        reasons.append("neither meets the target; the cloud comes closer")
        return "cloud", False, reasons
    reasons.append("neither meets the target; the edge comes closer")
    return "edge", False, reasons


def _meets(choice: str, edge_ok: bool, cloud_ok: bool, edge: dict, cloud: dict) -> bool:
    if choice == "edge":
        return edge_ok
    if choice == "cloud":
        return cloud_ok
    return not edge["blocked"] or not cloud["blocked"]


def _crossovers(
    costs: _Costs, cloud: dict[str, Any], net: Network, request_bytes: int, target: float
) -> dict[str, Any]:
    users, edge_cheaper = costs.users_crossover()
    if edge_cheaper == "always":
        users_text = "the edge costs no more than the cloud at any number of users"
    elif edge_cheaper == "never":
        users_text = "the cloud (scaled to zero) costs less than the edge at any number of users"
    else:
        users_text = (
            f"the edge is cheaper below {users:,.1f} users, the cloud above "
            f"(cloud floor ${costs.cloud_floor:,.2f}/month / edge ${costs.edge_per_user:,.2f} "
            "per user per month)"
        )
    uplink = None
    if net.offline:
        uplink_text = "the network is offline: no bandwidth reaches the cloud"
    else:
        fixed = net.rtt_ms + cloud["download_ms"] + cloud["queue_ms"] + cloud["inference_ms"]
        budget_ms = target - fixed
        if budget_ms <= 0:
            uplink_text = (
                f"the cloud misses the target at any uplink: round trip, download, queue and "
                f"server already take {fixed:.1f} ms"
            )
        else:
            uplink = request_bytes * 8 / (1e6 * (1 - net.loss)) / (budget_ms / 1000)
            uplink_text = (
                f"below {uplink:.3g} Mbit/s uplink the cloud misses the {target:.4g} ms target "
                f"({request_bytes:,} bytes in the {budget_ms:.1f} ms left after "
                f"{fixed:.1f} ms of round trip, download, queue and server)"
            )
    return {
        "users": users,
        "edge_cheaper": edge_cheaper,
        "users_text": users_text,
        "uplink_mbps": uplink,
        "uplink_text": uplink_text,
    }


def _log_grid(low: float, high: float, count: int) -> list[float]:
    ratio = (high / low) ** (1 / (count - 1))
    return [low * ratio**i for i in range(count)]


def _curves(
    costs: _Costs,
    cloud: dict[str, Any],
    net: Network,
    request_bytes: int,
    users: int,
    crossovers: dict[str, Any],
    edge: dict[str, Any],
    target: float,
) -> dict[str, Any]:
    top = max(users, crossovers["users"] or 1) * 10
    grid = sorted({max(1, round(u)) for u in _log_grid(1, top, 40)})
    cost = [{"users": u, "edge_usd": costs.edge(u), "cloud_usd": costs.cloud(u)} for u in grid]
    latency = []
    if not net.offline:
        fixed = net.rtt_ms + cloud["download_ms"] + cloud["queue_ms"] + cloud["inference_ms"]
        for mbps in _log_grid(0.05, 1000, 50):
            upload = request_bytes * 8 / (mbps * 1e6) * 1000 / (1 - net.loss)
            latency.append({"uplink_mbps": mbps, "cloud_ms": upload + fixed})
    return {
        "cost_vs_users": cost,
        "latency_vs_uplink": latency,
        "users": users,
        "uplink_mbps": None if net.offline else net.uplink_mbps,
        "edge_latency_ms": edge["latency_ms"],
        "max_latency_ms": target,
        "users_crossover": crossovers["users"],
        "uplink_crossover": crossovers["uplink_mbps"],
    }


def _mb(value: float | None) -> str:
    from edgeforge.report.html import human_bytes

    return human_bytes(value) if value is not None else "unknown"


def _pct(fraction: float) -> str:
    return "<0.01%" if 0 < fraction < 1e-4 else f"{fraction * 100:.3g}%"


def _rows(d: Decision) -> list[dict[str, str]]:
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
            f"download {c['download_ms']:.1f} + queue {c['queue_ms']:.2f} + server "
            f"{c['inference_ms']:.2f}; {mark(c['latency_ms'] <= target)} {target:.4g} ms"
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
