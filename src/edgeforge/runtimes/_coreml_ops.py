"""Core ML translations for ATen ops coremltools 9 lacks, registered through its own extension
point (`register_torch_op`, as its "composite operators" guide does), built from MIL ops.

Importing this module registers them; `coreml._coremltools()` imports it. A translation is
registered only where coremltools has none of its own, so a later coremltools that adds one
keeps its version. What each computes, with the MIL ops it uses:

- `new_ones` -> `fill` of ones in the size given, in the dtype asked (else the source's);
- `diff` -> `n` rounds of `sub` of two `slice_by_index` views (after `concat` of `prepend` and
  `append`), as torch.diff defines it;
- `upsample_bicubic2d.vec` (and `.default`) -> two `matmul`s with constant interpolation
  matrices: bicubic resizing is separable and linear, so each axis is a fixed matrix, which
  torch itself computes here by resizing the identity (same kernel, borders, align_corners);
  it needs static spatial sizes, and refuses a symbolic one in one line;
- `where.ScalarOther` -> `select` with the scalar cast to the tensor's dtype;
- `__and__` -> `logical_and` on booleans (Core ML has no integer bit operations: on integer
  tensors the conversion stops and names `__and__`);
- `alias` -> `identity`;
- `unfold` (`Tensor.unfold(dim, size, step)`: sliding windows, as PatchTST patches a series)
  -> one `gather` of a constant (windows, size) index matrix along `dim`, then a `transpose`
  that moves the window axis last; it needs a static length along `dim`;
- `_prelu_kernel` (what the core ATen decompositions make of `prelu`) -> `prelu`, with a rank-2
  input given the spatial axis MIL's prelu needs and a single alpha spread over the channels.

One of coremltools' own translations is widened to a dtype its MIL op refuses, and calls
through to coremltools' for every other input (listed in `WIDENED`):

- `gather` of a boolean tensor (a detector's keep-mask gathered into score order) ->
  `gather_along_axis` on it cast to int32, cast back: MIL's gather_along_axis takes no bool;
- `sum` of a boolean tensor (a count, int64 in torch) -> coremltools' fp32 sum cast to int32,
  Core ML's integer type (exact up to 2**24 elements).

What stays untranslated is listed with a workaround in `coreml._REWRITES`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["REGISTERED", "WIDENED", "bicubic_matrix", "unfold_plan"]

REGISTERED: list[str] = []  # the op names this module registered (coremltools had none)
WIDENED: list[str] = []  # coremltools' own translations this module widened to more dtypes


def _register() -> None:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, _get_kwinputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import (
        _TORCH_OPS_REGISTRY,
        register_torch_op,
    )
    from coremltools.converters.mil.frontend.torch.utils import NUM_TO_DTYPE_STRING
    from coremltools.converters.mil.mil import types

    def missing(*names: str) -> list[str]:
        return [name for name in names if name not in _TORCH_OPS_REGISTRY.name_to_func_mapping]

    def register(func: Any, names: list[str]) -> None:
        """Register `func` under every name in `names` (those coremltools lacks). A name
        ending in "_" (`__and__`) is refused by `register_torch_op`, which takes it for an
        in-place op, so it goes through the registry's own setter, where lookups find it."""
        plain = [name for name in names if not name.endswith("_")]
        if plain:
            func.__name__ = plain[0]  # register_torch_op keys a function by its name
            register_torch_op(func, torch_alias=plain[1:] or None)
        for name in names:
            if name.endswith("_"):
                _TORCH_OPS_REGISTRY.set_func_by_name(func, name)
        REGISTERED.extend(names)

    def new_ones(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node, min_expected=2)
        x, size = inputs[0], inputs[1]
        size = _shape(size)
        dtype = _get_kwinputs(
            context, node, "dtype", default=[inputs[2] if len(inputs) > 2 else None]
        )[0]
        ones = mb.fill(shape=size, value=1.0)
        target = (
            NUM_TO_DTYPE_STRING[dtype.val]
            if dtype is not None
            else types.builtin_to_string(x.dtype)
        )
        context.add(mb.cast(x=ones, dtype=target, name=node.name))

    def diff(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node, min_expected=1)
        x = inputs[0]
        n = inputs[1].val if len(inputs) > 1 and inputs[1] is not None else 1
        dim = inputs[2].val if len(inputs) > 2 and inputs[2] is not None else -1
        extra = [inputs[i] if len(inputs) > i else None for i in (3, 4)]
        prepend = _get_kwinputs(context, node, "prepend", default=[extra[0]])[0]
        append = _get_kwinputs(context, node, "append", default=[extra[1]])[0]
        rank = x.rank
        dim = dim % rank
        parts = [v for v in (prepend, x, append) if v is not None]
        if len(parts) > 1:
            x = mb.concat(values=parts, axis=dim)
        for _ in range(n):
            begin_later = [0] * rank
            begin_later[dim] = 1
            end_earlier = [0] * rank
            end_earlier[dim] = -1
            every = [True] * rank
            all_but_dim = [axis != dim for axis in range(rank)]
            later = mb.slice_by_index(x=x, begin=begin_later, end=[0] * rank, end_mask=every)
            earlier = mb.slice_by_index(
                x=x, begin=[0] * rank, end=end_earlier, end_mask=all_but_dim
            )
            if types.is_bool(x.dtype):
                x = mb.not_equal(x=later, y=earlier)
            else:
                x = mb.sub(x=later, y=earlier)
        context.add(mb.identity(x=x, name=node.name))

    def upsample_bicubic2d(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node, min_expected=2)
        x = inputs[0]
        height, width = x.shape[-2], x.shape[-1]
        if not (isinstance(height, int) and isinstance(width, int)):
            raise ValueError(
                "upsample_bicubic2d needs a static height and width to build its interpolation "
                "matrices; convert at a fixed input size"
            )
        if node.kind.endswith(".vec"):  # (input, output_size, align_corners, scale_factors)
            size = _constant(inputs[1])
            align = bool(inputs[2].val)
            scales = _constant(inputs[3]) if len(inputs) > 3 else None
        else:  # (input, output_size, align_corners, scales_h, scales_w)
            size = _constant(inputs[1])
            align = bool(inputs[2].val)
            scales = None
        rows = bicubic_matrix(height, size, scales, align, axis=0)
        columns = bicubic_matrix(width, size, scales, align, axis=1)
        dtype = types.nptype_from_builtin(x.dtype)
        tall = mb.matmul(x=rows.astype(dtype), y=x)
        context.add(mb.matmul(x=tall, y=columns.T.astype(dtype), name=node.name))

    def where_scalarother(context: Any, node: Any) -> None:
        cond, a, b = _get_inputs(context, node, expected=3)
        if not types.is_bool(cond.dtype):
            cond = mb.cast(x=cond, dtype="bool")
        b = mb.cast(x=b, dtype=types.builtin_to_string(a.dtype))
        context.add(mb.select(cond=cond, a=a, b=b, name=node.name))

    def and_tensor(context: Any, node: Any) -> None:
        x, y = _get_inputs(context, node, expected=2)
        if not (types.is_bool(x.dtype) and types.is_bool(y.dtype)):
            raise NotImplementedError(
                "__and__ on integer tensors: Core ML has no bitwise operations, only "
                "logical_and on booleans"
            )
        context.add(mb.logical_and(x=x, y=y, name=node.name))

    def alias(context: Any, node: Any) -> None:
        (x,) = _get_inputs(context, node, expected=1)
        context.add(mb.identity(x=x, name=node.name))

    def unfold(context: Any, node: Any) -> None:
        x, dim, size, step = _get_inputs(context, node, expected=4)
        dim = dim.val % x.rank
        length = x.shape[dim]
        if not isinstance(length, int):
            raise ValueError(
                "unfold needs a static length along its dimension to build its window indices; "
                "convert at a fixed input size"
            )
        indices, order = unfold_plan(length, int(size.val), int(step.val), dim, x.rank)
        windows = mb.gather(x=x, indices=indices, axis=dim)  # dim becomes (windows, size)
        context.add(mb.transpose(x=windows, perm=order, name=node.name))

    def _prelu_kernel(context: Any, node: Any) -> None:
        x, alpha = _get_inputs(context, node, expected=2)
        channels = x.shape[1] if x.rank >= 2 else 1
        slopes = np.broadcast_to(np.asarray(alpha.val).reshape(-1), (channels,))
        slopes = slopes.astype(types.nptype_from_builtin(x.dtype))
        if x.rank >= 3:
            context.add(mb.prelu(x=x, alpha=slopes, name=node.name))
            return
        axes = [1, 2] if x.rank == 1 else [2]  # MIL's prelu takes [batch, channel, spatial...]
        wide = mb.prelu(x=mb.expand_dims(x=x, axes=axes), alpha=slopes)
        context.add(mb.squeeze(x=wide, axes=axes, name=node.name))

    translations = [
        (new_ones, missing("new_ones")),
        (diff, missing("diff")),
        (upsample_bicubic2d, missing("upsample_bicubic2d", "upsample_bicubic2d.vec")),
        (where_scalarother, missing("where.scalarother")),
        (and_tensor, missing("__and__")),
        (alias, missing("alias")),
        (unfold, missing("unfold")),
        (_prelu_kernel, missing("_prelu_kernel")),
    ]
    for func, names in translations:
        register(func, names)

    own_gather = _TORCH_OPS_REGISTRY.name_to_func_mapping.get("gather")

    def gather(context: Any, node: Any) -> None:
        x, axis, indices = _get_inputs(context, node)[:3]
        if not types.is_bool(x.dtype):
            own_gather(context, node)
            return
        picked = mb.gather_along_axis(x=mb.cast(x=x, dtype="int32"), indices=indices, axis=axis)
        context.add(mb.cast(x=picked, dtype="bool", name=node.name))

    own_sum = _TORCH_OPS_REGISTRY.name_to_func_mapping.get("sum")

    def count(context: Any, node: Any) -> None:
        x = _get_inputs(context, node, min_expected=1)[0]
        own_sum(context, node)
        if types.is_bool(x.dtype):
            total = mb.cast(x=context[node.name], dtype="int32", name=f"{node.name}_count")
            context.add(total, torch_name=node.name, override=True)

    if WIDENED:  # registered already
        return
    if own_gather is not None:
        _TORCH_OPS_REGISTRY.set_func_by_name(gather, "gather")
        WIDENED.append("gather")
    for name in ("sum", "sum.dim_intlist"):
        if own_sum is not None and _TORCH_OPS_REGISTRY.name_to_func_mapping.get(name) is own_sum:
            _TORCH_OPS_REGISTRY.set_func_by_name(count, name)
            WIDENED.append(name)


def unfold_plan(
    length: int, size: int, step: int, dim: int, rank: int
) -> tuple[np.ndarray, list[int]]:
    """`Tensor.unfold(dim, size, step)` as a gather and a transpose: the (windows, size) index
    matrix to gather along `dim`, and the permutation that then moves the size axis last."""
    starts = np.arange(0, length - size + 1, step)
    indices = (starts[:, None] + np.arange(size)[None, :]).astype(np.int32)
    return indices, [axis for axis in range(rank + 1) if axis != dim + 1] + [dim + 1]


def _shape(size: Any) -> Any:
    """A size argument as the int32 shape `fill` takes: constants folded, symbols concatenated."""
    from coremltools.converters.mil import Builder as mb

    items = size if isinstance(size, (list, tuple)) else [size]
    values = [getattr(item, "val", item) for item in items]
    if all(value is not None for value in values):
        flat = np.concatenate([np.asarray(v, dtype=np.int32).reshape(-1) for v in values] or [[]])
        return mb.const(val=flat.astype(np.int32))
    parts = [mb.cast(x=mb.reshape(x=item, shape=[-1]), dtype="int32") for item in items]
    return mb.concat(values=parts, axis=0)


def _constant(value: Any) -> Any:
    """A MIL input's constant value: a Var's, a list of Vars' (sizes come as either), or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [item.val if hasattr(item, "val") else item for item in value]
    return value.val


def bicubic_matrix(
    length: int, size: Any, scales: Any, align_corners: bool, axis: int
) -> np.ndarray:
    """The (output, input) matrix that torch's bicubic resizing applies along one axis: torch
    resizes the identity, one input position per column, so kernel (a = -0.75), border
    clamping and the scale's rounding are torch's own."""
    import torch

    other = 1
    eye = torch.eye(length, dtype=torch.float64).reshape(length, 1, length, other)
    if axis == 1:
        eye = eye.transpose(2, 3)
    out_size = None
    factors = None
    if size is not None:
        wanted = list(size)[axis]
        out_size = [wanted, other] if axis == 0 else [other, wanted]
    else:
        factor = float(list(scales)[axis])
        factors = [factor, 1.0] if axis == 0 else [1.0, factor]
    resized = torch.ops.aten.upsample_bicubic2d.vec(eye, out_size, align_corners, factors)
    # resized[a, 0, ...] is column a of the matrix, laid out along `axis`.
    return resized.reshape(length, -1).T.numpy()


_register()
