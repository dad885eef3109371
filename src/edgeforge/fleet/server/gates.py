"""Rollout gates: parsed conditions, each judged on a one-sided confidence bound.

Invariants:

- A condition passes only when its bound lies on the good side of the limit: the Wilson upper
  bound of the failure rate under `failure_rate<L`, the Wilson lower bound of the canary pass
  rate over `canary_pass>=L`, and a distribution-free upper bound of the median latency ratio
  (new p95 / the device's previous p95) under `latency_p95<+L`. A raw percentage never passes
  a wave on its own.
- A condition fails (the rollout aborts) only when the opposite bound is on the bad side: the
  evidence says the limit is crossed, not merely that the sample is small.
- Nothing is judged below the minimum sample (`min_devices` decided devices); a device that did
  not report within the timeout is counted as failed before it gets here.
- The telemetry metrics (`latency_p95<+L` from the devices' telemetry windows, `confidence_p50
  >-L`, `drift_psi<L`) are pooled figures over the sketches of at least `min_reporters` devices
  (the monitor's rule); below that a telemetry metric is undecided ("unsure"), never passed.
  `latency_p95` is judged on the events' per-device ratios when the devices reported any, and
  on telemetry (new version's fleet p95 over the version it replaces) otherwise; a decided
  telemetry figure over the limit fails the gate either way.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

from edgeforge.errors import EdgeforgeError

__all__ = [
    "Condition",
    "GateSample",
    "Verdict",
    "evaluate",
    "median_ratio_bounds",
    "parse_gate",
    "parse_waves",
    "wilson_bounds",
]

METRICS = {
    "failure_rate": "fraction of devices that failed (or did not report in time)",
    "canary_pass": "fraction of canary runs that passed",
    "latency_p95": "relative change of the devices' p95 latency, e.g. <+10%",
    "confidence_p50": "relative change of the median model confidence (telemetry), e.g. >-5%",
    "drift_psi": "largest population stability index against the release reference, e.g. <0.2",
}
RELATIVE = ("latency_p95", "confidence_p50")
TELEMETRY = ("latency_p95", "confidence_p50", "drift_psi")
_CONDITION = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([+-]?)\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$")


@dataclass(frozen=True)
class Condition:
    """`metric op limit`; limit is a fraction (2% is 0.02), relative for latency_p95."""

    metric: str
    op: str
    limit: float

    def __str__(self) -> str:
        if self.metric == "drift_psi":
            return f"{self.metric}{self.op}{self.limit:g}"
        sign = "+" if self.metric in RELATIVE and self.limit >= 0 else ""
        return f"{self.metric}{self.op}{sign}{self.limit * 100:g}%"


def parse_gate(text: str) -> list[Condition]:
    """`"failure_rate<2%,canary_pass>=99%,latency_p95<+10%"` as conditions (EdgeforgeError
    for a gate that does not parse)."""
    conditions = []
    for part in text.split(","):
        if not part.strip():
            continue
        match = _CONDITION.match(part)
        if match is None:
            raise EdgeforgeError(
                f"gate condition {part.strip()!r} does not parse; write METRIC<LIMIT% joined by "
                "commas, e.g. failure_rate<2%,canary_pass>=99%,latency_p95<+10%"
            )
        metric, op, sign, number, percent = match.groups()
        if metric not in METRICS:
            raise EdgeforgeError(
                f"gate metric {metric!r} is unknown; use one of {', '.join(METRICS)}"
            )
        value = float(number) / (100 if percent else 1) * (-1 if sign == "-" else 1)
        if metric == "failure_rate" and op not in ("<", "<="):
            raise EdgeforgeError(
                f"gate {part.strip()!r}: failure_rate takes < or <= (an upper limit)"
            )
        if metric == "canary_pass" and op not in (">", ">="):
            raise EdgeforgeError(
                f"gate {part.strip()!r}: canary_pass takes > or >= (a lower limit)"
            )
        if metric == "latency_p95" and op not in ("<", "<="):
            raise EdgeforgeError(f"gate {part.strip()!r}: latency_p95 takes < or <=, e.g. <+10%")
        if metric == "confidence_p50" and op not in (">", ">="):
            raise EdgeforgeError(f"gate {part.strip()!r}: confidence_p50 takes > or >=, e.g. >-5%")
        if metric == "drift_psi" and (op not in ("<", "<=") or percent or value < 0):
            raise EdgeforgeError(f"gate {part.strip()!r}: write drift_psi<0.2 (a PSI, no %)")
        if metric in ("failure_rate", "canary_pass") and not 0 <= value <= 1:
            raise EdgeforgeError(f"gate {part.strip()!r}: a rate must lie between 0% and 100%")
        conditions.append(Condition(metric, op, value))
    if not conditions:
        raise EdgeforgeError("the gate is empty; give at least one condition, e.g. failure_rate<2%")
    return conditions


def parse_waves(text: str | list[Any]) -> list[float]:
    """`"1%,10%,50%,100%"` as increasing cumulative fractions ending at 1.0."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    waves = []
    for part in parts:
        item = str(part).strip()
        try:
            value = float(item[:-1]) / 100 if item.endswith("%") else float(item)
        except ValueError:
            raise EdgeforgeError(
                f"wave {item!r} is not a percentage; write e.g. 1%,10%,50%,100%"
            ) from None
        waves.append(value)
    if not waves or any(not 0 < w <= 1 for w in waves) or waves != sorted(set(waves)):
        raise EdgeforgeError("waves must be increasing percentages in (0%, 100%], e.g. 1%,10%,100%")
    if waves[-1] != 1.0:
        raise EdgeforgeError("the last wave must be 100% (every device of the class)")
    return waves


def _z(confidence: float) -> float:
    if not 0.5 <= confidence < 1:
        raise EdgeforgeError("the confidence must lie in [0.5, 1), e.g. 0.95")
    return NormalDist().inv_cdf(confidence)


def wilson_bounds(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """One-sided Wilson score bounds (lower, upper) of a proportion, each at `confidence`."""
    if n <= 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _binomial_cdf(k: int, n: int) -> float:
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_ratio_bounds(ratios: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free one-sided bounds (lower, upper) of the median of `ratios` (order
    statistics of the sign test); (0, inf) when the sample is too small to bound it."""
    n = len(ratios)
    values = sorted(ratios)
    alpha = 1 - confidence
    # the largest k with P(Binomial(n, 1/2) <= k - 1) <= alpha: values[k-1] is a lower bound
    k = 0
    while k < n and _binomial_cdf(k, n) <= alpha:
        k += 1
    if k == 0:
        return 0.0, math.inf
    return values[k - 1], values[n - k]


@dataclass
class GateSample:
    """What the devices of a rollout said so far (decided devices only, timeouts as failed)."""

    decided: int
    failed: int
    pending: int
    canary_runs: int
    canary_passed: int
    latency_ratios: list[float]
    # telemetry figures: metric -> {"value": relative change or PSI (None when undecided),
    # "reporters", "enough"} (`rollouts` fills it from the monitor)
    telemetry: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Verdict:
    """`passed`, `failed` or `waiting`, with each condition's figures."""

    status: str
    reason: str
    conditions: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _judge(condition: Condition, sample: GateSample, confidence: float) -> dict[str, Any]:
    strict = condition.op in ("<", ">")
    below = (lambda x: x < condition.limit) if strict else (lambda x: x <= condition.limit)
    above = (lambda x: x > condition.limit) if strict else (lambda x: x >= condition.limit)
    out: dict[str, Any] = {"condition": str(condition)}
    if condition.metric == "failure_rate":
        n = sample.decided
        low, high = wilson_bounds(sample.failed, n, confidence)
        out.update(n=n, observed=sample.failed / n if n else None, lower=low, upper=high)
        out["result"] = "pass" if below(high) else "fail" if not below(low) else "unsure"
    elif condition.metric == "canary_pass":
        n = sample.canary_runs
        low, high = wilson_bounds(sample.canary_passed, n, confidence)
        out.update(n=n, observed=sample.canary_passed / n if n else None, lower=low, upper=high)
        out["result"] = "pass" if above(low) else "fail" if not above(high) else "unsure"
    else:
        figure = sample.telemetry.get(condition.metric) or {}
        value = figure.get("value") if figure.get("enough") else None
        telemetry = None  # undecided
        if value is not None:
            good = above(value) if condition.op in (">", ">=") else below(value)
            telemetry = "pass" if good else "fail"
        out.update(telemetry=value, reporters=figure.get("reporters", 0))
        if condition.metric == "latency_p95" and sample.latency_ratios:
            n = len(sample.latency_ratios)
            low, high = median_ratio_bounds(sample.latency_ratios, confidence)
            low, high = low - 1, high - 1  # as relative changes
            out.update(n=n, lower=low, upper=None if math.isinf(high) else high)  # no inf in JSON
            events = "pass" if below(high) else "fail" if not below(low) else "unsure"
            out["result"] = "fail" if telemetry == "fail" else events
        else:
            out.update(n=figure.get("reporters", 0), observed=value, lower=value, upper=value)
            out["source"] = "telemetry"
            out["result"] = telemetry or "unsure"
    return out


def evaluate(
    conditions: list[Condition], sample: GateSample, *, min_devices: int, confidence: float
) -> Verdict:
    """The gate's verdict on `sample`: `failed` as soon as one condition is shown crossed with
    at least `min_devices` decided; `passed` when nothing is pending and every condition's
    bound is on the good side; otherwise `waiting` (pending devices or an unsure bound)."""
    judged = [_judge(c, sample, confidence) for c in conditions]
    if sample.decided < min_devices:
        return Verdict(
            "waiting", f"{sample.decided} of the {min_devices} devices needed have decided", judged
        )
    for item in judged:
        if item["result"] == "fail":
            return Verdict("failed", f"{item['condition']} is crossed: {_figures(item)}", judged)
    if sample.pending:
        return Verdict("waiting", f"{sample.pending} devices have not reported yet", judged)
    unsure = [item for item in judged if item["result"] != "pass"]
    if unsure:
        item = unsure[0]
        return Verdict("unsure", f"{item['condition']} is not shown yet: {_figures(item)}", judged)
    return Verdict("passed", "every condition holds at the bound", judged)


def _figures(item: dict[str, Any]) -> str:
    if item.get("source") == "telemetry":
        value = item.get("telemetry")
        shown = "undecided" if value is None else f"{value:+.1%}"
        if value is not None and item["condition"].startswith("drift_psi"):
            shown = f"{value:.3f}"
        return f"telemetry {shown} from {item.get('reporters', 0)} reporting devices"
    observed = item.get("observed")
    seen = f"observed {observed:.1%}, " if observed is not None else ""
    upper = "unbounded" if item["upper"] is None else f"{item['upper']:.1%}"
    return f"{seen}bounds [{item['lower']:.1%}, {upper}] over {item['n']}"
