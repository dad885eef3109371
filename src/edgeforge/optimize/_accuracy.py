"""How far a candidate's outputs fall from the original's: one `drop` figure per candidate, and
the metric that judged it.

What a caller can rely on:
- one output judges (the first); `Score.output` names it and `Score.why` says why its metric
  was chosen;
- a metric the user names (`metric=`: one of `METRICS`, or a callable) always judges;
- else, with labels, the task metric is measured on the candidate and on the original, and
  `drop` is how much the candidate loses: top-1 accuracy points for classifiers (integer
  labels, scores with more than one class), the relative rise of the mean absolute error for
  regression (float labels, or a single output column);
- else the output's nature chooses (see `nature_of`): class scores by top-1 agreement;
  embeddings and hidden states by the cosine of the output pooled over the sequence (with the
  attention mask when the model takes one), per sample, averaged, raw and per-dimension
  standardised, the lower judging (`pooled_cosine`); images by PSNR; regression
  by relative error; boxes by IoU agreement. Never the arg-max of a flattened hidden state,
  which says nothing about an encoder;
- `drop` is a fraction where 0 is "the same as the original": 1 - agreement (top1, top5,
  cosine, iou, a callable's score), the mean absolute error over the mean |reference| (mae),
  and the RMS error over the reference's value range, 10^(-PSNR/20), for psnr (40 dB -> 1%);
- `drop` may be negative (the candidate is more accurate), and limits compare it as it is;
- top-1 agreement (where the output has classes) and the whole-output cosine are always
  reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "METRICS",
    "Judge",
    "Outputs",
    "Score",
    "check_metric",
    "describe_task",
    "judge_for",
    "score",
    "task_of",
]

Outputs = list[dict[str, np.ndarray]]  # one dict of named outputs per feed
Feeds = list[dict[str, np.ndarray]]
MetricSpec = str | Callable[[Outputs, Outputs], float] | None

METRICS = ("top1", "top5", "cosine", "mae", "psnr", "iou")
_EMBEDDING_NAMES = ("hidden", "embed", "pool", "feature", "encod", "token", "vector")
_CLASS_NAMES = ("logit", "prob", "class", "score", "pred")
_MASK_NAMES = ("attention_mask", "mask")


@dataclass(frozen=True)
class Score:
    task: str  # classification | regression | agreement-<metric>
    metric: str  # the figure `drop` is computed from
    reference: float | None  # the original's value of `metric` (None: unbounded, as PSNR)
    candidate: float  # the candidate's value of `metric`
    drop: float  # how much worse the candidate is (fraction); negative when better
    top1_agreement: float | None
    cosine: float
    output: str = ""  # the output that judged
    why: str = ""  # why this metric judged

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Judge:
    """Which output is judged, by what, and why."""

    task: str  # classification | regression | agreement-<metric> (agreement-custom: callable)
    metric: str  # top1_accuracy | mean_abs_error | one of METRICS | a callable's name
    output: str
    why: str
    function: Callable[[Outputs, Outputs], float] | None = None  # a user's metric


def _stacked(outputs: Outputs, name: str) -> np.ndarray:
    return np.concatenate([np.asarray(o[name]).reshape(len(o[name]), -1) for o in outputs])


def _joined(outputs: Outputs, name: str) -> np.ndarray:
    return np.concatenate([np.asarray(o[name]) for o in outputs])


def _classifier_like(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[1] > 1


def nature_of(name: str, array: np.ndarray) -> tuple[str, str]:
    """(metric, what the output looks like) from one sample's output and its name."""
    lowered = name.lower()
    if array.dtype.kind not in "fc":
        return "mae", f"{name} is {array.dtype}, not scores: judged by relative error"
    if "box" in lowered and array.ndim in (2, 3) and array.shape[-1] == 4:
        return "iou", f"{name} holds boxes (last axis 4): judged by IoU agreement"
    if array.ndim >= 3 and array.ndim != 4:
        return "cosine", f"{name} is a sequence of vectors (hidden states): judged by cosine"
    if array.ndim == 4:
        if any(word in lowered for word in _EMBEDDING_NAMES):
            return "cosine", f"{name} is a feature map: judged by cosine"
        return "psnr", f"{name} is an image-shaped tensor: judged by PSNR"
    if array.ndim == 2 and array.shape[1] > 1:
        if any(word in lowered for word in _EMBEDDING_NAMES):
            return "cosine", f"{name} is named as an embedding: judged by cosine"
        if any(word in lowered for word in _CLASS_NAMES) or array.shape[1] <= 1000:
            return "top1", f"{name} holds class scores ({array.shape[1]}): judged by top-1"
        return "cosine", f"{name} is a wide vector ({array.shape[1]}): judged by cosine"
    return "mae", f"{name} is a regression output: judged by relative error"


def check_metric(metric: MetricSpec) -> None:
    """Refuse an unknown metric name or an unimportable function before any work is done."""
    if metric is None or callable(metric):
        return
    judge_for([{"output": np.zeros((1, 2), np.float32)}], None, metric)


def judge_for(reference: Outputs, labels: np.ndarray | None, metric: MetricSpec = None) -> Judge:
    """The judge of candidates against `reference`: the user's metric, else the labels', else
    the one the first output's nature calls for."""
    from edgeforge.errors import EdgeforgeError

    name = next(iter(reference[0]))
    if callable(metric):
        label = getattr(metric, "__qualname__", None) or type(metric).__name__
        return Judge("agreement-custom", label, name, "the metric given (a callable)", metric)
    if isinstance(metric, str) and ":" in metric:
        from edgeforge.evaluate.data import resolve_callable

        function = resolve_callable(metric, "--metric")
        return Judge("agreement-custom", metric, name, "the metric given (--metric)", function)
    if metric is not None:
        if metric not in METRICS:
            raise EdgeforgeError(
                f"--metric {metric!r}: choose {', '.join(METRICS)}, or name a function as "
                "module:function or file.py:function"
            )
        return Judge(f"agreement-{metric}", metric, name, "the metric given (--metric)")
    first = _stacked(reference, name)
    if labels is not None:
        integer = np.issubdtype(np.asarray(labels).dtype, np.integer)
        if integer and _classifier_like(first):
            return Judge("classification", "top1_accuracy", name, "integer labels, class scores")
        return Judge("regression", "mean_abs_error", name, "labels given")
    chosen, why = nature_of(name, np.asarray(reference[0][name]))
    return Judge(f"agreement-{chosen}", chosen, name, f"no labels; {why}")


def task_of(reference: Outputs, labels: np.ndarray | None, metric: MetricSpec = None) -> str:
    """Which figure judges candidates (kept for callers of the older API)."""
    return judge_for(reference, labels, metric).task


def describe_task(task: str) -> str:
    known = {
        "classification": "top-1 accuracy against the labels; drop = accuracy points lost",
        "regression": "mean absolute error against the labels; drop = its relative rise",
        "agreement-top1": "no labels: top-1 agreement with the original; drop = 1 - agreement",
        "agreement-top5": "the original's top-1 among the candidate's top 5; drop = 1 - share",
        "agreement-cosine": "cosine similarity with the original's output (pooled over the "
        "sequence, with the attention mask when there is one), per sample, raw and with each "
        "dimension standardised (outlier dimensions cannot hide the rest); drop = 1 - the lower",
        "agreement-mae": "mean absolute error relative to the mean |original|; drop = that",
        "agreement-psnr": "PSNR against the original; drop = 10^(-PSNR/20), the RMS error "
        "over the original's value range",
        "agreement-iou": "IoU of each of the original's boxes with the candidate's best match; "
        "drop = 1 - mean IoU",
    }
    return known.get(task, "a metric given by the user: drop = 1 - its score")


def score(
    candidate: Outputs,
    reference: Outputs,
    labels: np.ndarray | None,
    *,
    feeds: Feeds | None = None,
    metric: MetricSpec = None,
) -> Score:
    """The candidate's outputs judged against the original's (same feeds, same order)."""
    from edgeforge.evaluate.compare import cosine_similarity

    judge = judge_for(reference, labels, metric)
    name = judge.output
    want, got = _stacked(reference, name), _stacked(candidate, name)
    agreement = float(np.mean(want.argmax(1) == got.argmax(1))) if _classifier_like(want) else None
    every_want = np.concatenate([np.ravel(v) for r in reference for v in r.values()])
    every_got = np.concatenate(
        [np.ravel(candidate[i][k]) for i, r in enumerate(reference) for k in r]
    )
    cosine = float(cosine_similarity(every_want.astype(np.float64), every_got.astype(np.float64)))

    def made(metric_name: str, ref: float | None, cand: float, drop: float) -> Score:
        return Score(judge.task, metric_name, ref, cand, drop, agreement, cosine, name, judge.why)

    if judge.function is not None:
        value = float(judge.function(reference, candidate))
        return made(judge.metric, 1.0, value, 1.0 - value)
    if judge.task == "classification":
        truth = np.asarray(labels).reshape(-1)
        ref, cand = float(np.mean(want.argmax(1) == truth)), float(np.mean(got.argmax(1) == truth))
        return made("top1_accuracy", ref, cand, ref - cand)
    if judge.task == "regression":
        truth = np.asarray(labels, dtype=np.float64).reshape(len(want), -1)
        ref = float(np.mean(np.abs(want - truth)))
        cand = float(np.mean(np.abs(got - truth)))
        return made("mean_abs_error", ref, cand, (cand - ref) / ref if ref > 0 else cand - ref)
    if judge.metric == "top1":
        value = float(np.mean(want.argmax(1) == got.argmax(1)))
        return made("top1_agreement", 1.0, value, 1.0 - value)
    if judge.metric == "top5":
        top = np.argsort(-got, axis=1)[:, : min(5, got.shape[1])]
        value = float(np.mean([w in t for w, t in zip(want.argmax(1), top, strict=True)]))
        return made("top5_agreement", 1.0, value, 1.0 - value)
    if judge.metric == "cosine":
        value = pooled_cosine(reference, candidate, name, feeds)
        return made("cosine", 1.0, value, 1.0 - value)
    if judge.metric == "mae":
        scale = float(np.mean(np.abs(want)))
        error = float(np.mean(np.abs(want.astype(np.float64) - got)))
        value = error / scale if scale > 0 else error
        return made("relative_error", 0.0, value, value)
    if judge.metric == "psnr":
        value = psnr(want, got)
        return made("psnr_db", None, value, float(10 ** (-value / 20)))
    value = box_iou_agreement(_joined(reference, name), _joined(candidate, name))
    return made("iou", 1.0, value, 1.0 - value)


def pooled_cosine(reference: Outputs, candidate: Outputs, name: str, feeds: Feeds | None) -> float:
    """The lower of two cosines, each a mean over samples: of the two outputs pooled over their
    sequence axis (axis 1 of a rank-3 output; with the attention mask when a feed has one of
    that length, as sentence encoders pool; other ranks as they are), and of the same pooled
    vectors standardised per dimension by the reference's mean and spread over the samples.

    The second exists because encoders have outlier dimensions (a channel hundreds of times the
    others, as BERT's LayerNorm outputs have): they dominate a raw cosine, so an int8 encoder
    that rounds every other dimension to zero still scores ~1.0 raw. Standardised, each
    dimension counts alike. With one sample there is no spread, and the raw cosine judges."""
    from edgeforge.evaluate.compare import cosine_similarity

    want, got = _pooled(reference, name, feeds), _pooled(candidate, name, feeds)
    raw = [cosine_similarity(w, g) for w, g in zip(want, got, strict=True)]
    if len(want) < 2:
        return float(np.mean(raw)) if raw else 1.0
    centre = want.mean(axis=0)
    spread = want.std(axis=0)
    spread = np.where(spread > 1e-12 * max(float(spread.max()), 1e-30), spread, np.inf)
    balanced = [
        cosine_similarity((w - centre) / spread, (g - centre) / spread)
        for w, g in zip(want, got, strict=True)
    ]
    return float(min(np.mean(raw), np.mean(balanced)))


def _pooled(outputs: Outputs, name: str, feeds: Feeds | None) -> np.ndarray:
    """One flat vector per sample row: rank-3 outputs mean-pooled over axis 1 (masked)."""
    rows = []
    for index, output in enumerate(outputs):
        array = np.asarray(output[name], dtype=np.float64)
        mask = _mask(feeds[index] if feeds else None, array)
        for row in range(len(array)):
            value = array[row]
            if value.ndim == 2:  # (sequence, hidden): mean over the tokens that are real
                weights = np.ones(len(value)) if mask is None else mask[row].astype(np.float64)
                if weights.sum() == 0:
                    weights = np.ones(len(value))
                value = (value * weights[:, None]).sum(0) / weights.sum()
            rows.append(np.ravel(value))
    return np.asarray(rows)


def _mask(feed: dict[str, np.ndarray] | None, output: np.ndarray) -> np.ndarray | None:
    if feed is None or output.ndim != 3:
        return None
    for key in sorted(feed, key=lambda k: (k.lower() != "attention_mask", k)):
        array = np.asarray(feed[key])
        if any(word in key.lower() for word in _MASK_NAMES) and array.shape == output.shape[:2]:
            return array
    return None


def psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    """PSNR in dB with the reference's value range as the peak (capped at 200 dB)."""
    want = np.asarray(reference, dtype=np.float64)
    got = np.asarray(candidate, dtype=np.float64)
    peak = float(np.ptp(want)) or float(np.max(np.abs(want))) or 1.0
    mse = float(np.mean((want - got) ** 2))
    return 200.0 if mse == 0 else float(min(200.0, 10 * np.log10(peak**2 / mse)))


def box_iou_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over the reference's boxes (x1, y1, x2, y2) of the IoU with the candidate's best
    matching box."""
    want = np.asarray(reference, dtype=np.float64).reshape(-1, 4)
    got = np.asarray(candidate, dtype=np.float64).reshape(-1, 4)
    if len(want) == 0:
        return 1.0 if len(got) == 0 else 0.0
    if len(got) == 0:
        return 0.0
    low = np.maximum(want[:, None, :2], got[None, :, :2])
    high = np.minimum(want[:, None, 2:], got[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    area = np.prod(np.clip(want[:, 2:] - want[:, :2], 0, None), axis=1)
    area_got = np.prod(np.clip(got[:, 2:] - got[:, :2], 0, None), axis=1)
    union = area[:, None] + area_got[None, :] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)
    return float(np.mean(iou.max(axis=1)))
