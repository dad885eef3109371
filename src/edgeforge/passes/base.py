"""The `Pass` contract: a model-to-model transform before any runtime.

A pass is one file with one class that fills in `apply`. The base class enforces what every
caller can rely on:
- a pass never changes what it was given: torch passes work on a copy of the module (checked
  by a fingerprint of every parameter and buffer, before and after), ONNX passes write a new
  file beside nothing of the source's;
- what a pass returns takes the same inputs and gives outputs of the same structure, shapes
  and dtypes as its source (torch: run once on the example inputs; ONNX: the same IO
  signature), so it drops into `edgeforge.load`, `convert` and `verify` unchanged;
- the `PassResult` says what changed: the footprint before and after, measured metrics and
  notes a person should read.

Torch passes (`consumes = "torch"`) take `(module, example_inputs)`; ONNX passes
(`consumes = "onnx"`) take a `Model`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from edgeforge.errors import EdgeforgeError
from edgeforge.model import Model

__all__ = ["Footprint", "Pass", "PassResult"]


@dataclass(frozen=True)
class Footprint:
    """How big a model is: parameters always; MACs for torch modules; nodes for ONNX graphs."""

    parameters: int
    macs: int | None = None  # multiply-accumulates for one run on the example inputs
    nodes: int | None = None  # ONNX graph nodes

    def to_dict(self) -> dict[str, int | None]:
        return {"parameters": self.parameters, "macs": self.macs, "nodes": self.nodes}


@dataclass
class PassResult:
    """What a pass made (`output`) and what changed."""

    pass_name: str
    output: Any  # a torch.nn.Module (eval mode) for torch passes, a `Model` for ONNX passes
    before: Footprint
    after: Footprint
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def module(self) -> Any:
        """The torch module a torch pass made."""
        if isinstance(self.output, Model):
            raise EdgeforgeError(f"pass {self.pass_name!r} made an ONNX Model; use .model")
        return self.output

    @property
    def model(self) -> Model:
        """The `Model` an ONNX pass made."""
        if not isinstance(self.output, Model):
            raise EdgeforgeError(
                f"pass {self.pass_name!r} made a torch module; turn it into a Model with "
                "edgeforge.load(result.module, example_inputs)"
            )
        return self.output

    @property
    def parameters_kept(self) -> float:
        return self.after.parameters / self.before.parameters if self.before.parameters else 1.0

    def to_dict(self) -> dict[str, Any]:
        if isinstance(self.output, Model):
            output: Any = self.output.to_dict()
        else:
            output = {"module": type(self.output).__name__}
        return {
            "pass": self.pass_name,
            "output": output,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "parameters_kept": self.parameters_kept,
            "metrics": dict(self.metrics),
            "notes": list(self.notes),
        }


class Pass(ABC):
    """One transform. Subclasses set `name` and `consumes` and fill in `apply`."""

    name: ClassVar[str]
    consumes: ClassVar[Literal["torch", "onnx"]]

    def __call__(self, source: Any, example_inputs: Any = None) -> PassResult:
        """Run the pass on `source` and check the contract (see the module docstring)."""
        if self.consumes == "onnx":
            return self._run_onnx(source)
        return self._run_torch(source, example_inputs)

    @abstractmethod
    def apply(self, source: Any, example_inputs: Any) -> PassResult:
        """Transform `source` (never in place) and describe what changed."""

    def _run_onnx(self, source: Any) -> PassResult:
        if not isinstance(source, Model):
            raise EdgeforgeError(
                f"pass {self.name!r} works on ONNX models; pass edgeforge.load(...) of your "
                f"model, not a {type(source).__name__}"
            )
        result = self.apply(source, None)
        made = result.model
        for side, want, have in (
            ("inputs", source.inputs, made.inputs),
            ("outputs", source.outputs, made.outputs),
        ):
            if [(t.name, t.dtype) for t in want] != [(t.name, t.dtype) for t in have]:
                raise EdgeforgeError(
                    f"pass {self.name!r} changed the model's {side} "
                    f"({[t.name for t in want]} -> {[t.name for t in have]}); "
                    "report this with the model attached"
                )
        return result

    def _run_torch(self, source: Any, example_inputs: Any) -> PassResult:
        from edgeforge.passes._torch_data import (
            ExampleInputs,
            fingerprint,
            interface,
            require_module,
        )

        require_module(source, self.name)
        inputs = ExampleInputs.of(source, example_inputs, self.name)
        before_print = fingerprint(source)
        want = interface(source, inputs, f"the module given to {self.name!r}")
        result = self.apply(source, inputs)
        if fingerprint(source) != before_print:
            # A bug in the pass, not in the user's input: passes must work on a copy.
            raise RuntimeError(f"pass {self.name!r} modified the module it was given")
        have = interface(result.module, inputs, f"the module {self.name!r} made")
        if have != want:
            raise EdgeforgeError(
                f"pass {self.name!r} changed the module's outputs from {want} to {have}; "
                "exclude the layers that feed them (ignored_layers=...) or report this"
            )
        result.module.eval()
        return result
