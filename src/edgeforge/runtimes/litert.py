"""LiteRT (TensorFlow Lite): a `.tflite` flatbuffer converted from the torch.export program.

Invariants a caller can rely on:
- conversion goes through litert-torch from the program `edgeforge.load` saved beside the ONNX
  file, never through TensorFlow; it is fp32, and every shape is fixed to the example inputs'
  (litert-torch 0.10 cannot lower a symbolic `view`), which the manifest notes say;
- the artifact's inputs and outputs are the source model's, in order: the converter sees one
  positional tensor per model input (`args_0`, `args_1`...) and returns the flattened outputs
  (`output_0`...), and the session maps them back by position;
- fp16, int8-dynamic, int8-static and int4-weight are ai-edge-quantizer recipes applied to the
  converted bytes (see `_quantize_litert`); inputs and outputs stay float32 in all of them;
- int64 and float64 tensors are stored as int32 and float32 (the converter's default, as most
  LiteRT kernels and delegates lack 64-bit types); the session casts feeds in and results back;
- the converter's progress bars and the native libraries' logs never reach the terminal; a
  failed conversion raises an `EdgeforgeError` that names the aten op when the message does.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge._cache import remember
from edgeforge._torch_export import load_program
from edgeforge.errors import EdgeforgeError
from edgeforge.model import Model
from edgeforge.recipe import Recipe
from edgeforge.runtimes._native import ANSI, census, first_line, silenced
from edgeforge.runtimes._quantize_litert import REDUCED, check_options, quantize
from edgeforge.runtimes.base import Artifact, Finding, Runtime, Session, model_sha256

__all__ = ["LiteRT", "LiteRTSession"]

MODEL_FILE = "model.tflite"
_CHECK_VERSION = 1  # bump when check() changes what it reports, so old cache entries go stale
_NARROWED = {"int64": "int32", "float64": "float32", "uint64": "uint32"}
_ATEN_OP = re.compile(r"\baten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?")
_TFLITE_OP = re.compile(r"builtin opcode '([A-Z0-9_]+)'")
_QUIET = {"LITERT_TORCH_SHOW_PROGRESS": "n", "TF_CPP_MIN_LOG_LEVEL": "3"}


class LiteRTSession(Session):
    """A `.tflite` artifact in the LiteRT interpreter, with XNNPACK as its default delegate."""

    def __init__(self, artifact: Artifact, threads: int | None = None) -> None:
        super().__init__(artifact.inputs, artifact.outputs)
        with silenced(_QUIET):
            from ai_edge_litert.interpreter import Interpreter

            try:
                self._interpreter = Interpreter(model_path=str(artifact.path), num_threads=threads)
                self._interpreter.allocate_tensors()  # XNNPACK's banner prints here, silenced
                self._runner = self._interpreter.get_signature_runner()
            except (ValueError, RuntimeError) as exc:
                raise EdgeforgeError(
                    f"{artifact.path}: LiteRT cannot load it ({first_line(exc)}); rebuild it"
                ) from None
        # The converter names inputs args_0, args_1... and outputs output_0...: sort by the
        # number, not the text, so that args_10 comes after args_9.
        self._input_names = _by_position(self._runner.get_input_details())
        self._output_names = _by_position(self._runner.get_output_details())
        if len(self._input_names) != len(self.inputs) or len(self._output_names) != len(
            self.outputs
        ):
            raise EdgeforgeError(
                f"{artifact.path} takes {len(self._input_names)} inputs and returns "
                f"{len(self._output_names)} outputs, but its manifest lists "
                f"{len(self.inputs)} and {len(self.outputs)}; rebuild the artifact"
            )
        details = self._runner.get_input_details()
        self._built = {
            spec.name: (tuple(int(d) for d in details[name]["shape"]), details[name]["dtype"])
            for spec, name in zip(self.inputs, self._input_names, strict=True)
        }

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        named = {
            name: np.ascontiguousarray(
                feeds[spec.name].astype(self._built[spec.name][1], copy=False)
            )
            for spec, name in zip(self.inputs, self._input_names, strict=True)
        }
        # The base class has checked every fixed axis; the runner resizes the dynamic ones,
        # which TFLite refuses when the converter baked the example size into an op.
        shapes = {spec.name: self._built[spec.name][0] for spec in self.inputs}
        resized = any(feeds[name].shape != shape for name, shape in shapes.items())
        try:
            results = self._runner(**named)
        except (ValueError, RuntimeError) as exc:
            if not resized:
                raise EdgeforgeError(f"LiteRT failed to run it ({first_line(exc)})") from None
            raise EdgeforgeError(
                f"LiteRT cannot run these inputs ({first_line(exc)}); the artifact was "
                f"converted for shapes {shapes}: convert again with example inputs of the "
                "shape you need, or pad to it"
            ) from None
        return [
            results[name].astype(spec.dtype, copy=False)
            for spec, name in zip(self.outputs, self._output_names, strict=True)
        ]


class LiteRT(Runtime):
    name = "litert"
    format = "tflite"
    extra = "litert"
    hub = "torch"
    modules = ("litert_torch", "ai_edge_litert")
    distributions = ("litert-torch", "ai-edge-litert")
    precisions = ("fp32", "fp16", "int8-dynamic", "int8-static", "int4-weight")

    def _build(self, model: Model, recipe: Recipe, folder: Path) -> tuple:
        check_options(recipe)
        content, shapes = _convert(model)
        coverage = _xnnpack_coverage(content)
        if isinstance(coverage, str):
            raise EdgeforgeError(
                f"{model.provenance.source}: LiteRT converted the model but cannot load the "
                f"result ({coverage}); {_workaround(_op_in(coverage))}"
            )
        notes = [
            "converted with litert-torch from the torch.export program; input shapes fixed "
            f"to {shapes}"
        ]
        if recipe.precision in REDUCED:
            content, quantized = quantize(content, model, recipe, shapes)
            notes += quantized
            coverage = _xnnpack_coverage(content)
            if isinstance(coverage, str):
                raise EdgeforgeError(
                    f"{model.provenance.source}: ai-edge-quantizer's {recipe.precision} model "
                    f"does not load in LiteRT ({coverage}); try another precision"
                )
        (folder / MODEL_FILE).write_bytes(content)
        delegated, fallback = coverage
        notes.append(
            f"XNNPACK delegate takes {len(delegated)} of {len(delegated) + len(fallback)} ops"
        )
        if fallback:
            notes.append(f"on LiteRT's built-in CPU kernels: {census(fallback)}")
        narrowed = [
            f"{t.name} ({t.dtype} as {_NARROWED[t.dtype]})"
            for t in (*model.inputs, *model.outputs)
            if t.dtype in _NARROWED
        ]
        if narrowed:
            notes.append(f"64-bit tensors stored as 32-bit: {', '.join(narrowed)}")
        return MODEL_FILE, notes, shapes

    def _open(self, artifact: Artifact) -> Session:
        return LiteRTSession(artifact)

    def check(self, model: Model) -> list[Finding]:
        """A real conversion, then the XNNPACK delegate's coverage of the converted model.

        The answer is cached per model (its ONNX file's hash) and tool versions.
        """
        from edgeforge._onnx_bridge import bridged_for, refused_finding

        model = bridged_for(model, [self.hub])  # an ONNX source: through the bridge
        if model.torch_program is None:
            return [refused_finding(self.name, model)]
        versions = "-".join(self.versions()[d] for d in self.distributions)
        found = remember(
            f"litert-{versions}/check",
            {"model": model_sha256(model), "check": _CHECK_VERSION},
            lambda: [f.to_dict() for f in self._check(model)],
        )
        return [Finding(**{**f, "nodes": tuple(f["nodes"])}) for f in found]

    def _check(self, model: Model) -> list[Finding]:
        try:
            content, shapes = _convert(model)
        except _ConversionFailed as exc:
            return [self._unsupported(exc.reason)]
        findings = []
        coverage = _xnnpack_coverage(content)
        if isinstance(coverage, str):
            findings.append(self._unsupported(f"the converted model does not load: {coverage}"))
        else:
            for op, count in sorted(Counter(coverage[1]).items()):
                findings.append(
                    Finding(
                        self.name,
                        "fallback",
                        f"{op} ({count}x) is not taken by the XNNPACK delegate: it runs on "
                        "LiteRT's built-in CPU kernels instead",
                        f"replace {op} with ops XNNPACK supports, or accept the slower "
                        "kernel if it is a small part of the model",
                        op_type=op,
                        evidence="conversion attempt",
                    )
                )
        findings.extend(self._traps(model, shapes))
        return findings

    def _unsupported(self, reason: str) -> Finding:
        op = _op_in(reason)
        return Finding(
            self.name,
            "unsupported",
            reason,
            _workaround(op),
            op_type=op,
            evidence="conversion attempt",
        )

    def _traps(self, model: Model, shapes: dict[str, tuple[int, ...]]) -> list[Finding]:
        findings = []
        for spec in model.inputs:
            if spec.dynamic_dims:
                axes = ", ".join(f"{i} ({n})" for i, n in spec.dynamic_dims.items())
                findings.append(
                    Finding(
                        self.name,
                        "trap",
                        f"input {spec.name!r} has dynamic axes {axes}; LiteRT fixes them to "
                        f"the example shape {shapes.get(spec.name)}",
                        "convert per input shape or pad",
                        evidence="conversion attempt",
                    )
                )
        for spec in (*model.inputs, *model.outputs):
            if spec.dtype in _NARROWED:
                findings.append(
                    Finding(
                        self.name,
                        "trap",
                        f"{spec.name!r} is {spec.dtype}; LiteRT stores it as "
                        f"{_NARROWED[spec.dtype]} (values beyond its range wrap)",
                        f"use {_NARROWED[spec.dtype]} in the model (TFLite prefers it), or "
                        "keep the values within its range",
                        evidence="rule",
                    )
                )
        return findings


# -- conversion ------------------------------------------------------------------------------


class _ConversionFailed(EdgeforgeError):
    """The converter refused the model; `reason` is its one-line explanation."""

    def __init__(self, model: Model, reason: str) -> None:
        super().__init__(
            f"{model.provenance.source}: LiteRT cannot convert it ({reason}); "
            f"{_workaround(_op_in(reason))}"
        )
        self.reason = reason


def _convert(model: Model) -> tuple[bytes, dict[str, tuple[int, ...]]]:
    """The `.tflite` bytes for `model`'s torch program, and the input shapes they are fixed to."""

    failure: BaseException | None = None
    with silenced(_QUIET) as log:
        import litert_torch

        program = load_program(model.torch_program, "load the model again")
        module, tensors = _positional(program, model)
        try:
            content = litert_torch.convert(module, tensors).model_content()
        except Exception as exc:  # the converter raises from torch, JAX and MLIR alike
            failure = exc
    if failure is not None:
        raise _ConversionFailed(model, _reason(failure, log.text))
    shapes = {spec.name: tuple(t.shape) for spec, t in zip(model.inputs, tensors, strict=True)}
    return bytes(content), shapes


def _positional(program: Any, model: Model) -> tuple[Any, tuple[Any, ...]]:
    """The program's module behind a forward that takes one tensor per model input, in order,
    and returns a flat tuple of tensors; with the example tensors to convert it with."""
    import torch
    import torch.utils._pytree as pytree

    leaves, spec = pytree.tree_flatten(program.example_inputs)
    where = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    if len(where) != len(model.inputs):
        raise EdgeforgeError(
            f"{model.provenance.source}: the torch program takes {len(where)} tensors but the "
            f"model declares {len(model.inputs)} inputs; load the model again"
        )
    inner = program.module()

    class Positional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: Any) -> tuple[Any, ...]:
            filled = list(leaves)
            for i, tensor in zip(where, tensors, strict=True):
                filled[i] = tensor
            args, kwargs = pytree.tree_unflatten(filled, spec)
            return tuple(pytree.tree_leaves(self.inner(*args, **kwargs)))

    module = Positional()
    # `.eval()` would recurse into the unlifted program, which refuses it; its graph is
    # already the inference graph, and the flag only quiets the converter's warning.
    module.training = False
    return module, tuple(leaves[i] for i in where)


def _xnnpack_coverage(content: bytes) -> tuple[list[str], list[str]] | str:
    """(ops the XNNPACK delegate takes, ops left to the built-in CPU kernels) for a `.tflite`,
    or why the interpreter cannot load it.

    The interpreter lists the original nodes and then one DELEGATE node per partition, whose
    inputs and outputs are the partition's boundary: a node is delegated when it is reached
    walking back from a partition's outputs without crossing that boundary.
    """
    with silenced(_QUIET):
        from ai_edge_litert.interpreter import Interpreter

        try:
            interpreter = Interpreter(model_content=content)
            interpreter.allocate_tensors()
            ops = interpreter._get_ops_details()  # no public API lists the partitions
        except (ValueError, RuntimeError) as exc:
            return first_line(exc)
    plain = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {int(t): op["index"] for op in plain for t in op["outputs"]}
    delegated: set[int] = set()
    for partition in (op for op in ops if op["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in partition["inputs"]}
        stack = [int(t) for t in partition["outputs"]]
        while stack:
            tensor = stack.pop()
            index = producer.get(tensor)
            if tensor in boundary or index is None or index in delegated:
                continue
            delegated.add(index)
            stack.extend(int(t) for t in ops[index]["inputs"] if t >= 0)
    return (
        [op["op_name"] for op in plain if op["index"] in delegated],
        [op["op_name"] for op in plain if op["index"] not in delegated],
    )


# -- helpers ---------------------------------------------------------------------------------


def _by_position(details: dict[str, Any]) -> list[str]:
    def position(name: str) -> tuple[int, str]:
        digits = re.search(r"(\d+)$", name)
        return (int(digits.group(1)) if digits else sys.maxsize, name)

    return sorted(details, key=position)


def _reason(exc: BaseException, log: str) -> str:
    """One line naming what failed: the innermost exception, or the converter's own
    `error:` line from its log when the exception says no more than that it failed."""
    line = first_line(exc)
    if not _op_in(line):
        for candidate in log.splitlines():
            if "error:" in candidate and _op_in(candidate):
                return ANSI.sub("", candidate).strip()[:300]
    return line


def _op_in(text: str) -> str | None:
    match = _ATEN_OP.search(text) or _TFLITE_OP.search(text)
    if match is None:
        return None
    return match.group(1) if match.re is _TFLITE_OP else match.group(0)


def _workaround(op: str | None) -> str:
    what = op or "the failing op"
    return (
        f"rewrite {what} with ops LiteRT supports (e.g. decompose it in the module's "
        "forward), or keep that part of the model on the CPU in ONNX Runtime"
    )
