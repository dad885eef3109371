"""edgeforge: take a trained model to a verified, measured model on edge devices.

The public surface is small: `load` a model from any source, `inspect` it, and look up
`devices`. Each CLI verb is a thin call into the function of the same name.
"""

from __future__ import annotations

from edgeforge.analysis import Profile, inspect
from edgeforge.errors import EdgeforgeError
from edgeforge.load import load
from edgeforge.model import Model, TensorSpec

__all__ = ["EdgeforgeError", "Model", "Profile", "TensorSpec", "__version__", "inspect", "load"]

__version__ = "0.1.0"
