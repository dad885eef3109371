"""The user's limits, the Pareto front, and the choice among candidates.

What a caller can rely on:
- the front is taken over (size, latency on the device, accuracy drop), all three minimised;
  a candidate whose accuracy was not measured counts as the worst on accuracy, so it is on
  the front only when it is strictly smaller or faster than every measured one;
- a candidate is chosen only if it meets every limit given; under an accuracy limit that
  means its drop was measured (on the held-out part of the data) and is within the limit;
- among those, the lowest latency on the device wins, then the smaller size;
- when none meets every limit, `unmet` names each limit that no candidate met on its own,
  with the candidate that came closest and its value.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from edgeforge.errors import EdgeforgeError

__all__ = ["Limits", "choose", "pareto_front", "parse_bytes", "parse_ms", "parse_share"]

_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_MS_UNITS = {"": 1.0, "ms": 1.0, "s": 1e3, "us": 1e-3}


def _split(text: str, what: str) -> tuple[float, str]:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([a-zA-Z%]*)\s*", str(text))
    if not match:
        raise EdgeforgeError(f"{what} {text!r}: give a number with an optional unit")
    return float(match.group(1)), match.group(2).lower()


def parse_share(text: str | float | None) -> float | None:
    """'1%' or '0.01' -> 0.01 (a fraction)."""
    if text is None or isinstance(text, float | int):
        return None if text is None else float(text)
    value, unit = _split(text, "--max-accuracy-drop")
    if unit not in ("", "%"):
        raise EdgeforgeError(f"--max-accuracy-drop {text!r}: give a share such as 1% or 0.01")
    return value / 100 if unit == "%" else value


def parse_bytes(text: str | int | None) -> int | None:
    """'5MB', '512KiB', '1e6' -> bytes."""
    if text is None or isinstance(text, int | float):
        return None if text is None else int(text)
    value, unit = _split(text, "size")
    if unit not in _BYTE_UNITS:
        raise EdgeforgeError(f"{text!r}: units are {', '.join(u for u in _BYTE_UNITS if u)}")
    return int(value * _BYTE_UNITS[unit])


def parse_ms(text: str | float | None) -> float | None:
    """'10ms', '0.5s', '10' -> milliseconds."""
    if text is None or isinstance(text, int | float):
        return None if text is None else float(text)
    value, unit = _split(text, "--max-latency")
    if unit not in _MS_UNITS:
        raise EdgeforgeError(f"--max-latency {text!r}: units are ms, s or us")
    return value * _MS_UNITS[unit]


@dataclass(frozen=True)
class Limits:
    max_accuracy_drop: float | None = None  # fraction (0.01 = 1%)
    max_size_bytes: int | None = None
    max_latency_ms: float | None = None  # on the device (estimated)
    max_memory_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def given(self) -> dict[str, float]:
        return {k: v for k, v in self.to_dict().items() if v is not None}


# limit name -> (candidate field, flag, how to print a value)
FIELDS = {
    "max_accuracy_drop": ("accuracy_drop", "--max-accuracy-drop", lambda v: f"{v:.2%}"),
    "max_size_bytes": ("size_bytes", "--max-size", lambda v: f"{v / 1e6:.3g} MB"),
    "max_latency_ms": ("device_latency_ms", "--max-latency", lambda v: f"{v:.3g} ms"),
    "max_memory_bytes": ("memory_bytes", "--max-memory", lambda v: f"{v / 1e6:.3g} MB"),
}


def broken_limits(row: dict[str, Any], limits: Limits) -> list[str]:
    """Each limit `row` breaks, as a short reason; an unmeasured value breaks its limit."""
    reasons = []
    for name, bound in limits.given().items():
        field, flag, fmt = FIELDS[name]
        value = row.get(field)
        if value is None:
            reasons.append(f"{flag}: {field.replace('_', ' ')} not measured")
        elif value > bound + 1e-12:
            reasons.append(f"{flag}: {fmt(value)} > {fmt(bound)}")
    return reasons


def _key(row: dict[str, Any]) -> tuple[float, float, float]:
    inf = float("inf")

    def value(name: str) -> float:
        found = row.get(name)
        return inf if found is None else float(found)

    return value("size_bytes"), value("device_latency_ms"), value("accuracy_drop")


def pareto_front(rows: list[dict[str, Any]]) -> dict[str, str | None]:
    """id -> None if on the front, else the id of a candidate that dominates it."""
    keys = {row["id"]: _key(row) for row in rows}
    result: dict[str, str | None] = {}
    for row in rows:
        mine = keys[row["id"]]
        result[row["id"]] = next(
            (
                other
                for other, theirs in keys.items()
                if other != row["id"]
                and all(t <= m for t, m in zip(theirs, mine, strict=True))
                and any(t < m for t, m in zip(theirs, mine, strict=True))
            ),
            None,
        )
    return result


def choose(rows: list[dict[str, Any]], limits: Limits) -> tuple[str | None, list[dict[str, Any]]]:
    """(the chosen id or None, the limits nothing met with the closest candidate each)."""
    feasible = [row for row in rows if not broken_limits(row, limits)]
    if feasible:
        best = min(feasible, key=lambda r: (_key(r)[1], _key(r)[0], r["id"]))
        return best["id"], []
    unmet = []
    for name, bound in limits.given().items():
        field, flag, fmt = FIELDS[name]
        measured = [r for r in rows if r.get(field) is not None]
        if any(r[field] <= bound + 1e-12 for r in measured):
            continue
        closest = min(measured, key=lambda r: r[field]) if measured else None
        unmet.append(
            {
                "limit": name,
                "flag": flag,
                "bound": bound,
                "closest": closest["id"] if closest else None,
                "closest_value": closest[field] if closest else None,
                "text": f"no candidate meets {flag} {fmt(bound)}; closest: "
                + (f"{closest['id']} at {fmt(closest[field])}" if closest else "none measured"),
            }
        )
    if not unmet and limits.given():  # each limit is met by some candidate, never all at once
        fewest = min(rows, key=lambda r: (len(broken_limits(r, limits)), _key(r)[1]))
        unmet.append(
            {
                "limit": "all",
                "flag": "all limits together",
                "bound": None,
                "closest": fewest["id"],
                "closest_value": None,
                "text": "each limit is met by some candidate, but none meets all of them; "
                f"closest: {fewest['id']} ({'; '.join(broken_limits(fewest, limits))})",
            }
        )
    return None, unmet
