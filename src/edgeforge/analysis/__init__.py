"""Model analysis: shapes, work, memory and op census (`edgeforge.inspect`)."""

from __future__ import annotations

from edgeforge.analysis._shapes import parse_shape
from edgeforge.analysis.profile import NodeProfile, Profile, inspect

__all__ = ["NodeProfile", "Profile", "inspect", "parse_shape"]
