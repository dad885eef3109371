"""Opening an `.onnx` file safely, without reading its external weights.

Invariants enforced before a `Model` is returned:
- the file parses as a ModelProto with a graph (a truncated file or another format is refused);
- every external-data `location` is a relative path that stays inside the model's folder once
  `..` and symbolic links are resolved (a model file must not make us read /etc/passwd);
- every external-data file exists and holds `offset + length` bytes;
- the graph passes `onnx.checker` (external weights are not loaded for that);
- no tensor whose size the graph fixes in constants exceeds the memory budget, and no constant
  Loop trip count exceeds what any time limit lets finish (`analysis._budget.check_budget`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from edgeforge.errors import EdgeforgeError
from edgeforge.model import Model, Provenance, TensorSpec, dtype_size

__all__ = [
    "external_data_files",
    "iter_tensors",
    "open_onnx",
    "read_external_bytes",
    "skeleton",
]

# Integer tensors up to this size stay in a skeleton (read from external data if need be) so
# that shape computations (Reshape targets, Slice bounds) can be followed; so do other tensors
# stored inline up to this size.
_SMALL_TENSOR_BYTES = 4096
_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}


def open_onnx(path: Path, provenance: Provenance | None = None) -> Model:
    """Validate `path` and return its `Model`; raises EdgeforgeError on any bad input."""
    path = Path(path)
    if not path.is_file():
        raise EdgeforgeError(f"{path}: no such file; pass the path of an .onnx model")
    proto = _parse(path)
    external_data_files(proto, path.parent)
    _check_inline_sizes(proto, path)
    try:
        # The checker gets the graph without its weights: they were checked above, and
        # handing it a large model would copy every weight twice more.
        onnx.checker.check_model(skeleton(proto, path.parent))
    except (onnx.checker.ValidationError, UnicodeDecodeError) as exc:
        # The checker's message quotes names from the file, which may not be UTF-8.
        text = str(exc).strip() if isinstance(exc, onnx.checker.ValidationError) else ""
        first = text.splitlines()[0] if text else "a name or message that is not UTF-8"
        raise EdgeforgeError(
            f"{path}: fails the ONNX checker ({first}); re-export the model or repair the graph"
        ) from None
    from edgeforge._limits import memory_budget
    from edgeforge.analysis._budget import check_budget

    check_budget(proto, memory_budget(), str(path))  # before any session or shape inference
    return Model(
        onnx_path=path.resolve(),
        inputs=graph_inputs(proto.graph),
        outputs=tuple(TensorSpec.from_value_info(v) for v in proto.graph.output),
        provenance=provenance or Provenance(source=str(path), source_kind="onnx"),
    )


def graph_inputs(graph: onnx.GraphProto) -> tuple[TensorSpec, ...]:
    """The inputs a caller feeds: graph inputs that are not also initializers (IR < 4)."""
    weights = {t.name for t in graph.initializer}
    return tuple(TensorSpec.from_value_info(v) for v in graph.input if v.name not in weights)


def _parse(path: Path) -> onnx.ModelProto:
    hint = "the file may be truncated or not an ONNX model; re-export or re-download it"
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise EdgeforgeError(
            f"{path}: cannot parse as ONNX ({type(exc).__name__}); {hint}"
        ) from None
    # Protobuf accepts many byte strings as an (empty or odd) message, so check that what was
    # parsed looks like a model: an IR version and a graph with at least one node or output.
    if proto.ir_version <= 0 or not (proto.graph.node or proto.graph.output):
        raise EdgeforgeError(f"{path}: not an ONNX model (no IR version or empty graph); {hint}")
    return proto


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto stored in a graph: initializers, sparse ones, Constant attributes,
    and those of subgraphs (If/Loop/Scan bodies)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from iter_tensors(attr.g)
            for sub in attr.graphs:
                yield from iter_tensors(sub)


def _external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def external_data_files(proto: onnx.ModelProto, base_dir: Path) -> dict[str, Path]:
    """Validate every external-data reference and return location -> resolved path.

    Raises EdgeforgeError naming the tensor for a location that is absolute, climbs out of
    `base_dir` (through `..` or a symbolic link), is missing, or is shorter than the tensor.
    """
    base = base_dir.resolve()
    files: dict[str, Path] = {}
    for tensor in iter_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = _external_info(tensor)
        location = info.get("location", "")
        where = f"tensor {tensor.name!r} points to external data {location!r}"
        if not isinstance(location, str):  # protobuf hands over bytes that are not UTF-8
            raise EdgeforgeError(f"{where[:200]}, a name that is not UTF-8 text; re-save the model")
        if not location:
            raise EdgeforgeError(f"{where}, which has no location; re-save the model")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
            raise EdgeforgeError(
                f"{where}, an absolute path; external data must sit beside the model "
                "(re-save with onnx.save_model(..., location='<name>.data'))"
            )
        if ".." in Path(location).parts:
            raise EdgeforgeError(
                f"{where}, which leaves the model's folder; move the data beside the model "
                "and re-save with a plain file name as location"
            )
        try:  # a NUL byte, an overlong name or a link loop is bad input, not a crash
            if "\x00" in location:
                raise ValueError("a NUL byte")
            resolved = (base / location).resolve()
            exists = resolved.is_file()
            size = resolved.stat().st_size if exists else 0
        except (OSError, ValueError, RuntimeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise EdgeforgeError(
                f"{where[:200]}, which is not a usable file name ({reason}); re-save the model "
                "with a plain file name as location"
            ) from None
        if not resolved.is_relative_to(base):
            raise EdgeforgeError(
                f"{where}, a link that resolves outside the model's folder ({resolved}); "
                "copy the data file beside the model instead of linking it"
            )
        if not exists:
            raise EdgeforgeError(
                f"{where}, which is missing; copy {location} into {base} next to the model"
            )
        offset, length = _extent(tensor, info, where)
        if offset + length > size:
            raise EdgeforgeError(
                f"{where}, which holds {size} bytes but the tensor needs bytes "
                f"{offset}..{offset + length}; the data file is truncated, copy it again"
            )
        files[location] = resolved
    return files


def _extent(tensor: onnx.TensorProto, info: dict[str, str], where: str) -> tuple[int, int]:
    """(offset, length) of an external tensor; length defaults to what its shape needs."""
    try:
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise EdgeforgeError(
            f"{where} with a non-numeric offset or length; re-save the model with onnx"
        ) from None
    if offset < 0 or (length is not None and length < 0):
        raise EdgeforgeError(f"{where} with a negative offset or length; re-save the model")
    if length is None:
        length = int(_numel(tensor.dims) * dtype_size(tensor.data_type))
    return offset, length


def read_external_bytes(tensor: onnx.TensorProto, base_dir: Path) -> bytes:
    """Read one external tensor's raw bytes (the reference must have been validated)."""
    info = _external_info(tensor)
    offset = int(info.get("offset", 0) or 0)
    length = int(info["length"]) if "length" in info else -1
    with open(base_dir / info["location"], "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def skeleton(proto: onnx.ModelProto, base_dir: Path) -> onnx.ModelProto:
    """A copy of `proto` whose large weights are graph inputs of the same type and shape.

    The weights' bytes are never copied or read: checkers and shape inference need only their
    dims and dtypes, and no engine then tries to read their values. Small integer tensors
    (shape arguments) and small inline tensors stay, read in from external data if need be.
    Large Constant nodes become graph inputs the same way as large initializers.
    """
    model = _copy_except(proto, onnx.ModelProto(), skip=("graph",))
    _copy_except(proto.graph, model.graph, skip=("initializer", "node"))
    for tensor in proto.graph.initializer:
        if _keep(tensor):
            model.graph.initializer.append(_inline(tensor, base_dir))
        else:
            model.graph.input.append(_as_input(tensor.name, tensor))
    for node in proto.graph.node:
        value = _constant_value(node)
        if value is None or _keep(value):
            kept = model.graph.node.add()
            kept.CopyFrom(node)
            if value is not None:
                _constant_value(kept).CopyFrom(_inline(value, base_dir))
        else:
            model.graph.input.append(_as_input(node.output[0], value))
    return model


def _keep(tensor: onnx.TensorProto) -> bool:
    external = tensor.data_location == onnx.TensorProto.EXTERNAL
    small_int = tensor.data_type in _INT_TYPES and _numel(tensor.dims) * 8 <= _SMALL_TENSOR_BYTES
    return small_int or (not external and tensor.ByteSize() <= _SMALL_TENSOR_BYTES)


def _inline(tensor: onnx.TensorProto, base_dir: Path) -> onnx.TensorProto:
    """A copy of a small tensor with its external bytes (if any) read in."""
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        copy.raw_data = read_external_bytes(tensor, base_dir)
        del copy.external_data[:]
        copy.data_location = onnx.TensorProto.DEFAULT
    return copy


def _as_input(name: str, tensor: onnx.TensorProto) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims))


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    for attr in node.attribute:
        if attr.name == "value" and attr.HasField("t"):
            return attr.t
    return None


def _copy_except(source, target, skip: tuple[str, ...]):
    """Copy every set field of a protobuf message except those in `skip` (left untouched)."""
    for descriptor, value in source.ListFields():
        if descriptor.name in skip:
            continue
        field = getattr(target, descriptor.name)
        if descriptor.is_repeated:
            field.extend(value)
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            field.CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)
    return target


def _check_inline_sizes(proto: onnx.ModelProto, path: Path) -> None:
    """Inline raw weights must hold exactly the bytes their shape and dtype need."""
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or not tensor.raw_data:
            continue
        expected = _numel(tensor.dims) * dtype_size(tensor.data_type)
        if expected >= 1 and expected != len(tensor.raw_data) and expected == int(expected):
            raise EdgeforgeError(
                f"{path}: weight {tensor.name!r} holds {len(tensor.raw_data)} bytes but its "
                f"shape {list(tensor.dims)} needs {int(expected)}; the file is corrupt, "
                "re-export it"
            )


def _numel(dims) -> int:
    count = 1
    for d in dims:
        count *= d
    return count
