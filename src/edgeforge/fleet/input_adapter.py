"""The input adapter: a per-feature gain and offset that maps one user's inputs back to the
training data's, fitted on the device from the user's labelled samples.

A personal head retrains the last layers on the backbone's embedding; it cannot undo a shift
that happens before the backbone, such as a sensor that reads every feature with its own gain
and offset (`x_user = g * x + o`). The adapter does: for each input feature f it fits
`x_f -> a_f * x_f + b_f` so that the adapted samples look like the training data of their
own class, then the frozen backbone runs on the adapted inputs.

What the package holds (`InputStats`, written by `edgeforge.personalize`, server side):
aggregates of the training data only: each class's mean of each feature and each feature's
pooled within-class standard deviation. No training row is in the package.

The fit (`InputAdapter.fit`), per feature, is the maximum-likelihood affine map under the model
"an adapted sample of class y is the class mean plus noise of the training data's spread":
maximise `n log a - sum_i (a x_i + b - m_i)^2 / (2 s^2)` over a > 0 and b, where m_i is the
training mean of sample i's class and s the within-class spread. It has a closed form (the
positive root of `Sxx a^2 - Sxm a - n s^2 = 0`, then `b = mean(m) - a mean(x)`). Unlike a
least-squares regression of m on x, which shrinks the gain towards zero by the user's own
noise (regression dilution), it recovers the gain on informative features (those whose class
means differ) and on pure-noise ones alike (there it is the ratio of the spreads). The fitted
map is then pulled towards the identity: its weight is `n / (n + pull)`, so with few samples
the adapter stays near `a = 1, b = 0`.

Invariants: numpy only; an adapter applies only to a model whose one input is a flat feature
vector `[N, F]` (`applies_to`); a feature the user's samples leave constant keeps gain 1 (its
gain cannot be told) and gets only the offset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge.errors import EdgeforgeError

__all__ = ["InputAdapter", "InputStats", "applies_to"]


def applies_to(inputs: Sequence[Mapping[str, Any]]) -> str | None:
    """None when a per-feature adapter fits a model with these inputs ({name, shape, dtype});
    otherwise why not, in words (for the package's index)."""
    if len(inputs) != 1:
        return f"the model takes {len(inputs)} inputs; the adapter needs one feature vector"
    spec = inputs[0]
    shape = list(spec["shape"])
    if len(shape) != 2:
        return (
            f"the input {spec['name']!r} is {shape}, not a flat feature vector [N, F]: a "
            "per-feature gain and offset cannot undo an image's rotation, stroke or colour "
            "shift, so images get no adapter"
        )
    if not str(spec.get("dtype", "float32")).startswith("float"):
        return f"the input {spec['name']!r} is {spec.get('dtype')}, not real-valued features"
    return None


@dataclass
class InputStats:
    """Aggregates of the training data: each class's mean of each feature [C, F] and each
    feature's pooled within-class standard deviation [F]."""

    means: np.ndarray
    spread: np.ndarray

    @classmethod
    def from_data(cls, x: np.ndarray, y: np.ndarray, classes: int) -> InputStats:
        x = np.asarray(x, np.float64)
        y = np.asarray(y).reshape(-1)
        if x.ndim != 2 or len(x) != len(y) or len(y) < 2:
            raise EdgeforgeError(
                f"reference data must be inputs [N, F] and N labels (N >= 2); got inputs "
                f"{list(x.shape)} and {len(y)} labels"
            )
        if y.min() < 0 or y.max() >= classes:
            raise EdgeforgeError(f"reference labels must be class indices 0..{classes - 1}")
        overall = x.mean(0)
        # A class the reference data lacks gets the overall mean (it is rarely seen anyway).
        means = np.stack([x[y == c].mean(0) if (y == c).any() else overall for c in range(classes)])
        spread = (x - means[y]).std(0)
        return cls(means.astype(np.float32), spread.astype(np.float32))

    def save(self, path: Path) -> None:
        np.savez(path, means=self.means, spread=self.spread)

    @classmethod
    def load(cls, path: Path) -> InputStats:
        with np.load(path) as stored:
            return cls(stored["means"].astype(np.float32), stored["spread"].astype(np.float32))


@dataclass
class InputAdapter:
    """`x -> x * gain + offset`, per feature, applied before the backbone."""

    gain: np.ndarray
    offset: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float32) * self.gain + self.offset).astype(np.float32)

    @classmethod
    def fit(cls, x: np.ndarray, labels: np.ndarray, stats: InputStats, pull: float) -> InputAdapter:
        """The maximum-likelihood gain and offset per feature (module docstring), pulled
        towards the identity with weight `n / (n + pull)`."""
        x = np.asarray(x, np.float64).reshape(len(labels), -1)
        if x.shape[1] != stats.means.shape[1]:
            raise EdgeforgeError(
                f"the samples have {x.shape[1]} features; the package's statistics "
                f"{stats.means.shape[1]}"
            )
        n = len(labels)
        target = stats.means[np.asarray(labels)].astype(np.float64)
        xc, mc = x - x.mean(0), target - target.mean(0)
        sxx, sxm = (xc * xc).sum(0), (xc * mc).sum(0)
        spread = stats.spread.astype(np.float64)
        varies = sxx > 1e-12 * np.maximum(1.0, (x * x).sum(0))
        safe = np.where(varies, sxx, 1.0)
        gain = np.where(varies, (sxm + np.sqrt(sxm**2 + 4 * safe * n * spread**2)) / (2 * safe), 1)
        offset = target.mean(0) - gain * x.mean(0)
        weight = n / (n + max(float(pull), 0.0))
        return cls(
            (1 + weight * (gain - 1)).astype(np.float32), (weight * offset).astype(np.float32)
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"gain": self.gain, "offset": self.offset}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> InputAdapter:
        return cls(np.asarray(arrays["gain"], np.float32), np.asarray(arrays["offset"], np.float32))
