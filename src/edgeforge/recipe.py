"""A `Recipe`: the precision a runtime builds an artifact in, and its options.

Each runtime carries a recipe out with its own tooling (ONNX Runtime's quantizer, NNCF,
ai-edge-quantizer, coremltools.optimize...). Issue-5 recipes (int8, int4) add options here;
a runtime that cannot honour a recipe says so with `RecipeNotSupported`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeforge.errors import EdgeforgeError

__all__ = ["PRECISIONS", "Recipe"]

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static", "int4-weight")


@dataclass(frozen=True)
class Recipe:
    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgeforgeError(
                f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        return cls(data.get("precision", "fp32"), dict(data.get("options", {})))
