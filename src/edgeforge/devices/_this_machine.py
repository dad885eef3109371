"""Describe the host this process runs on as the device `this-machine`.

Invariants a caller can rely on:

- It never raises, whatever the OS: anything it cannot read (no `/proc` on macOS or Windows, a
  VM whose `/proc/cpuinfo` has no clock) becomes an absent figure with the reason recorded.
- Figures are derived from what the host reports, with the formula as the source:
  peak fp32 = physical cores usable by this process × clock × FP32 FLOP/cycle/core inferred from
  the CPU flags (avx512f: 64, assuming two 512-bit FMA units; avx2+fma: 32; otherwise 8).
  int8 = 4 × fp32 where the CPU has a dot-product instruction (x86 VNNI, Arm SDOT); fp16 =
  2 × fp32 where it has fp16 arithmetic (avx512_fp16, Arm asimdhp). These are upper bounds.
- Memory bandwidth is never guessed: it is absent until measured by `edgeforge calibrate
  --here`, whose stored result (`calibration_path()`) is used only on the host it was measured
  on (same CPU model and core counts: `host_fingerprint`).
- RAM is MemTotal from `/proc/meminfo`, lowered to the cgroup v2 memory limit when that is
  smaller (containers), else `os.sysconf`; tagged "measured".

GPUs and NPUs of the host are not detected: the device has one CPU compute unit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from edgeforge.devices import ComputeUnit, Device, Figure

__all__ = [
    "THIS_MACHINE_ALIASES",
    "THIS_MACHINE_ID",
    "HostFacts",
    "calibration_path",
    "describe_host",
    "host_fingerprint",
    "read_calibration",
    "read_host_facts",
    "this_machine",
]

THIS_MACHINE_ID = "this-machine"
THIS_MACHINE_ALIASES: tuple[str, ...] = ("local", "localhost")
# Flags of arithmetic the peaks do not show, named in the unit's `features` (bf16 decides
# whether `optimize` offers a bf16 recipe).
_FEATURE_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16", "avx512_vnni"})

_GHZ_IN_NAME = re.compile(r"(\d+(?:\.\d+)?)\s*GHz", re.IGNORECASE)
_BANDWIDTH_ABSENT = "unknown until measured by `edgeforge calibrate`"


@dataclass(frozen=True)
class HostFacts:
    """What the host says about itself; None where it does not say."""

    model_name: str
    system: str  # platform.system(): "Linux", "Darwin", "Windows"
    machine: str  # platform.machine(): "x86_64", "aarch64", "arm64"
    logical_cpus: int  # CPUs this process may run on (affinity, cgroup quota)
    physical_cores: int  # distinct cores among those CPUs; = logical_cpus when unknown
    clock_ghz: float | None
    clock_source: str
    flags: frozenset[str]
    ram_bytes: int | None
    ram_source: str


@functools.cache
def this_machine() -> Device:
    """The `this-machine` device for the running host, read once per process, with the memory
    bandwidth `edgeforge calibrate --here` measured on this host, when it did."""
    facts = read_host_facts()
    device = describe_host(facts)
    stored = read_calibration(facts)
    if stored is None:
        return device
    absent = {k: v for k, v in device.absent.items() if k != "memory_bandwidth_gbps"}
    bandwidth = Figure(
        round(float(stored["bandwidth_gbps"]), 2),
        "measured",
        f"`edgeforge calibrate --here` on {stored.get('date', '?')}: the best of large Adds "
        "in ONNX Runtime (two reads and one write per element)",
    )
    return dataclasses.replace(
        device, memory_bandwidth_gbps=bandwidth, absent=MappingProxyType(absent)
    )


def calibration_path() -> Path:
    """Where `calibrate --here` stores this machine's measured factors."""
    from edgeforge._cache import cache_dir

    return cache_dir() / "calibration" / "this-machine.json"


def host_fingerprint(facts: HostFacts) -> dict[str, object]:
    """What must match for a stored calibration to describe this host."""
    return {
        "model_name": facts.model_name,
        "machine": facts.machine,
        "physical_cores": facts.physical_cores,
        "logical_cpus": facts.logical_cpus,
    }


def read_calibration(facts: HostFacts | None = None) -> dict | None:
    """The stored `calibrate --here` result for this host; None when there is none, it is
    unreadable, or it was measured on another host."""
    try:
        stored = json.loads(calibration_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    facts = facts or read_host_facts()
    if not isinstance(stored, dict) or stored.get("host") != host_fingerprint(facts):
        return None
    if not isinstance(stored.get("bandwidth_gbps"), (int, float)) or "entry" not in stored:
        return None
    return stored


def read_host_facts(
    proc_dir: Path = Path("/proc"),
    sys_dir: Path = Path("/sys"),
    usable_cpus: Collection[int] | None = None,
) -> HostFacts:
    """Read the host's CPU, clock and RAM. Never raises for a missing or odd file.

    `proc_dir`, `sys_dir` and `usable_cpus` (CPU indices this process may use; default: its
    affinity) exist so that tests can describe a machine other than the one they run on.
    """
    blocks = _cpuinfo_blocks(_read(proc_dir / "cpuinfo"))
    if usable_cpus is None:
        usable_cpus = _affinity()
    usable = set(usable_cpus) if usable_cpus else None
    processors = [
        block
        for block in blocks
        if "processor" in block
        and block["processor"].isdigit()
        and (usable is None or int(block["processor"]) in usable)
    ]
    logical = len(usable) if usable else (len(processors) or os.cpu_count() or 1)
    quota = _cgroup_cpu_quota(sys_dir)
    if quota is not None:
        logical = max(1, min(logical, quota))
    core_ids = {(block.get("physical id"), block.get("core id")) for block in processors}
    if processors and all("core id" in block for block in processors):
        physical = max(1, min(logical, len(core_ids)))
    else:
        physical = logical

    merged: dict[str, str] = {}
    for block in blocks:
        for key, value in block.items():
            merged.setdefault(key, value)
    flags = frozenset((merged.get("flags") or merged.get("Features") or "").split())
    model_name = (
        merged.get("model name")
        or merged.get("Model")
        or merged.get("Hardware")
        or platform.processor()
        or platform.machine()
        or "unknown CPU"
    )
    clock_ghz, clock_source = _clock(processors or blocks, model_name, sys_dir)
    ram_bytes, ram_source = _ram(proc_dir, sys_dir)
    return HostFacts(
        model_name=" ".join(model_name.split()),
        system=platform.system(),
        machine=platform.machine(),
        logical_cpus=logical,
        physical_cores=physical,
        clock_ghz=clock_ghz,
        clock_source=clock_source,
        flags=flags,
        ram_bytes=ram_bytes,
        ram_source=ram_source,
    )


def describe_host(facts: HostFacts) -> Device:
    """The `this-machine` Device for `facts`: derived CPU peaks, measured RAM, absent bandwidth."""
    peak: dict[str, Figure] = {}
    unit_absent: dict[str, str] = {}
    flop_per_cycle, flop_reason = _fp32_flop_per_cycle(facts.flags)
    if facts.clock_ghz is None:
        for dtype in ("fp32", "fp16", "int8"):
            unit_absent[dtype] = f"no CPU clock found ({facts.clock_source})"
    else:
        basis = (
            f"{facts.physical_cores} cores × {facts.clock_ghz:.3g} GHz × {flop_per_cycle} FP32 "
            f"FLOP/cycle/core ({flop_reason}); cores: usable CPUs (affinity, cgroup quota) and "
            f"their /proc/cpuinfo core ids; clock: {facts.clock_source}"
        )
        fp32 = facts.physical_cores * facts.clock_ghz * flop_per_cycle
        peak["fp32"] = Figure(round(fp32, 1), "derived", basis)
        fp16_reason = _fp16_flag(facts.flags)
        if fp16_reason is None:
            unit_absent["fp16"] = (
                "no fp16 arithmetic flag (avx512_fp16, asimdhp): fp16 runs at the fp32 rate "
                "or slower"
            )
        else:
            peak["fp16"] = Figure(round(2 * fp32, 1), "derived", f"2 × fp32 ({fp16_reason})")
        int8_reason = _int8_flag(facts.flags)
        if int8_reason is None:
            unit_absent["int8"] = (
                "no dot-product flag (avx512_vnni, avx_vnni, asimddp): not derived"
            )
        else:
            peak["int8"] = Figure(round(4 * fp32, 1), "derived", f"4 × fp32 ({int8_reason})")

    device_absent = {"memory_bandwidth_gbps": _BANDWIDTH_ABSENT, "power_w": "not measured"}
    ram = budget = None
    if facts.ram_bytes is None:
        device_absent["ram_gb"] = facts.ram_source
        device_absent["size_budget_mb"] = "no RAM figure to take a share of"
    else:
        ram = Figure(round(facts.ram_bytes / 1e9, 2), "measured", facts.ram_source)
        budget = Figure(
            float(math.floor(facts.ram_bytes / 4 / 1e6)),
            "policy",
            "a quarter of RAM: the rest is left to the OS, the runtime, activations and the app",
        )
    return Device(
        id=THIS_MACHINE_ID,
        name=f"This machine: {facts.model_name} ({facts.physical_cores} cores)",
        kind="host",
        aliases=THIS_MACHINE_ALIASES,
        runtimes=_runtimes(facts.system, facts.machine),
        ram_gb=ram,
        memory_bandwidth_gbps=None,
        size_budget_mb=budget,
        compute=(
            ComputeUnit(
                kind="cpu",
                name=f"{facts.model_name}, {facts.physical_cores} cores",
                peak=MappingProxyType(peak),
                absent=MappingProxyType(unit_absent),
                features=tuple(sorted(facts.flags & _FEATURE_FLAGS)),
            ),
        ),
        power_w=None,
        notes=(
            f"Built at run time from the host ({facts.system} {facts.machine}, "
            f"{facts.logical_cpus} usable CPUs). Only the CPU is described; GPUs and NPUs are not "
            "detected. Peaks are upper bounds from the CPU flags; `edgeforge calibrate` measures."
        ),
        absent=MappingProxyType(device_absent),
    )


def _fp32_flop_per_cycle(flags: frozenset[str]) -> tuple[int, str]:
    if "avx512f" in flags:
        # An upper bound: parts with one 512-bit FMA unit, and AMD Zen 4, which runs 512-bit
        # instructions on 256-bit units, reach half of it.
        return 64, "avx512f: 2 FMA units × 16 fp32 lanes × 2 FLOP, assuming two 512-bit FMA units"
    if "avx2" in flags and "fma" in flags:
        return 32, "avx2+fma: 2 FMA units × 8 fp32 lanes × 2 FLOP"
    return 8, "no avx2+fma or avx512f flag: assumed 8, e.g. one 128-bit FMA or SSE add + mul"


def _fp16_flag(flags: frozenset[str]) -> str | None:
    if "avx512_fp16" in flags:
        return "avx512_fp16: 32 fp16 lanes per 512-bit FMA"
    if "asimdhp" in flags:
        return "asimdhp: 8 fp16 lanes per 128-bit FMA"
    return None


def _int8_flag(flags: frozenset[str]) -> str | None:
    for flag in ("avx512_vnni", "avx_vnni"):
        if flag in flags:
            return f"{flag}: a VNNI dot product does 4 int8 MACs per 32-bit lane per instruction"
    if "asimddp" in flags:
        return "asimddp: SDOT does 4 int8 MACs per 32-bit lane per instruction"
    return None


def _runtimes(system: str, machine: str) -> tuple[str, ...]:
    if system == "Darwin":
        return ("coreml", "onnxruntime", "executorch", "litert")
    if machine.lower() in ("x86_64", "amd64"):
        return ("onnxruntime", "openvino", "litert", "executorch")
    return ("onnxruntime", "litert", "executorch")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _cpuinfo_blocks(text: str | None) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per blank-line-separated block (a processor, or global lines)."""
    if not text:
        return []
    blocks: list[dict[str, str]] = []
    for chunk in re.split(r"\n\s*\n", text):
        block: dict[str, str] = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                block[key.strip()] = value.strip()
        if block:
            blocks.append(block)
    return blocks


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on macOS or Windows
        return None


def _cgroup_cpu_quota(sys_dir: Path) -> int | None:
    """CPUs allowed by a cgroup v2 quota ("200000 100000" -> 2), None when unlimited."""
    text = _read(sys_dir / "fs" / "cgroup" / "cpu.max")
    parts = text.split() if text else []
    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() and int(parts[1]) > 0:
        return max(1, math.ceil(int(parts[0]) / int(parts[1])))
    return None


def _clock(
    processors: list[dict[str, str]], model_name: str, sys_dir: Path
) -> tuple[float | None, str]:
    megahertz = [_number(block.get("cpu MHz")) for block in processors]
    known = [mhz for mhz in megahertz if mhz]
    if known:
        return max(known) / 1000, "highest 'cpu MHz' in /proc/cpuinfo (the clock when read)"
    match = _GHZ_IN_NAME.search(model_name)
    if match:
        return float(match.group(1)), f"the CPU model name ({model_name.strip()!r})"
    max_khz = _number(_read(sys_dir / "devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))
    if max_khz:
        return max_khz / 1e6, "cpu0 cpufreq/cpuinfo_max_freq (the highest clock, boost included)"
    return None, "/proc/cpuinfo, the model name and cpufreq give no clock"


def _ram(proc_dir: Path, sys_dir: Path) -> tuple[int | None, str]:
    ram_bytes: int | None = None
    source = ""
    for line in (_read(proc_dir / "meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                ram_bytes, source = int(parts[1]) * 1024, "/proc/meminfo MemTotal"
            break
    if ram_bytes is None:
        try:
            ram_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            source = "os.sysconf: SC_PHYS_PAGES × SC_PAGE_SIZE"
        except (AttributeError, ValueError, OSError):
            return None, "neither /proc/meminfo nor os.sysconf gives the RAM size"
        if ram_bytes <= 0:
            return None, "os.sysconf reports no RAM size"
    limit = (_read(sys_dir / "fs" / "cgroup" / "memory.max") or "").strip()
    if limit.isdigit() and 0 < int(limit) < ram_bytes:
        return int(limit), f"cgroup v2 memory.max (below {source})"
    return ram_bytes, source


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
