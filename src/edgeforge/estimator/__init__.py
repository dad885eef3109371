"""`estimate` and `calibrate`: latency and memory on a catalogue device, from a calibrated
per-layer roofline.

`estimate(profile, device)` predicts; `Factors` are the efficiency data it reads (fitted by
`calibration.fit` on published measurements read by `published.read_rows`, shipped in
`data/factors.json`); `validate` reports how far the estimates are from held-out measurements.
On catalogue devices `estimate` uses the transfer model (`transfer`, shipped in
`data/transfer.json`), which `calibrate --device ID --measurements FILE` adapts to one device.
"""

from __future__ import annotations

from edgeforge.estimator.calibration import (
    FactorEntry,
    Factors,
    calibrate,
    fit,
    load_factors,
    split,
    validate,
    validate_file,
    zoo_profiles,
)
from edgeforge.estimator.published import PublishedRow, read_rows
from edgeforge.estimator.roofline import (
    Estimate,
    LayerTime,
    MemoryFit,
    Unavailable,
    estimate,
    estimate_devices,
    unit_choices,
)

__all__ = [
    "Estimate",
    "FactorEntry",
    "Factors",
    "LayerTime",
    "MemoryFit",
    "PublishedRow",
    "Unavailable",
    "calibrate",
    "estimate",
    "estimate_devices",
    "fit",
    "load_factors",
    "read_rows",
    "split",
    "unit_choices",
    "validate",
    "validate_file",
    "zoo_profiles",
]
