"""A torch module's outputs as one flat tuple of tensors, named after their fields.

A Hugging Face model returns a `ModelOutput` (an ordered dict whose class `transformers`
registers with torch's pytree); other modules return dicts, named tuples or nested tuples.
A `torch.export` program keeps that structure in its output spec, and a program whose spec
names a class (`transformers.modeling_outputs.SequenceClassifierOutput`) cannot be loaded in a
process that has not imported the class, which is every runtime's child process. So the
module is flattened once, before both the ONNX export and the `torch.export` program, and
every runtime sees the same flat outputs.

Invariants:
- `flat_outputs(module, reference)` returns a module that computes `module`'s output tensors
  as a flat tuple, in pytree order (dict and `ModelOutput` fields in insertion order, fields
  that are None left out), together with one name per tensor;
- the flat module shares the original's parameters, buffers and submodules (their names are
  unchanged, with no wrapper prefix) and its `forward` signature (the ONNX input names are
  unchanged); the original module is not modified (a saved program's module is the exception:
  it is held by a wrapper, see `_held`);
- names are the fields' paths joined by `_` (`logits`, `hidden_states_0`); positions with no
  field name are `output_<i>` at the top and the index below it;
- a module whose output is already a tensor or a flat tuple or list of tensors is returned
  as it is, with no names, so the exporter's own names stand as before;
- values that are neither tensors nor containers (None, numbers, a cache object) are not
  outputs: no runtime can return them.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

__all__ = ["flat_outputs", "flatten", "is_flat"]

Path = tuple[str | int, ...]


def flat_outputs(module: Any, reference: Any) -> tuple[Any, list[str] | None]:
    """(module returning a flat tuple of tensors, their names) for `module`, whose output on
    the example inputs was `reference`; `(module, None)` when the output is flat already."""
    if is_flat(reference):
        return module, None
    import torch

    if isinstance(module, torch.fx.GraphModule):
        return _held(module), output_names(reference)
    cls = type(module)

    @functools.wraps(cls.forward)  # keeps the signature: the exporters name inputs from it
    def forward(self: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return flatten(cls.forward(self, *args, **kwargs))

    try:
        subclass = type(cls)(
            f"Flat{cls.__name__}", (cls,), {"forward": forward, "__module__": cls.__module__}
        )
    except TypeError:  # a class that refuses subclasses (a final or compiled one)
        return _held(module), output_names(reference)
    flat = copy.copy(module)  # a shallow copy: the same parameter and submodule objects
    flat.__class__ = subclass
    return flat, output_names(reference)


def _held(module: Any) -> Any:
    """`module` inside a module whose forward flattens its outputs.

    For a `torch.export` program's module: its generated forward rebuilds the output structure
    from a spec, and `torch.export` would reuse that spec in place of what a subclass returns.
    Its parameters' names gain the prefix `module.`.
    """
    import torch

    class FlatOutputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
            return flatten(self.module(*args, **kwargs))

    return FlatOutputs()


def is_flat(value: Any) -> bool:
    """A tensor, or a plain tuple or list of tensors (not a named tuple: its fields name)."""
    import torch

    if isinstance(value, torch.Tensor):
        return True
    return (
        isinstance(value, (tuple, list))
        and not hasattr(value, "_fields")
        and all(isinstance(item, torch.Tensor) for item in value)
    )


def flatten(value: Any) -> tuple[Any, ...]:
    """The tensors of a nested output, in pytree order."""
    return tuple(tensor for _, tensor in _leaves(value, ()))


def output_names(value: Any) -> list[str] | None:
    """One name per tensor of `flatten(value)`, or None when nothing in it has a field name."""
    paths = [path for path, _ in _leaves(value, ())]
    if not any(isinstance(key, str) for path in paths for key in path):
        return None
    names: list[str] = []
    for path in paths:
        head, *rest = path
        name = "_".join([f"output_{head}" if isinstance(head, int) else str(head), *map(str, rest)])
        unique, n = name, 1
        while unique in names:  # {"a_0": x, "a": [y]} would give "a_0" twice
            unique, n = f"{name}_{n}", n + 1
        names.append(unique)
    return names


def _leaves(value: Any, path: Path) -> list[tuple[Path, Any]]:
    import torch

    if isinstance(value, torch.Tensor):
        return [(path, value)]
    if isinstance(value, Mapping):  # a ModelOutput is an OrderedDict of its non-None fields
        items: Any = value.items()
    elif isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        items = zip(value._fields, value, strict=True)
    elif isinstance(value, (tuple, list)):
        items = enumerate(value)
    else:
        return []
    return [leaf for key, item in items for leaf in _leaves(item, (*path, key))]
