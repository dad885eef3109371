"""`--shape` for every verb that reads a model: a copy of its ONNX graph with input dims pinned.

Invariants a caller can rely on:
- the pinned `Model` is a new ONNX file in a temporary folder of ours (never the user's): the
  graph, weights and external data of the source, with each named input's shape fixed, and
  every dim that shares a pinned axis's symbolic name (`batch` on the outputs too) fixed alike;
- a shape passes the checks every `--shape` gets (`analysis._shapes.pinned_specs`: positive
  sizes within the memory budget, an input that exists, its rank and fixed sizes kept), and two
  pins that give one named axis two sizes are refused; the copy passes `open_onnx` again;
- the torch.export program, where there is one, keeps its dynamic dims: runtimes that convert
  from it build `model.unpinned` and say so (`torch_hub_note`); nothing pretends otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import onnx

from edgeforge.errors import EdgeforgeError
from edgeforge.model import Model

__all__ = ["describe_shapes", "for_hub", "pin_shapes", "torch_hub_note"]


def pin_shapes(model: Model, shapes: dict[str, tuple[int, ...]] | None) -> Model:
    """`model` with the named inputs' dims fixed to `shapes` (input name -> full shape); the
    model itself when `shapes` is empty. Raises EdgeforgeError when a shape does not fit."""
    from edgeforge._load import _workdir
    from edgeforge._onnx_file import external_data_files, open_onnx
    from edgeforge.analysis._shapes import pinned_specs

    if not shapes:
        return model
    source = model.unpinned or model
    shapes = {**model.pinned, **shapes}  # pinning a pinned model again keeps the earlier pins
    pinned_specs(source.inputs, shapes)  # the checks every --shape gets
    wanted = {name: tuple(int(d) for d in dims) for name, dims in shapes.items()}
    proto = source.proto(load_weights=False)
    symbols = _symbol_sizes(proto.graph, wanted)
    for value in proto.graph.input:
        if value.name in wanted:
            dims = value.type.tensor_type.shape.dim
            if not dims:
                for _ in wanted[value.name]:
                    dims.add()
            for dim, size in zip(dims, wanted[value.name], strict=True):
                dim.Clear()
                dim.dim_value = size
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in symbols:
                size = symbols[dim.dim_param]
                dim.Clear()
                dim.dim_value = size
    folder = _workdir(None)  # fresh, ours, removed when the process exits
    base = source.onnx_path.parent
    for location, path in external_data_files(proto, base).items():
        _link_or_copy(path, folder / location)
    target = folder / source.onnx_path.name
    onnx.save(proto, str(target))
    pinned = open_onnx(target, source.provenance)
    return dataclasses.replace(
        pinned,
        torch_parameters=source.torch_parameters,
        torch_program=source.torch_program,
        pinned=wanted,
        unpinned=source,
    )


def for_hub(model: Model, hub: str) -> Model:
    """The model a runtime converting from `hub` builds: a torch-hub runtime takes the torch
    program, which keeps its own dims, so it gets the model as loaded."""
    if hub == "torch" and model.unpinned is not None:
        return model.unpinned
    return model


def torch_hub_note(model: Model) -> str:
    """What a torch-hub runtime does with a pinned model, in one clause."""
    return (
        f"--shape {describe_shapes(model.pinned)} does not apply: this runtime converts from "
        "the torch.export program, which keeps its own dims (its example inputs' sizes)"
    )


def describe_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    """`image=4x1x8x8, mask=4x16`."""
    return ", ".join(f"{name}={'x'.join(map(str, shape))}" for name, shape in shapes.items())


def _symbol_sizes(graph: onnx.GraphProto, wanted: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Symbolic dim name -> the size a pin gives it; two pins giving one name two sizes are
    refused (in ONNX one name is one size)."""
    sizes: dict[str, tuple[int, str]] = {}
    for value in graph.input:
        if value.name not in wanted:
            continue
        for dim, size in zip(value.type.tensor_type.shape.dim, wanted[value.name], strict=False):
            if not (dim.HasField("dim_param") and dim.dim_param):
                continue
            seen = sizes.setdefault(dim.dim_param, (size, value.name))
            if seen[0] != size:
                raise EdgeforgeError(
                    f"--shape gives the axis {dim.dim_param!r} {seen[0]} on {seen[1]} and "
                    f"{size} on {value.name}; an axis with one name has one size"
                )
    return {name: size for name, (size, _) in sizes.items()}


def _link_or_copy(source: Path, target: Path) -> None:
    """External data beside the pinned copy: a hard link where the file system allows (no
    bytes copied), else a copy. Never a symbolic link: `open_onnx` refuses those."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
