"""Carrying out a recipe with ONNX Runtime's own tools: an ONNX file in, an ONNX file out.

- fp16: `onnxruntime.transformers.float16`, inputs and outputs kept float32 so callers feed
  the same arrays at every precision;
- int8-dynamic: `quantize_dynamic` (int8 weights, activations quantized at run time);
- int8-static: `quant_pre_process`, then `quantize_static` in QDQ format with calibration;
  activations uint8 and weights int8 by default, without reduce_range, because that is what
  ONNX Runtime's x86 kernels run fastest with VNNI (measured on resnet18: about 2.6x faster
  than fp32, where int8 activations were 1.1x). Tensors that carry a stand-in for -inf (the
  attention mask of transformers: `finfo(float32).min` where a token is padding) are never
  quantized nor calibrated: one uint8 range spanning 3.4e38 rounds every real attention score
  to zero, and ONNX Runtime's histogram calibrators (entropy, percentile) cannot bin it at all
  (`ValueError: Too many bins for data range`). The nodes that read or write them stay float;
  histogram calibration runs here, on the other tensors, into ONNX Runtime's calibration cache;
- int4-weight: `MatMulNBitsQuantizer` (symmetric blocks) on MatMul weights and embedding
  tables (Gather); Gemm nodes with constant weights are first rewritten as MatMul + Add,
  which the quantizer takes.

Every function returns the notes a build records in its manifest.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from edgeforge.errors import EdgeforgeError, first_line
from edgeforge.evaluate.data import Preprocess, Samples, load_data, synthesize
from edgeforge.model import Model
from edgeforge.recipe import Recipe

__all__ = [
    "CalibrationReader",
    "calibration_samples",
    "check_excluded_nodes",
    "prepare_for_quantization",
    "quantize",
    "quantize_int8_static",
    "quiet",
]

DEFAULT_CALIBRATION_SAMPLES = 64
DEFAULT_BLOCK_SIZE = 128
_PROTOBUF_LIMIT = (1 << 31) - (1 << 26)  # 2 GB, less a margin for the graph itself
# A float constant this large stands in for -inf or +inf (finfo(float32).min is -3.4e38).
_INFINITY_STAND_IN = 1e30
# Ops through which such a value flows on unchanged in size: (op, which inputs carry data; None
# for all). Shape-like inputs (Reshape's shape, Where's condition) never carry it.
_CARRIES = {
    **{op: None for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Neg", "Sum", "Mean")},
    **{op: None for op in ("Cast", "Identity", "Transpose", "Concat", "Abs", "Clip")},
    **{op: (0,) for op in ("Reshape", "Expand", "Slice", "Tile", "Unsqueeze", "Squeeze")},
    **{op: (0,) for op in ("Gather", "GatherElements", "GatherND", "Pad", "Flatten")},
    "Where": (1, 2),
}


def quantize(model: Model, recipe: Recipe, source: Path, out: Path) -> list[str]:
    """Write `source` (the model's ONNX file) at `recipe.precision` to `out`."""
    try:
        if recipe.precision == "int8-static":
            return quantize_int8_static(source, out, recipe, calibration_samples(model, recipe))
        builders = {"fp16": _fp16, "int8-dynamic": _int8_dynamic, "int4-weight": _int4_weight}
        return builders[recipe.precision](source, out, recipe)
    except EdgeforgeError:
        raise
    except Exception as exc:  # the quantizers raise assorted types; name the step and cause
        raise EdgeforgeError(
            f"ONNX Runtime's {recipe.precision} quantization failed: {first_line(exc)}; try "
            "nodes_to_exclude for the node it names, or another precision"
        ) from exc


def calibration_samples(model: Model, recipe: Recipe) -> Samples:
    """The recipe's `data` folder, else realistic synthesised samples (by input role)."""
    count = recipe.option("calibration_samples", DEFAULT_CALIBRATION_SAMPLES)
    if recipe.option("data"):
        steps = Preprocess.parse(recipe.option("preprocess"))
        samples = load_data(
            Path(recipe.option("data")), model.inputs, limit=count, preprocess=steps
        )
        where = recipe.option("data")
        how = f", preprocessed: {steps.describe()}" if steps is not None else ""
        samples.notes.append(f"calibrated on {len(samples.feeds)} samples from {where}{how}")
        return samples
    samples = synthesize(model, count=count)
    samples.notes.append(
        f"calibrated on {count} random synthesised samples (no data given): activation ranges "
        "may not match real inputs; pass options.data for representative ones"
    )
    return samples


def quantize_int8_static(
    source: Path,
    out: Path,
    recipe: Recipe,
    samples: Samples,
    calibration_cache: Path | None = None,
    prepare: bool = True,
) -> list[str]:
    """QDQ int8 with calibration on `samples`. `calibration_cache` (a JSON file ONNX Runtime
    writes on first use and reads afterwards) lets repeated builds skip calibration;
    `prepare=False` skips `quant_pre_process` for a source that `prepare_for_quantization`
    already wrote."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    method = recipe.option("calibration_method", "minmax")
    activation = recipe.option("activation_type", "uint8")
    per_channel = recipe.option("per_channel", True)
    with tempfile.TemporaryDirectory(prefix="edgeforge-quant-") as scratch:
        prepared, notes = (
            prepare_for_quantization(source, Path(scratch) / "prepared.onnx")
            if prepare
            else (source, [])
        )
        check_excluded_nodes(recipe, source, prepared)
        stand_ins, kept = infinity_stand_ins(prepared)
        excluded = list(recipe.option("nodes_to_exclude", []))
        excluded += [name for name in kept if name not in excluded]
        if kept:
            notes.append(
                f"{len(kept)} node(s) that carry a stand-in for -inf (an attention mask) kept "
                "in float: one int8 range spanning it would round every other value to zero"
            )
        transformer = recipe.option("model_type") == "transformer"
        op_types = None
        if transformer:
            # As ONNX Runtime's transformer examples do: int8 for the weight products only
            # (not the attention's activation-by-activation products), and the feed-forward
            # block float. Measured on MiniLM-L6 (pooled cosine, 48 sentences): all MatMuls
            # 0.9915; weight products only 0.9925; the GELU-fed down-projections float too
            # 0.9925; the up-projections into GELU float too 0.9979 (their inputs, the
            # attention block's LayerNorm output, hold BERT's outlier dimensions). Percentile
            # calibration clips those outliers (0.91-0.94): minmax stays the recipe's default.
            op_types = ["MatMul", "Gemm"]
            block = [n for n in _feed_forward(prepared) if n not in excluded]
            products = [n for n in _activation_products(prepared) if n not in excluded]
            excluded += block + products
            notes.append(
                f"transformer: only MatMul/Gemm with constant weights quantized; "
                f"{len(products)} attention product(s) of two activations and {len(block)} "
                "feed-forward MatMul(s) (into and out of GELU) kept in float"
            )
        if method != "minmax":
            calibration_cache = calibration_cache or Path(scratch) / "calibration.json"
            if not calibration_cache.is_file():
                _histogram_calibration(prepared, samples, method, stand_ins, calibration_cache)
        with quiet():
            quantize_static(
                str(prepared),
                str(out),
                CalibrationReader(samples),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=False,
                activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                op_types_to_quantize=op_types,
                calibrate_method=_calibration_method(method),
                calibration_providers=["CPUExecutionProvider"],
                use_external_data_format=_large(source),
                calibration_cache_path=calibration_cache,
            )
    return [
        *samples.notes,
        *notes,
        f"int8 static (QDQ), {activation} activations, int8 weights "
        f"{'per channel' if per_channel else 'per tensor'}, {method} calibration"
        + _excluded_note(recipe),
    ]


_GELU = ("Gelu", "BiasGelu", "FastGelu")


def _feed_forward(path: Path) -> list[str]:
    """Names of the MatMuls of the feed-forward blocks: those whose first input is a GELU's
    output (Gelu, or ONNX Runtime's fused BiasGelu / FastGelu), and those whose output reaches
    a GELU directly or through a bias Add."""
    graph = onnx.load(str(path), load_external_data=False).graph
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    gelu_out = {out for node in graph.node if node.op_type in _GELU for out in node.output}

    def feeds_gelu(node: Any) -> bool:
        for reader in readers.get(node.output[0], []):
            if reader.op_type in _GELU:
                return True
            if reader.op_type == "Add" and any(
                r.op_type in _GELU for r in readers.get(reader.output[0], [])
            ):
                return True
        return False

    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul" and n.name and (n.input[0] in gelu_out or feeds_gelu(n))
    ]


def _activation_products(path: Path) -> list[str]:
    """Names of the MatMuls neither of whose inputs is a constant (attention's Q·Kᵀ, P·V)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    constant = {t.name for t in graph.initializer}
    constant |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul" and n.name and not set(n.input[:2]) & constant
    ]


def infinity_stand_ins(path: Path) -> tuple[set[str], list[str]]:
    """The float tensors of the model at `path` that can hold a stand-in for -inf or +inf (a
    constant of magnitude >= 1e30, and what it flows into unchanged: the additive attention
    mask of transformers), and the names of the nodes that read or write them."""
    from onnx import numpy_helper

    proto = onnx.load(str(path), load_external_data=False)
    carrying: set[str] = set()
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL and _huge(
            numpy_helper.to_array(tensor)
        ):
            carrying.add(tensor.name)
    nodes: list[str] = []
    for node in proto.graph.node:  # topological order: a tensor is marked before it is read
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and _huge(numpy_helper.to_array(value)):
                carrying.update(node.output)
            continue
        reads = [i for i, name in enumerate(node.input) if name in carrying]
        if not reads:
            continue
        if node.name:
            nodes.append(node.name)
        positions = _CARRIES.get(node.op_type, ())
        if positions is None or any(i in positions for i in reads):
            carrying.update(node.output)
    for node in proto.graph.node:  # the nodes that write them (a Where choosing the mask)
        writes = node.op_type != "Constant" and set(node.output) & carrying
        if writes and node.name and node.name not in nodes:
            nodes.append(node.name)
    return carrying, nodes


def _huge(array: np.ndarray) -> bool:
    return (
        array.dtype.kind == "f"
        and array.size > 0
        and bool(np.max(np.abs(array.astype(np.float64))) >= _INFINITY_STAND_IN)
    )


def _histogram_calibration(
    prepared: Path, samples: Samples, method: str, skip: set[str], cache: Path
) -> None:
    """Entropy or percentile ranges from ONNX Runtime's own calibrator, written to `cache`
    (which `quantize_static` then reads instead of calibrating), leaving out the tensors in
    `skip`: their nodes stay float, and their values cannot be binned."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    with tempfile.TemporaryDirectory(prefix="edgeforge-calibrate-") as scratch, quiet():
        calibrator = create_calibrator(
            prepared,
            op_types,
            augmented_model_path=str(Path(scratch) / "augmented.onnx"),
            calibrate_method=_calibration_method(method),
            use_external_data_format=_large(prepared),
            providers=["CPUExecutionProvider"],
        )
        calibrator.tensors_to_calibrate = set(calibrator.tensors_to_calibrate) - skip
        calibrator.collect_data(CalibrationReader(samples))
        save_tensors_data(calibrator.compute_data(), cache)


def _fp16(source: Path, out: Path, recipe: Recipe) -> list[str]:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    check_excluded_nodes(recipe, source)
    proto = onnx.load(str(source))
    with quiet():
        converted = convert_float_to_float16(
            proto,
            keep_io_types=True,
            node_block_list=list(recipe.option("nodes_to_exclude", [])) or None,
        )
    _save(converted, out)
    return ["fp16 weights and compute, float32 inputs and outputs" + _excluded_note(recipe)]


def _int8_dynamic(source: Path, out: Path, recipe: Recipe) -> list[str]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    per_channel = recipe.option("per_channel", True)
    check_excluded_nodes(recipe, source)
    with quiet():
        quantize_dynamic(
            str(source),
            str(out),
            per_channel=per_channel,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(recipe.option("nodes_to_exclude", [])),
            use_external_data_format=_large(source),
        )
    notes = [
        f"int8 dynamic: int8 weights {'per channel' if per_channel else 'per tensor'}, "
        "activations quantized at run time" + _excluded_note(recipe)
    ]
    if any(
        n.op_type == "ConvInteger" for n in onnx.load(str(out), load_external_data=False).graph.node
    ):
        # Measured on resnet18 here: about 4x slower than fp32, where int8-static is ~3x faster.
        notes.append(
            "convolutions run as ConvInteger, which ONNX Runtime's CPU kernels run slower than "
            "fp32; prefer int8-static for convolutional models"
        )
    return notes


def _int4_weight(source: Path, out: Path, recipe: Recipe) -> list[str]:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    block = recipe.option("block_size", DEFAULT_BLOCK_SIZE)
    check_excluded_nodes(recipe, source)
    proto = onnx.load(str(source))
    rewritten = _gemm_to_matmul(proto)
    notes = [f"{rewritten} Gemm nodes rewritten as MatMul + Add for 4-bit weights"]
    notes = notes if rewritten else []
    op_types: tuple[str, ...] = ("MatMul",)
    if _has_embedding_tables(proto):
        # They quantize to GatherBlockQuantized, whose 4-bit type needs opset 21.
        upgraded = _opset_21(proto)
        if upgraded is not None:
            proto, op_types = upgraded, ("MatMul", "Gather")
        else:
            notes.append("embedding tables kept in float: the model does not convert to opset 21")
    axes = (("MatMul", 0), ("Gather", 1))
    config = DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=True, op_types_to_quantize=op_types, quant_axes=axes
    )
    with quiet():
        quantizer = MatMulNBitsQuantizer(
            proto,
            block_size=block,
            is_symmetric=True,
            nodes_to_exclude=list(recipe.option("nodes_to_exclude", [])),
            op_types_to_quantize=op_types,
            quant_axes=axes,
            algo_config=config,
        )
        quantizer.process()
    quantized = quantizer.model.model
    _save(quantized, out)
    ops = [n.op_type for n in quantized.graph.node]
    return [
        *notes,
        f"int4 weights, symmetric, blocks of {block}: {ops.count('MatMulNBits')} MatMul weights, "
        f"{ops.count('GatherBlockQuantized')} embedding tables" + _excluded_note(recipe),
    ]


def _gemm_to_matmul(proto: onnx.ModelProto) -> int:
    """Rewrite Gemm(A, W[, C]) with a constant W, alpha 1, no transA as MatMul(A, W') + C:
    the same product, in the form MatMulNBits takes. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    weights = {t.name: t for t in proto.graph.initializer}
    nodes, rewritten = [], 0
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        beta = attrs.get("beta", 1.0)
        if (
            node.op_type != "Gemm"
            or node.input[1] not in weights
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("transA", 0)
            or (bias is not None and beta not in (0.0, 1.0))
        ):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        name = f"{node.input[1]}_matmul"
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), name))
        if bias is None or beta == 0.0:
            nodes.append(helper.make_node("MatMul", [node.input[0], name], node.output, node.name))
        else:
            product = f"{node.output[0]}_product"
            nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], node.name))
            nodes.append(helper.make_node("Add", [product, bias], node.output, f"{node.name}_bias"))
        rewritten += 1
    if rewritten:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        _drop_unused_initializers(proto)
    return rewritten


def _drop_unused_initializers(proto: onnx.ModelProto) -> None:
    used = {name for node in proto.graph.node for name in node.input}
    used |= {o.name for o in proto.graph.output}
    keep = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)


def _has_embedding_tables(proto: onnx.ModelProto) -> bool:
    weights = {t.name for t in proto.graph.initializer}
    return any(n.op_type == "Gather" and n.input[0] in weights for n in proto.graph.node)


def check_excluded_nodes(recipe: Recipe, *models: Path) -> None:
    """Every name in nodes_to_exclude must be a node of one of `models` (the source, or the
    graph ONNX Runtime's preparation made of it): the quantizers ignore unknown names."""
    wanted = recipe.option("nodes_to_exclude", [])
    if not wanted:
        return
    known = {
        node.name
        for path in models
        for node in onnx.load(str(path), load_external_data=False).graph.node
    }
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise EdgeforgeError(
            f"nodes_to_exclude names {unknown[0]!r}, which is not a node of this model "
            f"({len(unknown)} unknown); use node names from the ONNX graph or from "
            "edgeforge.optimize.sensitivity.rank_nodes"
        )


def _opset_21(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    from onnx import version_converter

    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= 21:
        return proto
    try:
        return version_converter.convert_version(proto, 21)
    except Exception:  # the converter lacks adapters for some ops; keep tables in float
        return None


def prepare_for_quantization(source: Path, out: Path) -> tuple[Path, list[str]]:
    """ONNX Runtime's recommended preparation (shape inference, graph fusions); a model it
    cannot prepare is quantized as it is, and the notes say so."""
    from onnxruntime.quantization import quant_pre_process

    source, out = Path(source).resolve(), Path(out).resolve()
    try:
        # Its symbolic shape inference, when incomplete, saves a copy of the model into the
        # working folder (sym_shape_infer_temp.onnx and its weights); keep that in a scratch one.
        with (
            quiet(),
            tempfile.TemporaryDirectory(prefix="edgeforge-prepare-") as scratch,
            contextlib.chdir(scratch),
        ):
            quant_pre_process(str(source), str(out), save_as_external_data=_large(source))
    except Exception as exc:
        return source, [f"quant_pre_process skipped ({first_line(exc)})"]
    return out, []


def _calibration_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[name]


class CalibrationReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over our samples: `get_next` until None."""

    def __init__(self, samples: Samples) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(samples.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _excluded_note(recipe: Recipe) -> str:
    excluded = recipe.option("nodes_to_exclude", [])
    return f"; {len(excluded)} nodes kept in float" if excluded else ""


def _large(path: Path) -> bool:
    """Protobuf caps a file at 2 GB: larger models keep their weights as external data.
    `path` lies in a folder of its own (the model and its external data files)."""
    size = sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file())
    return size > _PROTOBUF_LIMIT


def _save(proto: onnx.ModelProto, out: Path) -> None:
    large = proto.ByteSize() > _PROTOBUF_LIMIT
    onnx.save(proto, str(out), save_as_external_data=large, location=f"{out.name}.data")


@contextlib.contextmanager
def quiet(level: int = logging.ERROR) -> Iterator[None]:
    """ONNX Runtime's quantizers log advice at WARNING through the root logger; keep it out of
    our output (the notes say what matters). Pass a higher `level` for calls that log expected
    mismatches as errors."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(before)
