"""Queueing at the server: Erlang C (M/M/c) waiting time and autoscaled instance counts.

Requests arrive as a Poisson stream at `arrival_per_s`; each of `servers` identical servers
finishes one request in an exponential time of mean 1 / `service_per_s`. With offered load
a = arrival / service (in Erlangs) and a < servers:

    B(0, a) = 1,   B(k, a) = a B(k-1, a) / (k + a B(k-1, a))          (Erlang B, stable recursion)
    C(c, a) = c B(c, a) / (c - a (1 - B(c, a)))                     (probability of waiting)
    Wq      = C(c, a) / (c x service - arrival)                     (mean wait in the queue)

These are the textbook M/M/c results (e.g. Kleinrock, Queueing Systems vol. 1, section 3.5).
An unstable queue (a >= servers) is refused, never given an infinite or negative wait.
"""

from __future__ import annotations

import math

from edgeforge.errors import EdgeforgeError

__all__ = ["erlang_b", "erlang_c", "instances_needed", "mean_wait_s"]


def erlang_b(servers: int, offered: float) -> float:
    """Blocking probability of M/M/c/c with `offered` Erlangs on `servers` servers."""
    if servers < 1 or offered < 0:
        raise EdgeforgeError(
            f"erlang_b needs servers >= 1 and load >= 0 (got {servers}, {offered})"
        )
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered * blocking / (k + offered * blocking)
    return blocking


def erlang_c(servers: int, offered: float) -> float:
    """Probability that a request waits, M/M/c with `offered` Erlangs on `servers` servers."""
    if offered >= servers:
        raise EdgeforgeError(
            f"the queue is unstable: {offered:.3g} Erlangs offered to {servers} servers"
        )
    if offered == 0:
        return 0.0
    blocking = erlang_b(servers, offered)
    return servers * blocking / (servers - offered * (1 - blocking))


def mean_wait_s(arrival_per_s: float, service_per_s: float, servers: int) -> float:
    """Mean time a request waits before service starts (seconds), M/M/c."""
    if service_per_s <= 0:
        raise EdgeforgeError("service rate must be above 0")
    offered = arrival_per_s / service_per_s
    waiting = erlang_c(servers, offered)
    return waiting / (servers * service_per_s - arrival_per_s) if waiting else 0.0


def instances_needed(
    arrival_per_s: float, per_instance_per_s: float, target_utilisation: float, minimum: int
) -> int:
    """Whole instances an autoscaler runs to keep each at most `target_utilisation` busy."""
    if not 0 < target_utilisation < 1:
        raise EdgeforgeError(
            f"target_utilisation must be between 0 and 1 (got {target_utilisation})"
        )
    needed = math.ceil(arrival_per_s / (per_instance_per_s * target_utilisation) - 1e-12)
    return max(minimum, needed, 1 if arrival_per_s > 0 else 0)
