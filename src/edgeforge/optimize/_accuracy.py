"""How far a candidate's outputs fall from the original's: one `drop` figure per candidate.

What a caller can rely on:
- with labels, the task metric is measured on the candidate and on the original, and `drop` is
  how much the candidate loses: top-1 accuracy points for classifiers (integer labels, logits
  with more than one class), the relative rise of the mean absolute error for regression
  (float labels, or a single output column);
- without labels, `drop` is the disagreement with the original: 1 - top-1 agreement for
  classifiers, 1 - cosine similarity of all outputs otherwise;
- top-1 agreement and cosine similarity are always reported beside it;
- a candidate never scores better than "no drop" by accident of rounding: `drop` may be
  negative (the candidate is more accurate), and limits compare it as it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Outputs", "Score", "describe_task", "score", "task_of"]

Outputs = list[dict[str, np.ndarray]]  # one dict of named outputs per feed


@dataclass(frozen=True)
class Score:
    task: str  # classification | regression | agreement-top1 | agreement-cosine
    metric: str  # the figure `drop` is computed from
    reference: float  # the original's value of `metric`
    candidate: float  # the candidate's value of `metric`
    drop: float  # how much worse the candidate is (fraction); negative when better
    top1_agreement: float | None
    cosine: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stacked(outputs: Outputs, name: str) -> np.ndarray:
    return np.concatenate([np.asarray(o[name]).reshape(len(o[name]), -1) for o in outputs])


def _classifier_like(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[1] > 1


def task_of(reference: Outputs, labels: np.ndarray | None) -> str:
    """Which figure judges candidates, from the first output's shape and the labels' dtype."""
    first = _stacked(reference, next(iter(reference[0])))
    if labels is not None:
        integer = np.issubdtype(np.asarray(labels).dtype, np.integer)
        return "classification" if integer and _classifier_like(first) else "regression"
    return "agreement-top1" if _classifier_like(first) else "agreement-cosine"


def describe_task(task: str) -> str:
    return {
        "classification": "top-1 accuracy against the labels; drop = accuracy points lost",
        "regression": "mean absolute error against the labels; drop = its relative rise",
        "agreement-top1": "no labels: top-1 agreement with the original; drop = 1 - agreement",
        "agreement-cosine": "no labels: cosine similarity with the original's outputs; "
        "drop = 1 - cosine",
    }[task]


def score(candidate: Outputs, reference: Outputs, labels: np.ndarray | None) -> Score:
    """The candidate's outputs judged against the original's (same feeds, same order)."""
    from edgeforge.evaluate.compare import cosine_similarity

    task = task_of(reference, labels)
    name = next(iter(reference[0]))
    want, got = _stacked(reference, name), _stacked(candidate, name)
    agreement = float(np.mean(want.argmax(1) == got.argmax(1))) if _classifier_like(want) else None
    every_want = np.concatenate([np.ravel(v) for r in reference for v in r.values()])
    every_got = np.concatenate(
        [np.ravel(candidate[i][k]) for i, r in enumerate(reference) for k in r]
    )
    cosine = float(cosine_similarity(every_want.astype(np.float64), every_got.astype(np.float64)))
    if task == "classification":
        truth = np.asarray(labels).reshape(-1)
        ref, cand = float(np.mean(want.argmax(1) == truth)), float(np.mean(got.argmax(1) == truth))
        return Score(task, "top1_accuracy", ref, cand, ref - cand, agreement, cosine)
    if task == "regression":
        truth = np.asarray(labels, dtype=np.float64).reshape(len(want), -1)
        ref = float(np.mean(np.abs(want - truth)))
        cand = float(np.mean(np.abs(got - truth)))
        drop = (cand - ref) / ref if ref > 0 else cand - ref
        return Score(task, "mean_abs_error", ref, cand, drop, agreement, cosine)
    if task == "agreement-top1":
        return Score(
            task,
            "top1_agreement",
            1.0,
            agreement or 0.0,
            1.0 - (agreement or 0.0),
            agreement,
            cosine,
        )
    return Score(task, "cosine", 1.0, cosine, 1.0 - cosine, agreement, cosine)
