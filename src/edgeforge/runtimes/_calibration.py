"""Calibration inputs for the quantizing recipes (int8-static), shared by the runtimes.

A recipe names its calibration data with two options:
- `data`: a folder that `evaluate.data.load_data` reads (.npz, .npy or images); absent, samples
  are synthesised from the model's signature, and `calibration_note` says so, because ranges
  measured on synthetic inputs rarely match deployment;
- `calibration_samples`: how many samples to use (default `DEFAULT_COUNT`), drawn from the
  folder with a fixed seed, stratified by class when it has labels (`load_data`);
- `preprocess`: how images in the folder become inputs (`evaluate.data.Preprocess`), the same
  as verification uses (convert puts `--preprocess` here).

Every runtime quantizes with its own tool; this module only decides which inputs it sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeforge.errors import EdgeforgeError
from edgeforge.evaluate.data import Preprocess, Samples, load_data, synthesize
from edgeforge.model import Model
from edgeforge.recipe import Recipe
from edgeforge.runtimes._options import positive_int_option

__all__ = ["DEFAULT_COUNT", "calibration_data", "calibration_note", "calibration_samples"]

DEFAULT_COUNT = 64


def calibration_data(model: Model, recipe: Recipe) -> Samples:
    """The recipe's calibration samples, read from `data` or synthesised, with their source."""
    count = positive_int_option(recipe, "calibration_samples", DEFAULT_COUNT)
    folder = recipe.options.get("data")
    if folder is None:
        return synthesize(model, count=count)
    samples = load_data(
        Path(folder), model.inputs, limit=count, preprocess=recipe.options.get("preprocess")
    )
    if not samples.feeds:
        raise EdgeforgeError(f"--data {folder}: no samples to calibrate with; add some")
    return samples


def calibration_samples(model: Model, recipe: Recipe) -> list[dict[str, np.ndarray]]:
    """One feed per calibration sample, keyed by the model's input names."""
    return calibration_data(model, recipe).feeds


def calibration_note(samples: Samples, recipe: Recipe) -> str:
    """One line for the manifest: what the activation ranges were measured on."""
    if recipe.options.get("data") is None:
        return (
            f"calibrated on {len(samples.feeds)} samples synthesised from the signature "
            "(realistic by input role): no `data` option was given; pass a folder of "
            "real inputs so that the activation ranges match deployment"
        )
    steps = Preprocess.parse(recipe.options.get("preprocess"))
    how = f", preprocessed: {steps.describe()}" if steps is not None else ""
    return f"calibrated on {len(samples.feeds)} samples from {recipe.options['data']}{how}"
