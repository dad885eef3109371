"""Published measurements: read a CSV in the format of `shared/data/edge_benchmarks.csv`.

Columns: `device, runtime, model, input, precision, batch, latency_ms, fps, source`. Every row
comes back, mapped or not: a `PublishedRow` whose `reason` is None maps to a zoo architecture
(`catalog.lookup`, after dropping an `_int8`/`_fp16` suffix) and to a catalogue device
(`get_device`, through the catalogue's aliases); otherwise `reason` says which mapping failed.
The compute unit a row ran on is read from its runtime string and precision (`unit_of_runtime`;
ncnn's int8 models on Vulkan run on the CPU), and its CPU
thread count from `threads=N` where the string has one. Reading never imports torch.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeforge.devices import get_device
from edgeforge.errors import EdgeforgeError

__all__ = ["PublishedRow", "parse_input", "read_rows", "unit_of_runtime"]

_COLUMNS = ("device", "runtime", "model", "input", "precision", "batch", "latency_ms")
_SUFFIX = re.compile(r"[_\-](int8|fp16|fp32|quant)$", re.IGNORECASE)
# Runtime strings name the unit in words; the first pattern that matches wins.
_UNIT_PATTERNS = (
    (re.compile(r"edgetpu|edge tpu|coral", re.I), "tpu"),
    (re.compile(r"\bnpu\b|nnapi|rknn", re.I), "npu"),
    (re.compile(r"neural engine|\bane\b", re.I), "ane"),
    (re.compile(r"vulkan|cuda|tensorrt|\bgpu\b|metal|opencl", re.I), "gpu"),
)


@dataclass(frozen=True)
class PublishedRow:
    """One measurement; `architecture`, `device_id` and `image_size` are None when unmapped."""

    line: int
    device: str
    runtime: str
    model: str
    input: str
    precision: str
    batch: int
    latency_ms: float
    source: str
    architecture: str | None
    device_id: str | None
    unit: str
    threads: int | None
    image_size: tuple[int, int] | None
    reason: str | None

    @property
    def mapped(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ncnn's Vulkan layers do not run int8 weights (e.g. `src/layer/vulkan/gru_vulkan.cpp` turns
# `support_vulkan` off when `int8_scale_term` is set; the convolution shader has no int8 path), so
# an int8 model under ncnn with a Vulkan device runs on the CPU with the string's thread count.
_NCNN_VULKAN = re.compile(r"ncnn.*vulkan|vulkan.*ncnn", re.I)


def unit_of_runtime(runtime: str, precision: str = "") -> str:
    """The compute unit kind a published runtime string ran on ("cpu" unless it says else); an
    int8 row of ncnn on Vulkan ran on the CPU (ncnn's Vulkan layers have no int8 path)."""
    if precision.strip().lower() == "int8" and _NCNN_VULKAN.search(runtime):
        return "cpu"
    for pattern, kind in _UNIT_PATTERNS:
        if pattern.search(runtime):
            return kind
    return "cpu"


def parse_input(text: str) -> tuple[int, int] | None:
    """(height, width) from '227x227x3', '224x224' or '1280x720 (image WxH)'; None otherwise.

    'HxWxC' is read as height x width; '(image WxH)' as width x height.
    """
    match = re.match(r"\s*(\d+)\s*x\s*(\d+)", text)
    if not match:
        return None
    first, second = int(match.group(1)), int(match.group(2))
    if "WxH" in text:
        return second, first
    return first, second


def _architecture(model: str) -> tuple[str | None, str | None]:
    from edgeforge.estimator import _zoo_snapshot

    name = _SUFFIX.sub("", model.strip())
    if _zoo_snapshot.torch_missing():  # the zoo imports torch: the shipped spelling index
        found = _zoo_snapshot.architecture_of(name)
        return found, None if found else f"model {model!r} maps to no zoo architecture"
    from edgeforge.zoo import catalog

    try:
        return catalog.lookup(name).name, None
    except EdgeforgeError:
        return None, f"model {model!r} maps to no zoo architecture"


def _device(device: str) -> tuple[str | None, str | None]:
    try:
        return get_device(device).id, None
    except EdgeforgeError:
        return None, f"device {device!r} is not a catalogue id or alias"


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def read_rows(path: str | Path) -> list[PublishedRow]:
    """Every data row of the CSV at `path`, mapped or with the reason it is not.

    Raises EdgeforgeError when a required column is missing.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise EdgeforgeError(f"{path}: missing column(s) {', '.join(missing)}")
        rows: list[PublishedRow] = []
        for line, raw in enumerate(reader, start=2):
            rows.append(_row(line, raw))
    return rows


def _row(line: int, raw: dict[str, str]) -> PublishedRow:
    runtime = (raw.get("runtime") or "").strip()
    architecture, model_reason = _architecture(raw.get("model") or "")
    device_id, device_reason = _device(raw.get("device") or "")
    image_size = parse_input(raw.get("input") or "")
    latency = _float(raw.get("latency_ms") or "")
    fps = _float(raw.get("fps") or "")
    if latency is None and fps is not None:
        latency = 1000.0 / fps
    try:
        batch = int(raw.get("batch") or 1)
    except ValueError:
        batch = 1
    threads_match = re.search(r"threads?\s*=\s*(\d+)", runtime)
    reasons = [r for r in (model_reason, device_reason) if r]
    if image_size is None:
        reasons.append(f"input {raw.get('input')!r} is not HxW[xC]")
    if latency is None:
        reasons.append("no positive latency_ms or fps")
    if batch != 1:
        reasons.append(f"batch {batch}: only batch 1 is estimated")
    return PublishedRow(
        line=line,
        device=(raw.get("device") or "").strip(),
        runtime=runtime,
        model=(raw.get("model") or "").strip(),
        input=(raw.get("input") or "").strip(),
        precision=(raw.get("precision") or "").strip().lower(),
        batch=batch,
        latency_ms=latency or 0.0,
        source=(raw.get("source") or "").strip(),
        architecture=architecture,
        device_id=device_id,
        unit=unit_of_runtime(runtime, raw.get("precision") or ""),
        threads=int(threads_match.group(1)) if threads_match else None,
        image_size=image_size,
        reason="; ".join(reasons) or None,
    )
