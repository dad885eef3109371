"""Static budget check: what a graph would allocate or loop through, before anything runs.

A 300-byte model can ask for a 2 GiB tensor (ConstantOfShape of 2^28 int64) or a Loop of 2^40
trips. This module folds the small integer tensors of a graph (initializers, Constant nodes,
and simple arithmetic on them) and reads the sizes the allocating ops would produce, without
allocating them.

Invariants:
- nothing here reads external data or allocates more than `_FOLD_ELEMENTS` elements per
  folded value: values are Python integers in small numpy object arrays, so a folded size
  never overflows;
- `planned_tensors` yields lower bounds: a size it cannot fold is skipped, never guessed;
- `check_budget` refuses (one `EdgeforgeError`) a tensor larger than the memory budget, a
  graph input whose fixed shape is, and a Loop whose constant trip count exceeds
  `MAX_LOOP_TRIPS` (at a microsecond a trip, longer than any time limit);
- `largest_planned_bytes` lets analysis (`inspect`) skip a step that would materialise what
  it promises never to read.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edgeforge.errors import EdgeforgeError

__all__ = [
    "MAX_LOOP_TRIPS",
    "PlannedTensor",
    "check_budget",
    "largest_planned_bytes",
    "planned_tensors",
]

MAX_LOOP_TRIPS = 10**9
_FOLD_ELEMENTS = 1 << 12
_DEFAULT_SIZE = 4  # float32, ConstantOfShape's default value type
_FOLDABLE = {"Identity", "Cast", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Flatten",
             "Add", "Sub", "Mul", "Max", "Min", "Abs", "Neg"}  # fmt: skip


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor (or loop) whose size the graph fixes in constants."""

    node: str
    op_type: str
    elements: int  # for a Loop: its trip count
    element_size: int

    @property
    def bytes(self) -> int:
        return 0 if self.op_type == "Loop" else self.elements * self.element_size

    def describe(self) -> str:
        if self.op_type == "Loop":
            return f"node {self.node!r} (Loop) runs {self.elements:,} trips"
        return f"node {self.node!r} ({self.op_type}) makes a tensor of {_human(self.bytes)}"


def check_budget(proto: onnx.ModelProto, memory_bytes: int, where: str = "the model") -> None:
    """Refuse what `memory_bytes` cannot hold or no time limit lets finish (module docstring)."""
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        known = [d.dim_value for d in dims if d.HasField("dim_value") and d.dim_value > 0]
        if len(known) == len(dims) and dims:
            size = math.prod(known) * _element_size(value.type.tensor_type.elem_type)
            if size > memory_bytes:
                raise _over(where, f"input {value.name!r} takes {_human(size)}", memory_bytes)
    for planned in planned_tensors(proto.graph):
        if planned.op_type == "Loop" and planned.elements > MAX_LOOP_TRIPS:
            # Rule: a loop that cannot finish within any time limit is refused before it starts.
            raise EdgeforgeError(
                f"{where}: {planned.describe()}, more than edgeforge runs "
                f"({MAX_LOOP_TRIPS:,}); fix the trip count in the graph"
            )
        if planned.bytes > memory_bytes:
            # Rule: what the memory budget cannot hold is refused before it is allocated.
            raise _over(where, planned.describe(), memory_bytes)


def largest_planned_bytes(graph: onnx.GraphProto) -> int:
    return max((p.bytes for p in planned_tensors(graph)), default=0)


def planned_tensors(
    graph: onnx.GraphProto, outer: dict[str, np.ndarray] | None = None
) -> Iterator[PlannedTensor]:
    """Every allocation or loop whose size the graph's constants fix (lower bounds)."""
    values = dict(outer or {})
    shapes: dict[str, tuple[int, ...]] = {}
    types: dict[str, int] = {}
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
        types[tensor.name] = tensor.data_type
        _remember(values, tensor.name, tensor)
    for value in [*graph.input, *graph.value_info]:
        tensor_type = value.type.tensor_type
        types.setdefault(value.name, tensor_type.elem_type)
        dims = tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes.setdefault(value.name, tuple(d.dim_value for d in dims))
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}#{index}"
        planned = _planned(node, name, values, shapes, types)
        if planned is not None:
            yield planned
        _fold(node, values)
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            for sub in subgraphs:
                yield from planned_tensors(sub, values)


def _planned(node, name, values, shapes, types) -> PlannedTensor | None:
    op, inputs = node.op_type, list(node.input)
    if node.domain not in ("", "ai.onnx"):
        return None

    def known(i: int) -> np.ndarray | None:
        return values.get(inputs[i]) if i < len(inputs) and inputs[i] else None

    if op == "ConstantOfShape" and known(0) is not None:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        size = _element_size(value.data_type) if value is not None else _DEFAULT_SIZE
        return PlannedTensor(name, op, _count(known(0)), size)
    if op == "Expand" and known(1) is not None:
        return PlannedTensor(name, op, _count(known(1)), _element_size(types.get(inputs[0], 0)))
    if op == "Tile" and known(1) is not None and inputs[0] in shapes:
        elements = math.prod(shapes[inputs[0]]) * _count(known(1))
        return PlannedTensor(name, op, elements, _element_size(types.get(inputs[0], 0)))
    if op == "Range" and all(known(i) is not None and known(i).size == 1 for i in range(3)):
        start, limit, delta = (int(known(i).reshape(-1)[0]) for i in range(3))
        count = max(0, -(-(limit - start) // delta)) if delta else 0
        return PlannedTensor(name, op, count, _element_size(types.get(inputs[0], 0)))
    if op in ("RandomNormal", "RandomUniform"):
        shape = next((list(a.ints) for a in node.attribute if a.name == "shape"), None)
        if shape is not None:
            return PlannedTensor(name, op, _count(np.array(shape, dtype=object)), _DEFAULT_SIZE)
    if op == "Loop" and known(0) is not None and known(0).size == 1:
        return PlannedTensor(name, op, max(0, int(known(0).reshape(-1)[0])), 0)
    return None


def _count(shape: np.ndarray) -> int:
    dims = [int(d) for d in shape.reshape(-1)]
    return 0 if any(d < 0 for d in dims) else math.prod(dims)


def _remember(values: dict[str, np.ndarray], name: str, tensor: onnx.TensorProto) -> None:
    small = math.prod(tensor.dims) <= _FOLD_ELEMENTS
    integer = tensor.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    if small and integer and tensor.data_location != onnx.TensorProto.EXTERNAL:
        # A malformed tensor is left unknown: the checker or the runtime says so.
        with contextlib.suppress(ValueError, TypeError):
            values[name] = numpy_helper.to_array(tensor).astype(object)


def _fold(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> None:
    """Record the node's output value when it is a small integer computation on known values."""
    if node.domain not in ("", "ai.onnx") or not node.output:
        return
    out = node.output[0]
    if node.op_type == "Constant":
        for attr in node.attribute:
            if attr.name == "value" and attr.HasField("t"):
                _remember(values, out, attr.t)
            elif attr.name == "value_int":
                values[out] = np.array(attr.i, dtype=object)
            elif attr.name == "value_ints" and len(attr.ints) <= _FOLD_ELEMENTS:
                values[out] = np.array(list(attr.ints), dtype=object)
        return
    if node.op_type not in _FOLDABLE:
        return
    args = [values.get(name) for name in node.input if name]
    if not args or args[0] is None:
        return
    try:
        result = _apply(node, args)
    except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError):
        return
    if result is None:
        return
    result = np.asarray(result, dtype=object)  # an op on a 0-d object array gives a scalar
    if result.size <= _FOLD_ELEMENTS:
        values[out] = result


def _apply(node: onnx.NodeProto, args: list[np.ndarray | None]) -> np.ndarray | None:
    op, first = node.op_type, args[0]
    if op in ("Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten"):
        return first.reshape(-1) if first.ndim else first  # values only: shape vectors stay 1-D
    if op == "Concat":
        if any(a is None for a in args):
            return None
        return np.concatenate([a.reshape(-1) for a in args])
    if op in ("Abs", "Neg"):
        return np.abs(first) if op == "Abs" else -first
    if len(args) != 2 or args[1] is None:
        return None
    a, b = args
    if a.size * b.size > _FOLD_ELEMENTS:
        return None
    functions = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                 "Max": np.maximum, "Min": np.minimum}  # fmt: skip
    return functions[op](a, b)


def _element_size(data_type: int) -> int:
    try:
        return max(1, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except (KeyError, TypeError, ValueError):
        return 1  # unknown: count elements only (a lower bound)


def _over(where: str, what: str, budget: int) -> EdgeforgeError:
    return EdgeforgeError(
        f"{where}: {what}, more than the memory budget of {_human(budget)}; raise "
        "--memory-limit if this machine can hold it, or fix the graph"
    )


def _human(size: int) -> str:
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size} B"
