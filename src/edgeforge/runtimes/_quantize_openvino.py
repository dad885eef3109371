"""OpenVINO's quantized recipes, carried out by NNCF on the converted `openvino.Model`.

- int8-static: `nncf.quantize` (post-training, int8 weights and activations) over the recipe's
  calibration samples; options `preset` ("performance", the default, or "mixed"),
  `model_type` ("transformer": NNCF's transformer scheme, SmoothQuant and float softmax and
  layer norms, as NNCF recommends for transformers, with SmoothQuant's MatMul alpha
  `smooth_quant_alpha`, default 0.8), `keep_feed_forward_float` (the MatMuls fed by GELU kept
  float; off by default) and `nodes_to_exclude` (node names kept in float, as NNCF's
  `IgnoredScope`). Measured on MiniLM-L6 (pooled cosine, 48 sentences): NNCF's defaults 0.21
  (the attention mask and the layer norms' inputs quantized); the transformer scheme with
  preset mixed and SmoothQuant's default alpha (0.95) 0.9945, with alpha 0.9 0.9965, 0.8
  0.9980, 0.7 0.9978, 0.6 0.9970; with the GELU-fed MatMuls float 0.9985, but those float
  islands cost more time than the bf16 model saves. Preset performance (symmetric
  activations), alpha 0.8: 0.9976 (0.9945 per-dimension standardised, against mixed's
  0.9954), and on this AMX CPU it is the one that beats bf16: timed interleaved (2 threads, a
  loaded machine) it ran 1.06x bf16's speed and 1.12-1.19x preset mixed's, which ran
  0.90-0.97x bf16's. Neither wins both ways, so transformers default to "mixed" (the more
  accurate) unless told, and `optimize` builds both presets and lets the measurement decide.
  On a CNN this is NNCF's default `quantize`: on the ResNet-50 shape (from optimize's cleaned
  ONNX, 32 calibration images) the IR's 395 constants equal, bit for bit, those of
  `nncf.quantize(ov.convert_model(onnx), dataset)` with every default, and every convolution
  and the classifier run AMX int8 kernels (OpenVINO's performance counters), so it ties with
  that peer by construction. Tried for a margin on that model, interleaved with the peer (2
  threads, load average 17-20): NNCF's `target_device=CPU_SPR` (one quantizer fewer before
  each residual Add) ran 0.77-0.83x the default's speed; the input reshaped to a static
  1x3x224x224 0.98-1.07x, within noise; neither is used;
- int8-dynamic: `nncf.compress_weights` INT8_ASYM, per output channel. It is weight-only: the
  activations stay float and the CPU plugin decompresses the weights as it computes;
- int4-weight: `nncf.compress_weights` INT4_SYM (or INT4_ASYM with `symmetric: false`) in
  groups of `group_size` (default 128) input channels, on a `ratio` (default 1.0) of the weight
  layers; a layer whose channels the group size does not divide gets the largest power of two
  that does (NNCF's ADJUST fallback), and NNCF keeps what it cannot group in int8.

NNCF changes the model it is given; callers pass a model converted for this build alone.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from edgeforge.errors import EdgeforgeError, first_line
from edgeforge.model import Model
from edgeforge.recipe import Recipe
from edgeforge.runtimes._calibration import calibration_data, calibration_note
from edgeforge.runtimes._native import silenced
from edgeforge.runtimes._options import (
    choice_option,
    flag_option,
    names_option,
    positive_int_option,
    ratio_option,
)

__all__ = ["QUANTIZED", "quantize"]

QUANTIZED = ("int8-dynamic", "int8-static", "int4-weight")
DEFAULT_GROUP_SIZE = 128
DEFAULT_SMOOTH_QUANT_ALPHA = 0.8  # see the module docstring


def quantize(ov_model: Any, model: Model, recipe: Recipe) -> tuple[Any, list[str]]:
    """`ov_model` quantized as the recipe says (changed in place), and notes for the manifest."""
    build = {
        "int8-static": _int8_static,
        "int8-dynamic": _int8_weights,
        "int4-weight": _int4_weights,
    }[recipe.precision]
    quantized, notes = build(ov_model, model, recipe)
    return quantized, [*notes, f"constants by element type: {_constant_census(quantized)}"]


def _int8_static(ov_model: Any, model: Model, recipe: Recipe) -> tuple[Any, list[str]]:
    import nncf

    transformer = recipe.option("model_type") == "transformer"
    preset = choice_option(
        recipe, "preset", ("performance", "mixed"), "mixed" if transformer else "performance"
    )
    excluded = names_option(recipe, "nodes_to_exclude")
    ignored = _ignored(ov_model, excluded)
    down = _fed_by_gelu(ov_model) if flag_option(recipe, "keep_feed_forward_float", False) else []
    if down:
        names = [*(ignored.names if ignored else []), *down]
        ignored = nncf.IgnoredScope(names=names)
    alpha = ratio_option(recipe, "smooth_quant_alpha", DEFAULT_SMOOTH_QUANT_ALPHA)
    advanced = None
    if transformer:
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            AdvancedSmoothQuantParameters,
        )

        advanced = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=alpha)
        )
    samples = calibration_data(model, recipe)
    # The IR's parameters are in the ONNX graph's input order, as are model.inputs.
    items = [[feed[spec.name] for spec in model.inputs] for feed in samples.feeds]
    quantized = _run_nncf(
        "quantize",
        lambda: nncf.quantize(
            ov_model,
            nncf.Dataset(items),
            preset=nncf.QuantizationPreset(preset),
            subset_size=len(items),
            ignored_scope=ignored,
            model_type=nncf.ModelType.TRANSFORMER if transformer else None,
            advanced_parameters=advanced,
        ),
    )
    scheme = f"model type transformer: SmoothQuant alpha {alpha}, " if transformer else ""
    notes = [
        f"int8 weights and activations: NNCF post-training quantization ({scheme}preset "
        f"{preset}, fast bias correction)",
        calibration_note(samples, recipe),
    ]
    if excluded:
        notes.append(f"kept in float (nodes_to_exclude): {', '.join(excluded)}")
    if down:
        notes.append(
            f"{len(down)} feed-forward down-projection MatMul(s) (fed by GELU) kept in float: "
            "their inputs' range is the widest in a transformer"
        )
    return quantized, notes


def _fed_by_gelu(ov_model: Any) -> list[str]:
    """The MatMuls whose first input is a GELU's output (through reshapes and converts)."""
    found = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        producer = op.input_value(0).get_node()
        while producer.get_type_name() in ("Convert", "Reshape", "Transpose"):
            producer = producer.input_value(0).get_node()
        if producer.get_type_name() == "Gelu":
            found.append(op.get_friendly_name())
    return found


def _int8_weights(ov_model: Any, model: Model, recipe: Recipe) -> tuple[Any, list[str]]:
    import nncf

    excluded = names_option(recipe, "nodes_to_exclude")
    compressed = _run_nncf(
        "compress_weights",
        lambda: nncf.compress_weights(
            ov_model,
            mode=nncf.CompressWeightsMode.INT8_ASYM,
            ignored_scope=_ignored(ov_model, excluded),
        ),
    )
    return compressed, [
        "int8 weights, asymmetric per output channel (NNCF compress_weights INT8_ASYM); "
        "weight-only: activations stay float and the CPU plugin decompresses the weights "
        "as it computes"
    ]


def _int4_weights(ov_model: Any, model: Model, recipe: Recipe) -> tuple[Any, list[str]]:
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedCompressionParameters,
        GroupSizeFallbackMode,
    )

    group_size = positive_int_option(recipe, "group_size", DEFAULT_GROUP_SIZE)
    ratio = ratio_option(recipe, "ratio", 1.0)
    symmetric = flag_option(recipe, "symmetric", True)
    excluded = names_option(recipe, "nodes_to_exclude")
    mode = nncf.CompressWeightsMode.INT4_SYM if symmetric else nncf.CompressWeightsMode.INT4_ASYM
    compressed = _run_nncf(
        "compress_weights",
        lambda: nncf.compress_weights(
            ov_model,
            mode=mode,
            group_size=group_size,
            ratio=ratio,
            ignored_scope=_ignored(ov_model, excluded),
            advanced_parameters=AdvancedCompressionParameters(
                group_size_fallback_mode=GroupSizeFallbackMode.ADJUST
            ),
        ),
    )
    return compressed, [
        f"int4 weights (NNCF compress_weights {mode.value}, group size {group_size}, ratio "
        f"{ratio}); weight-only: activations stay float. Layers whose input channels "
        f"{group_size} does not divide take a smaller power-of-two group; NNCF keeps the "
        "rest (by default the first and last layers) in int8"
    ]


# -- helpers -------------------------------------------------------------------------------


def _ignored(ov_model: Any, onnx_names: list[str]) -> Any:
    """NNCF's IgnoredScope for ONNX node names: OpenVINO names the ops it converts a node into
    after the node (`conv1`, and `conv1/WithoutBiases` for a Conv's convolution proper)."""
    import nncf

    if not onnx_names:
        return None
    ops = [op.get_friendly_name() for op in ov_model.get_ops()]
    found: list[str] = []
    for name in onnx_names:
        matches = [op for op in ops if op == name or op.startswith(f"{name}/")]
        if not matches:
            raise EdgeforgeError(
                f"nodes_to_exclude names {name!r}, which is not a node of the model (or "
                "OpenVINO folded it away); use node names from the ONNX graph"
            )
        found += matches
    return nncf.IgnoredScope(names=found)


def _run_nncf(what: str, call: Any) -> Any:
    """Call NNCF quietly; its failures become one-line errors."""
    try:
        with _nncf_quiet():
            return call()
    except Exception as exc:  # NNCF raises its own types, OpenVINO's and plain ones alike
        raise EdgeforgeError(
            f"NNCF {what} failed: {first_line(exc)}; try another precision or exclude the "
            "failing nodes with nodes_to_exclude"
        ) from None


@contextlib.contextmanager
def _nncf_quiet() -> Iterator[None]:
    """NNCF logs tables and draws progress bars; keep them off the terminal."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with silenced():
            yield
    finally:
        logger.setLevel(level)


def _constant_census(ov_model: Any) -> str:
    """'i4 32.0 KiB, u8 9.1 KiB, f32 1.2 KiB': the model's constants by element type."""
    sizes: Counter[str] = Counter()
    for op in ov_model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        output = op.output(0)
        shape = output.get_partial_shape()
        if shape.is_dynamic:
            continue
        count = 1
        for dim in shape.to_shape():
            count *= dim
        element = op.get_element_type()
        sizes[element.get_type_name()] += count * element.bitwidth / 8
    return ", ".join(f"{name} {size / 1024:.1f} KiB" for name, size in sizes.most_common())
