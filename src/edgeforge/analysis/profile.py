"""`inspect`: what a model is made of, without running it or reading its weights.

A `Profile` holds: weight counts (exactly the elements of the ONNX file's weight tensors, by
dtype, plus torch's own parameter count for torch sources), MACs and FLOPs per node, per op
type and per category, peak activation memory, the op census with opsets, and the values assumed
for dynamic dimensions. External weight files are never opened, except to read small integer
tensors (shape arguments).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgeforge._load import load
from edgeforge._onnx_file import iter_tensors
from edgeforge._progress import status
from edgeforge.analysis._costs import NodeCost, UnknownShape, node_cost
from edgeforge.analysis._memory import ActivationMemory, activation_memory
from edgeforge.analysis._shapes import AssumedDim, Shape, resolve_shapes
from edgeforge.model import Model, dtype_name, dtype_size

__all__ = ["NodeProfile", "Profile", "inspect"]

_CONTROL_FLOW = {"If", "Loop", "Scan"}


@dataclass
class NodeProfile:
    name: str
    op_type: str
    category: str
    macs: int
    flops: int
    output_shapes: list[list[int] | None]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Profile:
    """Everything `inspect` learns; `to_dict()` is the JSON contract of `edgeforge inspect`."""

    model: dict[str, Any]
    ir_version: int
    opsets: dict[str, int]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    assumed_dims: list[AssumedDim]
    weights: dict[str, Any]
    macs: int
    flops: int
    by_op_type: list[dict[str, Any]]
    by_category: dict[str, dict[str, int]]
    nodes: list[NodeProfile]
    not_counted: list[dict[str, Any]]
    activation_memory: ActivationMemory
    op_census: list[dict[str, Any]]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """The concrete input shapes the profile was computed at: each input's static dims,
        with its dynamic dims at the values in `assumed_dims` (or pinned by `shapes=`)."""
        assumed = {(dim.input, dim.axis): dim.value for dim in self.assumed_dims}
        shapes = {}
        for spec in self.inputs:
            dims = spec.get("shape")
            if dims is None:
                continue
            concrete = [
                d if isinstance(d, int) and d > 0 else assumed.get((spec["name"], axis))
                for axis, d in enumerate(dims)
            ]
            if all(isinstance(d, int) for d in concrete):
                shapes[spec["name"]] = tuple(concrete)
        return shapes

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ir_version": self.ir_version,
            "opsets": self.opsets,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "assumed_dims": [a.to_dict() for a in self.assumed_dims],
            "weights": self.weights,
            "macs": self.macs,
            "flops": self.flops,
            "by_op_type": self.by_op_type,
            "by_category": self.by_category,
            "nodes": [n.to_dict() for n in self.nodes],
            "not_counted": self.not_counted,
            "activation_memory": self.activation_memory.to_dict(),
            "op_census": self.op_census,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
        }


def inspect(
    source: Any,
    example_inputs: Any = None,
    *,
    shapes: dict[str, Shape] | None = None,
    **load_options: Any,
) -> Profile:
    """Profile `source` (anything `edgeforge.load` takes, with the same keyword options);
    `shapes` pins input shapes ({"image": (1, 3, 224, 224)}) over the assumed defaults."""
    started = time.perf_counter()
    model = load(source, example_inputs, **load_options)
    proto = model.proto(load_weights=False)
    with status("Inferring shapes"):
        shaped = resolve_shapes(proto, model.onnx_path.parent, shapes)
    types = shaped.types

    nodes: list[NodeProfile] = []
    skipped: dict[tuple[str, str], list[str]] = {}
    for node in shaped.graph.node:
        ins = [types.get(name, (0, None))[1] if name else None for name in node.input]
        outs = [types.get(name, (0, None))[1] for name in node.output]
        name = node.name or f"{node.op_type}_{len(nodes)}"
        try:
            cost = node_cost(node, ins, outs)
        except (UnknownShape, KeyError, IndexError, TypeError, ValueError):
            skipped.setdefault((node.op_type, "shape not inferred"), []).append(name)
            cost = NodeCost(0, 0, "not counted")
        if cost is None:
            reason = (
                "control flow: subgraph work depends on run-time values"
                if node.op_type in _CONTROL_FLOW
                else "no cost rule for this op"
            )
            skipped.setdefault((node.op_type, reason), []).append(name)
            cost = NodeCost(0, 0, "not counted")
        nodes.append(
            NodeProfile(
                name,
                node.op_type,
                cost.category,
                cost.macs,
                cost.flops,
                [list(s) if s is not None else None for s in outs],
            )
        )

    return Profile(
        model={**model.to_dict(), "path": str(model.onnx_path)},
        ir_version=proto.ir_version,
        opsets={op.domain or "ai.onnx": op.version for op in proto.opset_import},
        inputs=[t.to_dict() for t in model.inputs],
        outputs=[t.to_dict() for t in model.outputs],
        assumed_dims=shaped.assumed,
        weights=_weights(proto, model),
        macs=sum(n.macs for n in nodes),
        flops=sum(n.flops for n in nodes),
        by_op_type=_by_op_type(nodes),
        by_category=_by_category(nodes),
        nodes=nodes,
        not_counted=[
            {"op_type": op, "reason": reason, "count": len(names), "nodes": names[:10]}
            for (op, reason), names in sorted(skipped.items())
        ],
        activation_memory=activation_memory(shaped.graph, types, shaped.weights),
        op_census=_census(proto),
        seconds=time.perf_counter() - started,
        notes=_notes(model),
    )


def _weights(proto: onnx.ModelProto, model: Model) -> dict[str, Any]:
    """Elements and bytes of every stored tensor, by dtype, from dims alone."""
    by_dtype: dict[str, dict[str, int]] = {}
    elements = stored_bytes = external_bytes = tensors = 0
    for tensor in iter_tensors(proto.graph):
        count = 1
        for d in tensor.dims:
            count *= d
        nbytes = int(count * dtype_size(tensor.data_type))
        entry = by_dtype.setdefault(
            dtype_name(tensor.data_type), {"tensors": 0, "elements": 0, "bytes": 0}
        )
        entry["tensors"] += 1
        entry["elements"] += count
        entry["bytes"] += nbytes
        elements += count
        stored_bytes += nbytes
        tensors += 1
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            external_bytes += nbytes
    torch_counts = model.torch_parameters
    return {
        "onnx_elements": elements,
        "onnx_tensors": tensors,
        "bytes": stored_bytes,
        "external_bytes": external_bytes,
        "by_dtype": by_dtype,
        "torch_parameters": torch_counts.parameters if torch_counts else None,
        "torch_buffers": torch_counts.buffers if torch_counts else None,
        "file_bytes": _file_bytes(model.onnx_path, proto),
    }


def _file_bytes(path: Path, proto: onnx.ModelProto) -> int:
    from edgeforge._onnx_file import external_data_files

    files = external_data_files(proto, path.parent)
    return path.stat().st_size + sum(p.stat().st_size for p in set(files.values()))


def _by_op_type(nodes: list[NodeProfile]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for n in nodes:
        row = rows.setdefault(
            n.op_type,
            {"op_type": n.op_type, "category": n.category, "count": 0, "macs": 0, "flops": 0},
        )
        row["count"] += 1
        row["macs"] += n.macs
        row["flops"] += n.flops
    return sorted(rows.values(), key=lambda r: (-r["flops"], r["op_type"]))


def _by_category(nodes: list[NodeProfile]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for n in nodes:
        entry = totals.setdefault(n.category, {"count": 0, "macs": 0, "flops": 0})
        entry["count"] += 1
        entry["macs"] += n.macs
        entry["flops"] += n.flops
    return dict(sorted(totals.items(), key=lambda item: -item[1]["flops"]))


def _census(proto: onnx.ModelProto) -> list[dict[str, Any]]:
    opsets = {op.domain: op.version for op in proto.opset_import}
    counts: Counter[tuple[str, str]] = Counter()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[(node.domain, node.op_type)] += 1
            for attr in node.attribute:
                if attr.HasField("g"):
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(proto.graph)
    for function in proto.functions:
        for node in function.node:
            counts[(node.domain, node.op_type)] += 1
    return [
        {"domain": domain or "ai.onnx", "op_type": op, "count": count, "opset": opsets.get(domain)}
        for (domain, op), count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def _notes(model: Model) -> list[str]:
    notes = [
        "MACs count Conv/ConvTranspose/Gemm/MatMul/Einsum/attention multiply-accumulates; FLOPs "
        "are 2 x MACs plus elementwise, pooling, normalisation, softmax and reduction work.",
        "Data movement ops (Reshape, Transpose, Gather, Concat...) are counted as 0 FLOPs.",
    ]
    if model.torch_parameters is not None:
        notes.append(
            "weights.onnx_elements counts the exported file's tensors (BatchNorm folded into "
            "convolutions, shape constants included); weights.torch_parameters is torch's "
            "module.parameters() count and torch_buffers its buffers (running statistics)."
        )
    return notes
