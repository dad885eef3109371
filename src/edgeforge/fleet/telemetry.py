"""Device telemetry: what a device says about its model without sending what the model saw.

Runs on the device. Imports only the standard library, numpy and datasketches; OpenDP (265 MB)
is imported only when a privacy budget is configured (`epsilon=`), never otherwise.

The agent calls, per model it activates and per inference:

    tel = Telemetry(state / "telemetry", device_class="rpi4")
    tel.set_model("digits", 3, output_kind=None, input_kind=None)   # on activation
    tel.observe(feed, outputs, latency_ms)                           # in predict()
    tel.record_outcome("canary" | "health", ok)                      # agent transitions
    tel.record_error()                                               # a predict() that raised
    entries = tel.drain()        # [{"id", "payload"}]: the report body's "telemetry" list
    tel.ack([e["id"] for e in entries])                              # after the server's 202

Invariants a caller can rely on:
- A payload is exactly `PAYLOAD_SIZE` bytes (9,408) whatever the inputs, the outputs or the
  number of inferences: a fixed header and one zero-padded slot per sketch (how many items a
  KLL sketch keeps depends only on how many values went in, capped at `MAX_ROWS` per window).
- No input value leaves the device: a payload holds summaries of per-row statistics (DataSketches
  KLL quantile sketches, a frequent-items sketch of predicted classes) and counts, never a
  tensor. On the wire a KLL sketch is its retained items by level and the classes a table of
  (id, count), in our own layout that the server parses with bounds checks (`decode_window`):
  DataSketches' own deserialisers crash on crafted bytes, and a device may lie.
  Every contribution is clipped to a fixed range; rows beyond `MAX_ROWS` in a window are counted
  and not summarised.
- With `epsilon` set, each released window is epsilon-differentially private for one input row
  (Laplace noise from OpenDP on the clipped histograms and counts); the per-device ledger on disk
  is charged (write, fsync, rename) before the window is released and is never exceeded: a
  window that would exceed it is withheld, and the refusal is counted.
- The spool (`Spool`) is bounded by bytes and age; the oldest windows go first and the drops are
  counted and carried in the next window's header. Every file is written crash-safe.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasketches as ds
import numpy as np

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet._durable import write_atomic

__all__ = [
    "DRAIN_LIMIT",
    "ENTRY_BYTES",
    "MAX_ROWS",
    "PAYLOAD_SIZE",
    "SLOTS",
    "EpsilonLedger",
    "Sample",
    "Spool",
    "Telemetry",
    "Window",
    "WindowSummary",
    "clip_range",
    "clip_values",
    "decode_window",
    "device_facts",
    "row_features",
    "window_id",
]

# --- the fixed layout -------------------------------------------------------------------------

MAGIC = b"EFTW"
FORMAT_VERSION = 1
MAX_ROWS = 4096  # rows summarised per window; more are counted in `clipped`
K_MAIN = 128  # KLL k for latency and confidence (normalised rank error ~2%)
K_FEATURE = 64  # KLL k for the per-input and per-output statistics (~4%)
LG_CLASSES = 5  # frequent-items map of 32 slots: up to 24 classes tracked exactly
MAX_CLASS_ID = 999_999  # class ids are sent as at most 6 decimal digits
INPUT_SLOTS = 6  # image: mean and spread of 3 channels; text: token count; tabular: mean, spread
OUTPUT_SLOTS = 2  # embedding: a 2-D seeded random projection; regression: the value
SLOTS: tuple[str, ...] = (
    "latency_ms",
    "confidence",
    *(f"in{i}" for i in range(INPUT_SLOTS)),
    *(f"out{i}" for i in range(OUTPUT_SLOTS)),
)
# The wire form of a KLL sketch is its retained items, grouped by level (an item at level h
# weighs 2**h), in our own layout: the server never hands device bytes to a native parser (the
# DataSketches deserialisers crash on crafted input). A sketch keeps at most `_KLL_ITEMS[k]`
# items for n <= MAX_ROWS (it depends on n only; tests sweep n to check).
MAX_LEVELS = 12
_KLL_HEAD = struct.Struct(f"<IffB{MAX_LEVELS}H")  # n, min, max, levels, items per level
_KLL_ITEMS = {K_MAIN: 355, K_FEATURE: 180}
_KLL_SLOT = {k: _KLL_HEAD.size + 4 * items for k, items in _KLL_ITEMS.items()}
MAX_CLASS_ITEMS = 32  # a frequent-items map of 2**LG_CLASSES slots holds at most 24
_CLASS_HEAD = struct.Struct("<IH")  # total weight, entries
_CLASS_SLOT = _CLASS_HEAD.size + 8 * MAX_CLASS_ITEMS  # (class id, count) as two u32
_SLOT_K = {name: (K_MAIN if name in ("latency_ms", "confidence") else K_FEATURE) for name in SLOTS}

OUTPUT_KINDS = ("probabilities", "logits", "regression", "embedding", "none")
INPUT_KINDS = ("image", "text", "tabular", "sequence", "none")
CONFIDENCE_KINDS = ("none", "top1", "margin", "entropy")

# name, device class, version, kinds (output, input, confidence, flags), start, length, counters,
# epsilon, facts, num_classes
_HEADER = struct.Struct("<4sH64s32sIBBBBdf9IffbfbI")
_COUNTERS = (
    "rows",
    "clipped",
    "errors",
    "canary_pass",
    "canary_fail",
    "health_pass",
    "health_fail",
    "calls",
    "spool_dropped",
)
PAYLOAD_SIZE = _HEADER.size + sum(_KLL_SLOT[_SLOT_K[s]] for s in SLOTS) + _CLASS_SLOT

# One drained entry as JSON ({"id": 32 hex, "payload": base64}), and how many go in a report.
ENTRY_BYTES = len('{"id": "", "payload": ""}, ') + 32 + 4 * -(-PAYLOAD_SIZE // 3)
DRAIN_LIMIT = 16

# Clip ranges: every value a row contributes lies in these (and, with epsilon, they are the
# histogram ranges the noise is added on). Latency is binned on a log scale.
CLIP = {
    "latency_ms": (0.01, 600_000.0),
    "top1": (0.0, 1.0),
    "margin": (0.0, 50.0),
    "entropy": (0.0, 20.0),
    "feature": (-1e6, 1e6),
}
DP_BINS = 32


# --- per-row statistics -----------------------------------------------------------------------


def _primary(arrays: Any) -> np.ndarray | None:
    if arrays is None:
        return None
    if isinstance(arrays, Mapping):
        arrays = next(iter(arrays.values()), None)
    elif isinstance(arrays, (list, tuple)):
        arrays = arrays[0] if arrays else None
    return None if arrays is None else np.asarray(arrays)


def _guess_input_kind(x: np.ndarray) -> str:
    if x.size == 0:
        return "none"
    if np.issubdtype(x.dtype, np.integer) and x.ndim in (1, 2):
        return "text"
    if x.ndim == 4:
        return "image"
    if x.ndim == 3:
        return "sequence"
    return "tabular"


def _guess_output_kind(y: np.ndarray) -> str:
    if y.size == 0:
        return "none"
    if y.ndim >= 2 and y.shape[-1] >= 2 and np.issubdtype(y.dtype, np.floating):
        rows = y.reshape(-1, y.shape[-1])
        if np.all(rows >= 0) and np.all(rows <= 1) and np.allclose(rows.sum(-1), 1.0, atol=1e-3):
            return "probabilities"
        return "logits"
    return "regression"


def _rows(x: np.ndarray) -> np.ndarray:
    """The batch axis first; a 1-D array is one row."""
    return x.reshape(1, -1) if x.ndim <= 1 else x


_PIXELS = 4096


def input_features(x: np.ndarray, kind: str, *, pad_id: int = 0) -> np.ndarray:
    """Per-row statistics of one input batch: shape (rows, INPUT_SLOTS), NaN where unused.

    image (N,C,H,W or N,H,W,C): mean and standard deviation of the first 3 channels (over a
    fixed stride of at most ~4096 pixels a channel);
    text (N,T integer ids): number of tokens that are not `pad_id`; tabular (N,F) and sequence
    (N,T,F): mean and standard deviation over the row (never a feature's own value).
    """
    x = _rows(x)
    out = np.full((x.shape[0], INPUT_SLOTS), np.nan, dtype=np.float64)
    if kind == "image" and x.ndim == 4:
        chw = x if x.shape[1] <= 4 or x.shape[-1] > 4 else np.moveaxis(x, -1, 1)
        c = min(3, chw.shape[1])
        flat = chw[:, :c].reshape(chw.shape[0], c, -1)
        # a fixed stride keeps the cost bounded on large images (<= ~4096 pixels a channel)
        flat = flat[:, :, :: max(1, -(-flat.shape[-1] // _PIXELS))]
        out[:, :c] = flat.mean(-1, dtype=np.float64)
        out[:, 3 : 3 + c] = flat.std(-1, dtype=np.float64)
    elif kind == "text":
        out[:, 0] = (x.reshape(x.shape[0], -1) != pad_id).sum(-1)
    elif kind in ("sequence", "tabular"):
        # Never a column as it is: a quantile sketch of a small window keeps every value
        # exactly, so a raw feature would leave the device (the privacy test caught it).
        flat = x.reshape(x.shape[0], -1).astype(np.float64)
        out[:, 0], out[:, 1] = flat.mean(-1), flat.std(-1)
    return out


_PROJECTIONS: dict[int, np.ndarray] = {}


def _projection(dim: int) -> np.ndarray:
    """A fixed random projection (seed 0) from `dim` to OUTPUT_SLOTS, the same on every device
    and at release time, so that projected embeddings are comparable across the fleet."""
    if dim not in _PROJECTIONS:
        rng = np.random.default_rng(0)
        _PROJECTIONS[dim] = rng.standard_normal((dim, OUTPUT_SLOTS)) / math.sqrt(dim)
    return _PROJECTIONS[dim]


def output_features(y: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Per-row (confidence, predicted class (-1 none), output statistics, confidence kind).

    probabilities: top-1 probability; logits: margin between the two largest logits; a sequence
    of distributions (N, T, C) of either: mean entropy per position (nats), no class; regression:
    no confidence, the first value per row as out0; embedding: a seeded random projection.
    """
    y = _rows(y)
    rows = y.shape[0]
    flat = y.reshape(rows, -1).astype(np.float64)
    conf = np.full(rows, np.nan)
    cls = np.full(rows, -1, dtype=np.int64)
    feats = np.full((rows, OUTPUT_SLOTS), np.nan)
    ckind = "none"
    if kind in ("probabilities", "logits") and y.ndim >= 3 and y.shape[-1] >= 2:
        seq = y.reshape(rows, -1, y.shape[-1]).astype(np.float64)
        if kind == "logits":
            seq = np.exp(seq - seq.max(-1, keepdims=True))
            seq /= seq.sum(-1, keepdims=True)
        ent = -(seq * np.log(np.where(seq > 0, seq, 1.0))).sum(-1)
        conf, ckind = ent.mean(-1), "entropy"
    elif kind in ("probabilities", "logits") and flat.shape[1] >= 2:
        cls = flat.argmax(-1)
        top2 = np.sort(flat, axis=-1)[:, -2:]
        if kind == "probabilities":
            conf, ckind = top2[:, 1], "top1"
        else:
            conf, ckind = top2[:, 1] - top2[:, 0], "margin"
    elif kind == "regression":
        feats[:, 0] = flat[:, 0]
    elif kind == "embedding":
        feats = flat @ _projection(flat.shape[1])
    return conf, cls, feats, ckind


def row_features(
    inputs: Any, outputs: Any, *, input_kind: str | None = None, output_kind: str | None = None
) -> dict[str, Any]:
    """Everything a window takes from one call: per-row arrays keyed by slot, the predicted
    classes, and the kinds chosen. Shared by the device and by `reference_from_data`."""
    x, y = _primary(inputs), _primary(outputs)
    ikind = input_kind or ("none" if x is None else _guess_input_kind(x))
    okind = output_kind or ("none" if y is None else _guess_output_kind(y))
    if ikind not in INPUT_KINDS or okind not in OUTPUT_KINDS:
        raise EdgeforgeError(
            f"telemetry kinds {ikind!r}/{okind!r} unknown; input kind is one of "
            f"{', '.join(INPUT_KINDS)} and output kind one of {', '.join(OUTPUT_KINDS)}"
        )
    rows = 0
    feats: dict[str, np.ndarray] = {}
    if x is not None and ikind != "none":
        fin = input_features(x, ikind)
        rows = fin.shape[0]
        feats.update({f"in{i}": fin[:, i] for i in range(INPUT_SLOTS)})
    cls = np.zeros(0, dtype=np.int64)
    ckind = "none"
    if y is not None and okind != "none":
        conf, cls, fout, ckind = output_features(y, okind)
        rows = max(rows, conf.shape[0])
        feats["confidence"] = conf
        feats.update({f"out{i}": fout[:, i] for i in range(OUTPUT_SLOTS)})
    return {
        "rows": rows,
        "features": feats,
        "classes": cls,
        "input_kind": ikind,
        "output_kind": okind,
        "confidence_kind": ckind,
    }


# --- device facts -----------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def device_facts(sysfs: Path = Path("/sys")) -> dict[str, float | int | None]:
    """What the OS says, where it says it: hottest thermal zone (°C), CPU throttled (current
    frequency below 90% of the maximum), battery charge (%) and whether on battery. Absent
    values are None: a container or a desktop without a battery is normal."""
    temps = []
    for zone in sorted((sysfs / "class" / "thermal").glob("thermal_zone*")):
        raw = _read(zone / "temp")
        if raw and raw.lstrip("-").isdigit():
            temps.append(int(raw) / 1000.0)
    throttled = None
    cpufreq = sysfs / "devices" / "system" / "cpu" / "cpu0" / "cpufreq"
    cur, top = _read(cpufreq / "scaling_cur_freq"), _read(cpufreq / "cpuinfo_max_freq")
    if cur and top and cur.isdigit() and top.isdigit() and int(top) > 0:
        throttled = int(int(cur) < 0.9 * int(top))
    battery = on_battery = None
    for supply in sorted((sysfs / "class" / "power_supply").glob("*")):
        if _read(supply / "type") == "Battery":
            cap = _read(supply / "capacity")
            battery = float(cap) if cap and cap.isdigit() else None
            status = _read(supply / "status")
            on_battery = None if status is None else int(status == "Discharging")
            break
    return {
        "temperature_c": max(temps) if temps else None,
        "throttled": throttled,
        "battery_pct": battery,
        "on_battery": on_battery,
    }


# --- one window -------------------------------------------------------------------------------


def clip_range(slot: str, confidence_kind: str) -> tuple[float, float]:
    """The range every value of `slot` is clipped to (the same on devices and in references)."""
    if slot == "latency_ms":
        return CLIP["latency_ms"]
    if slot == "confidence":
        return CLIP.get(confidence_kind, CLIP["feature"])
    return CLIP["feature"]


def clip_values(slot: str, values: np.ndarray, confidence_kind: str) -> np.ndarray:
    """Finite values of `slot`, clipped to `clip_range` (NaN and infinities are dropped)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = clip_range(slot, confidence_kind)
    return np.clip(v[np.isfinite(v)], lo, hi)


def window_id(payload: bytes) -> str:
    """The id a window travels under: the first 128 bits of its SHA-256, hex. A resent window
    (its acknowledgement lost) has the same id, so the server can count it once."""
    return hashlib.sha256(payload).hexdigest()[:32]


def _kll(k: int) -> Any:
    return ds.kll_floats_sketch(k)


@dataclass
class Window:
    """One model version's telemetry over one time window on one device (mutable while open)."""

    name: str
    version: int
    device_class: str
    start: float
    length_s: float
    input_kind: str = "none"
    output_kind: str = "none"
    confidence_kind: str = "none"
    num_classes: int = 0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    values: dict[str, list[np.ndarray]] = field(default_factory=dict)
    classes: list[np.ndarray] = field(default_factory=list)

    def add(self, row: dict[str, Any], latency_ms: float, num_classes: int = 0) -> None:
        """Take one call's rows; rows past MAX_ROWS are counted in `clipped`, not kept."""
        room = MAX_ROWS - self.counters["rows"]
        rows = row["rows"]
        take = max(0, min(rows, room))
        self.counters["clipped"] += rows - take
        self.counters["calls"] += 1
        if take == 0:
            return
        self.counters["rows"] += take
        self.input_kind, self.output_kind = row["input_kind"], row["output_kind"]
        self.confidence_kind = row["confidence_kind"]
        self.num_classes = max(self.num_classes, num_classes)
        self.values.setdefault("latency_ms", []).append(np.array([latency_ms], dtype=np.float64))
        for slot, arr in row["features"].items():
            self.values.setdefault(slot, []).append(np.asarray(arr[:take], dtype=np.float64))
        if row["classes"].size:
            self.classes.append(row["classes"][:take])

    def _clip_range(self, slot: str) -> tuple[float, float]:
        return clip_range(slot, self.confidence_kind)

    def clipped_values(self, slot: str) -> np.ndarray:
        arrs = self.values.get(slot)
        if not arrs:
            return np.zeros(0)
        return clip_values(slot, np.concatenate(arrs), self.confidence_kind)

    def class_counts(self) -> dict[int, int]:
        if not self.classes:
            return {}
        c = np.concatenate(self.classes)
        c = np.minimum(c[c >= 0], MAX_CLASS_ID)  # -1: an output without a class
        ids, counts = np.unique(c, return_counts=True)
        return {int(i): int(n) for i, n in zip(ids, counts, strict=True)}

    def to_bytes(
        self,
        *,
        facts: Mapping[str, Any] | None = None,
        spool_dropped: int = 0,
        epsilon: float | None = None,
        feature_range: tuple[float, float] = (-10.0, 10.0),
    ) -> bytes:
        """The fixed-size payload (`PAYLOAD_SIZE` bytes); with `epsilon`, noised through OpenDP
        (the caller charges the ledger first) on histograms over the clip ranges, the input and
        output statistics over `feature_range` (values outside are clipped to it)."""
        counters = dict(self.counters, spool_dropped=spool_dropped)
        values = {s: self.clipped_values(s) for s in SLOTS}
        classes = self.class_counts()
        if epsilon is not None:
            values, classes, counters = _privatize(
                self, values, classes, counters, epsilon, feature_range
            )
        facts = facts or {}

        def f(v: Any) -> float:
            return float("nan") if v is None else float(v)

        def b(v: Any) -> int:
            return -1 if v is None else int(v)

        header = _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            _fixed(self.name, 64, "model name"),
            _fixed(self.device_class, 32, "device class"),
            int(self.version),
            OUTPUT_KINDS.index(self.output_kind),
            INPUT_KINDS.index(self.input_kind),
            CONFIDENCE_KINDS.index(self.confidence_kind),
            1 if epsilon is not None else 0,
            float(self.start),
            float(self.length_s),
            *(min(int(counters[c]), 2**32 - 1) for c in _COUNTERS),
            float(epsilon or 0.0),
            f(facts.get("temperature_c")),
            b(facts.get("throttled")),
            f(facts.get("battery_pct")),
            b(facts.get("on_battery")),
            min(int(self.num_classes), 2**32 - 1),
        )
        parts = [header]
        for slot in SLOTS:
            k = _SLOT_K[slot]
            sk = _kll(k)
            if values[slot].size:
                sk.update(values[slot].astype(np.float32))
            parts.append(_encode_kll(sk, k))
        fi = ds.frequent_strings_sketch(LG_CLASSES)
        for cid, n in classes.items():
            if n > 0:
                fi.update(str(cid), int(n))
        parts.append(_encode_classes(fi))
        payload = b"".join(parts)
        assert len(payload) == PAYLOAD_SIZE, (len(payload), PAYLOAD_SIZE)
        return payload


def _fixed(text: str, size: int, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > size:
        raise EdgeforgeError(f"{what} {text!r} is longer than {size} bytes; choose a shorter one")
    return raw


def _encode_kll(sk: Any, k: int) -> bytes:
    """A KLL sketch's retained items by level, zero-padded to the slot of its k."""
    size = _KLL_SLOT[k]
    if sk.is_empty():
        return _KLL_HEAD.pack(0, math.nan, math.nan, 0, *([0] * MAX_LEVELS)) + bytes(
            size - _KLL_HEAD.size
        )
    by_level: dict[int, list[float]] = {}
    for item, weight in sk:
        by_level.setdefault(int(weight).bit_length() - 1, []).append(item)
    levels = max(by_level) + 1
    counts = [len(by_level.get(h, [])) for h in range(MAX_LEVELS)]
    if levels > MAX_LEVELS or sum(counts) > _KLL_ITEMS[k]:  # cannot happen for n <= MAX_ROWS
        raise AssertionError(f"KLL k={k} n={sk.n}: {sum(counts)} items, {levels} levels")
    items = np.concatenate(
        [np.sort(np.asarray(by_level.get(h, []), np.float32)) for h in range(levels)]
    )
    head = _KLL_HEAD.pack(int(sk.n), sk.get_min_value(), sk.get_max_value(), levels, *counts)
    blob = head + items.astype("<f4").tobytes()
    return blob + bytes(size - len(blob))


def _encode_classes(fi: Any) -> bytes:
    items = fi.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES)
    pairs = sorted((int(item), int(est)) for item, est, _lb, _ub in items)[:MAX_CLASS_ITEMS]
    blob = _CLASS_HEAD.pack(min(int(fi.total_weight), 2**32 - 1), len(pairs))
    blob += b"".join(struct.pack("<II", cid, n) for cid, n in pairs)
    return blob + bytes(_CLASS_SLOT - len(blob))


@dataclass
class Sample:
    """A decoded KLL sketch: its retained items and their weights (powers of two). `n` is the
    number of values the device summarised."""

    values: np.ndarray
    weights: np.ndarray
    min: float
    max: float

    @property
    def n(self) -> int:
        return int(self.weights.sum())

    def is_empty(self) -> bool:
        return self.n == 0

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        order = np.argsort(self.values, kind="stable")
        v, cum = self.values[order], np.cumsum(self.weights[order]) / self.n
        return [float(v[min(np.searchsorted(cum, q - 1e-12), len(v) - 1)]) for q in qs]


def _decode_kll(buf: bytes, k: int) -> Sample:
    n, lo, hi, levels, *counts = _KLL_HEAD.unpack_from(buf, 0)
    total = sum(counts)
    if n > MAX_ROWS or levels > MAX_LEVELS or total > _KLL_ITEMS[k] or any(counts[levels:]):
        raise EdgeforgeError(f"telemetry sketch claims {n} values in {total} items; refused")
    weights = np.repeat(2 ** np.arange(MAX_LEVELS, dtype=np.int64), counts)
    if int(weights.sum()) != n:
        raise EdgeforgeError("telemetry sketch weights do not add up to its count; refused")
    values = np.frombuffer(buf, dtype="<f4", count=total, offset=_KLL_HEAD.size).astype(np.float32)
    if n and not (np.isfinite(values).all() and math.isfinite(lo) and math.isfinite(hi)):
        raise EdgeforgeError("telemetry sketch holds a value that is not finite; refused")
    return Sample(values, weights, lo, hi)


def _decode_classes(buf: bytes) -> tuple[dict[int, int], int]:
    total, entries = _CLASS_HEAD.unpack_from(buf, 0)
    if entries > MAX_CLASS_ITEMS or total > MAX_ROWS:
        raise EdgeforgeError(f"telemetry class table claims {total} rows; refused")
    pairs = np.frombuffer(buf, dtype="<u4", count=2 * entries, offset=_CLASS_HEAD.size)
    ids, counts = pairs[0::2].astype(np.int64), pairs[1::2].astype(np.int64)
    if (ids > MAX_CLASS_ID).any() or len(set(ids.tolist())) != entries or counts.sum() > total:
        raise EdgeforgeError("telemetry class table is inconsistent; refused")
    return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}, int(total)


# --- local differential privacy ---------------------------------------------------------------


def _opendp() -> Any:
    try:
        import opendp.prelude as dp
    except ImportError as exc:
        raise EdgeforgeError(
            "local differential privacy (epsilon) needs OpenDP, which is not installed; install "
            "edgeforge[fleet] (or opendp>=0.16) on the device, or leave epsilon unset"
        ) from exc
    dp.enable_features("contrib")
    return dp


def _edges(lo: float, hi: float, log: bool) -> np.ndarray:
    if log:
        return np.geomspace(lo, hi, DP_BINS + 1)
    return np.linspace(lo, hi, DP_BINS + 1)


@functools.lru_cache(maxsize=16)
def _laplace_scale(sensitivity: int, epsilon: float) -> float:
    """A Laplace scale OpenDP certifies as `epsilon`-DP at this L1 sensitivity: sensitivity /
    epsilon (exact for the discrete Laplace), nudged up until OpenDP's privacy map agrees
    (its binary search costs seconds on a small device)."""
    dp = _opendp()
    space = (dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int))
    scale = sensitivity / epsilon
    while dp.m.make_laplace(*space, scale=scale).map(sensitivity) > epsilon:
        scale *= 1.0 + 1e-9
    return scale


def _privatize(
    window: Window,
    values: dict[str, np.ndarray],
    classes: dict[int, int],
    counters: dict[str, int],
    epsilon: float,
    feature_range: tuple[float, float],
) -> tuple[dict[str, np.ndarray], dict[int, int], dict[str, int]]:
    """Laplace noise (OpenDP, integer counts) on one vector holding every row-dependent number:
    a DP_BINS histogram per slot over its clip range, the class counts over 0..num_classes-1
    and the row, clipped, call and error counters. Adding or removing one row changes each of
    those parts by at most 2 (1 for the row itself, and 1 more when the MAX_ROWS cap moves
    another row between summarised and clipped), so the L1 sensitivity is twice the number of
    parts; the scale is what OpenDP certifies for `epsilon`. The noisy histograms are turned
    back into sketches (bin centres repeated), so the server merges them like any window.
    Classes beyond the first 1,024 are not released in a private window."""
    dp = _opendp()
    hists, edges = [], {}
    for slot in SLOTS:
        lo, hi = window._clip_range(slot)
        if slot not in ("latency_ms", "confidence"):
            lo, hi = feature_range
        e = _edges(lo, hi, slot == "latency_ms")
        edges[slot] = e
        hists.append(np.histogram(values[slot], bins=e)[0])
    ncls = min(window.num_classes, 1024)
    cls_vec = np.array([classes.get(i, 0) for i in range(ncls)], dtype=np.int64)
    count_names = ("rows", "clipped", "calls", "errors")
    vec = np.concatenate([*hists, cls_vec, [counters[c] for c in count_names]]).astype(int)
    parts = 2 * (len(SLOTS) + (1 if ncls else 0) + len(count_names))
    space = (dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int))
    scale = _laplace_scale(parts, float(epsilon))
    noisy = np.maximum(np.asarray(dp.m.make_laplace(*space, scale=scale)(vec.tolist())), 0)
    out_values, at = {}, 0
    for slot in SLOTS:
        e = edges[slot]
        centres = np.sqrt(e[:-1] * e[1:]) if slot == "latency_ms" else (e[:-1] + e[1:]) / 2
        counts = noisy[at : at + DP_BINS]
        at += DP_BINS
        if values[slot].size == 0:
            counts = np.zeros_like(counts)  # an unused slot stays empty (kinds are public)
        total = counts.sum()
        if total > MAX_ROWS:  # keep the sketch within its slot: scale down, keep the shape
            counts = np.floor(counts * (MAX_ROWS / total)).astype(int)
        out_values[slot] = np.repeat(centres, counts)
    cls_counts = noisy[at : at + ncls]
    if cls_counts.sum() > MAX_ROWS:
        cls_counts = np.floor(cls_counts * (MAX_ROWS / cls_counts.sum())).astype(int)
    out_classes = {i: int(n) for i, n in enumerate(cls_counts) if n > 0}
    at += ncls
    out_counters = dict(counters)
    for name, n in zip(count_names, noisy[at : at + len(count_names)], strict=True):
        out_counters[name] = int(n)
    out_counters["rows"] = min(out_counters["rows"], MAX_ROWS)
    return out_values, out_classes, out_counters


# --- crash-safe files -------------------------------------------------------------------------


class EpsilonLedger:
    """The device's privacy budget on disk: `budget` in total, `spent` so far, `refused` windows.

    `charge(eps)` persists the new spend before returning True, or counts a refusal and returns
    False when `spent + eps` would pass `budget`: the budget is never exceeded, even across
    crashes (a crash after the charge loses a window, never over-spends)."""

    def __init__(self, path: Path, budget: float) -> None:
        if not budget > 0:
            raise EdgeforgeError(f"epsilon budget {budget} must be > 0")
        self.path = path
        self.budget = float(budget)
        self.spent = 0.0
        self.refused = 0
        if path.exists():
            data = json.loads(path.read_text())
            self.spent, self.refused = float(data["spent"]), int(data["refused"])

    def charge(self, epsilon: float) -> bool:
        if self.spent + epsilon > self.budget * (1 + 1e-12):
            self.refused += 1
            self._save()
            return False
        self.spent += epsilon
        self._save()
        return True

    def _save(self) -> None:
        doc = {"budget": self.budget, "spent": self.spent, "refused": self.refused}
        write_atomic(self.path, json.dumps(doc).encode())

    def to_dict(self) -> dict[str, float | int]:
        return {"budget": self.budget, "spent": self.spent, "refused": self.refused}


# --- the spool --------------------------------------------------------------------------------


class Spool:
    """Closed windows waiting for upload, one file each, named `<end time µs>-<id>.win`.

    Bounded by `max_bytes` and `max_age_s` (from a window's end): `put` and `prune` drop the
    oldest first and add them to `dropped` (persisted in `spool.json`). Files are written
    crash-safe; leftover temp files are removed on open."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 4 << 20,
        max_age_s: float = 30 * 86400.0,
    ) -> None:
        if max_bytes < PAYLOAD_SIZE:
            raise EdgeforgeError(
                f"spool max_bytes {max_bytes} is below one window ({PAYLOAD_SIZE})"
            )
        self.path = path
        self.max_bytes = int(max_bytes)
        self.max_age_s = float(max_age_s)
        path.mkdir(parents=True, exist_ok=True)
        for tmp in path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        self._meta = path / "spool.json"
        self.dropped = json.loads(self._meta.read_text())["dropped"] if self._meta.exists() else 0

    def files(self) -> list[Path]:
        return sorted(self.path.glob("*.win"))

    def put(self, payload: bytes, end: float, *, now: float) -> str:
        wid = window_id(payload)
        write_atomic(self.path / f"{int(end * 1e6):020d}-{wid}.win", payload)
        self.prune(now=now)
        return wid

    def prune(self, *, now: float) -> int:
        """Drop windows older than max_age_s, then the oldest until within max_bytes."""
        files = self.files()
        drop = [f for f in files if int(f.name.split("-")[0]) / 1e6 < now - self.max_age_s]
        keep = [f for f in files if f not in drop]
        while keep and sum(f.stat().st_size for f in keep) > self.max_bytes:
            drop.append(keep.pop(0))
        for f in drop:
            f.unlink(missing_ok=True)
        if drop:
            self.dropped += len(drop)
            write_atomic(self._meta, json.dumps({"dropped": self.dropped}).encode())
        return len(drop)

    def pending(self, limit: int | None = None) -> list[tuple[str, bytes]]:
        out = []
        for f in self.files()[:limit]:
            out.append((f.stem.split("-", 1)[1], f.read_bytes()))
        return out

    def remove(self, ids: Iterable[str]) -> None:
        wanted = set(ids)
        for f in self.files():
            if f.stem.split("-", 1)[1] in wanted:
                f.unlink(missing_ok=True)

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files())


# --- the device entry point -------------------------------------------------------------------


class Telemetry:
    """Per-device telemetry: open windows in memory, closed ones in the spool.

    A window is keyed by (model name, version) and the window period containing the call
    (`window_s`, aligned to the epoch so that devices' windows line up). Windows close when
    their period ends (checked on every call and on `drain`). An open window is lost if the
    process dies: at most `window_s` of summaries, never a partial payload.
    """

    def __init__(
        self,
        state: Path,
        *,
        device_class: str = "",
        window_s: float = 3600.0,
        epsilon: float | None = None,
        epsilon_budget: float | None = None,
        dp_feature_range: tuple[float, float] = (-10.0, 10.0),
        spool_max_bytes: int = 4 << 20,
        spool_max_age_s: float = 30 * 86400.0,
        clock: Callable[[], float] = time.time,
        sysfs: Path = Path("/sys"),
    ) -> None:
        self.state = Path(state)
        self.state.mkdir(parents=True, exist_ok=True)
        self.device_class = device_class
        self.window_s = float(window_s)
        self.clock = clock
        self.sysfs = sysfs
        self.spool = Spool(
            self.state / "spool", max_bytes=spool_max_bytes, max_age_s=spool_max_age_s
        )
        self.epsilon = epsilon
        self.dp_feature_range = dp_feature_range
        self.ledger: EpsilonLedger | None = None
        if epsilon is not None:
            if not epsilon > 0:
                raise EdgeforgeError(f"telemetry epsilon {epsilon} must be > 0, or leave it unset")
            if epsilon_budget is None:
                raise EdgeforgeError(
                    "telemetry epsilon is set without a budget; give epsilon_budget, the total "
                    "the device may ever spend"
                )
            _opendp()  # fail now, not at the first window, when OpenDP is missing
            self.ledger = EpsilonLedger(self.state / "epsilon.json", epsilon_budget)
        self._model: tuple[str, int, str | None, str | None, int] | None = None
        self.write_failures = 0  # windows lost to a disk that refused the write
        self._open: dict[tuple[str, int, float], Window] = {}

    def set_model(
        self,
        name: str,
        version: int,
        *,
        output_kind: str | None = None,
        input_kind: str | None = None,
        num_classes: int = 0,
    ) -> None:
        """The model `observe` records for from now on (the agent calls it on activation).
        Kinds left None are guessed from the arrays (an embedding must be named)."""
        _fixed(name, 64, "model name")
        self._model = (name, int(version), output_kind, input_kind, int(num_classes))

    def _window(self, name: str, version: int, now: float) -> Window:
        start = math.floor(now / self.window_s) * self.window_s
        key = (name, version, start)
        if key not in self._open:
            self._open[key] = Window(name, version, self.device_class, start, self.window_s)
        return self._open[key]

    def _current(self, now: float | None) -> tuple[Window, float] | None:
        if self._model is None:
            return None
        t = self.clock() if now is None else now
        if any(w.start + w.length_s <= t for w in self._open.values()):
            self.close_due(now=t)  # the spool is touched only when a window ends
        return self._window(self._model[0], self._model[1], t), t

    def observe(
        self, feed: Any, outputs: Any, latency_ms: float, *, now: float | None = None
    ) -> None:
        """Summarise one inference call (a batch) of the active model. Never raises on odd
        arrays: a call it cannot summarise is counted as rows=0, calls+1."""
        cur = self._current(now)
        if cur is None:
            return
        window, _ = cur
        _, _, okind, ikind, ncls = self._model  # type: ignore[misc]
        try:
            row = row_features(feed, outputs, input_kind=ikind, output_kind=okind)
        except (ValueError, TypeError, IndexError, EdgeforgeError):
            window.counters["calls"] += 1
            return
        if not ncls and row["output_kind"] in ("probabilities", "logits"):
            y = _primary(outputs)
            ncls = int(y.shape[-1]) if y is not None and y.ndim else 0
        window.add(row, float(latency_ms), ncls)

    def record_error(self, *, now: float | None = None) -> None:
        cur = self._current(now)
        if cur is not None:
            cur[0].counters["errors"] += 1

    def record_outcome(self, kind: str, ok: bool, *, now: float | None = None) -> None:
        if kind not in ("canary", "health"):
            raise EdgeforgeError(f"telemetry outcome {kind!r} is neither 'canary' nor 'health'")
        cur = self._current(now)
        if cur is not None:
            cur[0].counters[f"{kind}_{'pass' if ok else 'fail'}"] += 1

    def close_due(self, *, now: float | None = None, everything: bool = False) -> int:
        """Close windows whose period has ended (all of them with `everything`) into the spool
        and prune it; returns how many were spooled."""
        t = self.clock() if now is None else now
        done = 0
        for key in sorted(self._open, key=lambda k: k[2]):
            w = self._open[key]
            if everything or w.start + w.length_s <= t:
                del self._open[key]
                done += self._release(w, t)
        self.spool.prune(now=t)  # the age bound holds even when nothing new closes
        return done

    def _release(self, w: Window, now: float) -> int:
        """Spool one closed window. A full or broken disk drops the window (counted), it never
        reaches predict(); with a privacy budget the charge is persisted first, and a charge
        that cannot be persisted releases nothing."""
        try:
            if self.ledger is not None and not self.ledger.charge(float(self.epsilon)):  # type: ignore[arg-type]
                return 0  # withheld: the budget would be exceeded (counted in the ledger)
            payload = w.to_bytes(
                facts=device_facts(self.sysfs),
                spool_dropped=self.spool.dropped,
                epsilon=self.epsilon,
                feature_range=self.dp_feature_range,
            )
            self.spool.put(payload, w.start + w.length_s, now=now)
        except OSError:
            self.spool.dropped += 1  # in memory; persisted with the next successful write
            self.write_failures += 1
            return 0
        return 1

    def drain(
        self, *, now: float | None = None, limit: int = DRAIN_LIMIT, flush: bool = False
    ) -> list[dict[str, str]]:
        """The spooled windows to send with the next report, oldest first:
        `[{"id": hex, "payload": base64}]`, at most `limit` (each entry is `ENTRY_BYTES` of
        JSON; the default 16 make ~200 kB, inside the report's 256 KiB limit with room for
        events). They stay spooled until `ack(ids)`; the id is the payload's hash, so the
        server can count a resent one once."""
        t = self.clock() if now is None else now
        self.close_due(now=t, everything=flush)
        return [
            {"id": wid, "payload": base64.b64encode(p).decode("ascii")}
            for wid, p in self.spool.pending(limit)
        ]

    def ack(self, ids: Sequence[str]) -> None:
        """Forget windows the server accepted."""
        self.spool.remove(ids)

    def status(self) -> dict[str, Any]:
        return {
            "open_windows": len(self._open),
            "spooled": len(self.spool.files()),
            "spool_bytes": self.spool.size_bytes(),
            "spool_dropped": self.spool.dropped,
            "write_failures": self.write_failures,
            "epsilon": None if self.ledger is None else self.ledger.to_dict(),
        }


# --- decoding (server side, and tests) --------------------------------------------------------


@dataclass
class WindowSummary:
    """A decoded payload: header fields and the deserialised sketches."""

    name: str
    version: int
    device_class: str
    start: float
    length_s: float
    input_kind: str
    output_kind: str
    confidence_kind: str
    private: bool
    epsilon: float
    num_classes: int
    counters: dict[str, int]
    facts: dict[str, float | int | None]
    sketches: dict[str, Sample]  # slot -> the KLL sketch's retained items
    classes: dict[int, int]  # class id -> count (the frequent-items sketch's estimates)
    class_total: int  # rows with a predicted class (classes not tracked = the rest)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "device_class": self.device_class,
            "start": self.start,
            "length_s": self.length_s,
            "input_kind": self.input_kind,
            "output_kind": self.output_kind,
            "confidence_kind": self.confidence_kind,
            "private": self.private,
            "epsilon": self.epsilon,
            "num_classes": self.num_classes,
            "counters": dict(self.counters),
            "facts": dict(self.facts),
            "n": {s: int(sk.n) for s, sk in self.sketches.items()},
        }


def decode_window(payload: bytes | str) -> WindowSummary:
    """Parse a payload (bytes or its base64); EdgeforgeError if it is not one."""
    if isinstance(payload, str):
        try:
            payload = base64.b64decode(payload, validate=True)
        except ValueError as exc:
            raise EdgeforgeError("telemetry payload is not base64") from exc
    if len(payload) != PAYLOAD_SIZE or payload[:4] != MAGIC:
        raise EdgeforgeError(
            f"telemetry payload of {len(payload)} bytes is not a format-{FORMAT_VERSION} window "
            f"({PAYLOAD_SIZE} bytes starting {MAGIC!r})"
        )
    h = _HEADER.unpack_from(payload, 0)
    if h[1] != FORMAT_VERSION:
        raise EdgeforgeError(f"telemetry format {h[1]} unknown; this server reads {FORMAT_VERSION}")
    try:
        (name, dclass, version, ok, ik, ck, flags, start, length) = (
            h[2].rstrip(b"\0").decode(),
            h[3].rstrip(b"\0").decode(),
            *h[4:11],
        )
        counters = dict(zip(_COUNTERS, h[11:20], strict=True))
        eps, temp, thr, bat, onb, ncls = h[20:26]
        at = _HEADER.size
        sketches = {}
        for slot in SLOTS:
            k = _SLOT_K[slot]
            sketches[slot] = _decode_kll(payload[at : at + _KLL_SLOT[k]], k)
            at += _KLL_SLOT[k]
        classes, class_total = _decode_classes(payload[at:])
        okind, ikind, ckind = OUTPUT_KINDS[ok], INPUT_KINDS[ik], CONFIDENCE_KINDS[ck]
    except (UnicodeDecodeError, IndexError, ValueError, struct.error) as exc:
        raise EdgeforgeError(f"telemetry payload is corrupt: {exc}") from exc
    # A device may lie; what it may not do is weigh more than one honest window (clipping,
    # server side, above and in the decoders) or crash the server.
    if counters["rows"] > MAX_ROWS:
        raise EdgeforgeError(f"telemetry window claims more than {MAX_ROWS} rows; refused")
    if not (math.isfinite(start) and math.isfinite(length) and length > 0):
        raise EdgeforgeError("telemetry window has no valid time span; refused")

    def nan_none(v: float) -> float | None:
        return None if math.isnan(v) else v

    return WindowSummary(
        name=name,
        version=version,
        device_class=dclass,
        start=start,
        length_s=length,
        input_kind=ikind,
        output_kind=okind,
        confidence_kind=ckind,
        private=bool(flags & 1),
        epsilon=eps,
        num_classes=ncls,
        counters=counters,
        facts={
            "temperature_c": nan_none(temp),
            "throttled": None if thr < 0 else thr,
            "battery_pct": nan_none(bat),
            "on_battery": None if onb < 0 else onb,
        },
        sketches=sketches,
        classes=classes,
        class_total=class_total,
    )
