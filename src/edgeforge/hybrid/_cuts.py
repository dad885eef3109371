"""Where an ONNX graph can be cut into a head and a tail, and cutting it there.

Invariants a caller can rely on:

- Positions index the graph's own node order, which ONNX requires to be topological: the head
  is nodes `[0, position)`, the tail nodes `[position, N)`.
- The tensors crossing a cut at `position` are exactly the values that are produced before it
  (or are graph inputs) and used at or after it, or are graph outputs. Values computed from
  initializers and constants alone are not crossing: `onnx.utils.Extractor` pulls the nodes that
  make them into the tail, so they never travel.
- Outer-scope names read inside subgraphs (If/Loop/Scan bodies) count as uses by the node that
  owns the subgraph.
- A cut is *separating* when at least one tensor crosses it, no graph output is produced in the
  head, and the head has at least one node that is not constant folding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.utils

from edgeforge.errors import EdgeforgeError

__all__ = ["Cut", "GraphCuts", "extract"]


@dataclass(frozen=True)
class Cut:
    """A position in the topological order and the tensors that cross it there."""

    position: int
    tensors: tuple[str, ...]


class GraphCuts:
    """The crossing tensors at every position of one graph."""

    def __init__(self, graph: onnx.GraphProto, weights: Iterable[str] = ()) -> None:
        """`weights` names tensors to treat as initializers besides the graph's own (a
        weightless skeleton lists its stripped weights as inputs)."""
        self.graph = graph
        self.size = len(graph.node)
        self.constant = {t.name for t in graph.initializer} | set(weights)
        self.inputs = [v.name for v in graph.input if v.name not in self.constant]
        self.outputs = [v.name for v in graph.output]
        self.producer: dict[str, int] = {name: -1 for name in self.inputs}
        self.last_use: dict[str, int] = {}
        for index, node in enumerate(graph.node):
            used = [name for name in _reads(node) if name]
            if node.op_type == "Constant" or (used and all(name in self.constant for name in used)):
                self.constant.update(name for name in node.output if name)
            for name in used:
                self.last_use[name] = index
            for name in node.output:
                if name:
                    self.producer[name] = index
        for name in self.outputs:
            self.last_use[name] = self.size

    def crossing(self, position: int) -> tuple[str, ...]:
        """Tensors that the tail needs from the head (or the device's inputs) at `position`."""
        return tuple(
            name
            for name, made in self.producer.items()
            if made < position <= self.last_use.get(name, -1) and name not in self.constant
        )

    def problem(self, position: int) -> str:
        """Why a cut at `position` does not separate the graph; "" when it does."""
        if not 0 < position < self.size:
            return "it leaves the head or the tail empty"
        made_in_head = [o for o in self.outputs if self.producer.get(o, self.size) < position]
        if made_in_head:
            return f"the head already produces graph output {made_in_head[0]!r}"
        if all(name in self.inputs for name in self.crossing(position)):
            return "the head computes nothing the tail needs"
        return ""

    def cuts(self, max_tensors: int = 1) -> list[Cut]:
        """Separating cuts with at most `max_tensors` crossing tensors, one per distinct set of
        tensors (the earliest position: later ones only move constant folding into the head)."""
        found: dict[tuple[str, ...], Cut] = {}
        for position in range(1, self.size):
            tensors = self.crossing(position)
            if len(tensors) > max_tensors or tensors in found or self.problem(position):
                continue
            found[tensors] = Cut(position, tensors)
        return sorted(found.values(), key=lambda cut: cut.position)

    def cut_at(self, tensors: Iterable[str], max_tensors: int = 1) -> Cut:
        """The cut whose crossing tensors are exactly `tensors`; raises EdgeforgeError saying
        why there is none and naming a few valid ones."""
        wanted = tuple(dict.fromkeys(tensors))
        label = ",".join(wanted)
        unknown = [name for name in wanted if name not in self.producer]
        if unknown:
            reason = f"the graph has no tensor {unknown[0]!r}"
        elif any(name in self.inputs for name in wanted):
            reason = "a graph input is where the graph starts (that is all-cloud)"
        elif any(name in self.outputs for name in wanted):
            reason = "a graph output is where the graph ends (that is all-edge)"
        else:
            start = max(self.producer[name] for name in wanted) + 1
            for position in range(start, self.size):
                if set(self.crossing(position)) == set(wanted) and not self.problem(position):
                    return Cut(position, self.crossing(position))
            extra = [n for n in self.crossing(start) if n not in wanted]
            reason = (
                f"the tail also needs {', '.join(repr(n) for n in extra[:3])}"
                if extra
                else self.problem(start) or "no position has exactly these tensors crossing"
            )
        valid = [",".join(cut.tensors) for cut in self.cuts(max_tensors)]
        shown = ", ".join(valid[:5]) + (f" (and {len(valid) - 5} more)" if len(valid) > 5 else "")
        raise EdgeforgeError(
            f"--cut {label} does not separate the graph: {reason}; "
            f"valid cuts: {shown or 'none with at most ' + str(max_tensors) + ' tensors'}"
        )

    def used_inputs(self, position: int) -> list[str]:
        """Graph inputs read by nodes before `position`."""
        read = {name for node in self.graph.node[:position] for name in _reads(node)}
        return [name for name in self.inputs if name in read]


def extract(
    model: onnx.ModelProto,
    inputs: list[str],
    outputs: list[str],
    path: Path,
    types: dict[str, onnx.ValueInfoProto],
) -> None:
    """Write the sub-model from `inputs` to `outputs` to `path` with `onnx.utils.Extractor`.

    `types` supplies value infos for cut tensors that shape inference left untyped.
    """
    extractor = onnx.utils.Extractor(model)
    for name in (*inputs, *outputs):
        if name not in extractor.value_infos and name in types:
            extractor.value_infos[name] = types[name]
    try:
        part = extractor.extract_model(inputs, outputs)
        onnx.checker.check_model(part)
    except (ValueError, onnx.checker.ValidationError) as exc:
        raise EdgeforgeError(
            f"onnx.utils.Extractor could not cut {path.stem} ({inputs} -> {outputs}): "
            f"{str(exc).splitlines()[0]}; choose another cut with --cut"
        ) from exc
    large = part.ByteSize() > 1_800_000_000
    onnx.save(part, str(path), save_as_external_data=large, location=f"{path.stem}.data")


def _reads(node: onnx.NodeProto) -> list[str]:
    """The node's inputs plus outer-scope names its subgraphs read."""
    names = list(node.input)
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.HasField("g") else []
        for graph in [*graphs, *attribute.graphs]:
            names += _outer_names(graph)
    return names


def _outer_names(graph: onnx.GraphProto) -> list[str]:
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    read: list[str] = []
    for node in graph.node:
        read += [name for name in _reads(node) if name and name not in defined]
        defined.update(node.output)
    read += [v.name for v in graph.output if v.name not in defined]
    return read
