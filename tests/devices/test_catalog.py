"""The device catalogue: every figure carries its provenance, lookups resolve, bad files fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

import edgeforge
from edgeforge import devices
from edgeforge.devices import (
    DEVICE_KINDS,
    DTYPES,
    RUNTIMES,
    TAGS,
    UNIT_KINDS,
    Device,
    Figure,
    devices_table,
    get_device,
    list_devices,
)
from edgeforge.devices._catalog import load_catalog, load_device_file, load_folder
from edgeforge.devices._this_machine import describe_host, read_host_facts, this_machine
from edgeforge.errors import EdgeforgeError

REQUIRED_IDS = {
    "jetson-nano",
    "jetson-orin-nano",
    "coral-dev-board",
    "raspberry-pi-4",
    "raspberry-pi-5",
    "iphone-15-pro",
    "pixel-8",
    "laptop-cpu",
    "browser-wasm",
    "browser-webgpu",
    "this-machine",
}

VALID_DEVICE = """
id = "{id}"
name = "Test board"
kind = "sbc"
aliases = ["Test Board (CSV name)"]
runtimes = ["onnxruntime"]
ram_gb = {{ value = 1, tag = "src", source = "https://example.org/board" }}
memory_bandwidth_gbps = {{ absent = "not published" }}
size_budget_mb = {{ value = 250, tag = "policy", source = "a quarter of RAM" }}

[[compute]]
kind = "cpu"
name = "4x test core"
peak.fp32 = {{ value = 10, tag = "derived", source = "4 cores x 1.25 GHz x 2" }}
peak.fp16 = {{ absent = "no fp16 arithmetic" }}
peak.int8 = {{ value = 20, tag = "derived", source = "2 x fp32" }}
"""


def _write_device(folder: Path, text: str, name: str = "test-board") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _figures(device: Device) -> list[tuple[str, Figure]]:
    named = [
        ("ram_gb", device.ram_gb),
        ("memory_bandwidth_gbps", device.memory_bandwidth_gbps),
        ("size_budget_mb", device.size_budget_mb),
        ("power_w", device.power_w),
    ]
    found = [(name, figure) for name, figure in named if figure is not None]
    for unit in device.compute:
        found += [(f"{unit.name}.{dtype}", figure) for dtype, figure in unit.peak.items()]
    return found


def test_every_required_device_is_listed() -> None:
    ids = [device.id for device in list_devices()]
    assert set(ids) >= REQUIRED_IDS
    assert ids == sorted(ids)
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("device", list_devices(), ids=lambda device: device.id)
def test_no_figure_without_a_tag_and_a_source(device: Device) -> None:
    for name, figure in _figures(device):
        assert figure.tag in TAGS, name
        assert figure.source.strip(), name
        assert figure.value >= 0, name
    for unit in device.compute:
        # Every dtype is either a figure or absent with a reason: nothing silently missing.
        assert set(unit.peak) | set(unit.absent) == set(DTYPES), unit.name
        assert not set(unit.peak) & set(unit.absent), unit.name
        assert all(reason.strip() for reason in unit.absent.values()), unit.name
    for field_name, reason in device.absent.items():
        assert getattr(device, field_name) is None, field_name
        assert reason.strip(), field_name


@pytest.mark.parametrize("device", list_devices(), ids=lambda device: device.id)
def test_every_device_has_compute_and_a_runtime(device: Device) -> None:
    assert device.compute
    assert device.runtimes
    assert set(device.runtimes) <= set(RUNTIMES)
    assert device.kind in DEVICE_KINDS
    assert all(unit.kind in UNIT_KINDS for unit in device.compute)


def test_jetson_nano_fp16_is_the_published_472_gflops() -> None:
    peak = get_device("jetson-nano").peak_gops("fp16")
    assert peak is not None
    assert peak.value == 472
    assert peak.tag == "src"
    assert peak.source.startswith("https://")


def test_peak_is_the_best_compute_unit() -> None:
    nano = get_device("jetson-nano")
    fp32 = nano.peak_gops("fp32")
    assert fp32 is not None
    assert fp32.value == max(unit.peak["fp32"].value for unit in nano.compute)
    coral = get_device("coral-dev-board")
    assert coral.peak_gops("int8") == Figure(4000, "src", coral.compute[0].peak["int8"].source)
    assert get_device("pixel-8").compute[0].peak == {}  # the TPU: not published


def test_unknown_dtype_is_refused_not_answered_with_none() -> None:
    with pytest.raises(EdgeforgeError, match="fp32"):
        get_device("jetson-nano").peak_gops("int4")


@pytest.mark.parametrize(
    ("name", "device_id"),
    [
        ("NVIDIA Jetson Nano", "jetson-nano"),
        ("  nvidia jetson nano GPU(Vulkan) ", "jetson-nano"),
        ("NVIDIA Jetson Orin Nano Super (8GB, JetPack 6.1)", "jetson-orin-nano-super"),
        ("Coral Dev Board (Edge TPU + NXP i.MX8M quad A53)", "coral-dev-board"),
        ("Raspberry Pi 5 (Cortex-A76 2.4GHz x4)", "raspberry-pi-5"),
        ("Intel Core i7-9750H (MacBook Pro 15 2019)", "laptop-cpu"),
        ("LAPTOP-CPU", "laptop-cpu"),
        ("local", "this-machine"),
    ],
)
def test_benchmark_device_strings_resolve_by_alias(name: str, device_id: str) -> None:
    assert get_device(name).id == device_id


def test_overclocked_benchmark_rows_do_not_pass_for_stock_boards() -> None:
    # An overclocked board is its own entry, with peaks at its own clock.
    overclocked = get_device("Raspberry Pi 5 (overclocked 2900 MHz)")
    assert overclocked.id == "raspberry-pi-5-oc-2900"
    stock = get_device("raspberry-pi-5")
    assert overclocked.peak_gops("fp32").value > stock.peak_gops("fp32").value
    assert get_device("Raspberry Pi 4 (overclocked 1950 MHz)").id != "raspberry-pi-4"


def test_unknown_device_error_names_the_valid_ids() -> None:
    with pytest.raises(EdgeforgeError) as caught:
        get_device("jetson-tx9")
    message = str(caught.value)
    assert "jetson-tx9" in message
    assert "\n" not in message
    for device_id in REQUIRED_IDS:
        assert device_id in message


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_this_machine_describes_this_linux_host(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEFORGE_CACHE", str(tmp_path))  # no stored `calibrate --here`
    this_machine.cache_clear()
    facts = read_host_facts()
    assert facts.logical_cpus > 0
    assert 0 < facts.physical_cores <= facts.logical_cpus
    assert facts.ram_bytes is not None and facts.ram_bytes > 0
    device = this_machine()
    assert device.ram_gb is not None and device.ram_gb.value > 0
    assert device.ram_gb.tag == "measured"
    assert device.memory_bandwidth_gbps is None
    assert "calibrate" in device.absent["memory_bandwidth_gbps"]
    if facts.clock_ghz is not None:
        fp32 = device.peak_gops("fp32")
        assert fp32 is not None and fp32.value > 0 and fp32.tag == "derived"


def test_this_machine_peak_follows_the_cpu_flags(tmp_path: Path) -> None:
    # Two cores with two hyperthreads each, AVX2 + FMA + AVX-VNNI, no clock but in the name.
    processors = [
        "\n".join(
            [
                f"processor\t: {index}",
                "model name\t: Test CPU @ 2.00GHz",
                "physical id\t: 0",
                f"core id\t\t: {index // 2}",
                "flags\t\t: fpu sse2 avx avx2 fma avx_vnni",
            ]
        )
        for index in range(4)
    ]
    (tmp_path / "cpuinfo").write_text("\n\n".join(processors) + "\n", encoding="utf-8")
    (tmp_path / "meminfo").write_text("MemTotal:        8000000 kB\n", encoding="utf-8")
    facts = read_host_facts(proc_dir=tmp_path, sys_dir=tmp_path, usable_cpus={0, 1, 2, 3})
    assert (facts.logical_cpus, facts.physical_cores, facts.clock_ghz) == (4, 2, 2.0)
    device = describe_host(facts)
    fp32, int8 = device.peak_gops("fp32"), device.peak_gops("int8")
    assert fp32 is not None and fp32.value == 2 * 2.0 * 32  # physical cores, not threads
    assert int8 is not None and int8.value == 4 * fp32.value
    assert device.peak_gops("fp16") is None
    assert device.ram_gb == Figure(8.19, "measured", "/proc/meminfo MemTotal")


def test_this_machine_without_proc_degrades_to_absent_figures(tmp_path: Path) -> None:
    # As on macOS: no /proc at all. Nothing may raise; what is unknown is absent with a reason.
    facts = read_host_facts(proc_dir=tmp_path / "no-proc", sys_dir=tmp_path / "no-sys")
    device = describe_host(facts)
    assert facts.physical_cores >= 1
    if facts.clock_ghz is None:
        assert device.peak_gops("fp32") is None
        assert "clock" in device.compute[0].absent["fp32"]
    assert device.memory_bandwidth_gbps is None
    json.dumps(device.to_dict())


@pytest.mark.parametrize("device", list_devices(), ids=lambda device: device.id)
def test_to_dict_round_trips_through_json(device: Device) -> None:
    data = device.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["id"] == device.id
    assert len(data["compute"]) == len(device.compute)


def test_every_file_in_the_catalog_folder_is_loaded() -> None:
    catalog_dir = Path(devices.__file__).parent / "catalog"
    assert len(list(catalog_dir.glob("*.toml"))) == len(load_catalog())
    assert load_folder(catalog_dir) == load_catalog()


def test_a_valid_file_loads(tmp_path: Path) -> None:
    device = load_device_file(_write_device(tmp_path, VALID_DEVICE.format(id="test-board")))
    assert device.memory_bandwidth_gbps is None
    assert device.absent == {"memory_bandwidth_gbps": "not published"}
    assert device.compute[0].absent == {"fp16": "no fp16 arithmetic"}


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("ram_gb = ", "ram_gigabytes = ", "ram_gb"),
        ('"derived", source = "4 cores', '"guess", source = "4 cores', "compute[0].peak.fp32.tag"),
        ('source = "https://example.org/board"', 'source = ""', "ram_gb.source"),
        ("peak.fp16 = ", "peak.bf16 = ", "compute[0].peak.fp16"),
        ('runtimes = ["onnxruntime"]', 'runtimes = ["tflite"]', "runtimes[0]"),
        ("value = 1,", "value = -1,", "ram_gb.value"),
        ('kind = "cpu"', 'kind = "fpga"', "compute[0].kind"),
        ('id = "test-board"', 'id = "Test Board"', "id"),
        ('id = "test-board"', 'id = "other-board"', "id"),
    ],
)
def test_malformed_file_is_refused_naming_file_and_key(
    tmp_path: Path, old: str, new: str, key: str
) -> None:
    text = VALID_DEVICE.format(id="test-board")
    assert old in text
    path = _write_device(tmp_path, text.replace(old, new, 1))
    with pytest.raises(EdgeforgeError) as caught:
        load_device_file(path)
    assert str(caught.value).startswith(f"test-board.toml: {key}:")


def test_broken_toml_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = _write_device(tmp_path, 'id = "test-board\n')
    with pytest.raises(EdgeforgeError, match=r"test-board\.toml: not valid TOML"):
        load_device_file(path)


def test_alias_taken_by_two_devices_is_refused(tmp_path: Path) -> None:
    _write_device(tmp_path, VALID_DEVICE.format(id="board-a"), "board-a")
    _write_device(tmp_path, VALID_DEVICE.format(id="board-b"), "board-b")
    with pytest.raises(EdgeforgeError, match=r"board-b\.toml: aliases: .* already names device"):
        load_folder(tmp_path)


def test_devices_table_marks_recalled_figures() -> None:
    console = Console(record=True, width=250)
    console.print(devices_table(list_devices()))
    text = console.export_text()
    nano_row = next(line for line in text.splitlines() if "jetson-nano " in line)
    assert "472 G" in nano_row
    assert "1,000" in nano_row
    assert "20 T" in next(line for line in text.splitlines() if "jetson-orin-nano " in line)
    assert "*" in next(line for line in text.splitlines() if "pixel-8" in line)
    assert "recalled" in text


def test_device_lookup_imports_no_runtime_and_no_rich() -> None:
    # Measured against `import edgeforge`, whose own imports are not this package's to answer for.
    source_root = Path(next(iter(edgeforge.__path__))).parent
    code = (
        "import sys, edgeforge; before = set(sys.modules); "
        "from edgeforge.devices import get_device, list_devices; "
        "list_devices(); get_device('jetson-nano'); "
        "added = {name.partition('.')[0] for name in set(sys.modules) - before}; "
        "print(sorted(added & {'torch', 'onnx', 'onnxruntime', 'openvino', 'rich'}))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source_root), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == "[]"
