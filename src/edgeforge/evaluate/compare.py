"""Comparing two sets of outputs, with tolerances that depend on the precision.

Metrics per output, over all samples: max absolute error, max relative error (relative to the
largest reference magnitude, so near-zero values do not explode it), mean absolute error,
cosine similarity, signal-to-noise ratio in dB, and for classifier-like outputs (rank 2, more
than one class) top-1 and top-5 agreement.

An output passes when max_abs <= atol + rtol * max|reference| and cosine >= min_cosine (and,
for classifier-like outputs under int8, top-1 agreement >= min_top1). The defaults below are
what a faithful conversion reaches at each precision; every one can be overridden.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from edgeforge.errors import EdgeforgeError

__all__ = [
    "OutputComparison",
    "Tolerance",
    "chance_level",
    "compare",
    "cosine_similarity",
    "relative_error",
    "tolerance_for",
]


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    min_cosine: float
    min_top1: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


_DEFAULTS = {
    "fp32": Tolerance(rtol=1e-3, atol=1e-4, min_cosine=0.9999),
    "fp16": Tolerance(rtol=2e-2, atol=1e-3, min_cosine=0.999),
    # bf16 keeps fp32's range with 8 bits of mantissa: about 2-3 significant digits.
    "bf16": Tolerance(rtol=6e-2, atol=1e-2, min_cosine=0.998),
    # Quantized models are judged on agreement, not closeness of every value.
    "int8": Tolerance(rtol=float("inf"), atol=float("inf"), min_cosine=0.98, min_top1=0.9),
    "int4": Tolerance(rtol=float("inf"), atol=float("inf"), min_cosine=0.95, min_top1=0.85),
}


def tolerance_for(precision: str, **overrides: float | None) -> Tolerance:
    """Default tolerance for a precision ("int8-static" -> int8), with overrides applied."""
    family = precision.split("-")[0]
    if family not in _DEFAULTS:
        raise EdgeforgeError(
            f"unknown precision {precision!r}; choose fp32, fp16, bf16, int8 or int4"
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    for key, value in given.items():
        # Rule (issue 13): a tolerance that makes every comparison pass or fail is refused.
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise EdgeforgeError(f"{flag} {value!r}: give a number >= 0 (NaN is not one)")
        if key == "min_cosine" and value > 1:  # rtol/atol may be inf: "not judged"
            raise EdgeforgeError(f"{flag} {value!r}: a cosine similarity is at most 1")
    return replace(_DEFAULTS[family], **given)


@dataclass
class OutputComparison:
    name: str
    shape: list[int]
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    snr_db: float
    top1: float | None
    top5: float | None
    passed: bool
    reason: str  # why it failed, or "" when it passed

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_float(v) for k, v in asdict(self).items()}


def compare(
    name: str, reference: list[np.ndarray], candidate: list[np.ndarray], tolerance: Tolerance
) -> OutputComparison:
    """Compare one output across samples (lists of equal length, one array per sample)."""
    for want, have in zip(reference, candidate, strict=True):
        if want.shape != have.shape:
            raise EdgeforgeError(
                f"output {name!r} has shape {list(have.shape)} in the candidate but "
                f"{list(want.shape)} in the reference"
            )
    ref = np.concatenate([np.ravel(r).astype(np.float64) for r in reference])
    got = np.concatenate([np.ravel(c).astype(np.float64) for c in candidate])
    diff = np.abs(ref - got)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    cosine = cosine_similarity(ref, got)
    noise = float(np.sum(diff**2))
    snr = float("inf") if noise == 0 else 10 * np.log10(max(float(np.sum(ref**2)), 1e-30) / noise)
    top1 = top5 = None
    if _classifier_like(reference[0]):
        top1, top5 = _topk_agreement(reference, candidate)

    reasons = []
    if not np.isfinite(got).all():
        reasons.append("the candidate produced NaN or inf")
    if max_abs > tolerance.atol + tolerance.rtol * scale:
        reasons.append(
            f"max abs error {max_abs:.3g} > {tolerance.atol:g} + {tolerance.rtol:g} x {scale:.3g}"
        )
    if cosine < tolerance.min_cosine:
        reasons.append(f"cosine {cosine:.6f} < {tolerance.min_cosine}")
    if top1 is not None and top1 < tolerance.min_top1:
        reasons.append(f"top-1 agreement {top1:.1%} < {tolerance.min_top1:.0%}")
    return OutputComparison(
        name=name,
        shape=list(reference[0].shape),
        max_abs=max_abs,
        max_rel=max_abs / scale if scale else max_abs,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=cosine,
        snr_db=snr,
        top1=top1,
        top5=top5,
        passed=not reasons,
        reason="; ".join(reasons),
    )


def chance_level(accuracy: float, labels: Any) -> str | None:
    """A note when `accuracy` (top-1 against `labels`) is within reach of chance: no better
    than always answering the commonest class, plus two binomial standard errors. An accuracy
    gate on such a model proves nothing. None otherwise, or without labels."""
    if labels is None:
        return None
    labels = np.ravel(np.asarray(labels))
    if labels.size == 0 or labels.dtype.kind not in "iu":
        return None
    _, counts = np.unique(labels, return_counts=True)
    chance = float(counts.max() / labels.size)
    margin = 2 * float(np.sqrt(chance * (1 - chance) / labels.size))
    if accuracy > chance + margin:
        return None
    return (
        f"the reference itself scores {accuracy:.1%} top-1 on these labels, within reach of "
        f"chance ({chance:.1%}: always answering the commonest of {len(counts)} classes, "
        f"+/- {margin:.1%}): an accuracy gate on it proves nothing; check the labels (class "
        "folders in sorted order are classes 0, 1, ...), --preprocess and the model"
    )


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Max abs error over the largest reference magnitude (for per-layer plots)."""
    ref = np.asarray(reference, dtype=np.float64)
    diff = np.abs(ref - np.asarray(candidate, dtype=np.float64))
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    error = float(diff.max()) if diff.size else 0.0
    return error / scale if scale else error


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flattened arrays (1 for two equal zero arrays)."""
    a = np.ravel(a).astype(np.float64)
    b = np.ravel(b).astype(np.float64)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / norm)


def _classifier_like(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind == "f"


def _topk_agreement(reference, candidate) -> tuple[float, float]:
    ref = np.concatenate(reference)
    got = np.concatenate(candidate)
    top1 = float(np.mean(ref.argmax(1) == got.argmax(1)))
    k = min(5, ref.shape[1])
    top_ref = np.argsort(-ref, axis=1)[:, :1]
    top_got = np.argsort(-got, axis=1)[:, :k]
    top5 = float(np.mean([r[0] in g for r, g in zip(top_ref, top_got, strict=True)]))
    return top1, top5


def _json_float(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
