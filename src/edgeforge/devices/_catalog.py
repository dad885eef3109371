"""Load and validate the device data files in `catalog/`.

A data file is `catalog/<id>.toml`. Its schema, enforced here so that a bad file fails loudly
on first use with the file and key named, never by silently dropping a figure:

    id = "kebab-case-id"            # must equal the file name without .toml
    name = "Human name"
    kind = "sbc"                    # one of DEVICE_KINDS
    aliases = ["CSV device string"] # may be empty
    runtimes = ["onnxruntime"]      # at least one, each one of RUNTIMES
    notes = "..."                   # optional
    ram_gb = <figure or absent>
    memory_bandwidth_gbps = <figure or absent>
    size_budget_mb = <figure or absent>
    power_w = <figure or absent>    # optional

    [[compute]]                     # at least one
    kind = "gpu"                    # one of UNIT_KINDS
    name = "..."
    peak.fp32 = <figure or absent>  # every dtype of DTYPES must be stated
    peak.fp16 = <figure or absent>
    peak.int8 = <figure or absent>
    features = ["avx512_bf16", "amx_bf16"]  # optional: arithmetic beyond the peaks (CPU flags)

where <figure> is `{ value = 472, tag = "src", source = "https://..." }` (value >= 0, tag one of
TAGS, source non-empty) and <absent> is `{ absent = "why there is no figure" }`. Unknown keys
are errors, so that a typo cannot hide a figure.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edgeforge.devices import (
    DEVICE_KINDS,
    DTYPES,
    RUNTIMES,
    TAGS,
    UNIT_KINDS,
    ComputeUnit,
    Device,
    Figure,
)
from edgeforge.devices._this_machine import THIS_MACHINE_ALIASES, THIS_MACHINE_ID
from edgeforge.errors import EdgeforgeError

__all__ = ["load_catalog", "load_device_file", "load_folder", "parse_device"]

_ID_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_FIGURE_FIELDS = ("ram_gb", "memory_bandwidth_gbps", "size_budget_mb")
_OPTIONAL_FIGURE_FIELDS = ("power_w",)
_REQUIRED_KEYS = ("id", "name", "kind", "aliases", "runtimes", *_FIGURE_FIELDS, "compute")
_KNOWN_KEYS = frozenset((*_REQUIRED_KEYS, *_OPTIONAL_FIGURE_FIELDS, "notes"))
_UNIT_KEYS = ("kind", "name", "peak")
_FIGURE_KEYS = ("value", "tag", "source")


class _Invalid(Exception):
    """A schema violation at `key` (a dotted path), turned into an EdgeforgeError by the caller."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


@functools.cache
def load_catalog() -> tuple[Device, ...]:
    """Every device file shipped in `edgeforge/devices/catalog`, sorted by id; read once."""
    return load_folder(files("edgeforge.devices") / "catalog")


def load_folder(folder: Path | Traversable) -> tuple[Device, ...]:
    """Every `*.toml` device file in `folder`, validated, sorted by id.

    Also checks that ids and aliases are unique (case-insensitively) across the folder and do not
    take `this-machine`'s names, since `get_device` must resolve each name to one device.
    """
    paths = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".toml")),
        key=lambda entry: entry.name,
    )
    devices = tuple(load_device_file(path) for path in paths)
    owners = {THIS_MACHINE_ID: THIS_MACHINE_ID}
    owners.update({alias.casefold(): THIS_MACHINE_ID for alias in THIS_MACHINE_ALIASES})
    for device in devices:
        for name in (device.id, *device.aliases):
            owner = owners.setdefault(name.casefold(), device.id)
            if owner != device.id:
                raise EdgeforgeError(
                    f"{device.id}.toml: aliases: {name!r} already names device {owner!r}"
                )
    return devices


def load_device_file(path: Path | Traversable) -> Device:
    """Parse and validate one device file; EdgeforgeError names the file and the bad key."""
    origin = path.name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise EdgeforgeError(f"{origin}: not valid TOML: {exc}") from exc
    device = parse_device(data, origin)
    expected = origin.removesuffix(".toml")
    if device.id != expected:
        raise EdgeforgeError(f"{origin}: id: {device.id!r} must match the file name {expected!r}")
    return device


def parse_device(data: Mapping[str, Any], origin: str) -> Device:
    """Build a Device from parsed TOML; `origin` names the file in error messages."""
    try:
        return _device(data)
    except _Invalid as exc:
        raise EdgeforgeError(f"{origin}: {exc.key}: {exc.problem}") from None


def _device(data: Mapping[str, Any]) -> Device:
    _check_keys(data, "", required=_REQUIRED_KEYS, known=_KNOWN_KEYS)
    device_id = _string(data, "id")
    if not _ID_PATTERN.fullmatch(device_id):
        raise _Invalid("id", f"{device_id!r} is not kebab-case (lowercase words joined by '-')")
    if device_id == THIS_MACHINE_ID:
        raise _Invalid("id", f"{THIS_MACHINE_ID!r} is built at run time, not from a file")
    kind = _choice(data, "kind", DEVICE_KINDS)
    aliases = _strings(data, "aliases")
    runtimes = _strings(data, "runtimes")
    if not runtimes:
        raise _Invalid("runtimes", "must list at least one runtime")
    for index, runtime in enumerate(runtimes):
        if runtime not in RUNTIMES:
            raise _Invalid(f"runtimes[{index}]", f"{runtime!r} is not one of {', '.join(RUNTIMES)}")
    notes = data.get("notes", "")
    if not isinstance(notes, str):
        raise _Invalid("notes", "must be a string")

    figures: dict[str, Figure | None] = {}
    absent: dict[str, str] = {}
    for key in (*_FIGURE_FIELDS, *_OPTIONAL_FIGURE_FIELDS):
        if key in data:
            figures[key], reason = _figure_or_absent(data[key], key)
            if reason is not None:
                absent[key] = reason
        else:
            figures[key] = None

    units = data["compute"]
    if not isinstance(units, list) or not units:
        raise _Invalid("compute", "must be a non-empty array of tables ([[compute]])")
    compute = tuple(_compute_unit(unit, f"compute[{index}]") for index, unit in enumerate(units))

    return Device(
        id=device_id,
        name=_string(data, "name"),
        kind=kind,
        aliases=aliases,
        runtimes=runtimes,
        ram_gb=figures["ram_gb"],
        memory_bandwidth_gbps=figures["memory_bandwidth_gbps"],
        size_budget_mb=figures["size_budget_mb"],
        compute=compute,
        power_w=figures["power_w"],
        notes=notes.strip(),
        absent=MappingProxyType(absent),
    )


def _compute_unit(unit: Any, path: str) -> ComputeUnit:
    if not isinstance(unit, Mapping):
        raise _Invalid(path, "must be a table")
    _check_keys(unit, path, required=_UNIT_KEYS, known=frozenset((*_UNIT_KEYS, "features")))
    peak_data = unit["peak"]
    if not isinstance(peak_data, Mapping):
        raise _Invalid(f"{path}.peak", "must be a table of dtype -> figure")
    _check_keys(peak_data, f"{path}.peak", required=DTYPES, known=frozenset(DTYPES))
    peak: dict[str, Figure] = {}
    absent: dict[str, str] = {}
    for dtype in DTYPES:
        figure, reason = _figure_or_absent(peak_data[dtype], f"{path}.peak.{dtype}")
        if figure is not None:
            peak[dtype] = figure
        if reason is not None:
            absent[dtype] = reason
    return ComputeUnit(
        kind=_choice(unit, "kind", UNIT_KINDS, path),
        name=_string(unit, "name", path),
        peak=MappingProxyType(peak),
        absent=MappingProxyType(absent),
        features=_strings(unit, f"{path}.features") if "features" in unit else (),
    )


def _figure_or_absent(raw: Any, path: str) -> tuple[Figure | None, str | None]:
    """(Figure, None) for `{value, tag, source}`, (None, reason) for `{absent = reason}`."""
    if not isinstance(raw, Mapping):
        raise _Invalid(path, "must be a table: { value, tag, source } or { absent = reason }")
    if "absent" in raw:
        _check_keys(raw, path, required=("absent",), known=frozenset(("absent",)))
        return None, _string(raw, "absent", path)
    _check_keys(raw, path, required=_FIGURE_KEYS, known=frozenset(_FIGURE_KEYS))
    value = raw["value"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise _Invalid(f"{path}.value", f"must be a number >= 0, got {value!r}")
    tag = _choice(raw, "tag", tuple(TAGS), path)
    return Figure(value=float(value), tag=tag, source=_string(raw, "source", path)), None


def _check_keys(
    table: Mapping[str, Any], path: str, *, required: tuple[str, ...], known: frozenset[str]
) -> None:
    for key in required:
        if key not in table:
            raise _Invalid(_join(path, key), "missing required key")
    for key in table:
        if key not in known:
            raise _Invalid(_join(path, key), f"unknown key (expected {', '.join(sorted(known))})")


def _string(table: Mapping[str, Any], key: str, path: str = "") -> str:
    value = table[key]
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(_join(path, key), "must be a non-empty string")
    return value.strip()


def _strings(table: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = table[key.rpartition(".")[2]]
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise _Invalid(key, "must be a list of non-empty strings")
    return tuple(value)


def _choice(table: Mapping[str, Any], key: str, choices: tuple[str, ...], path: str = "") -> str:
    value = table[key]
    if value not in choices:
        raise _Invalid(_join(path, key), f"{value!r} is not one of {', '.join(choices)}")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
