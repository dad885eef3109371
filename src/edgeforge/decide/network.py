"""`Network`: what the link between a device and the cloud costs a request.

A request's time on the network is one round trip plus its bytes at the link's rate:

    transfer_ms(bytes, mbps) = bytes x 8 / (mbps x 10^6) x 1000 / (1 - loss)

The `1 / (1 - loss)` factor charges each lost packet one resend (goodput = rate x (1 - loss));
TCP's congestion control loses more than that on lossy links, so loss above a few percent makes
the figure optimistic. A connection is taken as already open (keep-alive): handshakes are not
counted. `offline` (both rates 0) means the cloud cannot be reached at all; any other profile
must have both rates above 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from edgeforge.decide._data import DecideData, figure_of, load_data
from edgeforge.devices import Figure
from edgeforge.errors import EdgeforgeError

__all__ = ["Network", "get_network", "parse_network_spec"]


@dataclass(frozen=True)
class Network:
    """A link profile: round trip in ms, rates in Mbit/s (10^6), loss as a fraction in [0, 1)."""

    name: str
    rtt_ms: float
    uplink_mbps: float
    downlink_mbps: float
    loss: float = 0.0
    description: str = ""
    figures: dict[str, Figure] = field(default_factory=dict, compare=False)

    @property
    def offline(self) -> bool:
        return self.uplink_mbps == 0 and self.downlink_mbps == 0

    def upload_ms(self, nbytes: float) -> float:
        return _transfer_ms(nbytes, self.uplink_mbps, self.loss)

    def download_ms(self, nbytes: float) -> float:
        return _transfer_ms(nbytes, self.downlink_mbps, self.loss)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rtt_ms": self.rtt_ms,
            "uplink_mbps": self.uplink_mbps,
            "downlink_mbps": self.downlink_mbps,
            "loss": self.loss,
            "offline": self.offline,
            "description": self.description,
            "figures": {key: fig.to_dict() for key, fig in self.figures.items()},
        }


def _transfer_ms(nbytes: float, mbps: float, loss: float) -> float:
    if mbps <= 0:
        return float("inf")
    return nbytes * 8 / (mbps * 1e6) * 1000 / (1 - loss)


def _checked(network: Network, spelled: str) -> Network:
    if network.offline:
        return network
    for key, rate in (("up", network.uplink_mbps), ("down", network.downlink_mbps)):
        if not rate > 0:
            raise EdgeforgeError(
                f"network {spelled!r} has zero {key}link bandwidth: give {key}= a rate above 0 "
                "(e.g. up=5mbps), or use --network offline for no network"
            )
    if not 0 <= network.loss < 1:
        raise EdgeforgeError(
            f"network {spelled!r}: loss must be at least 0 and below 100% (e.g. loss=1%)"
        )
    if network.rtt_ms < 0:
        raise EdgeforgeError(f"network {spelled!r}: rtt must be 0 ms or more (e.g. rtt=80ms)")
    return network


_UNITS = {
    "rtt": {"": 1.0, "ms": 1.0, "s": 1000.0},
    "up": {"": 1.0, "mbps": 1.0, "kbps": 1e-3, "gbps": 1e3},
    "down": {"": 1.0, "mbps": 1.0, "kbps": 1e-3, "gbps": 1e3},
    "loss": {"": 1.0, "%": 0.01},
}
_TOKEN = re.compile(r"\s*([a-z]+)\s*=\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-z%]*)\s*")


def parse_network_spec(spec: str) -> Network:
    """`rtt=80ms,up=5mbps,down=20mbps,loss=1%` -> Network; rtt, up and down are required."""
    values: dict[str, float] = {}
    for part in spec.split(","):
        match = _TOKEN.fullmatch(part.lower())
        if not match or match.group(1) not in _UNITS:
            raise EdgeforgeError(
                f"--network: cannot read {part.strip()!r}; write a profile name or "
                "rtt=80ms,up=5mbps,down=20mbps[,loss=1%]"
            )
        key, number, unit = match.groups()
        if unit not in _UNITS[key]:
            units = ", ".join(u for u in _UNITS[key] if u)
            raise EdgeforgeError(f"--network: {key}= takes {units}, not {unit!r}")
        values[key] = float(number) * _UNITS[key][unit]
    missing = [key for key in ("rtt", "up", "down") if key not in values]
    if missing:
        raise EdgeforgeError(
            f"--network {spec!r}: missing {', '.join(missing)}; e.g. rtt=80ms,up=5mbps,down=20mbps"
        )
    network = Network(
        name=spec.replace(" ", ""),
        rtt_ms=values["rtt"],
        uplink_mbps=values["up"],
        downlink_mbps=values["down"],
        loss=values.get("loss", 0.0),
        description="explicit",
    )
    return _checked(network, spec)


def get_network(name_or_spec: str | Network, data: DecideData | None = None) -> Network:
    """A profile by name (3g, 4g, lte, 5g, wifi, offline, or one a --prices file adds), or an
    explicit spec with '='. Raises EdgeforgeError naming the profiles for an unknown name."""
    if isinstance(name_or_spec, Network):
        return _checked(name_or_spec, name_or_spec.name)
    if "=" in name_or_spec:
        return parse_network_spec(name_or_spec)
    data = data or load_data()
    key = name_or_spec.strip().casefold()
    table = data.networks.get(key)
    if table is None:
        raise EdgeforgeError(
            f"unknown network {name_or_spec!r}; use one of {', '.join(data.networks)} "
            "or rtt=80ms,up=5mbps,down=20mbps[,loss=1%]"
        )
    figures = {}
    for name in ("rtt_ms", "uplink_mbps", "downlink_mbps", "loss"):
        if name not in table:
            raise EdgeforgeError(f"network {key!r}: missing {name}")
        figures[name] = figure_of(table[name], f"networks.{key}.{name}", data.origin)
    network = Network(
        name=key,
        rtt_ms=figures["rtt_ms"].value,
        uplink_mbps=figures["uplink_mbps"].value,
        downlink_mbps=figures["downlink_mbps"].value,
        loss=figures["loss"].value,
        description=str(table.get("description", "")),
        figures=figures,
    )
    return _checked(network, key)
