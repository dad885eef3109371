"""ExecuTorch: a `.pte` program lowered from the torch.export program, XNNPACK where it can.

Invariants a caller can rely on:
- the program `edgeforge.load` saved beside the ONNX file goes through
  `to_edge_transform_and_lower` with the XNNPACK partitioner; what the partitioner leaves runs
  on ExecuTorch's portable CPU kernels, and the manifest notes count both;
- the method's inputs and outputs are the program's flattened ones, which are the source
  model's, in order; the session maps them by position;
- memory is planned for the example inputs' shapes: an axis the source model leaves dynamic
  runs up to the example's size and no further, and any other shape is refused in one line;
- a few ops ExecuTorch's kernels or XNNPACK's passes mishandle (5-D convolutions, PReLU on
  non-4-D inputs) are rewritten first, exactly, and the notes say so (`_executorch_rewrites`);
- the lowering's warnings and the runtime's native logs never reach the terminal; a failed
  lowering raises an `EdgeforgeError` that names the aten op when the message does.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge._cache import remember
from edgeforge._torch_export import load_program
from edgeforge.errors import EdgeforgeError
from edgeforge.model import Model
from edgeforge.recipe import Recipe
from edgeforge.runtimes._executorch_rewrites import rewritten
from edgeforge.runtimes._native import ANSI, census, first_line, silenced
from edgeforge.runtimes.base import Artifact, Finding, Runtime, Session, model_sha256

__all__ = ["ExecuTorch", "ExecuTorchSession"]

MODEL_FILE = "model.pte"
_CHECK_VERSION = 3  # bump when check() changes what it reports, so old cache entries go stale
_ATEN_OP = re.compile(r"\baten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?")
# Nodes that compute or check shapes, and Python numbers made tensors (`x * 2` gives a
# scalar_tensor or a dim-order copy): they cost nothing worth a finding.
_BOOKKEEPING = re.compile(
    r"^(aten\.(sym_\w+|_assert_\w+|scalar_tensor)|dim_order_ops\._to_dim_order_copy)(\.|$)"
)


class ExecuTorchSession(Session):
    """A `.pte` artifact's `forward` method in the ExecuTorch runtime's Python bindings."""

    def __init__(self, artifact: Artifact) -> None:
        super().__init__(artifact.inputs, artifact.outputs)
        with silenced():
            from executorch.runtime import Runtime as EtRuntime

            try:
                # Keep the program: the method's buffers belong to it.
                self._program = EtRuntime.get().load_program(artifact.path)
                self._method = self._program.load_method("forward")
            except (RuntimeError, ValueError, KeyError) as exc:
                raise EdgeforgeError(
                    f"{artifact.path}: ExecuTorch cannot load it ({first_line(exc)}); rebuild it"
                ) from None
        meta = self._method.metadata
        if meta.num_inputs() != len(self.inputs) or meta.num_outputs() != len(self.outputs):
            raise EdgeforgeError(
                f"{artifact.path} takes {meta.num_inputs()} inputs and returns "
                f"{meta.num_outputs()} outputs, but its manifest lists {len(self.inputs)} "
                f"and {len(self.outputs)}; rebuild the artifact"
            )
        self._built = {
            spec.name: tuple(meta.input_tensor_meta(i).sizes())
            for i, spec in enumerate(self.inputs)
        }

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.inputs]
        # The base class has checked every fixed axis; a dynamic one may differ from the
        # planned size, and the runtime logs to the terminal when it refuses to resize.
        resized = any(
            tuple(tensor.shape) != self._built[spec.name]
            for tensor, spec in zip(tensors, self.inputs, strict=True)
        )
        try:
            with silenced() if resized else contextlib.nullcontext():
                results = self._method.execute(tensors)
        except RuntimeError as exc:
            if not resized:
                raise EdgeforgeError(f"ExecuTorch failed to run it ({first_line(exc)})") from None
            raise EdgeforgeError(
                f"ExecuTorch cannot run these inputs ({first_line(exc)}); the artifact was "
                f"converted for shapes {self._built}, and its memory planned for them: "
                "convert again with example inputs of the largest shape you need"
            ) from None
        return [r.detach().numpy() if hasattr(r, "detach") else np.asarray(r) for r in results]


@dataclass(frozen=True)
class _Lowered:
    """What a lowering produced: the program's bytes and who runs each op."""

    buffer: bytes
    shapes: dict[str, tuple[int, ...]]  # the example inputs' shapes, memory is planned for
    delegated: int  # nodes inside XNNPACK subgraphs
    subgraphs: int
    portable: list[str]  # one aten op name per node left outside XNNPACK
    rewrites: list[str]  # what `_executorch_rewrites` changed before lowering, for the notes


class ExecuTorch(Runtime):
    name = "executorch"
    format = "pte"
    extra = "executorch"
    hub = "torch"
    modules = ("executorch",)
    distributions = ("executorch",)
    precisions = ("fp32",)

    def _build(self, model: Model, recipe: Recipe, folder: Path) -> tuple:
        lowered = _lower(model)
        (folder / MODEL_FILE).write_bytes(lowered.buffer)
        total = lowered.delegated + len(lowered.portable)
        notes = [
            "lowered with to_edge_transform_and_lower and the XNNPACK partitioner; memory "
            f"planned for input shapes {lowered.shapes}",
            f"XNNPACK takes {lowered.delegated} of {total} nodes in {lowered.subgraphs} "
            f"delegated subgraph(s); {len(lowered.portable)} run on the portable kernels",
        ]
        if lowered.portable:
            notes.append(f"on the portable CPU kernels: {census(lowered.portable)}")
        notes += lowered.rewrites
        return MODEL_FILE, notes, lowered.shapes

    def _open(self, artifact: Artifact) -> Session:
        return ExecuTorchSession(artifact)

    def check(self, model: Model) -> list[Finding]:
        """A real lowering, then what XNNPACK left to the portable kernels.

        The answer is cached per model (its ONNX file's hash) and ExecuTorch version.
        """
        from edgeforge._onnx_bridge import bridged_for, refused_finding

        model = bridged_for(model, [self.hub])  # an ONNX source: through the bridge
        if model.torch_program is None:
            return [refused_finding(self.name, model)]
        version = self.versions()["executorch"]
        found = remember(
            f"executorch-{version}/check",
            {"model": model_sha256(model), "check": _CHECK_VERSION},
            lambda: [f.to_dict() for f in self._check(model)],
        )
        return [Finding(**{**f, "nodes": tuple(f["nodes"])}) for f in found]

    def _check(self, model: Model) -> list[Finding]:
        try:
            lowered = _lower(model)
        except _LoweringFailed as exc:
            op = _op_in(exc.reason)
            return [
                Finding(
                    self.name,
                    "unsupported",
                    exc.reason,
                    _workaround(op),
                    op_type=op,
                    evidence="conversion attempt",
                )
            ]
        findings = [
            Finding(
                self.name,
                "fallback",
                f"{op} ({count}x) runs on ExecuTorch's portable CPU kernels, not XNNPACK",
                f"replace {op} with ops XNNPACK supports, or accept the slower kernel if it "
                "is a small part of the model",
                op_type=op,
                evidence="conversion attempt",
            )
            for op, count in sorted(Counter(lowered.portable).items())
        ]
        for spec in model.inputs:
            if spec.dynamic_dims:
                axes = ", ".join(f"{i} ({n})" for i, n in spec.dynamic_dims.items())
                findings.append(
                    Finding(
                        self.name,
                        "trap",
                        f"input {spec.name!r} has dynamic axes {axes}; ExecuTorch plans "
                        f"memory for the example shape {lowered.shapes.get(spec.name)}, so "
                        "those axes cannot grow beyond it",
                        "convert per input shape or pad; or export with example inputs of the "
                        "largest shape",
                        evidence="conversion attempt",
                    )
                )
        return findings


# -- lowering --------------------------------------------------------------------------------


class _LoweringFailed(EdgeforgeError):
    """ExecuTorch refused the program; `reason` is its one-line explanation."""

    def __init__(self, model: Model, reason: str) -> None:
        super().__init__(
            f"{model.provenance.source}: ExecuTorch cannot lower it ({reason}); "
            f"{_workaround(_op_in(reason))}"
        )
        self.reason = reason


def _lower(model: Model) -> _Lowered:
    failure: BaseException | None = None
    with silenced():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,
        )
        from executorch.exir import to_edge_transform_and_lower

        program = _load_program(model)
        shapes = _example_shapes(program, model)
        try:
            program, rewrites = rewritten(program)
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            delegated, subgraphs, portable = _delegation(edge.exported_program().graph_module)
            buffer = edge.to_executorch().buffer
        except Exception as exc:  # exir raises its own and torch's exception types
            failure = exc
    if failure is not None:
        raise _LoweringFailed(model, _reason(failure))
    return _Lowered(bytes(buffer), shapes, delegated, subgraphs, portable, rewrites)


def _load_program(model: Model) -> Any:
    assert model.torch_program is not None  # the base class refuses a model without one
    return load_program(model.torch_program, "load the model again")


def _delegation(graph_module: Any) -> tuple[int, int, list[str]]:
    """(nodes inside XNNPACK subgraphs, number of subgraphs, ops left outside).

    Counted as `executorch.devtools.backend_debug.get_delegation_info` counts, except that
    ops are named by their target (`aten.cumsum.default`) rather than the node's name, and
    the delegate calls' `getitem`s and the shape bookkeeping are not counted as ops (that
    function imports pandas, too, which this does not need).
    """
    delegated = subgraphs = 0
    portable = []
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module_"):
            subgraphs += 1
            inner = getattr(graph_module, node.name).original_module.graph
            delegated += sum(1 for n in inner.nodes if n.op == "call_function")
        elif node.op == "call_function":
            name = _op_name(node.target)
            if name and not _BOOKKEEPING.match(name):
                portable.append(name)
    return delegated, subgraphs, portable


def _op_name(target: Any) -> str | None:
    """`aten.cumsum.default` for an edge or aten op; None for the delegate calls and Python
    builtins (getitem, the comparisons of symbolic sizes)."""
    import torch

    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    inner = getattr(target, "_op", None)  # an EdgeOpOverload wraps the aten one
    return str(inner) if isinstance(inner, torch._ops.OpOverload) else None


def _example_shapes(program: Any, model: Model) -> dict[str, tuple[int, ...]]:
    import torch
    import torch.utils._pytree as pytree

    tensors = [t for t in pytree.tree_leaves(program.example_inputs) if isinstance(t, torch.Tensor)]
    return {spec.name: tuple(t.shape) for spec, t in zip(model.inputs, tensors, strict=False)}


# -- helpers ---------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """The innermost exception's first line, with the aten op it names further down (exir
    lists the offending ops on the lines after a general first line)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    line = first_line(exc)
    if not _op_in(line):
        op = _op_in(ANSI.sub("", str(exc)))
        if op:
            line = f"{line} ({op})"
    return line


def _op_in(text: str) -> str | None:
    match = _ATEN_OP.search(text)
    return match.group(0) if match else None


def _workaround(op: str | None) -> str:
    what = op or "the failing op"
    return (
        f"rewrite {what} with core ATen ops ExecuTorch supports (e.g. decompose it in the "
        "module's forward), or keep that part of the model on the CPU in ONNX Runtime"
    )
