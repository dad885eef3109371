"""`cascade`: a small model on the device first, a large one in the cloud when it is unsure.

Both models run in ONNX Runtime on labelled samples. A sample is escalated when the small
model's confidence (the largest softmax probability, or the margin between the two largest) is
below a threshold. Invariants a caller can rely on:

- The threshold is calibrated on one part of the samples (shuffled with `seed`) and every figure
  under `held_out` is measured on the rest, never on the samples that chose it.
- The threshold chosen is the one with the smallest escalated share whose cascaded accuracy on
  the calibration part reaches the target with a margin: accuracy - z x its standard error
  (z = `safety_z`, 1.645 by default: one-sided 95 %), because the share that only just meets the
  target on the samples that chose it falls short on fresh ones. When none does, `met` is false
  and `best` names the highest accuracy the cascade reaches and at what share; nothing is
  silently lowered.
- Outputs that already are probabilities (non-negative, rows summing to 1) are not put through
  softmax again.
- Expected latency = small_ms + share x (network_ms + large_ms); times the caller gives are
  used as given, missing ones are measured here (median of runs on this machine, and said so).
  network_ms is `network.transfer_ms` for the inputs up and the outputs down (0 without a
  network). Cloud cost per 1000 requests = 1000 x share x price per request, or, with a price
  per hour, 1000 x share x large_ms / 3.6e6 x price (a fully used server).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge._load import load
from edgeforge.errors import EdgeforgeError
from edgeforge.evaluate.data import load_data
from edgeforge.hybrid.network import check_network, network_dict, transfer_ms
from edgeforge.model import Model

__all__ = ["CONFIDENCES", "CascadeResult", "CascadeScore", "cascade"]

CONFIDENCES = ("softmax", "margin")


@dataclass(frozen=True)
class CascadeScore:
    """Accuracy and escalated share of the cascade on one part of the samples."""

    samples: int
    accuracy: float
    escalated_share: float
    small_accuracy: float
    large_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CascadeResult:
    """The result of `cascade`; `to_dict()` is the JSON contract of `edgeforge cascade`."""

    small: str
    large: str
    confidence: str
    target_accuracy: float
    met: bool
    threshold: float  # escalate when confidence < threshold
    calibration: CascadeScore
    held_out: CascadeScore
    best: dict[str, float]  # the highest accuracy reachable on the calibration part
    latency: dict[str, Any]
    cost_per_1k: float | None
    network: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    # what was read: source, samples used and available, preprocess, --shape pins
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "small": self.small,
            "large": self.large,
            "confidence": self.confidence,
            "target_accuracy": self.target_accuracy,
            "met": self.met,
            "held_out_meets_target": self.held_out.accuracy >= self.target_accuracy,
            "threshold": _finite(self.threshold),
            "calibration": self.calibration.to_dict(),
            "held_out": self.held_out.to_dict(),
            "best": {k: _finite(v) for k, v in self.best.items()},
            "latency": {k: _finite(v) for k, v in self.latency.items()},
            "cost_per_1k": self.cost_per_1k,
            "network": self.network,
            "data": self.data,
            "notes": self.notes,
        }


def cascade(
    small: Any,
    large: Any,
    data: str | Path,
    *,
    target_accuracy: float,
    confidence: str = "softmax",
    calibration_share: float = 0.5,
    network: Any = None,
    small_ms: float | None = None,
    large_ms: float | None = None,
    price_per_request: float | None = None,
    price_per_hour: float | None = None,
    max_samples: int | None = None,
    preprocess: Any = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    safety_z: float = 1.645,
) -> CascadeResult:
    """Calibrate when `small` (on the device) should hand a sample to `large` (in the cloud) so
    that the cascade reaches `target_accuracy` on the labelled samples in `data`: every sample,
    or `max_samples` drawn with a fixed seed (stratified by class); images turned into inputs
    as `preprocess` says (a `Preprocess` or its text form). `shapes` pins both models' inputs
    (`edgeforge._pin.pin_shapes`).

    `small` and `large` are anything `edgeforge.load` takes and must take the same inputs and
    score the same classes; raises EdgeforgeError saying what to change otherwise.
    """
    from edgeforge._pin import pin_shapes

    if confidence not in CONFIDENCES:
        raise EdgeforgeError(f"unknown confidence {confidence!r}; choose softmax or margin")
    if not 0 < target_accuracy <= 1:
        raise EdgeforgeError(
            f"--target-accuracy {target_accuracy}: give a share in (0, 1], e.g. 0.95"
        )
    if not 0 < calibration_share < 1:
        raise EdgeforgeError(
            f"calibration share {calibration_share}: give a share in (0, 1), e.g. 0.5"
        )
    if price_per_request is not None and price_per_hour is not None:
        raise EdgeforgeError("give a price per request or a price per hour, not both")
    network = check_network(network) if network is not None else None
    small_model, large_model = load(small), load(large)
    _check_inputs(small_model, large_model)
    small_model, large_model = pin_shapes(small_model, shapes), pin_shapes(large_model, shapes)
    samples = load_data(Path(data), small_model.inputs, limit=max_samples, preprocess=preprocess)
    if samples.labels is None:
        raise EdgeforgeError(
            f"--data {data}: no labels; a cascade is calibrated on labelled samples (add "
            "'label' to each .npz, labels.npy, or one image sub-folder per class)"
        )
    labels = np.asarray(samples.labels).reshape(-1)
    if len(labels) != len(samples.feeds) or labels.dtype.kind not in "iu":
        raise EdgeforgeError(
            f"--data {data}: {len(labels)} labels for {len(samples.feeds)} samples; give one "
            "integer class label per sample"
        )
    small_scores, small_time = _run(small_model, samples.feeds)
    large_scores, large_time = _run(large_model, samples.feeds)
    if small_scores.shape != large_scores.shape or small_scores.shape[1] < 2:
        raise EdgeforgeError(
            f"the small model's first output has shape {list(small_scores.shape)} over the "
            f"samples but the large model's {list(large_scores.shape)}; a cascade needs both to "
            "score the same classes (one row of class scores per sample)"
        )
    if labels.max() >= small_scores.shape[1] or labels.min() < 0:
        raise EdgeforgeError(
            f"--data {data}: labels run to {labels.max()} but the models score "
            f"{small_scores.shape[1]} classes; give labels in 0..{small_scores.shape[1] - 1}"
        )

    order = np.random.default_rng(seed).permutation(len(labels))
    cut = round(len(labels) * calibration_share)
    if cut < 2 or len(labels) - cut < 2:
        raise EdgeforgeError(
            f"--data {data}: {len(labels)} samples leave too few to calibrate on and to report "
            "on; give at least 4 labelled samples (hundreds for a useful threshold)"
        )
    fit, rest = order[:cut], order[cut:]
    trust = _confidence(small_scores, confidence)
    small_right = small_scores.argmax(1) == labels
    large_right = large_scores.argmax(1) == labels

    def score(part: np.ndarray, threshold: float) -> CascadeScore:
        escalate = trust[part] < threshold
        right = np.where(escalate, large_right[part], small_right[part])
        return CascadeScore(
            len(part),
            float(right.mean()),
            float(escalate.mean()),
            float(small_right[part].mean()),
            float(large_right[part].mean()),
        )

    # Escalating below each distinct confidence, then everything: share only grows.
    thresholds = [*np.unique(trust[fit]).tolist(), np.inf]
    scored = [(t, score(fit, t)) for t in thresholds]

    def lower_bound(s: CascadeScore) -> float:
        return s.accuracy - safety_z * np.sqrt(s.accuracy * (1 - s.accuracy) / s.samples)

    meeting = [(t, s) for t, s in scored if lower_bound(s) >= target_accuracy]
    best_t, best_s = max(scored, key=lambda item: (item[1].accuracy, -item[1].escalated_share))
    threshold, calibration = meeting[0] if meeting else (best_t, best_s)
    held_out = score(rest, threshold)
    notes = [
        f"threshold calibrated on {len(fit)} samples, reported on the other {len(rest)}",
    ]
    if not meeting:
        notes.append(
            f"the target {target_accuracy:.1%} is above what the cascade reaches with a margin "
            f"of {safety_z} standard errors: at best "
            f"{best_s.accuracy:.1%} (large model alone {best_s.large_accuracy:.1%}); the best "
            "threshold is reported instead"
        )

    measured = [name for name, given in (("small", small_ms), ("large", large_ms)) if given is None]
    small_ms = small_time if small_ms is None else small_ms
    large_ms = large_time if large_ms is None else large_ms
    if measured:
        notes.append(
            f"{' and '.join(measured)} model time measured here in ONNX Runtime (median per "
            "sample); pass the device's and the server's times for a real estimate"
        )
    network_ms = 0.0
    if network is not None:
        feed = samples.feeds[0]
        up = sum(a.nbytes for a in feed.values())
        network_ms = transfer_ms(network, up, large_scores[0].nbytes)
    else:
        notes.append("no network given: the transfer to the cloud is not counted")
    share = held_out.escalated_share
    cost = None
    if price_per_request is not None:
        cost = 1000 * share * price_per_request
    elif price_per_hour is not None:
        cost = 1000 * share * large_ms / 3.6e6 * price_per_hour
    return CascadeResult(
        small=small_model.provenance.source,
        large=large_model.provenance.source,
        confidence=confidence,
        target_accuracy=target_accuracy,
        met=bool(meeting),
        threshold=float(threshold),
        calibration=calibration,
        held_out=held_out,
        best={
            "accuracy": best_s.accuracy,
            "escalated_share": best_s.escalated_share,
            "threshold": float(best_t),
        },
        latency={
            "small_ms": small_ms,
            "large_ms": large_ms,
            "network_ms": network_ms,
            "expected_ms": small_ms + share * (network_ms + large_ms),
            "measured_here": ",".join(measured),
        },
        cost_per_1k=cost,
        network=network_dict(network) if network is not None else None,
        notes=[*notes, *samples.notes],
        data={
            "source": samples.source,
            "samples": len(samples.feeds),
            "available": samples.available,
            "preprocess": samples.preprocess,
            "shapes": {name: list(shape) for name, shape in small_model.pinned.items()},
        },
    )


def _check_inputs(small: Model, large: Model) -> None:
    ours = [(t.name, t.dtype) for t in small.inputs]
    theirs = [(t.name, t.dtype) for t in large.inputs]
    if ours != theirs:
        raise EdgeforgeError(
            f"the small model takes {ours} but the large model {theirs}; a cascade sends the "
            "same inputs to both, so export them with the same input names and dtypes"
        )


def _run(model: Model, feeds: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, float]:
    """The first output over all samples (one row per sample) and the median ms per sample."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_outputs()[0].name
    rows, times = [], []
    for feed in feeds:
        started = time.perf_counter()
        (value,) = session.run([name], feed)
        times.append((time.perf_counter() - started) * 1e3)
        rows.append(np.asarray(value, dtype=np.float64).reshape(len(value), -1))
    return np.concatenate(rows), float(np.median(times))


def _confidence(scores: np.ndarray, kind: str) -> np.ndarray:
    probabilities = scores
    looks_like_probabilities = (scores >= 0).all() and np.allclose(scores.sum(1), 1, atol=1e-3)
    if not looks_like_probabilities:
        shifted = np.exp(scores - scores.max(1, keepdims=True))
        probabilities = shifted / shifted.sum(1, keepdims=True)
    ranked = np.sort(probabilities, axis=1)
    if kind == "margin":
        return ranked[:, -1] - ranked[:, -2]
    return ranked[:, -1]


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return "inf"
    return value
