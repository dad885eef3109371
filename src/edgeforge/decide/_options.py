"""Reading `decide`'s options: byte sizes, positive numbers, the allowed choices, and the
combinations that contradict each other.

Invariants a caller can rely on:

- A bad value raises EdgeforgeError in one line naming the option (`--payload`, `--users`, ...)
  and, where it helps, an example of a good value; nothing is clamped or guessed.
- `parse_bytes` reads KB/MB/GB as powers of 1000 and KiB/MiB as powers of 1024, rounds up to a
  whole byte, and returns a value above 0.
- `tensor_bytes` counts a dynamic or unknown dimension as 1 and an unknown dtype as 4 bytes.
- `check_contradictions` refuses `--force cloud` / `--force hybrid` with an offline requirement
  or an offline network, and `--force cloud` with sensitive input; it never refuses `--force edge`.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from edgeforge.errors import EdgeforgeError

if TYPE_CHECKING:
    from edgeforge.decide.network import Network

__all__ = [
    "CHOICES",
    "PRIVACY",
    "check_contradictions",
    "parse_bytes",
    "positive",
    "tensor_bytes",
]

PRIVACY = ("none", "sensitive")
CHOICES = ("edge", "cloud", "hybrid")
_BYTES = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20}
_DTYPE_BYTES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}


def parse_bytes(text: str | int | float, option: str = "--payload") -> int:
    """'2048', '150KB', '1.5MB', '64KiB' -> bytes (KB = 1000, KiB = 1024); above 0."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _BYTES:
            raise EdgeforgeError(f"{option}: cannot read {text!r}; write bytes like 2048 or 150KB")
        value = float(match.group(1)) * _BYTES[unit]
    if not value > 0:
        raise EdgeforgeError(f"{option} must be above 0 bytes (got {text!r})")
    return math.ceil(value)


def tensor_bytes(specs: list[dict[str, Any]]) -> int:
    """Raw bytes of the tensors described by `specs` (`Profile.inputs` / `Profile.outputs`)."""
    total = 0
    for spec in specs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in (spec.get("shape") or [])]
        total += math.prod(shape) * _DTYPE_BYTES.get(str(spec.get("dtype")), 4)
    return total


def positive(value: float, option: str, example: str) -> float:
    """`value` as a float if it is finite and above 0; otherwise an error naming `option`."""
    if isinstance(value, bool) or not value > 0 or math.isinf(value):
        raise EdgeforgeError(f"{option} must be above 0 (got {value}); e.g. {option} {example}")
    return float(value)


def check_contradictions(
    force: str | None, net: Network, offline_required: bool, privacy: str
) -> None:
    """Refuse a `--force` that the offline, network or privacy options rule out."""
    if force not in ("cloud", "hybrid"):
        return
    if offline_required:
        raise EdgeforgeError(
            f"--offline-required contradicts --force {force}: the cloud needs a network; "
            f"drop one of them (or use --force edge)"
        )
    if net.offline:
        raise EdgeforgeError(
            f"--network offline contradicts --force {force}: the cloud cannot be reached; "
            "pass a network profile (e.g. --network 4g) or drop --force"
        )
    if force == "cloud" and privacy == "sensitive":
        raise EdgeforgeError(
            "--privacy sensitive contradicts --force cloud: the input would leave the device; "
            "use --force hybrid (only features leave) or --privacy none"
        )
