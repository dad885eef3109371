"""Peak activation memory from tensor liveness over the graph's topological order.

Model: nodes run one at a time in the file's order (ONNX requires it to be topological). A tensor
is allocated when its producer runs and freed after its last consumer; graph inputs are live from
the start, graph outputs until the end. While a node runs, its inputs and outputs are live
together. Weights (initializers, Constant outputs) are not activations and are left out.
This is what a runtime without in-place reuse needs at least; runtimes that reuse buffers in
place need less, and scratch space (im2col, attention workspaces) is not included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from edgeforge.model import dtype_size

__all__ = ["ActivationMemory", "activation_memory"]


@dataclass
class ActivationMemory:
    peak_bytes: int
    peak_node: str  # the node running when the peak is reached
    live_at_peak: list[tuple[str, int]]  # largest tensors live at the peak
    timeline: list[int] = field(default_factory=list)  # live bytes while each node runs
    unknown_tensors: list[str] = field(default_factory=list)  # sizes not inferred, counted 0

    def to_dict(self) -> dict[str, object]:
        return {
            "peak_bytes": self.peak_bytes,
            "peak_node": self.peak_node,
            "live_at_peak": [{"tensor": t, "bytes": b} for t, b in self.live_at_peak],
            "timeline_bytes": self.timeline,
            "unknown_tensors": self.unknown_tensors,
            "model": "sequential execution, no in-place reuse, weights and scratch excluded",
        }


def activation_memory(
    graph: onnx.GraphProto,
    types: dict[str, tuple[int, tuple[int, ...] | None]],
    weights: set[str],
) -> ActivationMemory:
    """Compute the liveness peak; `types` maps each tensor to (elem_type, shape or None)."""
    unknown: list[str] = []

    def size(name: str) -> int:
        elem_type, shape = types.get(name, (0, None))
        if shape is None:
            unknown.append(name)
            return 0
        count = 1
        for d in shape:
            count *= d
        return int(count * dtype_size(elem_type))

    outputs = {v.name for v in graph.output}
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name:
                last_use[name] = index

    live: dict[str, int] = {v.name: size(v.name) for v in graph.input if v.name not in weights}
    current = sum(live.values())
    peak, peak_node, peak_live = current, "(inputs)", dict(live)
    timeline: list[int] = []
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name and name not in weights and name not in live:
                live[name] = size(name)
                current += live[name]
        timeline.append(current)
        if current > peak:
            peak, peak_node, peak_live = current, node.name or node.op_type, dict(live)
        for name in [*node.input, *node.output]:
            done = last_use.get(name, -1) <= index
            if name in live and done and name not in outputs:
                current -= live.pop(name)
    largest = sorted(peak_live.items(), key=lambda item: -item[1])[:5]
    return ActivationMemory(peak, peak_node, largest, timeline, sorted(set(unknown)))
