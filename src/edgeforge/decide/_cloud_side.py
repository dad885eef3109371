"""The cloud side of a decision: a request's latency through the network and the server, and
what the autoscaled fleet costs a month.

Invariants a caller can rely on:

- Latency = upload (payload) + round trip + download (response) + queueing at the peak rate
  (Erlang C over the autoscaled instances, each serving full batches) + the wait for the batch
  to close + inference on the server of the batch the traffic fills; None when the network is
  offline. The server batches dynamically with a bounded queue delay D (`max_queue_delay_ms`),
  as Triton and TorchServe do: a batch closes when it is full or D after its first request, so
  at a rate of r requests per second per instance it holds 1 + r x min(D, (batch - 1) / r)
  requests (timed at the nearest whole request, halves up; at most `batch`). A user with a few
  requests a day pays a batch of one and up to D of waiting, not a full batch.
- Cost per month = hourly price x hours a month x max(min_instances, mean rate / (per-instance
  throughput x target utilisation)): autoscaled instance-hours at the mean rate with a warm floor,
  reported as `floor_month_usd` and `per_user_month_usd`.
- `blocked` lists, in words, what keeps the cloud from being used (an offline requirement, an
  offline network, sensitive input; `decide` adds the instance's memory when the model does not
  fit it); `available` is False only for the first two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from edgeforge.decide._data import DecideData
from edgeforge.decide.cloud import CloudInstance
from edgeforge.decide.network import Network
from edgeforge.decide.queueing import instances_needed, mean_wait_s

__all__ = ["cloud_side", "dynamic_batch"]


def dynamic_batch(rate_per_s: float, batch_size: int, max_delay_ms: float) -> tuple[int, float]:
    """(requests in a batch, mean ms a request waits for its batch to close) under dynamic
    batching at `rate_per_s` arrivals per instance (module docstring)."""
    if batch_size <= 1 or max_delay_ms <= 0:
        return 1, 0.0
    full_ms = (batch_size - 1) / rate_per_s * 1000 if rate_per_s > 0 else math.inf
    window = min(max_delay_ms, full_ms)
    filled = min(float(batch_size), 1 + rate_per_s * window / 1000)
    # the first request waits the whole window, the later ones half of it on average
    wait = window * (1 + (filled - 1) / 2) / filled
    return min(batch_size, math.floor(filled + 0.5)), wait


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


def cloud_side(
    instance: CloudInstance,
    server_ms: float,
    batch_ms: float,
    batch_time: Callable[[int], float],
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
    """The cloud's figures for this workload (`Decision.cloud`)."""
    dflt = data.defaults
    hours = dflt["hours_per_month"].value
    hourly = instance.hourly_usd.value
    per_instance = 1000 / batch_ms * instance.batch_size
    mean_rate = users * rpd / 86400
    peak_rate = mean_rate * dflt["peak_to_mean"].value
    count, wait_ms, utilisation = _queue(instance, batch_ms, peak_rate, data)
    delay = dflt["max_queue_delay_ms"].value
    filled, batch_wait = dynamic_batch(peak_rate / max(count, 1), instance.batch_size, delay)
    inference = batch_time(filled)
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
    latency = (
        None if net.offline else upload + net.rtt_ms + download + wait_ms + batch_wait + inference
    )
    return {
        "instance": instance.id,
        "available": not net.offline and not offline_required,
        "blocked": blocked,
        "upload_ms": upload,
        "rtt_ms": None if net.offline else net.rtt_ms,
        "download_ms": download,
        "queue_ms": wait_ms,
        "server_ms": server_ms,
        "batch_wait_ms": batch_wait,
        "inference_ms": inference,
        "batch": instance.batch_size,
        "batch_filled": filled,
        "full_batch_ms": batch_ms,
        "max_queue_delay_ms": delay,
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
