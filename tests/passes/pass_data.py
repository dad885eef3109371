"""Helpers for the pass tests: digits arrays as `Samples`."""

from __future__ import annotations

import numpy as np

from edgeforge.evaluate.data import Samples


def as_samples(x: np.ndarray, y: np.ndarray | None = None) -> Samples:
    """One feed per image (batch axis of 1), as `load_data` reads a folder of .npy files."""
    return Samples([{"image": x[i : i + 1]} for i in range(len(x))], y, "digits")
