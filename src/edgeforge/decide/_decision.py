"""`decide(model, device, ...)`: gather one workload's figures for the edge and the cloud and
return them as a `Decision`.

`decide` compares, for one workload, the device (the calibrated roofline of `estimate`) with a
priced cloud instance reached over a network profile. Invariants a caller can rely on:

- `Decision.to_dict()` is the JSON contract of `edgeforge decide`.
- Every price and default comes from the data files in `decide/data/` (or a `--prices` file),
  each with a tag and a source; `Decision.assumptions` lists the ones used.
- The edge side is computed in `_edge_side`, the cloud side in `_cloud_side`, the recommendation
  by the one rule in `_recommend`, and the cross-over points (where that rule flips:
  `crossovers.users` for cost, `crossovers.uplink_mbps` for latency) in `_breakeven`.
- Contradictory options raise EdgeforgeError in one line naming the option to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeforge.decide._breakeven import Costs, crossover_points, curves
from edgeforge.decide._cloud_side import cloud_side
from edgeforge.decide._data import load_data
from edgeforge.decide._edge_side import edge_side
from edgeforge.decide._options import (
    CHOICES,
    PRIVACY,
    check_contradictions,
    parse_bytes,
    positive,
    tensor_bytes,
)
from edgeforge.decide._recommend import recommend
from edgeforge.decide._rows import comparison_rows
from edgeforge.decide.cloud import CloudInstance, get_cloud_instance
from edgeforge.decide.network import Network, get_network
from edgeforge.devices import Device
from edgeforge.errors import EdgeforgeError

if TYPE_CHECKING:
    from edgeforge.analysis.profile import Profile

__all__ = ["Decision", "decide"]


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
    check_contradictions(force, net, offline_required, privacy)
    rpd = positive(
        requests_per_day if requests_per_day is not None else dflt["requests_per_day"].value,
        "--requests-per-day",
        "500",
    )
    n_users = users if users is not None else int(dflt["users"].value)
    if isinstance(n_users, bool) or not isinstance(n_users, int) or n_users < 1:
        raise EdgeforgeError(f"--users must be a whole number of at least 1 (got {n_users!r})")
    target = positive(
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
    request_bytes = parse_bytes(payload) if payload is not None else tensor_bytes(profile.inputs)
    response_bytes = (
        parse_bytes(response, "--response")
        if response is not None
        else tensor_bytes(profile.outputs)
    )
    notes: list[str] = []
    if payload is None:
        notes.append(
            "payload = the model's raw input tensors; an app that uploads a compressed image "
            "sends less: pass --payload"
        )

    # --- edge
    est = estimate(profile, target_device, runtime=runtime, precision=precision)
    edge = edge_side(est, target_device, data, rpd, n_users, target, notes)
    if force == "edge" and edge["blocked"]:
        raise EdgeforgeError(
            f"--force edge: {edge['blocked'][0]}; choose a larger device or a lower precision"
        )

    # --- cloud
    cloud_est = instance.estimate(profile, precision=precision)
    batch_est = instance.estimate(profile, precision=precision, batch=instance.batch_size)

    def batch_time(requests: int) -> float:
        if requests == 1:
            return cloud_est.latency_ms
        if requests == instance.batch_size:
            return batch_est.latency_ms
        return instance.estimate(profile, precision=precision, batch=requests).latency_ms

    cloud = cloud_side(
        instance,
        cloud_est.latency_ms,
        batch_est.latency_ms,
        batch_time,
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

    costs = Costs(edge["per_user_month_usd"], cloud["floor_month_usd"], cloud["per_user_month_usd"])
    recommendation, meets_all, reasons = recommend(edge, cloud, costs, n_users, target, force)
    crossovers = crossover_points(costs, cloud, net, request_bytes, target)
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
        curves=curves(costs, cloud, net, request_bytes, n_users, crossovers, edge, target),
        assumptions=assumptions,
        notes=notes + est.notes,
    )
    decision.rows = comparison_rows(decision)
    return decision
