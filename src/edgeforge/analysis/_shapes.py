"""Concrete shapes for every tensor of a graph, with the dynamic dimensions pinned.

Dynamic input dimensions get a value from `--shape` overrides, else an assumption that is
reported back (batch-like axes 1, sequence-like axes 128, image-like axes 224). Shapes are then
propagated with ONNX's own shape inference (with data propagation), on a copy of the graph
whose large weight payloads are dropped: only dims and dtypes are needed, so a model's weights
are never read, and only small integer tensors (shape arguments) are read from external data.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.inliner
import onnx.shape_inference

from edgeforge._limits import memory_budget
from edgeforge._onnx_file import skeleton
from edgeforge.analysis._budget import largest_planned_bytes
from edgeforge.errors import EdgeforgeError
from edgeforge.model import Dim, TensorSpec

__all__ = [
    "AssumedDim",
    "ShapedGraph",
    "check_override",
    "parse_shape",
    "pinned_specs",
    "resolve_shapes",
]

Shape = tuple[int, ...]

SYMBOLIC_INFERENCE_LIMIT = 64 << 20  # bytes of planned constant tensors
_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
_SEQUENCE_WORDS = re.compile(r"seq|len|token|time|step|sentence|past|context", re.IGNORECASE)
_BATCH_WORDS = re.compile(r"batch|^n$|^b$|^bs$", re.IGNORECASE)


@dataclass(frozen=True)
class AssumedDim:
    """A dynamic input dimension and the value used for it."""

    input: str
    axis: int
    name: str
    value: int
    reason: str  # "override" or the rule that chose it

    def to_dict(self) -> dict[str, object]:
        return {
            "input": self.input,
            "axis": self.axis,
            "name": self.name,
            "value": self.value,
            "reason": self.reason,
        }


@dataclass
class ShapedGraph:
    """A graph (functions inlined, weights stripped) and the concrete type of each tensor."""

    graph: onnx.GraphProto
    types: dict[str, tuple[int, Shape | None]]  # tensor -> (elem_type, shape or None)
    weights: set[str]  # initializers and Constant outputs
    assumed: list[AssumedDim]


def parse_shape(text: str) -> tuple[str, Shape]:
    """Parse `name=1x3x224x224` (commas also accepted) into (name, shape)."""
    name, sep, dims = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        shape = tuple(int(d) for d in re.split(r"[x,]", dims.strip()) if d != "")
        if not shape or any(d <= 0 for d in shape):
            raise ValueError
    except ValueError:
        raise EdgeforgeError(
            f"--shape {text!r}: expected NAME=DxDx... with positive integers, "
            "e.g. --shape image=1x3x224x224"
        ) from None
    return name.strip(), shape


def resolve_shapes(
    proto: onnx.ModelProto, base_dir: Path, overrides: dict[str, Shape] | None = None
) -> ShapedGraph:
    """Shapes for every tensor; raises EdgeforgeError when an override does not fit."""
    overrides = _validated(overrides or {})
    weights = {t.name for t in proto.graph.initializer} | {
        out for node in proto.graph.node if node.op_type == "Constant" for out in node.output
    }
    model = skeleton(proto, base_dir)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    inputs = [v for v in model.graph.input if v.name not in weights]
    _check_names(overrides, [v.name for v in inputs])
    assumed: list[AssumedDim] = []
    for value in inputs:
        assumed += _pin_input(value, overrides.get(value.name))
    inferred = _infer(model, overrides)
    types = _collect_types(inferred.graph)
    # ONNX Runtime's symbolic inference computes constant tensors to follow them: never on a
    # graph that plans a large one (inspect promises not to materialise weights or bombs).
    if _has_unknown_outputs(inferred.graph, types) and (
        largest_planned_bytes(model.graph) <= SYMBOLIC_INFERENCE_LIMIT
    ):
        types = _fill_with_symbolic_inference(model, types)
    return ShapedGraph(inferred.graph, types, weights, assumed)


def _validated(overrides: dict[str, Shape]) -> dict[str, Shape]:
    """API callers pass tuples directly; hold them to what parse_shape enforces on the CLI."""
    checked: dict[str, Shape] = {}
    for name, shape in overrides.items():
        try:
            dims = tuple(shape)
            valid = bool(dims) and all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims
            )
        except TypeError:
            valid = False
        if not valid:
            raise EdgeforgeError(
                f"shape override for {name!r} is {shape!r}; give a sequence of positive "
                "integers, e.g. shapes={'image': (1, 3, 224, 224)}"
            )
        # Rule (issue 13): a shape whose elements alone exceed the memory budget is refused
        # before anything is allocated at it.
        if math.prod(dims) > memory_budget():
            raise EdgeforgeError(
                f"shape override for {name!r} has {math.prod(dims):,} elements, more than the "
                "memory budget holds; give a realistic shape (or raise --memory-limit)"
            )
        checked[name] = dims
    return checked


def _pin_input(value: onnx.ValueInfoProto, override: Shape | None) -> list[AssumedDim]:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        if override is None:
            raise EdgeforgeError(
                f"input {value.name!r} has no known rank; give its shape with "
                f"--shape {value.name}=DxDx..."
            )
        for size in override:
            tensor_type.shape.dim.add(dim_value=size)
        return []
    dims = tensor_type.shape.dim
    if override is not None:
        check_override(value.name, tuple(_dim(d) for d in dims), override)
    assumed = []
    is_integer = tensor_type.elem_type in _INT_TYPES
    for axis, dim in enumerate(dims):
        # Some exporters write -1 (or 0) for a dynamic axis: treat it as dynamic.
        fixed = dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
        if override is not None:
            if fixed is None:
                assumed.append(
                    AssumedDim(
                        _text(value.name),
                        axis,
                        _text(dim.dim_param) or "?",
                        override[axis],
                        "override",
                    )
                )
            dim.Clear()
            dim.dim_value = override[axis]
            continue
        if fixed is not None:
            continue
        name = _text(dim.dim_param)
        size, reason = _guess(name, axis, len(dims), is_integer)
        assumed.append(AssumedDim(_text(value.name), axis, name or "?", size, reason))
        dim.Clear()
        dim.dim_value = size
    return assumed


def check_override(name: str, dims: tuple[Dim, ...] | None, shape: Shape) -> None:
    """Rule: an override keeps the input's rank and every size the model fixes (`dims` as a
    `TensorSpec` holds them: an int is fixed, a name or None is dynamic; None: rank unknown,
    anything goes). Raises EdgeforgeError naming the input and the axis."""
    if dims is None:
        return
    if len(shape) != len(dims):
        current = "x".join(
            "?" if d is None else _text(d) if isinstance(d, str) else str(d) for d in dims
        )
        raise EdgeforgeError(
            f"shape override for {name}: the input has rank {len(dims)} ({current}), "
            f"the override gives {len(shape)} dimensions"
        )
    for axis, (fixed, given) in enumerate(zip(dims, shape, strict=True)):
        if isinstance(fixed, int) and fixed > 0 and fixed != given:
            raise EdgeforgeError(
                f"shape override for {name}: axis {axis} is fixed at {fixed} in the model, "
                f"the override gives {given}"
            )


def pinned_specs(
    specs: tuple[TensorSpec, ...], shapes: dict[str, Shape] | None
) -> tuple[TensorSpec, ...]:
    """`specs` with the `shapes` given for some inputs (input name -> full shape), after the
    checks every `--shape` gets: positive sizes within the memory budget, an input that
    exists, its rank and its fixed sizes kept. Raises EdgeforgeError saying which and why."""
    shapes = _validated(shapes or {})
    _check_names(shapes, [spec.name for spec in specs])
    pinned = []
    for spec in specs:
        shape = shapes.get(spec.name)
        if shape is None:
            pinned.append(spec)
            continue
        check_override(spec.name, spec.shape, shape)
        pinned.append(TensorSpec(spec.name, spec.dtype, tuple(shape)))
    return tuple(pinned)


def _check_names(overrides: dict[str, Shape], inputs: list[str]) -> None:
    unknown = sorted(set(overrides) - set(inputs))
    if unknown:
        raise EdgeforgeError(
            f"the shape override names no input {unknown[0]!r}; the model's inputs are "
            f"{', '.join(inputs)}"
        )


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    """One dimension of the file as a `TensorSpec` holds it (-1 and 0 mean dynamic)."""
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return dim.dim_value
    return _text(dim.dim_param) or None


def _text(value: str | bytes) -> str:
    """A name from the file as text: protobuf hands over bytes that are not UTF-8 as bytes."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _guess(name: str, axis: int, rank: int, is_integer: bool) -> tuple[int, str]:
    """A documented default for a dynamic dimension; users override with --shape."""
    if _BATCH_WORDS.search(name or "") or (axis == 0 and rank > 1):
        return 1, "batch-like axis: 1"
    if _SEQUENCE_WORDS.search(name or "") or is_integer or rank == 3:
        return 128, "sequence-like axis: 128"
    if rank == 4 and axis >= 2:
        return 224, "image-like axis: 224"
    return 1, "unnamed axis: 1"


def _infer(model: onnx.ModelProto, overrides: dict[str, Shape]) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(
            model, check_type=False, strict_mode=True, data_prop=True
        )
    except (
        onnx.shape_inference.InferenceError,
        onnx.checker.ValidationError,
        UnicodeDecodeError,  # the error names a node whose name is not UTF-8 (fuzz finding)
    ) as exc:
        if overrides:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else "inference failed"
            given = ", ".join(
                f"{name}={'x'.join(map(str, shape))}" for name, shape in overrides.items()
            )
            raise EdgeforgeError(
                f"the shape override {given} does not fit the model: {message[:300]}"
            ) from None
    # Inference failed without any override: keep what could be inferred.
    try:
        return onnx.shape_inference.infer_shapes(
            model, check_type=False, strict_mode=False, data_prop=True
        )
    except UnicodeDecodeError:
        raise EdgeforgeError(
            "the model holds a name or string that is not UTF-8 text (protobuf requires it); "
            "re-export the model"
        ) from None


def _has_unknown_outputs(graph: onnx.GraphProto, types: dict) -> bool:
    return any(
        types.get(out, (0, None))[1] is None for node in graph.node for out in node.output if out
    )


def _fill_with_symbolic_inference(model: onnx.ModelProto, types: dict) -> dict:
    """ONNX Runtime's symbolic shape inference follows shape arithmetic that ONNX's data
    propagation does not (e.g. Slice ends computed from Shape); use it to fill the gaps."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        # When it cannot infer every shape it saves "sym_shape_infer_temp.onnx" in the current
        # folder (over a user's file of that name): let it write in a folder of ours instead.
        with (
            tempfile.TemporaryDirectory(prefix="edgeforge-shapes-") as scratch,
            contextlib.chdir(scratch),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # it gives up on graphs it cannot follow; keep ONNX's answer
        return types
    if inferred is None:
        return types
    merged = dict(types)
    for name, (elem_type, shape) in _collect_types(inferred.graph).items():
        if merged.get(name, (0, None))[1] is None and shape is not None:
            merged[name] = (elem_type, shape)
    return merged


def _collect_types(graph: onnx.GraphProto) -> dict[str, tuple[int, Shape | None]]:
    types: dict[str, tuple[int, Shape | None]] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        shape: Shape | None = None
        if tensor_type.HasField("shape"):
            dims = tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                shape = tuple(d.dim_value for d in dims)
        previous = types.get(value.name)
        if previous is None or previous[1] is None:
            types[value.name] = (tensor_type.elem_type, shape)
    for tensor in graph.initializer:
        types[tensor.name] = (tensor.data_type, tuple(tensor.dims))
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    types[node.output[0]] = (attr.t.data_type, tuple(attr.t.dims))
    return types
