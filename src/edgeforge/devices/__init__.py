"""The device catalogue: what each edge target can do, with the source of every figure.

A `Device` holds a target's published specs (peak throughput per dtype for each compute unit,
memory bandwidth, RAM, a practical model-size budget, the runtimes that reach it). Callers can
rely on these invariants:

- Every figure is either a `Figure(value, tag, source)` or absent (`None`, with the reason in the
  owner's `absent` mapping). No figure is ever made up: `tag` says how far to trust it
  (`TAGS`), and `source` is a URL, a named page, or the formula and assumptions it came from.
- Units are SI with the unit in the field name: `ram_gb` and `memory_bandwidth_gbps` in GB and
  GB/s (10**9 bytes), `size_budget_mb` in MB (10**6 bytes), `power_w` in W, and `peak` in GOPS
  (GFLOPS for fp32/fp16, GOPS for int8), dense (no sparsity).
- Ids are kebab-case and unique; aliases (for example the device strings of
  `shared/data/edge_benchmarks.csv`) are unique across the catalogue, case-insensitively. A
  benchmark string is an alias only when it names the device at stock clocks and ran on a compute
  unit the catalogue lists; an overclocked board is its own entry (`raspberry-pi-5-oc-2900`).
  A unit may be listed with every peak absent: its rows then map, but cannot be costed.
- The catalogue ships as one TOML file per device in `catalog/`; each file is validated when it
  is first loaded, and the parsed catalogue is cached for the life of the process.
- `this-machine` is not a file: it is built at run time from the host (`/proc/cpuinfo`, CPU
  affinity, `/proc/meminfo`), and degrades to absent figures where the host does not say.

Nothing here imports torch, onnx or any runtime; `devices_table` imports rich when called.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from edgeforge.errors import EdgeforgeError

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "DEVICE_KINDS",
    "DTYPES",
    "RUNTIMES",
    "TAGS",
    "UNIT_KINDS",
    "ComputeUnit",
    "Device",
    "Figure",
    "devices_table",
    "get_device",
    "list_devices",
]

DTYPES: tuple[str, ...] = ("fp32", "fp16", "int8")
"""Dtypes a compute unit states a peak for: fp32/fp16 in GFLOPS, int8 in GOPS."""

TAGS: Mapping[str, str] = MappingProxyType(
    {
        "src": "taken from the named page",
        "derived": "computed from other figures; the formula and assumptions are the source",
        "recalled": "not checked against a page; verify before relying on it",
        "policy": "a choice we make (e.g. a size budget), with the reasoning as the source",
        "measured": "read or measured on the machine itself",
    }
)
"""How far to trust a figure, by tag."""

DEVICE_KINDS: tuple[str, ...] = (
    "sbc",
    "phone",
    "laptop",
    "browser",
    "accelerator",
    "host",
    "mcu",
)
UNIT_KINDS: tuple[str, ...] = ("cpu", "gpu", "npu", "tpu", "ane", "wasm", "webgpu")
RUNTIMES: tuple[str, ...] = (
    "onnxruntime",
    "onnxruntime-mobile",
    "openvino",
    "litert",
    "coreml",
    "executorch",
    "web",
    "tensorrt",
)


def _no_absent() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Figure:
    """One number with its provenance.

    `tag` is one of `TAGS`; `source` is never empty (a URL, a named page, or a formula).
    """

    value: float
    tag: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "tag": self.tag, "source": self.source}


@dataclass(frozen=True)
class ComputeUnit:
    """A CPU, GPU, NPU, ... of a device, with its dense peak throughput per dtype.

    `peak` maps a dtype of `DTYPES` to its `Figure` in GOPS; a dtype the unit has no figure for
    is missing from `peak` and its reason is in `absent` (dtype -> why). Both are read-only.
    `features` names arithmetic the unit has beyond its peaks, as CPU flags (`avx512_bf16`,
    `amx_bf16`): what decides whether a bf16 recipe is offered.
    """

    kind: str
    name: str
    peak: Mapping[str, Figure]
    absent: Mapping[str, str] = field(default_factory=_no_absent)
    features: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "peak": {dtype: fig.to_dict() for dtype, fig in self.peak.items()},
            "absent": dict(self.absent),
            "features": list(self.features),
        }


@dataclass(frozen=True)
class Device:
    """A target's published specs.

    A device has at least one compute unit and one runtime. A figure that is `None` is unknown
    or does not apply, and `absent` maps its field name (`ram_gb`, `memory_bandwidth_gbps`,
    `size_budget_mb`, `power_w`) to the reason.
    """

    id: str
    name: str
    kind: str
    aliases: tuple[str, ...]
    runtimes: tuple[str, ...]
    ram_gb: Figure | None
    memory_bandwidth_gbps: Figure | None
    size_budget_mb: Figure | None
    compute: tuple[ComputeUnit, ...]
    power_w: Figure | None = None
    notes: str = ""
    absent: Mapping[str, str] = field(default_factory=_no_absent)

    def peak_gops(self, dtype: str) -> Figure | None:
        """The highest peak for `dtype` over this device's compute units, or None if none has one.

        Raises EdgeforgeError for a dtype outside `DTYPES`.
        """
        if dtype not in DTYPES:
            raise EdgeforgeError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
        figures = [unit.peak[dtype] for unit in self.compute if dtype in unit.peak]
        return max(figures, key=lambda fig: fig.value, default=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: figures become `{value, tag, source}` dicts or None."""

        def figure(fig: Figure | None) -> dict[str, Any] | None:
            return None if fig is None else fig.to_dict()

        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "aliases": list(self.aliases),
            "runtimes": list(self.runtimes),
            "ram_gb": figure(self.ram_gb),
            "memory_bandwidth_gbps": figure(self.memory_bandwidth_gbps),
            "size_budget_mb": figure(self.size_budget_mb),
            "compute": [unit.to_dict() for unit in self.compute],
            "power_w": figure(self.power_w),
            "notes": self.notes,
            "absent": dict(self.absent),
        }


# The private modules import the dataclasses above from this package, so they are imported
# inside the functions below rather than at the top of this module.


def list_devices() -> list[Device]:
    """Every catalogue device plus `this-machine`, sorted by id."""
    from edgeforge.devices._catalog import load_catalog
    from edgeforge.devices._this_machine import this_machine

    return sorted([*load_catalog(), this_machine()], key=lambda device: device.id)


def get_device(name: str) -> Device:
    """The device whose id or alias is `name` (case- and surrounding-space-insensitive).

    Raises EdgeforgeError naming every valid id when nothing matches.
    """
    key = name.strip().casefold()
    devices = list_devices()
    for device in devices:
        if key == device.id or key in (alias.casefold() for alias in device.aliases):
            return device
    ids = ", ".join(device.id for device in devices)
    raise EdgeforgeError(f"unknown device {name!r}; valid ids: {ids}")


def _format_ops(figure: Figure | None) -> str:
    """'472 G', '1.28 T', '20 T'; a trailing '*' marks a recalled figure; '-' when absent."""
    if figure is None:
        return "-"
    value, prefix = figure.value, "G"
    for larger in ("T", "P"):
        if value < 999.5:  # 999.5 would print as "1e+03 G"
            break
        value, prefix = value / 1000, larger
    text = f"{value:.3g} {prefix}"
    return text + "*" if figure.tag == "recalled" else text


def _format_number(figure: Figure | None) -> str:
    if figure is None:
        return "-"
    value = figure.value
    text = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return text + "*" if figure.tag == "recalled" else text


def devices_table(devices: Iterable[Device]) -> Table:
    """A rich Table for the CLI: one row per device, peaks from its best compute unit."""
    from rich.table import Table

    table = Table(
        title="Devices",
        caption=(
            "Dense peaks of the best compute unit (G/T = 10^9/10^12 FLOP/s for fp32/fp16, op/s "
            "for int8); '-' = absent, see `--json` for why; '*' = recalled, not checked against "
            "a page."
        ),
    )
    for header in ("id", "name", "kind"):
        table.add_column(header, no_wrap=header == "id")
    for header in (*DTYPES, "bandwidth GB/s", "RAM GB", "size budget MB"):
        table.add_column(header, justify="right")
    table.add_column("runtimes")
    for device in devices:
        table.add_row(
            device.id,
            device.name,
            device.kind,
            *(_format_ops(device.peak_gops(dtype)) for dtype in DTYPES),
            _format_number(device.memory_bandwidth_gbps),
            _format_number(device.ram_gb),
            _format_number(device.size_budget_mb),
            ", ".join(device.runtimes),
        )
    return table
