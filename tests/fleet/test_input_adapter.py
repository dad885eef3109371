"""The input adapter (numpy only): a per-feature gain and offset fitted to one user's samples so
that they look like the training data of their own class again."""

from __future__ import annotations

import numpy as np
import pytest

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.input_adapter import InputAdapter, InputStats, applies_to

FEATURES, CLASSES = 6, 3


def _training_data(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means that differ on the first four features; the last two are pure noise."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((CLASSES, FEATURES))
    centres[:, :4] = np.random.default_rng(0).normal(0, 2, (CLASSES, 4))
    y = rng.integers(0, CLASSES, count)
    x = centres[y] + rng.normal(0, 1.0, (count, FEATURES))
    return x.astype(np.float32), y


GAIN = np.array([0.5, 1.5, 0.8, 1.2, 0.6, 1.4], np.float32)
OFFSET = np.array([2.0, -1.5, 0.5, -3.0, 1.0, -0.5], np.float32)


def test_adapter_recovers_a_known_per_feature_gain_and_offset():
    stats = InputStats.from_data(*_training_data(5000, 1), CLASSES)
    x, y = _training_data(2000, 2)
    adapter = InputAdapter.fit(x * GAIN + OFFSET, y, stats, pull=0)
    # The user's sensor reads g * x + o; the adapter must read it back: a = 1 / g, b = -o / g,
    # on informative features and pure-noise ones alike.
    assert np.allclose(adapter.gain, 1 / GAIN, rtol=0.06), adapter.gain * GAIN
    assert np.allclose(adapter.offset, -OFFSET / GAIN, atol=0.15), adapter.offset
    assert np.allclose(adapter(x * GAIN + OFFSET), x, atol=0.5)


def test_least_squares_would_shrink_the_gain_but_the_fit_does_not():
    # Regressing class means on the user's noisy inputs dilutes the gain towards zero; the
    # maximum-likelihood fit, which knows the training data's within-class spread, does not.
    stats = InputStats.from_data(*_training_data(5000, 1), CLASSES)
    x, y = _training_data(2000, 3)
    adapter = InputAdapter.fit(x, y, stats, pull=0)  # an unshifted user
    target = stats.means[y]
    xc, mc = x - x.mean(0), target - target.mean(0)
    least_squares = (xc * mc).sum(0) / (xc * xc).sum(0)
    assert (least_squares < 0.9).all()  # diluted: even the identity would be "corrected"
    assert np.allclose(adapter.gain, 1, atol=0.06) and np.allclose(adapter.offset, 0, atol=0.1)


def test_with_few_samples_the_adapter_is_pulled_towards_the_identity():
    stats = InputStats.from_data(*_training_data(5000, 1), CLASSES)
    x, y = _training_data(5, 4)
    free = InputAdapter.fit(x * GAIN + OFFSET, y, stats, pull=0)
    pulled = InputAdapter.fit(x * GAIN + OFFSET, y, stats, pull=5)
    # weight n / (n + pull) = 1/2 on the fitted map
    assert np.allclose(pulled.gain, 1 + 0.5 * (free.gain - 1), atol=1e-5)
    assert np.allclose(pulled.offset, 0.5 * free.offset, atol=1e-5)


def test_a_feature_the_user_never_varies_keeps_gain_one():
    stats = InputStats.from_data(*_training_data(500, 1), CLASSES)
    x, y = _training_data(20, 5)
    x[:, 2] = 4.0  # a stuck sensor: its gain cannot be told
    adapter = InputAdapter.fit(x, y, stats, pull=0)
    assert adapter.gain[2] == 1 and np.isfinite(adapter.offset).all()


def test_images_and_several_inputs_get_no_adapter_and_say_why():
    assert applies_to([{"name": "features", "shape": [1, 20], "dtype": "float32"}]) is None
    reason = applies_to([{"name": "image", "shape": [1, 1, 8, 8], "dtype": "float32"}])
    assert reason and "not a flat feature vector" in reason
    two = [{"name": "a", "shape": [1, 4]}, {"name": "b", "shape": [1, 4]}]
    assert "2 inputs" in applies_to(two)


def test_reference_labels_outside_the_classes_are_refused():
    x, y = _training_data(50, 1)
    with pytest.raises(EdgeforgeError, match="class indices"):
        InputStats.from_data(x, y + 5, CLASSES)
