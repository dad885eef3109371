"""Load `decide`'s data files (networks, cloud instances, defaults and prices) and a user's
override file.

Invariants a caller can rely on:

- Every number `decide` uses comes from here as a `Figure(value, tag, source)`; nothing is made
  up in code. A figure in a shipped file must state `tag` (one of `TAGS`) and `source`.
- A user file (`--prices FILE`) has the same tables as the shipped files, each optional:
  `[defaults]`, `[edge_hardware_usd]`, `[networks.<name>]`, `[cloud_instances.<id>]`. Its entries
  replace or add to the shipped ones key by key (a cloud instance can change only its price).
  There a bare number is accepted and becomes a "policy" figure sourced to the file.
- Unknown keys are errors naming the file and the key, so that a typo cannot hide a price.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from edgeforge.devices import TAGS, Figure
from edgeforge.errors import EdgeforgeError

__all__ = ["Choice", "DecideData", "load_data"]

NUMBER_DEFAULTS = (
    "max_latency_ms",
    "requests_per_day",
    "users",
    "amortisation_months",
    "hours_per_month",
    "electricity_usd_per_kwh",
    "target_utilisation",
    "min_instances",
    "peak_to_mean",
    "phone_power_w",
    "phone_battery_wh",
    "battery_share_high",
    "duty_high",
    "max_queue_delay_ms",
)
CHOICE_DEFAULTS = ("cloud_instance", "network")
NETWORK_FIGURES = ("rtt_ms", "uplink_mbps", "downlink_mbps", "loss")
INSTANCE_FIGURES = ("hourly_usd", "memory_gb", "memory_bandwidth_gbps", "batch")
INSTANCE_TEXT = ("name", "unit", "unit_name")
PEAK_DTYPES = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Choice:
    """A default that names something (an instance, a network), with its provenance."""

    value: str
    tag: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "tag": self.tag, "source": self.source}


@dataclass(frozen=True)
class DecideData:
    """The merged tables: raw network and instance tables (parsed by their modules), default
    figures and choices, and one-time edge hardware prices by device id."""

    networks: Mapping[str, Mapping[str, Any]]
    instances: Mapping[str, Mapping[str, Any]]
    defaults: Mapping[str, Figure]
    choices: Mapping[str, Choice]
    hardware_usd: Mapping[str, Figure]
    origin: str  # "shipped" or "shipped + <user file>"


def _figure(raw: Any, where: str, user_file: str | None) -> Figure:
    if user_file is not None and isinstance(raw, int | float) and not isinstance(raw, bool):
        return Figure(float(raw), "policy", f"user file {user_file}")
    if not isinstance(raw, Mapping):
        raise EdgeforgeError(f"{where}: must be {{ value, tag, source }}")
    unknown = set(raw) - {"value", "tag", "source"}
    if unknown:
        raise EdgeforgeError(
            f"{where}: unknown key {sorted(unknown)[0]!r} (expected value, tag, source)"
        )
    value = raw.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EdgeforgeError(f"{where}.value: must be a number, got {value!r}")
    tag = raw.get("tag", "policy" if user_file else None)
    source = raw.get("source", f"user file {user_file}" if user_file else None)
    if tag not in TAGS:
        raise EdgeforgeError(f"{where}.tag: {tag!r} is not one of {', '.join(TAGS)}")
    if not isinstance(source, str) or not source.strip():
        raise EdgeforgeError(f"{where}.source: must be a non-empty string")
    return Figure(float(value), tag, source.strip())


def _choice(raw: Any, where: str, user_file: str | None) -> Choice:
    if user_file is not None and isinstance(raw, str):
        return Choice(raw, "policy", f"user file {user_file}")
    if not isinstance(raw, Mapping) or not isinstance(raw.get("value"), str):
        raise EdgeforgeError(f'{where}: must be {{ value = "name", tag, source }}')
    tag = raw.get("tag", "policy" if user_file else None)
    source = raw.get("source", f"user file {user_file}" if user_file else "")
    if tag not in TAGS or not source:
        raise EdgeforgeError(f"{where}: needs a tag (one of {', '.join(TAGS)}) and a source")
    return Choice(raw["value"], tag, source)


def _read(path: Path, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeforgeError(f"--prices {origin}: no such file; pass a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise EdgeforgeError(f"{origin}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:  # a binary file (issue 13)
        raise EdgeforgeError(
            f"--prices {origin}: not a UTF-8 text file; pass a TOML file"
        ) from None
    except (IsADirectoryError, PermissionError) as exc:
        raise EdgeforgeError(
            f"--prices {origin}: cannot read it ({exc.strerror}); pass a TOML file"
        ) from None


def _check_table(table: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(table, Mapping):
        raise EdgeforgeError(f"{where}: must be a table")
    return table


def _merge_entries(
    base: dict[str, dict[str, Any]], extra: Mapping[str, Any], where: str, known: set[str]
) -> None:
    for name, entry in extra.items():
        entry = _check_table(entry, f"{where}.{name}")
        for key in entry:
            if key not in known:
                raise EdgeforgeError(
                    f"{where}.{name}.{key}: unknown key (expected {', '.join(sorted(known))})"
                )
        base.setdefault(name, {}).update(entry)


_NETWORK_KEYS = {"description", *NETWORK_FIGURES}
_INSTANCE_KEYS = {*INSTANCE_TEXT, *INSTANCE_FIGURES, "peak"}
_USER_TABLES = ("defaults", "edge_hardware_usd", "networks", "cloud_instances")


@functools.cache
def _shipped() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    folder = files("edgeforge.decide") / "data"

    def load(name: str) -> dict[str, Any]:
        return tomllib.loads((folder / name).read_text(encoding="utf-8"))

    return load("networks.toml"), load("cloud_instances.toml"), load("defaults.toml")


def load_data(prices: str | Path | None = None) -> DecideData:
    """The shipped tables, with `prices` (a user TOML file) merged over them when given."""
    networks_raw, instances_raw, defaults_raw = _shipped()
    networks: dict[str, dict[str, Any]] = {}
    instances: dict[str, dict[str, Any]] = {}
    _merge_entries(networks, networks_raw, "networks.toml", _NETWORK_KEYS)
    _merge_entries(instances, instances_raw, "cloud_instances.toml", _INSTANCE_KEYS)
    layers: list[tuple[Mapping[str, Any], str | None, str]] = [
        (defaults_raw, None, "defaults.toml")
    ]
    origin = "shipped"
    if prices is not None:
        path = Path(prices)
        user = _read(path, str(path))
        for key in user:
            if key not in _USER_TABLES:
                raise EdgeforgeError(
                    f"{path}: unknown table [{key}] (expected {', '.join(_USER_TABLES)})"
                )
        _merge_entries(
            networks,
            _check_table(user.get("networks", {}), f"{path}: networks"),
            f"{path}: networks",
            _NETWORK_KEYS,
        )
        _merge_entries(
            instances,
            _check_table(user.get("cloud_instances", {}), f"{path}: cloud_instances"),
            f"{path}: cloud_instances",
            _INSTANCE_KEYS,
        )
        layers.append((user, str(path), str(path)))
        origin = f"shipped + {path}"

    defaults: dict[str, Figure] = {}
    choices: dict[str, Choice] = {}
    hardware: dict[str, Figure] = {}
    for table, user_file, name in layers:
        section = _check_table(table.get("defaults", {}), f"{name}: [defaults]")
        for key, raw in section.items():
            where = f"{name}: defaults.{key}"
            if key in NUMBER_DEFAULTS:
                defaults[key] = _figure(raw, where, user_file)
            elif key in CHOICE_DEFAULTS:
                choices[key] = _choice(raw, where, user_file)
            else:
                known = ", ".join((*CHOICE_DEFAULTS, *NUMBER_DEFAULTS))
                raise EdgeforgeError(f"{where}: unknown key (expected one of {known})")
        section = _check_table(table.get("edge_hardware_usd", {}), f"{name}: [edge_hardware_usd]")
        for key, raw in section.items():
            hardware[key] = _figure(raw, f"{name}: edge_hardware_usd.{key}", user_file)
    missing = [k for k in (*NUMBER_DEFAULTS, *CHOICE_DEFAULTS) if k not in defaults | choices]
    if missing:
        raise EdgeforgeError(f"defaults.toml: missing defaults {', '.join(missing)}")
    return DecideData(networks, instances, defaults, choices, hardware, origin)


def user_file_of(origin: str) -> str | None:
    return origin.split(" + ", 1)[1] if " + " in origin else None


def figure_of(raw: Any, where: str, origin: str) -> Figure:
    """A figure from a network or instance table; bare numbers only from a user file."""
    return _figure(raw, where, user_file_of(origin))
