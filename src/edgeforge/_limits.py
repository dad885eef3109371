"""Memory and time limits for work on untrusted models.

Invariants:
- `memory_budget()` and `time_limit()` are what every verb that runs or analyses a model holds
  its work to: the `--memory-limit` / `--timeout` flags when given (the CLI stores them in
  `EDGEFORGE_MEMORY_LIMIT` / `EDGEFORGE_TIMEOUT`, so child processes see them too), else
  defaults sized to this machine (half its RAM; 600 s);
- `apply_child_limits` is called first thing in a child process that runs untrusted work: the
  kernel then ends an allocation past the memory budget (RLIMIT_AS) and a loop past the CPU
  time (RLIMIT_CPU), whatever the runtime does; the parent turns the child's death into one line.
"""

from __future__ import annotations

import contextlib
import os
import re

from edgeforge.errors import EdgeforgeError

__all__ = [
    "apply_child_limits",
    "memory_budget",
    "parse_bytes",
    "set_limits",
    "time_limit",
]

MEMORY_ENV = "EDGEFORGE_MEMORY_LIMIT"
TIMEOUT_ENV = "EDGEFORGE_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
# Address space is not resident memory: runtimes map libraries and reserve arenas they never
# touch, so the child's RLIMIT_AS is the budget plus this allowance.
_ADDRESS_SPACE_SLACK = 4 << 30
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_UNITS |= {"ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}


def parse_bytes(text: str | int | float, flag: str = "--memory-limit") -> int:
    """`4GB`, `512MiB`, `2e9` or a number of bytes -> bytes; EdgeforgeError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]i?)?b?\s*", str(text), re.I)
    value = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()] if match else 0.0
    if not match or not value >= 1 << 20 or value > 1 << 50:
        raise EdgeforgeError(f"{flag} {text!r}: give a size between 1 MB and 1 PB, e.g. {flag} 8GB")
    return int(value)


def set_limits(memory: str | int | None = None, timeout: float | None = None) -> None:
    """Set the budget and time limit for this process and the children it starts."""
    if memory is not None:
        os.environ[MEMORY_ENV] = str(parse_bytes(memory))
    if timeout is not None:
        if not (isinstance(timeout, (int, float)) and 0 < timeout < 10**7):  # NaN fails too
            raise EdgeforgeError(f"--timeout {timeout!r}: give seconds > 0, e.g. --timeout 600")
        os.environ[TIMEOUT_ENV] = repr(float(timeout))


def memory_budget() -> int:
    """Bytes the work on one model may use: `--memory-limit`, else half this machine's RAM."""
    given = os.environ.get(MEMORY_ENV)
    if given:
        return parse_bytes(given, MEMORY_ENV)
    return max(1 << 30, _meminfo("MemTotal") // 2)


def time_limit() -> float:
    """Seconds the work on one model may take: `--timeout`, else 600."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT
    return value if 0 < value < 10**7 else DEFAULT_TIMEOUT


def apply_child_limits(
    memory_bytes: int | None = None,
    cpu_seconds: float | None = None,
    *,
    address_space: bool = True,
) -> None:
    """Hold this (child) process to `memory_bytes` of address space (plus an allowance for
    mapped libraries) and `cpu_seconds` of CPU time; defaults: `memory_budget()` and four
    times `time_limit()` (CPU time counts every thread). Never raises a limit already lower.

    `address_space=False` leaves RLIMIT_AS alone, for work that starts a browser: Chromium
    reserves tens of GB of address space it never touches (V8's cage, WebAssembly guard
    regions) and would fail under the limit; the parent's time limit still holds."""
    import resource

    memory = memory_budget() if memory_bytes is None else memory_bytes
    cpu = time_limit() * 4 if cpu_seconds is None else cpu_seconds
    if address_space:
        _lower(resource, resource.RLIMIT_AS, memory + _ADDRESS_SPACE_SLACK)
    _lower(resource, resource.RLIMIT_CPU, int(cpu) + 1)
    _lower(resource, resource.RLIMIT_CORE, 0)  # a crashing converter writes no core file


def _lower(resource, which: int, value: int) -> None:
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    if soft == resource.RLIM_INFINITY or value < soft:
        # A limit we may not set: the parent's time limit still holds.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(which, (value, hard))


def _meminfo(key: str) -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30
