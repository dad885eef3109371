"""Evaluation: parity against a reference (`verify`), inputs, comparisons, localisation."""

from __future__ import annotations

from edgeforge.evaluate.compare import OutputComparison, Tolerance, tolerance_for
from edgeforge.evaluate.parity import Verification, open_candidate, verify

__all__ = [
    "OutputComparison",
    "Tolerance",
    "Verification",
    "open_candidate",
    "tolerance_for",
    "verify",
]
