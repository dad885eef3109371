"""LiteRT's reduced-precision recipes, carried out by ai-edge-quantizer on the `.tflite` bytes.

- fp16: float16 weights (the quantizer's FLOAT_CASTING algorithm, weight-only); the
  interpreter dequantizes them and computes in float32;
- int8-dynamic: `dynamic_wi8_afp32`, int8 weights per output channel, activations quantized on
  the fly by the kernels;
- int8-static: `static_wi8_ai8`, int8 weights and activations, ranges calibrated on the
  recipe's samples; the model's own inputs and outputs stay float32 (a QUANTIZE op after each
  input, a DEQUANTIZE before each output), so sessions feed it as they feed the fp32 model;
- int4-weight: `weight_only_wi4_afp32`, int4 weights per output channel, dequantized to float
  before each op. ai-edge-quantizer 0.10 applies blockwise int4 only to dynamic-range recipes
  (a weight-only blockwise config quantizes nothing), so `group_size` is not honoured here and
  the notes say so.

A recipe that quantizes no tensor is an error, not a silent fp32 artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgeforge.errors import EdgeforgeError, first_line
from edgeforge.model import Model
from edgeforge.recipe import Recipe
from edgeforge.runtimes._calibration import calibration_data, calibration_note
from edgeforge.runtimes._native import silenced
from edgeforge.runtimes._options import flag_option

__all__ = ["REDUCED", "check_options", "quantize"]

REDUCED = ("fp16", "int8-dynamic", "int8-static", "int4-weight")
_SIGNATURE = "serving_default"  # the one signature litert-torch writes
_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def check_options(recipe: Recipe) -> None:
    """Refuse options this quantizer cannot honour before the (slow) conversion runs."""
    if recipe.precision == "int4-weight" and not flag_option(recipe, "symmetric", True):
        raise EdgeforgeError(
            "LiteRT's int4 weights are symmetric only (its kernels take no zero point); "
            "drop the option symmetric: false"
        )


def quantize(
    content: bytes, model: Model, recipe: Recipe, shapes: dict[str, tuple[int, ...]]
) -> tuple[bytes, list[str]]:
    """The `.tflite` bytes in the recipe's precision, and notes for the manifest."""
    build: Callable[..., tuple[Any, list[str]]] = {
        "fp16": _fp16,
        "int8-dynamic": _int8_dynamic,
        "int8-static": _int8_static,
        "int4-weight": _int4_weight,
    }[recipe.precision]
    quantizer, notes = build(content, recipe)
    calibration = None
    if recipe.precision == "int8-static":
        feeds, note = _calibration_feeds(model, recipe, shapes)
        calibration = _call(lambda: quantizer.calibrate({_SIGNATURE: feeds}), "calibrate")
        notes.append(note)
    result = _call(
        lambda: quantizer.quantize(calibration, enable_progress_report=False), "quantize"
    )
    quantized = bytes(result.quantized_model)
    count = _reduced_tensors(quantized)
    if count == 0:
        raise EdgeforgeError(
            f"ai-edge-quantizer quantized no tensor of {model.provenance.source} for "
            f"{recipe.precision} (none of its ops takes this recipe); build fp32 instead"
        )
    notes.append(f"{count} tensors stored in reduced precision")
    return quantized, notes


def _fp16(content: bytes, recipe: Recipe) -> tuple[Any, list[str]]:
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer

    q = quantizer.Quantizer(content)
    q.add_weight_only_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        num_bits=16,
        algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING,
    )
    return q, [
        "float16 weights (ai-edge-quantizer float casting, weight-only); computed in float32"
    ]


def _int8_dynamic(content: bytes, recipe: Recipe) -> tuple[Any, list[str]]:
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer import recipe as recipes

    return quantizer.Quantizer(content, recipes.dynamic_wi8_afp32()), [
        "int8 weights per output channel, activations quantized on the fly by the kernels "
        "(ai-edge-quantizer dynamic_wi8_afp32)"
    ]


def _int8_static(content: bytes, recipe: Recipe) -> tuple[Any, list[str]]:
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer
    from ai_edge_quantizer import recipe as recipes

    q = quantizer.Quantizer(content, recipes.static_wi8_ai8())
    # Keep the model's inputs and outputs float32: the quantizer would make them int8.
    for boundary in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        q.update_quantization_recipe(
            regex=".*",
            operation_name=boundary,
            algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE,
        )
    return q, [
        "int8 weights (per output channel) and activations (per tensor), calibrated "
        "(ai-edge-quantizer static_wi8_ai8); inputs and outputs stay float32"
    ]


def _int4_weight(content: bytes, recipe: Recipe) -> tuple[Any, list[str]]:
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer import recipe as recipes

    check_options(recipe)
    notes = [
        "int4 weights per output channel, dequantized to float before each op "
        "(ai-edge-quantizer weight_only_wi4_afp32); weight-only: activations stay float"
    ]
    if "group_size" in recipe.options:
        notes.append(
            f"group_size {recipe.options['group_size']} not applied: ai-edge-quantizer "
            "quantizes weight-only int4 per output channel (its blockwise int4 is for "
            "dynamic-range recipes only)"
        )
    return quantizer.Quantizer(content, recipes.weight_only_wi4_afp32()), notes


# -- helpers -------------------------------------------------------------------------------


def _calibration_feeds(
    model: Model, recipe: Recipe, shapes: dict[str, tuple[int, ...]]
) -> tuple[list[dict[str, np.ndarray]], str]:
    """Calibration samples under the converter's input names (args_0, ...), each of the
    shape the model was converted for."""
    samples = calibration_data(model, recipe)
    feeds = []
    for feed in samples.feeds:
        named = {}
        for position, spec in enumerate(model.inputs):
            array = np.asarray(feed[spec.name])
            if tuple(array.shape) != tuple(shapes[spec.name]):
                raise EdgeforgeError(
                    f"calibration input {spec.name!r} has shape "
                    f"{'x'.join(map(str, array.shape))}, the LiteRT model was converted for "
                    f"{'x'.join(map(str, shapes[spec.name]))}; give samples of that shape "
                    "(one per file)"
                )
            named[f"args_{position}"] = array.astype(_narrow(array.dtype), copy=False)
        feeds.append(named)
    return feeds, calibration_note(samples, recipe)


def _narrow(dtype: np.dtype) -> np.dtype:
    """The converter stores 64-bit tensors as 32-bit ones; calibration feeds must match."""
    return {np.dtype(np.int64): np.dtype(np.int32), np.dtype(np.float64): np.dtype(np.float32)}.get(
        np.dtype(dtype), np.dtype(dtype)
    )


def _call(step: Callable[[], Any], what: str) -> Any:
    failure: BaseException | None = None
    with silenced(_QUIET):
        try:
            return step()
        except Exception as exc:  # the quantizer raises ValueError, RuntimeError and its own
            failure = exc
    raise EdgeforgeError(
        f"ai-edge-quantizer could not {what} the model ({first_line(failure)}); try another "
        "precision"
    )


def _reduced_tensors(content: bytes) -> int:
    """Tensors of the `.tflite` stored as float16 or carrying quantization scales."""
    from ai_edge_litert.interpreter import Interpreter

    with silenced(_QUIET):
        interpreter = Interpreter(model_content=content)
        details = interpreter.get_tensor_details()
    return sum(
        1
        for t in details
        if t["dtype"] == np.float16 or len(t["quantization_parameters"]["scales"]) > 0
    )
