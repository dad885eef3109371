"""Core ML's quantized recipes, carried out by `coremltools.optimize.coreml` on the ML Program.

- int8-dynamic: `linear_quantize_weights` with int8 weights per output channel. Core ML has no
  dynamic activation quantization: this is weight-only int8 (weights are dequantized as they
  are loaded, arithmetic stays float), and the notes say so;
- int4-weight: `linear_quantize_weights` with int4 weights in blocks of `group_size` (default
  32) input channels; per-block quantization needs iOS 18 / macOS 15, so the deployment target
  defaults to iOS18 for it and an older `coreml_target` is refused;
- int8-static is not offered: coremltools' `linear_quantize_activations` calibrates by running
  the model, which only Core ML itself (macOS) can do.

Both use coremltools' own defaults otherwise: symmetric (`symmetric: false` picks its
asymmetric "linear" mode) and weights under 2048 elements left in float (`weight_threshold`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from edgeforge.errors import EdgeforgeError, first_line
from edgeforge.recipe import Recipe
from edgeforge.runtimes._options import flag_option, positive_int_option

__all__ = ["INT4_TARGET", "QUANTIZED", "deployment_target", "quantize", "weight_census"]

QUANTIZED = ("int8-dynamic", "int4-weight")
INT4_TARGET = "iOS18"  # the first target with per-block (constexpr_blockwise_shift_scale) weights
DEFAULT_BLOCK = 32


def deployment_target(ct: Any, recipe: Recipe, default: str) -> str:
    """The recipe's `coreml_target` (or the default for its precision), checked."""
    fallback = INT4_TARGET if recipe.precision == "int4-weight" else default
    target = recipe.options.get("coreml_target", fallback)
    if not isinstance(target, str) or not hasattr(ct.target, target):
        raise EdgeforgeError(
            f"unknown Core ML deployment target {target!r}; use a coremltools target name "
            "such as iOS16, iOS17 or macOS14"
        )
    if recipe.precision == "int4-weight" and _older(ct, target, INT4_TARGET):
        raise EdgeforgeError(
            f"int4-weight needs coreml_target {INT4_TARGET} or later (per-block int4 weights), "
            f"not {target}; drop the option or raise it"
        )
    return target


def quantize(ct: Any, mlmodel: Any, recipe: Recipe) -> tuple[Any, list[str]]:
    """The package with its weights quantized as the recipe says, and notes for the manifest."""
    import coremltools.optimize.coreml as cto

    mode = "linear_symmetric" if flag_option(recipe, "symmetric", True) else "linear"
    if recipe.precision == "int4-weight":
        block = positive_int_option(recipe, "group_size", DEFAULT_BLOCK)
        config = cto.OpLinearQuantizerConfig(
            mode=mode, dtype="int4", granularity="per_block", block_size=block
        )
        what = (
            f"int4 weights in blocks of {block} input channels ({mode}; weight-only, "
            "arithmetic stays float); weights whose input channels the block does not "
            "divide stay float"
        )
    else:
        config = cto.OpLinearQuantizerConfig(mode=mode, dtype="int8", granularity="per_channel")
        what = (
            f"int8 weights per output channel ({mode}); Core ML's int8-dynamic is "
            "weight-only: weights are dequantized as they load and arithmetic stays float"
        )
    try:
        quantized = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(config))
    except Exception as exc:  # coremltools raises ValueError and its own types
        raise EdgeforgeError(
            f"coremltools could not quantize the weights ({first_line(exc)}); try another precision"
        ) from None
    census = weight_census(quantized.get_spec())
    if not any(census[name] for name in ("INT8", "UINT8", "INT4", "UINT4")):
        raise EdgeforgeError(
            f"coremltools quantized no weight for {recipe.precision} (every weight is under "
            "its 2048-element threshold or has channels the block size does not divide); "
            "build fp16 instead"
        )
    counted = ", ".join(f"{name} x{n}" for name, n in sorted(census.items()))
    return quantized, [
        f"coremltools.optimize.coreml.linear_quantize_weights: {what}",
        f"weight tensors by type: {counted}",
    ]


def weight_census(spec: Any) -> Counter[str]:
    """Weight tensors of an ML Program by stored type: quantized ones by their data's type
    (INT8, INT4...), plain float constants of rank >= 1 as FLOAT32 or FLOAT16."""
    from coremltools.proto import MIL_pb2

    found: Counter[str] = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if op.type == "const" and "val" in op.attributes:
                    tensor = op.attributes["val"].type.tensorType
                    name = MIL_pb2.DataType.Name(tensor.dataType)
                    if tensor.rank >= 1 and name in ("FLOAT16", "FLOAT32"):
                        found[name] += 1
                elif op.type.startswith("constexpr_"):
                    found[_quantized_type(op, MIL_pb2)] += 1
    return found


def _quantized_type(op: Any, mil: Any) -> str:
    """The stored type of a constexpr op's data: an attribute up to iOS 17, an input after."""
    for key in ("quantized_data", "data", "indices"):
        if key in op.attributes:
            return mil.DataType.Name(op.attributes[key].type.tensorType.dataType)
        if key in op.inputs:
            for argument in op.inputs[key].arguments:
                if argument.WhichOneof("binding") == "value":
                    return mil.DataType.Name(argument.value.type.tensorType.dataType)
    return op.type


def _older(ct: Any, target: str, than: str) -> bool:
    return getattr(ct.target, target).value < getattr(ct.target, than).value
