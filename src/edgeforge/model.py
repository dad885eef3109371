"""The `Model`: an ONNX file on disk plus its IO signature and where it came from.

Invariants a caller can rely on:
- `onnx_path` exists, parses as ONNX, passes `onnx.checker`, and every external-data file it
  names lies inside the model's folder and is long enough for the tensors that point into it.
- `inputs` and `outputs` are the graph's own (initializers are never listed as inputs).
- A model exported from torch was run once in ONNX Runtime and matched torch's output before
  it was accepted; `provenance.export_check` holds the errors that were measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

__all__ = ["Model", "Provenance", "TensorSpec", "TorchParameters"]

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, element type and shape."""

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None  # None when the rank is unknown

    @property
    def dynamic_dims(self) -> dict[int, str]:
        """Axis index -> symbolic name (or "?") for every axis that is not fixed."""
        if self.shape is None:
            return {}
        return {
            i: (d if isinstance(d, str) else "?")
            for i, d in enumerate(self.shape)
            if not isinstance(d, int)
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": None if self.shape is None else list(self.shape),
        }

    @classmethod
    def from_value_info(cls, value: onnx.ValueInfoProto) -> TensorSpec:
        tensor_type = value.type.tensor_type
        dtype = dtype_name(tensor_type.elem_type)
        if not tensor_type.HasField("shape"):
            return cls(value.name, dtype, None)
        dims: list[Dim] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(dim.dim_value)
            elif dim.HasField("dim_param") and dim.dim_param:
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        return cls(value.name, dtype, tuple(dims))


@dataclass(frozen=True)
class TorchParameters:
    """What torch itself counts, before the exporter folds or drops anything."""

    parameters: int  # elements of module.parameters(), shared tensors counted once
    buffers: int  # elements of module.buffers(), e.g. BatchNorm running statistics

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Provenance:
    """Where a model came from and how it entered ONNX."""

    source: str  # a path, a `module:factory` reference, or a class name
    source_kind: str  # onnx | torch-module | torch-export | factory
    exporter: str | None = None  # "torch.onnx dynamo" | "torch.onnx torchscript" | None
    exporter_note: str | None = None  # why a fallback exporter was used
    torch_version: str | None = None
    export_check: dict[str, float] = field(default_factory=dict)  # output -> max abs error

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Model:
    """An ONNX model on disk, ready for every later verb."""

    onnx_path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    provenance: Provenance
    torch_parameters: TorchParameters | None = None
    # The torch.export program beside the ONNX file, for runtimes that convert from torch
    # (LiteRT, Core ML, ExecuTorch); None for ONNX sources and TorchScript-exported ones.
    torch_program: Path | None = None
    # Input sizes fixed with `--shape` (`edgeforge._pin.pin_shapes`): the ONNX graph above has
    # them; the torch program keeps its own dims, and runtimes that convert from it build
    # `unpinned`, the model as it was loaded, and say so.
    pinned: dict[str, tuple[int, ...]] = field(default_factory=dict)
    unpinned: Model | None = None

    @property
    def uses_external_data(self) -> bool:
        from edgeforge._onnx_file import external_data_files

        return bool(external_data_files(self.proto(load_weights=False), self.onnx_path.parent))

    def proto(self, *, load_weights: bool = False) -> onnx.ModelProto:
        """The ModelProto; external weights are only read when `load_weights` is true."""
        return onnx.load(str(self.onnx_path), load_external_data=load_weights)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "onnx_path": str(self.onnx_path),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "provenance": self.provenance.to_dict(),
            "torch_parameters": self.torch_parameters.to_dict() if self.torch_parameters else None,
            "torch_program": str(self.torch_program) if self.torch_program else None,
        }
        if self.pinned:  # only then: profiles (and the zoo snapshots of them) stay as they were
            data["pinned"] = {name: list(shape) for name, shape in self.pinned.items()}
        return data


def dtype_name(elem_type: int) -> str:
    """numpy-style name for an ONNX element type ("float32", "int64", "bfloat16"...)."""
    if elem_type == onnx.TensorProto.UNDEFINED:
        return "undefined"
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        pass
    try:
        return onnx.TensorProto.DataType.Name(elem_type).lower()
    except ValueError:  # a type number ONNX does not define (a corrupt or hostile file)
        return f"unknown-type-{elem_type}"


def dtype_size(elem_type: int) -> float:
    """Bytes per element of an ONNX element type (0.5 for the 4-bit types)."""
    bits = {
        onnx.TensorProto.INT4: 4,
        onnx.TensorProto.UINT4: 4,
        onnx.TensorProto.BOOL: 8,
        onnx.TensorProto.STRING: 0,
    }
    if elem_type in bits:
        return bits[elem_type] / 8
    try:
        return float(onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return 0.0
