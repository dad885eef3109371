"""How a candidate will run on its device: the settings its latency is measured with, and the
precisions the device computes in.

What a caller can rely on:
- `deployment` gives the settings a user's deployment would use, and `optimize` times (and
  scores) each candidate with them: the device's thread count (for `this-machine`, the CPUs
  this process may use; for another device, its CPU's cores, at most those here), and for
  OpenVINO the inference precision of the recipe: fp32 and fp16 recipes compute in f32 (the
  recipe promises fp32 arithmetic), bf16 in bf16, and the quantized recipes at OpenVINO's
  default for the device (bf16 for what stays float on CPUs with AMX or AVX-512 BF16). Parity
  checks elsewhere (`verify`) still force f32;
- `has_bf16` reads the CPU's flags for `this-machine` and the compute units' `features` for a
  catalogue device: a bf16 recipe is offered only where it is true;
- `is_transformer` says whether a graph has attention (a Softmax fed by a MatMul) and layer
  norms: such models get NNCF's transformer scheme and ONNX Runtime's transformer fusions.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeforge.devices import Device
    from edgeforge.model import Model

__all__ = ["BF16_FLAGS", "deployment", "has_bf16", "is_transformer"]

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # x86 flags of bf16 arithmetic


def has_bf16(device: Device) -> bool:
    """Whether the device has a unit that computes in bf16 and a runtime that uses it."""
    from edgeforge.devices._this_machine import THIS_MACHINE_ID, read_host_facts

    if "openvino" not in device.runtimes:
        return False
    if device.id == THIS_MACHINE_ID:
        return bool(read_host_facts().flags & BF16_FLAGS)
    return any(
        unit.kind == "cpu" and set(getattr(unit, "features", ())) & BF16_FLAGS
        for unit in device.compute
    )


def deployment(runtime: str, precision: str, device: Device) -> dict[str, Any]:
    """{"threads": int | None, "inference_precision": str | None}: the settings the
    candidate runs with on `device` (None: the runtime's default)."""
    settings: dict[str, Any] = {"threads": _threads(device), "inference_precision": None}
    if runtime == "openvino":
        settings["inference_precision"] = {
            "fp32": "f32",
            "fp16": "f32",
            "bf16": "bf16",
        }.get(precision, "default")
    return settings


def is_transformer(model: Model) -> bool:
    """Attention (a Softmax whose input comes from a MatMul, through any Add/Div/Mul/Where) and
    a layer norm (LayerNormalization, or ReduceMean over a difference)."""
    graph = model.proto(load_weights=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    ops = {node.op_type for node in graph.node}
    if "LayerNormalization" not in ops and "ReduceMean" not in ops:
        return False
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        frontier, seen = list(node.input[:1]), 0
        while frontier and seen < 8:
            found = producer.get(frontier.pop())
            seen += 1
            if found is None:
                continue
            if found.op_type == "MatMul":
                return True
            if found.op_type in ("Add", "Div", "Mul", "Where", "Cast"):
                frontier.extend(found.input)
    return False


def _threads(device: Device) -> int | None:
    from edgeforge.devices._this_machine import THIS_MACHINE_ID

    here = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if device.id == THIS_MACHINE_ID:
        return here
    cores = None
    for unit in device.compute:
        if unit.kind == "cpu":
            from edgeforge.estimator.roofline import _cores

            cores = _cores(unit)
            break
    if cores is None or here is None:
        return here
    return min(cores, here)
