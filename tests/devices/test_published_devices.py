"""Every device the published rows know (ten rows or more) has a catalogue entry, and every
figure of those entries names where it came from."""

from __future__ import annotations

import collections
import csv
import json
import subprocess
import sys
from importlib.resources import files

import pytest

from edgeforge.devices import DTYPES, get_device
from edgeforge.errors import EdgeforgeError

ROWS = files("edgeforge.estimator") / "data" / "edge_benchmarks.csv"
SPECS_NOTE = "shared/data/device_specs.md"

# Added for issue 19 (item 1): a figure of theirs is either absent with a reason, or cites
# shared/data/device_specs.md, a source the benchmark rows give, or the device string itself.
ADDED = (
    "amd-ryzen-7-5700g",
    "apple-m3",
    "google-pixel-3",
    "intel-celeron-n5105",
    "intel-i7-12700k",
    "intel-i7-13700k",
    "jetson-agx-orin",
    "jetson-agx-xavier",
    "jetson-orin-nx-16gb",
    "khadas-vim3",
    "mediatek-dimensity-9300",
    "nucleo-l4r5zi",
    "radxa-orion-o6",
    "raspberry-pi-3b-plus",
    "raspberry-pi-4-1500mhz",
    "raspberry-pi-4-oc-1950",
    "raspberry-pi-5-oc-2900",
    "raspberry-pi-zero-2-w",
    "rockchip-rk3588",
    "snapdragon-855-plus",
    "snapdragon-888",
    "snapdragon-8-gen-2",
    "snapdragon-x-elite",
    "xeon-gold-6154",
)


def _row_counts() -> collections.Counter[str]:
    with ROWS.open(encoding="utf-8", newline="") as handle:
        return collections.Counter(row["device"] for row in csv.DictReader(handle))


def _figures(device_id: str) -> list[tuple[str, object, str | None]]:
    """(field, Figure or None, absent reason) for every figure of the device."""
    device = get_device(device_id)
    out: list[tuple[str, object, str | None]] = []
    for key in ("ram_gb", "memory_bandwidth_gbps", "size_budget_mb"):
        out.append((key, getattr(device, key), device.absent.get(key)))
    for index, unit in enumerate(device.compute):
        for dtype in DTYPES:
            out.append((f"compute[{index}].{dtype}", unit.peak.get(dtype), unit.absent.get(dtype)))
    return out


def test_every_device_with_ten_published_rows_resolves_to_an_entry() -> None:
    frequent = [name for name, count in _row_counts().items() if count >= 10]
    assert len(frequent) > 40
    missing = []
    for name in frequent:
        try:
            get_device(name)
        except EdgeforgeError:  # collect every miss, not only the first
            missing.append(name)
    assert missing == []


@pytest.mark.parametrize("device_id", ADDED)
def test_added_entry_figures_are_sourced_or_absent_with_a_reason(device_id: str) -> None:
    for key, figure, reason in _figures(device_id):
        if figure is None:
            assert reason, f"{device_id}: {key} is missing without a reason"
            continue
        source = figure.source  # type: ignore[attr-defined]
        if figure.tag != "policy":  # type: ignore[attr-defined]
            # Not invented: the shared notes, a page they cite, or the benchmark's own words.
            assert SPECS_NOTE in source or "device string" in source, (device_id, key, source)


@pytest.mark.parametrize("device_id", ADDED)
def test_added_entry_is_named_by_its_benchmark_rows(device_id: str) -> None:
    counts = _row_counts()
    device = get_device(device_id)
    assert device.compute, device_id
    assert sum(counts.get(alias, 0) for alias in device.aliases) >= 10
    assert "Measured in the published rows with:" in device.notes


def test_vulkan_rows_map_to_a_gpu_unit_of_their_device() -> None:
    for name, count in _row_counts().items():
        if name.endswith("GPU(Vulkan)") and count >= 10:
            assert any(u.kind == "gpu" for u in get_device(name).compute), name


def test_a_gpu_without_sourced_peaks_is_not_given_any() -> None:
    # Absent peaks are not zeros and not guesses: the best peak comes from another unit.
    dimensity = get_device("MediaTek Dimensity 9300 GPU(Vulkan)")
    assert all(not unit.peak for unit in dimensity.compute)
    assert dimensity.peak_gops("fp32") is None


def test_edgeforge_devices_lists_the_added_entries() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgeforge.cli", "devices", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    listed = {device["id"]: device for device in json.loads(result.stdout)["devices"]}
    for device_id in ADDED:
        assert device_id in listed
    xavier = listed["jetson-agx-xavier"]
    assert xavier["memory_bandwidth_gbps"]["value"] == 136.5
    assert "nvidia-jetson.md" in xavier["memory_bandwidth_gbps"]["source"]
