"""The rule that turns the edge side and the cloud side into one recommendation.

Invariants a caller can rely on:

- Constraints come first (offline, privacy, fit, the device keeping up), then the latency
  target, then cost at the given number of users; a cost tie goes to the edge.
- When both meet the target on a phone with a high battery or thermal risk, the answer is
  "hybrid"; when only the privacy constraint keeps the cloud out and the device falls short, it
  is "hybrid" (split the model) with `meets_all` False.
- When the side recommended costs more than the other at the given users (latency, a constraint
  or `--force` decided), the last reason says so with both monthly costs.
- `--force` always wins; the reasons then start with "forced by --force ..." and `meets_all`
  says whether the forced side meets its constraints and target (for hybrid: whether either side
  is unblocked).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeforge.decide._breakeven import Costs

__all__ = ["recommend"]


def recommend(
    edge: dict[str, Any],
    cloud: dict[str, Any],
    costs: Costs,
    users: int,
    target: float,
    force: str | None,
) -> tuple[str, bool, list[str]]:
    """(recommendation, meets_all, reasons): the fields of the same names in `Decision`."""
    choice, meets_all, reasons = _rule(edge, cloud, costs, users, target, force)
    edge_cost, cloud_cost = costs.edge(users), costs.cloud(users)
    dearer = {"edge": (edge_cost, cloud_cost, "cloud"), "cloud": (cloud_cost, edge_cost, "edge")}
    if choice in dearer:
        own, other, other_name = dearer[choice]
        if own > other:
            reasons.append(
                f"{choice} costs more: ${own:,.2f}/month against the {other_name}'s "
                f"${other:,.2f} at {users} users; {_decided_by(reasons)}"
            )
    return choice, meets_all, reasons


def _decided_by(reasons: list[str]) -> str:
    if reasons and reasons[0].startswith("forced by"):
        return "--force decides"
    if any("misses the" in why for why in reasons):
        return "latency decides"
    return "a constraint decides"


def _rule(
    edge: dict[str, Any],
    cloud: dict[str, Any],
    costs: Costs,
    users: int,
    target: float,
    force: str | None,
) -> tuple[str, bool, list[str]]:
    """The rule of the module docstring, before the cost note."""
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
