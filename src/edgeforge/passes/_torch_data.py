"""Private machinery for torch passes: example inputs, the user's data as tensors, outputs.

Data for a torch pass is a `Samples` (see `edgeforge.evaluate.data`) or a folder in the
`--data` layout. Each sample's arrays are matched to the module's inputs by name when the names
agree, else by position; every array must have the rank, the non-batch sizes and the kind of
dtype of the matching example input, since those are what the pass traced.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeforge.errors import EdgeforgeError
from edgeforge.evaluate.data import Samples, load_data
from edgeforge.model import TensorSpec

__all__ = [
    "ExampleInputs",
    "TensorData",
    "fingerprint",
    "interface",
    "leaves",
    "require_module",
    "tensor_data",
]


def require_module(source: Any, pass_name: str) -> None:
    if not isinstance(source, torch.nn.Module):
        raise EdgeforgeError(
            f"pass {pass_name!r} works on torch modules, not a {type(source).__name__}; "
            "pass the nn.Module and its example inputs"
        )


@dataclass(frozen=True)
class ExampleInputs:
    """The module's example inputs, named: positional (`keyword=False`) or keyword ones."""

    names: tuple[str, ...]
    tensors: tuple[torch.Tensor, ...]
    keyword: bool

    @classmethod
    def of(cls, module: torch.nn.Module, value: Any, pass_name: str) -> ExampleInputs:
        if isinstance(value, ExampleInputs):
            return value
        if isinstance(value, torch.Tensor):
            value = (value,)
        if isinstance(value, Mapping):
            items = list(value.items())
            keyword = True
        elif isinstance(value, (tuple, list)) and value:
            items = list(zip(_positional_names(module, len(value)), value, strict=True))
            keyword = False
        else:
            raise EdgeforgeError(
                f"pass {pass_name!r} needs example inputs: a tensor, a tuple of tensors or a "
                f"dict of named tensors, not {type(value).__name__}"
            )
        for name, tensor in items:
            if not isinstance(tensor, torch.Tensor):
                raise EdgeforgeError(
                    f"example input {name!r} is a {type(tensor).__name__}; pass tensors only"
                )
        return cls(tuple(n for n, _ in items), tuple(t for _, t in items), keyword)

    def call(self, module: torch.nn.Module, tensors: tuple[torch.Tensor, ...] | None = None):
        tensors = self.tensors if tensors is None else tensors
        if self.keyword:
            return module(**dict(zip(self.names, tensors, strict=True)))
        return module(*tensors)

    def traced(self) -> Any:
        """The form torch-pruning traces with: a tuple, or a dict of keyword inputs."""
        return dict(zip(self.names, self.tensors, strict=True)) if self.keyword else self.tensors

    def specs(self) -> tuple[TensorSpec, ...]:
        """Signatures for reading a `--data` folder: batch axis free, the rest as here."""
        return tuple(
            TensorSpec(n, str(t.dtype).removeprefix("torch."), ("batch", *t.shape[1:]))
            for n, t in zip(self.names, self.tensors, strict=True)
        )


def _positional_names(module: torch.nn.Module, count: int) -> list[str]:
    try:
        params = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return params[:count] + [f"input{i}" for i in range(len(params), count)]


def leaves(output: Any) -> list[torch.Tensor]:
    """Every tensor in a module's output (tensor, tuple, list, dict or a ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for v in output.values() for t in leaves(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in leaves(v)]
    return []


def interface(module: torch.nn.Module, inputs: ExampleInputs, what: str) -> list[str]:
    """What a caller sees of the module's outputs on the example inputs: shape and dtype of
    every output tensor, in order."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            output = inputs.call(module)
    except Exception as exc:  # the user's forward can raise anything
        raise EdgeforgeError(
            f"{what} fails on the example inputs ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); pass inputs it accepts"
        ) from None
    finally:
        module.train(was_training)
    found = leaves(output)
    if not found:
        raise EdgeforgeError(f"{what} returns no tensors; passes need tensor outputs")
    return [f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in found]


def fingerprint(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...], float]]:
    """Name, shape and a checksum of every parameter and buffer."""
    with torch.no_grad():
        return [
            (name, tuple(t.shape), float(t.double().sum()) if t.is_floating_point() else 0.0)
            for name, t in list(module.named_parameters()) + list(module.named_buffers())
        ]


@dataclass
class TensorData:
    """A user's samples as tensors, in the order of the example inputs."""

    inputs: tuple[torch.Tensor, ...]  # each with the samples along axis 0
    labels: torch.Tensor | None
    source: str

    def __len__(self) -> int:
        return len(self.inputs[0])

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]:
        """Shuffled batches when a generator is given, in order otherwise."""
        order = (
            torch.randperm(len(self), generator=generator)
            if generator is not None
            else torch.arange(len(self))
        )
        for index in order.split(batch_size):
            labels = self.labels[index] if self.labels is not None else None
            yield tuple(t[index] for t in self.inputs), labels


def tensor_data(data: Any, inputs: ExampleInputs, what: str = "data") -> TensorData:
    """`data` (a `Samples` or a `--data` folder) as tensors; raises EdgeforgeError naming the
    first array that does not fit the example inputs."""
    if isinstance(data, (str, Path)):
        data = load_data(Path(data), inputs.specs(), limit=1_000_000)
    if not isinstance(data, Samples):
        raise EdgeforgeError(
            f"{what} must be a Samples (edgeforge.evaluate.data) or a --data folder, "
            f"not a {type(data).__name__}"
        )
    if not data.feeds:
        raise EdgeforgeError(f"{what} holds no samples; give at least one")
    columns: list[list[np.ndarray]] = [[] for _ in inputs.names]
    for number, feed in enumerate(data.feeds):
        arrays = _match(feed, inputs, what, number)
        for column, array in zip(columns, arrays, strict=True):
            column.append(array)
    tensors = tuple(
        torch.from_numpy(np.ascontiguousarray(np.concatenate(c))).to(example.dtype)
        for c, example in zip(columns, inputs.tensors, strict=True)
    )
    labels = None
    if data.labels is not None:
        labels = torch.from_numpy(np.asarray(data.labels))
        if len(labels) != len(tensors[0]):
            raise EdgeforgeError(
                f"{what} has {len(labels)} labels for {len(tensors[0])} samples; give one "
                "label per sample"
            )
    return TensorData(tensors, labels, data.source)


def _match(
    feed: Mapping[str, np.ndarray], inputs: ExampleInputs, what: str, number: int
) -> list[np.ndarray]:
    if len(feed) != len(inputs.names):
        raise EdgeforgeError(
            f"{what}: sample {number} has {len(feed)} arrays ({', '.join(feed)}), the module "
            f"takes {len(inputs.names)} ({', '.join(inputs.names)})"
        )
    by_name = set(feed) == set(inputs.names)
    arrays = [feed[n] for n in inputs.names] if by_name else list(feed.values())
    for name, array, example in zip(inputs.names, arrays, inputs.tensors, strict=True):
        array = np.asarray(array)
        want = list(example.shape)
        if array.ndim != example.ndim or list(array.shape[1:]) != want[1:]:
            raise EdgeforgeError(
                f"{what}: sample {number} input {name!r} has shape {list(array.shape)}, the "
                f"module takes [batch, {', '.join(map(str, want[1:]))}] like its example input"
            )
        if example.is_floating_point() != (array.dtype.kind == "f"):
            raise EdgeforgeError(
                f"{what}: sample {number} input {name!r} is {array.dtype}, the module's example "
                f"input is {str(example.dtype).removeprefix('torch.')}"
            )
    return [np.asarray(a) for a in arrays]
