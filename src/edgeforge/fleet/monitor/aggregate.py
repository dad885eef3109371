"""Fleet aggregates: device windows merged per model version × device class × day.

Why not merge the devices' KLL sketches with KLL's own `merge`: DataSketches compacts with random
bits, so `merge(a, b)` and `merge(b, a)` (even `merge(a, b)` twice) give different sketches. The
server instead pours every window's retained KLL items, with their weights, into a sparse
log-bucketed histogram (`LogHistogram`, DDSketch-style, relative value accuracy 0.1%) whose
counts are integers: adding histograms is exactly commutative and associative, so an aggregate
is a function of the set of windows it holds, whatever their arrival order. The only
approximation left is each device's KLL (rank error ~2-4% of its window), which averages out
across windows. Class frequencies are likewise summed as integer counts; the distinct reporting
devices are counted with a Theta sketch of their hashed ids (exact up to 1,024 devices per
aggregate, ~3% beyond; its ordered compact form is the same whatever the merge order, which
an HLL's list mode is not).

Invariants: `a.merge(b).to_dict() == b.merge(a).to_dict()`; an aggregate carries no device id
(only a Theta sketch of their hashes) and no input value.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import datasketches as ds
import numpy as np

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.telemetry import (
    _COUNTERS,
    SLOTS,
    Sample,
    WindowSummary,
    clip_values,
    decode_window,
    row_features,
    window_id,
)

__all__ = [
    "Aggregate",
    "LogHistogram",
    "Reference",
    "aggregate_windows",
    "day_of",
    "reference_from_data",
]

GAMMA = 1.002  # bucket i holds (GAMMA**(i-1), GAMMA**i]; relative accuracy (GAMMA-1)/(GAMMA+1)
_LOG_GAMMA = math.log(GAMMA)
_ZERO = 1e-9  # |x| below this counts as 0
THETA_LG_K = 10


@dataclass
class LogHistogram:
    """Integer counts of values in log-spaced buckets (sign-separated, plus a zero bucket).
    Deterministic and exactly mergeable; quantiles and CDFs at 0.1% relative value accuracy."""

    pos: dict[int, int] = field(default_factory=dict)
    neg: dict[int, int] = field(default_factory=dict)
    zero: int = 0

    @property
    def n(self) -> int:
        return self.zero + sum(self.pos.values()) + sum(self.neg.values())

    def add(self, values: np.ndarray, weights: np.ndarray | None = None) -> None:
        v = np.asarray(values, dtype=np.float64)
        w = np.ones(v.shape, dtype=np.int64) if weights is None else np.asarray(weights, np.int64)
        ok = np.isfinite(v)
        v, w = v[ok], w[ok]
        small = np.abs(v) < _ZERO
        self.zero += int(w[small].sum())
        for sign, table in ((1, self.pos), (-1, self.neg)):
            sel = (~small) & (np.sign(v) == sign)
            if not sel.any():
                continue
            idx = np.ceil(np.log(np.abs(v[sel])) / _LOG_GAMMA).astype(np.int64)
            keys, inv = np.unique(idx, return_inverse=True)
            sums = np.bincount(inv, weights=w[sel]).astype(np.int64)
            for k, s in zip(keys.tolist(), sums.tolist(), strict=True):
                table[k] = table.get(k, 0) + s

    def add_sample(self, sample: Sample) -> None:
        """A device's KLL sketch: its retained items with their weights."""
        if not sample.is_empty():
            self.add(sample.values, sample.weights)

    def merge(self, other: LogHistogram) -> LogHistogram:
        out = LogHistogram(dict(self.pos), dict(self.neg), self.zero + other.zero)
        for mine, theirs in ((out.pos, other.pos), (out.neg, other.neg)):
            for k, c in theirs.items():
                mine[k] = mine.get(k, 0) + c
        return out

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """(representative values ascending, counts)."""
        rep = 2.0 / (1.0 + GAMMA)
        neg = sorted(self.neg.items(), reverse=True)
        pos = sorted(self.pos.items())
        vals = [-(GAMMA**k) * rep for k, _ in neg] + ([0.0] if self.zero else [])
        vals += [GAMMA**k * rep for k, _ in pos]
        counts = [c for _, c in neg] + ([self.zero] if self.zero else []) + [c for _, c in pos]
        return np.array(vals, dtype=np.float64), np.array(counts, dtype=np.float64)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """Fraction of values <= each x (0 for an empty histogram)."""
        vals, counts = self.points()
        total = counts.sum()
        if total == 0:
            return np.zeros(np.shape(x))
        cum = np.concatenate([[0.0], np.cumsum(counts)]) / total
        return cum[np.searchsorted(vals, np.asarray(x, dtype=np.float64), side="right")]

    def quantile(self, q: float | Iterable[float]) -> Any:
        vals, counts = self.points()
        if counts.sum() == 0:
            return None if np.isscalar(q) else [None for _ in q]  # type: ignore[union-attr]
        cum = np.cumsum(counts) / counts.sum()
        qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
        out = vals[np.minimum(np.searchsorted(cum, qs - 1e-12, side="left"), len(vals) - 1)]
        return float(out[0]) if np.isscalar(q) else [float(v) for v in out]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pos": {str(k): v for k, v in sorted(self.pos.items())},
            "neg": {str(k): v for k, v in sorted(self.neg.items())},
            "zero": self.zero,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LogHistogram:
        return cls(
            {int(k): int(v) for k, v in d.get("pos", {}).items()},
            {int(k): int(v) for k, v in d.get("neg", {}).items()},
            int(d.get("zero", 0)),
        )


def day_of(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def _hash_device(device_id: str) -> str:
    return hashlib.sha256(b"edgeforge-reporter\0" + device_id.encode()).hexdigest()


@dataclass
class Aggregate:
    """Windows of one model version on one device class over one day (or any span: merging
    aggregates of several days gives the span). `day` is "" for a multi-day aggregate."""

    name: str
    version: int
    device_class: str
    day: str
    input_kind: str = "none"
    output_kind: str = "none"
    confidence_kind: str = "none"
    windows: int = 0
    private_windows: int = 0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    slots: dict[str, LogHistogram] = field(
        default_factory=lambda: {s: LogHistogram() for s in SLOTS}
    )
    classes: dict[str, int] = field(default_factory=dict)
    class_other: int = 0
    facts: dict[str, list[float]] = field(
        default_factory=lambda: {
            k: [0.0, 0.0] for k in ("temperature_c", "battery_pct", "throttled")
        }
    )  # sum, count
    reporters_theta: bytes = b""

    @property
    def key(self) -> tuple[str, int, str, str]:
        return (self.name, self.version, self.device_class, self.day)

    def reporters(self) -> int:
        """Distinct devices that sent a window (exact up to 1,024)."""
        if not self.reporters_theta:
            return 0
        return round(ds.compact_theta_sketch.deserialize(self.reporters_theta).get_estimate())

    def add(self, device_id: str, window: WindowSummary) -> None:
        """Fold one decoded window from `device_id` into this aggregate."""
        if (window.name, window.version, window.device_class) != self.key[:3]:
            raise EdgeforgeError(
                f"window of {window.name}@{window.version}/{window.device_class} does not belong "
                f"to the aggregate of {self.name}@{self.version}/{self.device_class}"
            )
        one = Aggregate(self.name, self.version, self.device_class, self.day)
        one.input_kind, one.output_kind = window.input_kind, window.output_kind
        one.confidence_kind = window.confidence_kind
        one.windows = 1
        one.private_windows = int(window.private)
        one.counters = {c: int(window.counters.get(c, 0)) for c in _COUNTERS}
        for slot, sk in window.sketches.items():
            one.slots[slot].add_sample(sk)
        one.classes = {str(k): v for k, v in window.classes.items()}
        one.class_other = max(0, window.class_total - sum(one.classes.values()))
        for k in one.facts:
            v = window.facts.get(k)
            if v is not None:
                one.facts[k] = [float(v), 1.0]
        theta = ds.update_theta_sketch(THETA_LG_K)
        theta.update(_hash_device(device_id))
        one.reporters_theta = theta.compact(True).serialize()
        merged = self.merge(one)
        self.__dict__.update(merged.__dict__)

    def merge(self, other: Aggregate) -> Aggregate:
        """A new aggregate holding both; commutative and associative, exactly. Aggregates of
        different days merge into a span (day ""); different versions or classes refuse."""
        if self.key[:3] != other.key[:3]:
            raise EdgeforgeError(
                f"cannot merge {self.name}@{self.version}/{self.device_class} with "
                f"{other.name}@{other.version}/{other.device_class}"
            )
        day = self.day if self.day == other.day else ""
        out = Aggregate(self.name, self.version, self.device_class, day)
        for attr in ("input_kind", "output_kind", "confidence_kind"):
            # a window that saw no rows says "none"; otherwise the kinds agree (one version)
            kinds = {getattr(self, attr), getattr(other, attr)} - {"none"}
            setattr(out, attr, max(kinds) if kinds else "none")
        out.windows = self.windows + other.windows
        out.private_windows = self.private_windows + other.private_windows
        out.counters = {c: self.counters.get(c, 0) + other.counters.get(c, 0) for c in _COUNTERS}
        out.slots = {s: self.slots[s].merge(other.slots[s]) for s in SLOTS}
        out.classes = dict(self.classes)
        for k, v in other.classes.items():
            out.classes[k] = out.classes.get(k, 0) + v
        out.class_other = self.class_other + other.class_other
        out.facts = {
            k: [self.facts[k][0] + other.facts[k][0], self.facts[k][1] + other.facts[k][1]]
            for k in self.facts
        }
        union = ds.theta_union(THETA_LG_K)
        for blob in (self.reporters_theta, other.reporters_theta):
            if blob:
                union.update(ds.compact_theta_sketch.deserialize(blob))
        if self.reporters_theta or other.reporters_theta:
            out.reporters_theta = union.get_result(True).serialize()
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able and canonical (what the server stores; equal aggregates, equal dicts)."""
        return {
            "name": self.name,
            "version": self.version,
            "device_class": self.device_class,
            "day": self.day,
            "input_kind": self.input_kind,
            "output_kind": self.output_kind,
            "confidence_kind": self.confidence_kind,
            "windows": self.windows,
            "private_windows": self.private_windows,
            "counters": dict(self.counters),
            "slots": {s: h.to_dict() for s, h in self.slots.items()},
            "classes": dict(sorted(self.classes.items())),
            "class_other": self.class_other,
            "facts": {k: list(v) for k, v in self.facts.items()},
            "reporters_theta": base64.b64encode(self.reporters_theta).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Aggregate:
        out = cls(d["name"], int(d["version"]), d["device_class"], d["day"])
        out.input_kind, out.output_kind = d["input_kind"], d["output_kind"]
        out.confidence_kind = d["confidence_kind"]
        out.windows, out.private_windows = int(d["windows"]), int(d["private_windows"])
        out.counters = {c: int(d["counters"].get(c, 0)) for c in _COUNTERS}
        out.slots = {s: LogHistogram.from_dict(d["slots"].get(s, {})) for s in SLOTS}
        out.classes = {str(k): int(v) for k, v in d["classes"].items()}
        out.class_other = int(d["class_other"])
        out.facts = {k: [float(a), float(b)] for k, (a, b) in d["facts"].items()}
        out.reporters_theta = base64.b64decode(d["reporters_theta"])
        return out


def aggregate_windows(
    windows: Iterable[tuple[str, bytes | str | Mapping[str, Any] | WindowSummary]],
    *,
    device_classes: Mapping[str, str] | None = None,
    invalid: list[tuple[str, str]] | None = None,
) -> dict[tuple[str, int, str, str], Aggregate]:
    """Fold `(device_id, window)` pairs into aggregates keyed by (name, version, device class,
    day of the window's start, UTC). A window is a payload (bytes or base64), a report's
    telemetry entry `{"id", "payload"}` (or its JSON text) or a decoded `WindowSummary`.

    The result does not depend on the pairs' order. A window resent by the same device (its
    acknowledgement lost) counts once (keyed by `window_id` of the payload, not the id the
    device claims). `device_classes` (device id -> class, from enrolment) overrides the class a
    window claims: a device cannot report into another class's aggregate. With `invalid` given,
    a window that does not decode is skipped and `(device_id, why)` appended to it; without,
    EdgeforgeError propagates."""
    out: dict[tuple[str, int, str, str], Aggregate] = {}
    seen: set[tuple[str, str]] = set()
    for device_id, item in windows:
        try:
            if isinstance(item, WindowSummary):
                w = item
            else:
                raw = _payload_bytes(item)
                if (device_id, window_id(raw)) in seen:
                    continue
                seen.add((device_id, window_id(raw)))
                w = decode_window(raw)
        except EdgeforgeError as exc:
            if invalid is None:
                raise
            invalid.append((device_id, str(exc)))
            continue
        if device_classes is not None and device_id in device_classes:
            w.device_class = device_classes[device_id]
        key = (w.name, w.version, w.device_class, day_of(w.start))
        if key not in out:
            out[key] = Aggregate(*key)
        out[key].add(device_id, w)
    return out


def _payload_bytes(item: bytes | str | Mapping[str, Any]) -> bytes:
    if isinstance(item, str) and item.lstrip().startswith("{"):
        try:
            item = json.loads(item)
        except ValueError as exc:
            raise EdgeforgeError("telemetry entry is not JSON") from exc
    if isinstance(item, Mapping):
        item = item.get("payload", "")
    if isinstance(item, str):
        try:
            return base64.b64decode(item, validate=True)
        except ValueError as exc:
            raise EdgeforgeError("telemetry payload is not base64") from exc
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    raise EdgeforgeError("telemetry entry is neither a payload nor {'id', 'payload'}")


@dataclass
class Reference:
    """The same summaries computed on evaluation data at release time: the baseline a deployed
    version's telemetry is compared with. Exact (no device sketch in between)."""

    input_kind: str
    output_kind: str
    confidence_kind: str
    rows: int
    slots: dict[str, LogHistogram]
    classes: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "input_kind": self.input_kind,
            "output_kind": self.output_kind,
            "confidence_kind": self.confidence_kind,
            "rows": self.rows,
            "slots": {s: h.to_dict() for s, h in self.slots.items()},
            "classes": dict(sorted(self.classes.items())),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reference:
        if d.get("format") != 1:
            raise EdgeforgeError("telemetry reference is not format 1; re-create it with release")
        return cls(
            d["input_kind"],
            d["output_kind"],
            d["confidence_kind"],
            int(d["rows"]),
            {s: LogHistogram.from_dict(d["slots"].get(s, {})) for s in SLOTS},
            {str(k): int(v) for k, v in d["classes"].items()},
        )


def reference_from_data(
    outputs: Any,
    inputs: Any = None,
    *,
    latency_ms: Any = None,
    output_kind: str | None = None,
    input_kind: str | None = None,
) -> Reference:
    """The reference summaries of evaluation data: `outputs` the model's outputs on it (an
    array with the batch axis first, or a list/dict whose first entry is), `inputs` the matching
    feed (optional; without it no input drift can be tested), `latency_ms` measured latencies
    (optional: the release evidence's). Kinds are guessed as on the device unless given; pass
    the same kinds to the agent's `Telemetry.set_model`."""
    rf = row_features(inputs, outputs, input_kind=input_kind, output_kind=output_kind)
    if rf["rows"] == 0:
        raise EdgeforgeError(
            "reference data has no rows; give the model's outputs on evaluation data"
        )
    slots = {s: LogHistogram() for s in SLOTS}
    for slot, arr in rf["features"].items():
        slots[slot].add(clip_values(slot, arr, rf["confidence_kind"]))
    if latency_ms is not None:
        slots["latency_ms"].add(clip_values("latency_ms", latency_ms, "none"))
    cls = rf["classes"]
    ids, counts = np.unique(cls[cls >= 0], return_counts=True)
    return Reference(
        rf["input_kind"],
        rf["output_kind"],
        rf["confidence_kind"],
        int(rf["rows"]),
        slots,
        {str(int(i)): int(c) for i, c in zip(ids, counts, strict=True)},
    )
