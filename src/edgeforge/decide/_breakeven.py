"""Where edge and cloud break even: the users at which their monthly costs cross, the uplink
below which the cloud misses the latency target, and the curves around both points.

Invariants a caller can rely on:

- `Costs` is linear in users for the edge (users x per-user cost) and a floor then linear for the
  cloud (max(floor, users x per-user cost)); every figure here is derived from it, so the
  reported cross-over is exactly where `Costs.edge` and `Costs.cloud` swap order.
- The uplink cross-over charges the payload at the link's goodput (rate x (1 - loss)), the same
  formula as `Network.upload_ms`, against the target less round trip, download, queue, batching
  and server.
- Each cross-over is None, with a sentence saying why, when there is no finite point.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeforge.decide.network import Network

__all__ = ["Costs", "crossover_points", "curves"]


@dataclass(frozen=True)
class Costs:
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


def crossover_points(
    costs: Costs, cloud: dict[str, Any], net: Network, request_bytes: int, target: float
) -> dict[str, Any]:
    """`Decision.crossovers`: the users and uplink cross-overs, each with a sentence."""
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
        fixed = _fixed_ms(net, cloud)
        budget_ms = target - fixed
        if budget_ms <= 0:
            uplink_text = (
                f"the cloud misses the target at any uplink: round trip, download, queue, "
                f"batching and server already take {fixed:.1f} ms"
            )
        else:
            uplink = request_bytes * 8 / (1e6 * (1 - net.loss)) / (budget_ms / 1000)
            uplink_text = (
                f"below {uplink:.3g} Mbit/s uplink the cloud misses the {target:.4g} ms target "
                f"({request_bytes:,} bytes in the {budget_ms:.1f} ms left after "
                f"{fixed:.1f} ms of round trip, download, queue, batching and server)"
            )
    return {
        "users": users,
        "edge_cheaper": edge_cheaper,
        "users_text": users_text,
        "uplink_mbps": uplink,
        "uplink_text": uplink_text,
    }


def _fixed_ms(net: Network, cloud: dict[str, Any]) -> float:
    """The cloud latency that does not depend on the uplink: round trip, download, queue, the
    wait for the batch, server."""
    waits = cloud["queue_ms"] + cloud["batch_wait_ms"]
    return net.rtt_ms + cloud["download_ms"] + waits + cloud["inference_ms"]


def _log_grid(low: float, high: float, count: int) -> list[float]:
    ratio = (high / low) ** (1 / (count - 1))
    return [low * ratio**i for i in range(count)]


def curves(
    costs: Costs,
    cloud: dict[str, Any],
    net: Network,
    request_bytes: int,
    users: int,
    crossovers: dict[str, Any],
    edge: dict[str, Any],
    target: float,
) -> dict[str, Any]:
    """`Decision.curves`: cost against users and cloud latency against uplink, for plots."""
    top = max(users, crossovers["users"] or 1) * 10
    grid = sorted({max(1, round(u)) for u in _log_grid(1, top, 40)})
    cost = [{"users": u, "edge_usd": costs.edge(u), "cloud_usd": costs.cloud(u)} for u in grid]
    latency = []
    if not net.offline:
        fixed = _fixed_ms(net, cloud)
        for mbps in _log_grid(0.05, 1000, 50):
            upload = dataclasses.replace(net, uplink_mbps=mbps).upload_ms(request_bytes)
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
