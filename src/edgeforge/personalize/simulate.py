"""Simulated users whose data differs from the training data (for the benchmark and the demo).

Each user has a class mix of their own (a Dirichlet draw: some classes common, some rare) and
a style of their own: on scikit-learn's digits, a rotation and a stroke width (thicker or
thinner pen); on the tabular task, a sensor calibration (a per-feature gain and offset). A
user's labelled samples and held-out samples are drawn from the same pool rows never twice,
from data the base model never saw in training, and both carry the user's style.

Invariant: everything is drawn from `numpy.random.default_rng(seed)`, so a user is the same
user on every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["User", "digits_users", "tabular_task", "tabular_users"]


@dataclass
class User:
    style: str  # what differs, in words
    samples: np.ndarray  # the labelled samples the user gives (largest count asked)
    labels: np.ndarray
    held_x: np.ndarray  # the user's own data the result is judged on
    held_y: np.ndarray


def _class_mix(rng: np.random.Generator, classes: int, concentration: float) -> np.ndarray:
    return rng.dirichlet(np.full(classes, concentration))


def _draw(
    rng: np.random.Generator, y: np.ndarray, mix: np.ndarray, count: int, taken: set[int]
) -> np.ndarray:
    rows = []
    for label in rng.choice(len(mix), size=count, p=mix):
        free = [i for i in np.flatnonzero(y == label) if i not in taken]
        if not free:
            free = [i for i in range(len(y)) if i not in taken]
        row = int(rng.choice(free))
        taken.add(row)
        rows.append(row)
    return np.array(rows)


def _digit_style(images: np.ndarray, angle: float, stroke: int) -> np.ndarray:
    from scipy import ndimage

    out = ndimage.rotate(images, angle, axes=(2, 3), reshape=False, order=1, mode="constant")
    if stroke > 0:
        out = ndimage.grey_dilation(out, size=(1, 1, 2, 2))
    elif stroke < 0:
        out = ndimage.grey_erosion(out, size=(1, 1, 2, 1))
    return np.clip(out, 0, 1).astype(np.float32)


def digits_users(
    pool_x: np.ndarray,
    pool_y: np.ndarray,
    count: int,
    *,
    samples: int = 50,
    held_out: int = 120,
    seed: int = 0,
    shifted: bool = True,
) -> list[User]:
    """`count` users drawn from a digits pool (N, 1, 8, 8) the base model did not train on."""
    rng = np.random.default_rng(seed)
    users = []
    for _ in range(count):
        mix = _class_mix(rng, 10, 1.0)
        taken: set[int] = set()
        own = _draw(rng, pool_y, mix, samples, taken)
        held = _draw(rng, pool_y, mix, held_out, taken)
        angle = float(rng.choice([-1, 1]) * rng.uniform(20, 40)) if shifted else 0.0
        stroke = int(rng.choice([-1, 1])) if shifted else 0
        style = f"rotated {angle:+.0f} deg, {'thick' if stroke > 0 else 'thin'} pen"
        users.append(
            User(
                style if shifted else "unshifted",
                _digit_style(pool_x[own], angle, stroke),
                pool_y[own],
                _digit_style(pool_x[held], angle, stroke),
                pool_y[held],
            )
        )
    return users


def tabular_task(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 6-class tabular task (20 features, 12 informative): train and pool splits."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=6000,
        n_features=20,
        n_informative=12,
        n_redundant=4,
        n_classes=6,
        n_clusters_per_class=2,
        class_sep=1.5,
        random_state=seed,
    )
    x = x.astype(np.float32)
    return x[:3000], y[:3000].astype(np.int64), x[3000:], y[3000:].astype(np.int64)


def tabular_users(
    pool_x: np.ndarray,
    pool_y: np.ndarray,
    count: int,
    *,
    samples: int = 50,
    held_out: int = 150,
    seed: int = 0,
) -> list[User]:
    """Users whose sensors read differently: each feature gets a gain and an offset."""
    rng = np.random.default_rng(seed)
    users = []
    features = pool_x.shape[1]
    for _ in range(count):
        mix = _class_mix(rng, int(pool_y.max()) + 1, 1.0)
        gain = rng.uniform(0.5, 1.5, features).astype(np.float32)
        offset = rng.normal(0, 1.5, features).astype(np.float32)
        taken: set[int] = set()
        own = _draw(rng, pool_y, mix, samples, taken)
        held = _draw(rng, pool_y, mix, held_out, taken)
        users.append(
            User(
                "sensor gain and offset per feature",
                pool_x[own] * gain + offset,
                pool_y[own],
                pool_x[held] * gain + offset,
                pool_y[held],
            )
        )
    return users
