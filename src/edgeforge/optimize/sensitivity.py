"""Layer-wise sensitivity of int8-static quantization in ONNX Runtime, and keeping the most
harmful layers in float until an accuracy limit holds.

What a caller can rely on:
- the ranking comes from one quantized model, read with ONNX Runtime's own debugging tools
  (`onnxruntime.quantization.qdq_loss_debug`): every activation before and after its
  Quantize/Dequantize pair, every weight before and after quantization. A node's harm is the
  lowest signal-to-quantization-noise ratio (dB) among the tensors it reads or writes; worst
  first. The producer and the consumers of a noisy tensor share its score, so they are
  excluded together (a tensor stays float only when no node around it is quantized);
- `keep_float_until` excludes the top 1, 2, 4, ... ranked nodes until the metric reaches the
  limit, then bisects for the fewest: at most about 2 log2(n) + 2 quantize runs for n ranked
  nodes, all sharing one calibration (ONNX Runtime's calibration cache) and one preparation;
- calibration uses the recipe's `data` folder when it names one, else the samples given; the
  metric is always measured on the samples given, against the float model in ONNX Runtime.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeforge.errors import EdgeforgeError
from edgeforge.evaluate.data import Samples
from edgeforge.model import Model
from edgeforge.recipe import Recipe

__all__ = [
    "MetricFn",
    "NodeSensitivity",
    "SensitivityResult",
    "keep_float_until",
    "mean_cosine",
    "rank_nodes",
    "top1_agreement",
]

Outputs = list[dict[str, np.ndarray]]  # one dict of named outputs per sample
# (reference outputs, candidate outputs) -> a score where higher is better
MetricFn = Callable[[Outputs, Outputs], float]

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_FLOOR_DB, _CEILING_DB = -100.0, 1000.0  # finite bounds, so that rankings serialise as JSON


@dataclass(frozen=True)
class NodeSensitivity:
    node: str
    op_type: str
    sqnr_db: float  # the lowest SQNR among the node's quantized tensors: lower harms more
    tensor: str  # the tensor with that SQNR

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SensitivityResult:
    ranking: list[NodeSensitivity]
    excluded: list[str]  # node names kept in float, beyond those the recipe already kept
    metric_before: float  # plain int8 (the recipe as given)
    metric_after: float  # with `excluded` kept in float
    limit: float
    met: bool
    recipe: Recipe  # the recipe to build: nodes_to_exclude holds the recipe's and `excluded`
    quantize_runs: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranking": [r.to_dict() for r in self.ranking],
            "excluded": list(self.excluded),
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "limit": self.limit,
            "met": self.met,
            "recipe": self.recipe.to_dict(),
            "quantize_runs": self.quantize_runs,
            "notes": list(self.notes),
        }


def top1_agreement(reference: Outputs, candidate: Outputs) -> float:
    """Share of samples whose first output's arg-max agrees (classifier logits)."""
    name = next(iter(reference[0]))
    want = np.concatenate([r[name].reshape(len(r[name]), -1) for r in reference])
    got = np.concatenate([c[name].reshape(len(c[name]), -1) for c in candidate])
    return float(np.mean(want.argmax(1) == got.argmax(1)))


def mean_cosine(reference: Outputs, candidate: Outputs) -> float:
    """Cosine similarity of all outputs, flattened over samples (regressors, embeddings)."""
    from edgeforge.evaluate.compare import cosine_similarity

    want = np.concatenate([np.ravel(v) for r in reference for v in r.values()])
    got = np.concatenate([np.ravel(v) for c in candidate for v in c.values()])
    return cosine_similarity(want, got)


def rank_nodes(model: Any, recipe: Recipe, samples: Samples) -> list[NodeSensitivity]:
    """The quantizable nodes of `model` under `recipe` (int8-static), most harmful first."""
    with _Workspace(model, recipe, samples) as space:
        return space.rank(space.quantize([]))


def keep_float_until(
    model: Any,
    recipe: Recipe,
    samples: Samples,
    metric_fn: MetricFn = top1_agreement,
    limit: float = 0.99,
) -> SensitivityResult:
    """Keep the most harmful nodes in float until `metric_fn(float, int8) >= limit`."""
    with _Workspace(model, recipe, samples) as space:
        quantized = space.quantize([])
        before = space.metric(quantized, metric_fn)
        ranking = space.rank(quantized)
        names = [r.node for r in ranking]
        if before >= limit or not names:
            note = "plain int8 meets the limit" if before >= limit else "nothing to exclude"
            return space.result(ranking, [], before, before, limit, metric_fn, [note])

        scores: dict[int, float] = {}

        def score(count: int) -> float:
            if count not in scores:
                quantized = space.quantize(names[:count])
                scores[count] = space.metric(quantized, metric_fn)
                quantized.unlink()  # a large model's copies would pile up in the scratch folder
            return scores[count]

        # Grow the group until the limit holds, then bisect between the last two sizes.
        low, high = 0, 1
        while high < len(names) and score(high) < limit:
            low, high = high, min(2 * high, len(names))
        if score(high) < limit:
            notes = [f"the limit is not met even with all {len(names)} ranked nodes in float"]
            return space.result(ranking, names, before, score(high), limit, metric_fn, notes)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if score(middle) < limit else (low, middle)
        return space.result(ranking, names[:high], before, score(high), limit, metric_fn, [])


class _Workspace:
    """A scratch folder holding the prepared float model, its reference outputs and one
    calibration cache, so that every quantize run after the first skips calibration."""

    def __init__(self, model: Any, recipe: Recipe, samples: Samples) -> None:
        from edgeforge._load import load

        if recipe.precision != "int8-static":
            raise EdgeforgeError(
                f"sensitivity ranks int8-static quantization, not {recipe.precision}; pass "
                "Recipe('int8-static', ...)"
            )
        if not samples.feeds:
            raise EdgeforgeError("sensitivity needs at least one sample; pass data or samples")
        self.model: Model = load(model)
        self.recipe = recipe
        self.samples = samples
        self.runs = 0

    def __enter__(self) -> _Workspace:
        from edgeforge.runtimes._ort_quantize import calibration_samples, prepare_for_quantization
        from edgeforge.runtimes.onnxruntime import _copy_onnx

        self.scratch = Path(tempfile.mkdtemp(prefix="edgeforge-sensitivity-"))
        try:
            (self.scratch / "fp32").mkdir()
            _copy_onnx(self.model, self.scratch / "fp32")
            (self.scratch / "prepared").mkdir()
            self.prepared, self.notes = prepare_for_quantization(
                self.scratch / "fp32" / "model.onnx", self.scratch / "prepared" / "model.onnx"
            )
            self.calibration = (
                calibration_samples(self.model, self.recipe)
                if self.recipe.option("data")
                else self.samples
            )
            self.reference = self._run(self.scratch / "fp32" / "model.onnx")
        except BaseException:
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def quantize(self, extra: list[str]) -> Path:
        from edgeforge.runtimes._ort_quantize import quantize_int8_static

        excluded = [*self.recipe.option("nodes_to_exclude", []), *extra]
        recipe = Recipe(
            self.recipe.precision, {**self.recipe.options, "nodes_to_exclude": excluded}
        )
        self.runs += 1
        out = self.scratch / f"int8-{self.runs}.onnx"
        quantize_int8_static(
            self.prepared,
            out,
            recipe,
            self.calibration,
            calibration_cache=self.scratch / "calibration.json",
            prepare=False,
        )
        return out

    def metric(self, quantized: Path, metric_fn: MetricFn) -> float:
        return float(metric_fn(self.reference, self._run(quantized)))

    def rank(self, quantized: Path) -> list[NodeSensitivity]:
        errors = {**self._activation_sqnr(quantized), **self._weight_sqnr(quantized)}
        proto = onnx.load(str(quantized), load_external_data=False)
        already = set(self.recipe.option("nodes_to_exclude", []))
        ranking = []
        for node in proto.graph.node:
            if node.op_type in _QDQ_OPS or node.name in already:
                continue
            touched = [
                (errors[base], base)
                for name in (*node.input, *node.output)
                if (base := _base_name(name)) in errors
            ]
            if touched:
                sqnr, tensor = min(touched)
                ranking.append(NodeSensitivity(node.name, node.op_type, sqnr, tensor))
        return sorted(ranking, key=lambda r: r.sqnr_db)

    def result(
        self, ranking, excluded, before, after, limit, metric_fn, notes
    ) -> SensitivityResult:
        options = dict(self.recipe.options)
        if excluded:
            options["nodes_to_exclude"] = [*options.get("nodes_to_exclude", []), *excluded]
        if not self.recipe.option("data"):
            notes = [
                *notes,
                "calibrated on the samples given: build the final recipe with options.data "
                "pointing at the same samples to reproduce the measured metric",
            ]
        return SensitivityResult(
            ranking=ranking,
            excluded=list(excluded),
            metric_before=before,
            metric_after=after,
            limit=limit,
            met=after >= limit,
            recipe=replace(self.recipe, options=options),
            quantize_runs=self.runs,
            notes=[*self.notes, f"metric: {getattr(metric_fn, '__name__', 'custom')}", *notes],
        )

    def _run(self, path: Path) -> Outputs:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return [
            dict(zip(names, session.run(names, feed), strict=True)) for feed in self.samples.feeds
        ]

    def _activation_sqnr(self, quantized: Path) -> dict[str, float]:
        from onnxruntime.quantization import qdq_loss_debug as debug

        from edgeforge.runtimes._ort_quantize import CalibrationReader, quiet

        augmented = self.scratch / "augmented.onnx"
        with quiet():
            debug.modify_model_output_intermediate_tensors(str(quantized), str(augmented))
            activations = debug.collect_activations(str(augmented), CalibrationReader(self.samples))
        matching = debug.create_activation_matching(activations)
        return {name: _typical_sqnr(m["pre_qdq"], m["post_qdq"]) for name, m in matching.items()}

    def _weight_sqnr(self, quantized: Path) -> dict[str, float]:
        from onnxruntime.quantization import qdq_loss_debug as debug

        from edgeforge.runtimes._ort_quantize import quiet

        with quiet(logging.CRITICAL):
            matching = debug.create_weight_matching(str(self.prepared), str(quantized))
        return {name: _weight_sqnr(m["float"], m["dequantized"]) for name, m in matching.items()}


def _base_name(tensor: str) -> str:
    """The float tensor behind a name the QDQ quantizer derived from it."""
    from onnxruntime.quantization.quant_utils import (
        DEQUANT_OUTPUT_SUFFIX,
        QUANT_INPUT_SUFFIX,
        TENSOR_NAME_QUANT_SUFFIX,
    )

    for suffix in (DEQUANT_OUTPUT_SUFFIX + "_1", DEQUANT_OUTPUT_SUFFIX, QUANT_INPUT_SUFFIX):
        if tensor.endswith(suffix):
            return tensor[: -len(suffix)]
    return tensor.removesuffix(TENSOR_NAME_QUANT_SUFFIX)


def _typical_sqnr(before: list[np.ndarray], after: list[np.ndarray]) -> float:
    """SQNR (dB) that a value of median magnitude sees: median |x| over the rounding noise
    of the tensor's quantization step (step / sqrt 12).

    Not ONNX Runtime's whole-tensor SQNR, for two reasons seen on real graphs: one outlier
    channel dominates the tensor's norm and hides that every other channel rounded to zero
    (the very harm we look for), and the quantizer folds a Relu into its output's range, so
    the negative values it clips read as noise. Values are clipped to the quantized range
    before measuring, which removes the second."""
    pre = np.concatenate([np.ravel(a) for a in before]).astype(np.float64)
    post = np.concatenate([np.ravel(a) for a in after]).astype(np.float64)
    levels = np.unique(post)
    if levels.size < 2:  # everything rounds to one value: nothing survives
        return _FLOOR_DB if np.ptp(pre) > 0 else _CEILING_DB
    step = float(np.min(np.diff(levels)))
    inside = np.abs(np.clip(pre, levels[0], levels[-1]))
    typical = float(np.median(inside[inside > 0])) if np.any(inside > 0) else 0.0
    if typical == 0.0:
        return _CEILING_DB
    return float(np.clip(20 * np.log10(typical / (step / np.sqrt(12))), _FLOOR_DB, _CEILING_DB))


def _weight_sqnr(weight: np.ndarray, dequantized: np.ndarray) -> float:
    """Whole-tensor SQNR (dB) of a weight. ONNX Runtime's own `compute_weight_error` fails on
    scalar weights (transformers have them: a scale, a LayerNorm epsilon), whose dequantized
    value comes back as a numpy scalar (`TypeError: numpy.float32 has no len()`)."""
    want = np.ravel(np.asarray(weight, dtype=np.float64))
    got = np.ravel(np.asarray(dequantized, dtype=np.float64))
    if want.shape != got.shape:
        return _CEILING_DB  # not a weight the quantizer rewrote in place: nothing to rank
    epsilon = float(np.finfo(np.float64).eps)
    signal = max(float(np.linalg.norm(want)), epsilon)
    ratio = signal / max(float(np.linalg.norm(want - got)), epsilon)
    return _finite(float(np.clip(20 * np.log10(ratio), _FLOOR_DB, _CEILING_DB)))


def _finite(value: float) -> float:
    """SQNR is infinite for a tensor quantization leaves untouched; rank it last."""
    return value if math.isfinite(value) else _CEILING_DB
