"""What hybrid pipelines need from a network and a cloud server: two small contracts.

`NetworkLike` has the fields of `edgeforge.decide`'s `Network`, so a decide profile can be passed
as it is. Cloud time is either per-node roofline times on a cloud-class `Device`, or any callable
`cloud_ms(start, stop)` that returns the server's time for nodes `[start, stop)` of the graph's
topological order.

The transfer model, which a caller can rely on:

    transfer_ms = rtt_ms + (up_bytes x 8 / uplink + down_bytes x 8 / downlink) / (1 - loss)

with links in Mbit/s (10**6 bits) and `loss` the share of packets lost: each lost packet is sent
again, so the payload takes 1 / (1 - loss) times as long on average. A link of 0 Mbit/s, or a
loss of 1, gives an infinite time (offline). Nothing is sent when nothing crosses: 0 ms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from edgeforge.errors import EdgeforgeError

__all__ = ["CloudNodeTimes", "NetworkLike", "check_network", "network_dict", "transfer_ms"]

CloudNodeTimes = Callable[[int, int], float]
"""Server milliseconds for nodes `[start, stop)` of the topological order."""


@runtime_checkable
class NetworkLike(Protocol):
    """A link between the device and the cloud (the fields of `edgeforge.decide.Network`)."""

    @property
    def rtt_ms(self) -> float: ...

    @property
    def uplink_mbps(self) -> float: ...

    @property
    def downlink_mbps(self) -> float: ...

    @property
    def loss(self) -> float: ...


def check_network(network: Any) -> NetworkLike:
    """`network` itself when its figures make sense; raises EdgeforgeError otherwise."""
    if not isinstance(network, NetworkLike):
        raise EdgeforgeError(
            f"{type(network).__name__} is not a network; pass an object with rtt_ms, "
            "uplink_mbps, downlink_mbps and loss (an edgeforge.decide Network)"
        )
    bad = [
        field
        for field in ("rtt_ms", "uplink_mbps", "downlink_mbps")
        if not getattr(network, field) >= 0
    ]
    if bad or not 0 <= network.loss <= 1:
        raise EdgeforgeError(
            f"network {getattr(network, 'name', '')!r} has "
            f"{'a negative ' + bad[0] if bad else f'loss {network.loss}'}; rtt and links must "
            "be >= 0 and loss a share between 0 and 1"
        )
    return network


def transfer_ms(network: NetworkLike, up_bytes: float, down_bytes: float = 0.0) -> float:
    """Milliseconds to send `up_bytes` to the cloud and get `down_bytes` back (module docstring)."""
    if up_bytes <= 0 and down_bytes <= 0:
        return 0.0
    if network.loss >= 1:
        return math.inf
    seconds = 0.0
    for size, mbps in ((up_bytes, network.uplink_mbps), (down_bytes, network.downlink_mbps)):
        if size > 0:
            if mbps <= 0:
                return math.inf
            seconds += size * 8 / (mbps * 1e6)
    return network.rtt_ms + seconds * 1e3 / (1 - network.loss)


def network_dict(network: NetworkLike) -> dict[str, Any]:
    """The network's figures (and name, when it has one) for a JSON result."""
    data = {
        "rtt_ms": network.rtt_ms,
        "uplink_mbps": network.uplink_mbps,
        "downlink_mbps": network.downlink_mbps,
        "loss": network.loss,
    }
    name = getattr(network, "name", None)
    return {"name": name, **data} if name is not None else data
