"""Core ML: an ML Program (`.mlpackage`) converted by coremltools from the torch.export program.

Invariants a caller can rely on:
- conversion starts from the torch.export program saved beside the ONNX file, retraced to the
  ATen dialect coremltools reads; a dynamic dimension takes the example's size, and the
  manifest's notes say which;
- the package has the source model's inputs and outputs in the same order; Core ML names them
  after the torch graph (`x`, `linear_1`), the notes record the pairing, and a `Session` maps
  them by position, so callers use the source names only;
- float32 inputs and outputs stay float32 in an fp16 build (only weights and arithmetic are
  fp16), and the package's metadata names the precision it was built in;
- int8-dynamic (weight-only int8) and int4-weight (per-block, iOS18 and later) are
  coremltools.optimize's `linear_quantize_weights`; int8-static is not built, because
  calibrating activations needs Core ML itself (see `_quantize_coreml`);
- off macOS a package is converted and its signature checked (`validate_without_running`) but
  never executed: `open` raises `RuntimeUnavailable` with the reason, so reports say so rather
  than skipping silently.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge._cache import remember
from edgeforge._torch_export import load_program
from edgeforge.errors import EdgeforgeError, first_line
from edgeforge.model import Model, TensorSpec
from edgeforge.recipe import Recipe
from edgeforge.runtimes._quantize_coreml import (
    QUANTIZED,
    deployment_target,
    quantize,
    weight_census,
)
from edgeforge.runtimes.base import (
    Artifact,
    Finding,
    Runtime,
    Session,
    file_sha256,
    model_sha256,
)

__all__ = ["CoreML", "CoreMLSession", "validate_without_running"]

PACKAGE = "model.mlpackage"
PRECISION_KEY = "edgeforge.precision"  # user-defined metadata in the package
DEFAULT_TARGET = "iOS16"  # fp16 ML Programs with fp32 I/O need iOS 16 / macOS 13
NOT_MACOS = (
    "Core ML runs only on macOS/iOS; the artifact was built and validated with coremltools "
    "but cannot be executed here"
)

# Rewrites for ops coremltools 9 lacks that models do use; the rest get the generic advice.
_REWRITES = {
    "linalg_det": "for small fixed-size matrices write the determinant out (cofactor expansion)",
    "fmod": "compute x - torch.trunc(x / y) * y",
    "signbit": "compare x < 0 (and treat -0.0 apart if it matters)",
    "bitwise_xor": "use (a | b) & ~(a & b) on int32, or move the bit logic out of the model",
    "lstm": "unroll it with nn.LSTMCell over a fixed number of steps, or keep it in ONNX Runtime",
    "gru": "unroll it with nn.GRUCell over a fixed number of steps, or keep it in ONNX Runtime",
    # `_coreml_ops` translates these on booleans and at static sizes only:
    "__and__": "compare as booleans ((a != 0) & (b != 0)); Core ML has no integer bit operations",
    "upsample_bicubic2d": "convert at a fixed input size (the translation needs static sizes)",
}
_UNSUPPORTED_NODE = re.compile(r"Unsupported fx node (\S+), kind (\S+)")
_NOT_IMPLEMENTED = re.compile(r"convert function for op '([^']+)' not implemented")


class CoreMLSession(Session):
    """A package loaded by Core ML (macOS only); inputs and outputs matched by position."""

    def __init__(self, artifact: Artifact) -> None:
        super().__init__(artifact.inputs, artifact.outputs)
        ct = _coremltools()
        units = artifact.manifest.recipe.get("options", {}).get("coreml_compute_units", "ALL")
        try:
            with _quiet():
                self._model = ct.models.MLModel(
                    str(artifact.path), compute_units=ct.ComputeUnit[units]
                )
        except Exception as exc:  # Core ML raises its own types
            raise EdgeforgeError(
                f"{artifact.path}: Core ML cannot load it ({first_line(exc)})"
            ) from None
        description = self._model.get_spec().description
        self._input_names = [feature.name for feature in description.input]
        self._input_dtypes = [_feature_dtype(feature) for feature in description.input]
        self._output_names = [feature.name for feature in description.output]

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        coreml_feeds = {}
        pairs = zip(self.inputs, self._input_names, self._input_dtypes, strict=True)
        for spec, name, dtype in pairs:
            array = feeds[spec.name]
            if dtype is not None:
                array = array.astype(dtype, copy=False)  # int64 ids become Core ML's int32
            coreml_feeds[name] = np.ascontiguousarray(array)
        result = self._model.predict(coreml_feeds)
        outputs = []
        for name, spec in zip(self._output_names, self.outputs, strict=True):
            array = np.asarray(result[name])
            declared = _numpy_dtype(spec.dtype)
            if declared is not None and array.dtype != declared:
                array = array.astype(declared)  # Core ML has no int64: give back the source's
            outputs.append(array)
        return outputs


class CoreML(Runtime):
    name = "coreml"
    format = "mlpackage"
    extra = "coreml"
    hub = "torch"
    modules = ("coremltools",)
    distributions = ("coremltools",)
    precisions = ("fp32", "fp16", "int8-dynamic", "int4-weight")

    def execution_blocker(self) -> str | None:
        return None if sys.platform == "darwin" else NOT_MACOS

    def _build(self, model: Model, recipe: Recipe, folder: Path) -> tuple[str, list[str]]:
        ct = _coremltools()
        assert model.torch_program is not None  # the base class refuses a model without one
        target = deployment_target(ct, recipe, DEFAULT_TARGET)
        program = _load_program(model.torch_program)
        try:
            mlmodel = _convert(ct, program, model.outputs, recipe.precision, target)
        except Exception as exc:
            raise EdgeforgeError(
                f"coremltools {ct.__version__} cannot convert {model.provenance.source}: "
                f"{_conversion_problem(exc)}; run `edgeforge check` with the coreml runtime "
                "for workarounds"
            ) from None
        quantized: list[str] = []
        if recipe.precision in QUANTIZED:
            with _quiet():
                mlmodel, quantized = quantize(ct, mlmodel, recipe)
        mlmodel.user_defined_metadata[PRECISION_KEY] = recipe.precision
        with _quiet():
            mlmodel.save(str(folder / PACKAGE))
        description = mlmodel.get_spec().description
        mismatch = _signature_problems(model.inputs, model.outputs, description)
        if mismatch:
            raise EdgeforgeError(
                f"coremltools {ct.__version__} produced a package whose signature differs from "
                f"the model's: {mismatch[0]}"
            )
        notes = [
            f"converted by coremltools {ct.__version__} from the torch.export program "
            f"(ML Program, minimum deployment target {target}, compute precision "
            f"{'fp16' if recipe.precision == 'fp16' else 'fp32'}, float32 inputs and outputs)",
            *quantized,
            _name_note("inputs", model.inputs, description.input),
            _name_note("outputs", model.outputs, description.output),
        ]
        notes += _fixed_dims_notes(model.inputs, description.input)
        notes += [
            f"{spec.name} is int64 in the source and int32 in Core ML"
            for spec in (*model.inputs, *model.outputs)
            if spec.dtype == "int64"
        ]
        return PACKAGE, notes

    def _open(self, artifact: Artifact) -> Session:
        return CoreMLSession(artifact)

    def validate_without_running(self, artifact: Artifact) -> list[str]:
        """The module's `validate_without_running`, where convert and verify look for it."""
        return validate_without_running(artifact)

    def check(self, model: Model) -> list[Finding]:
        """Ops coremltools cannot convert (its op registry, then a conversion attempt), then
        the known traps; the conversion part is cached per coremltools version."""
        available = self.availability()
        if not available.installed:
            return [
                Finding(
                    self.name,
                    "info",
                    f"Core ML compatibility not checked: {available.reason}",
                    "install coremltools (pip install 'edgeforge[coreml]') and check again",
                    evidence="import",
                )
            ]
        from edgeforge._onnx_bridge import bridged_for, refused_finding

        model = bridged_for(model, [self.hub])  # an ONNX source: through the bridge
        if model.torch_program is None:
            return [refused_finding(self.name, model)]
        import torch

        ct = _coremltools()
        key = {
            "model": model_sha256(model),
            "program": file_sha256(model.torch_program),
            "torch": torch.__version__,
        }
        found = remember(
            f"coreml-{ct.__version__}/check",
            key,
            lambda: [finding.to_dict() for finding in _conversion_findings(ct, model)],
        )
        findings = [Finding(**{**data, "nodes": tuple(data["nodes"])}) for data in found]
        return findings + _trap_findings(model) + [_placement_finding()]


def validate_without_running(artifact: Artifact) -> list[str]:
    """Check a Core ML artifact against its manifest without executing it (works off macOS).

    Reads the package's spec and compares input and output counts, element types and shapes
    with the manifest (a symbolic dimension there matches any size), and the precision the
    package was built in with the recipe. Returns the problems found; empty means consistent.
    """
    if artifact.runtime != CoreML.name:
        return [f"{artifact.folder} was built for {artifact.runtime}, not {CoreML.name}"]
    path = artifact.path
    if not (path / "Manifest.json").is_file():
        return [f"{path}: not an .mlpackage (no Manifest.json inside)"]
    ct = _coremltools()
    try:
        with _quiet():
            spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as exc:
        return [f"{path}: coremltools cannot read it ({first_line(exc)})"]
    problems = _signature_problems(artifact.inputs, artifact.outputs, spec.description)
    problems += _precision_problems(spec, artifact.manifest.recipe.get("precision", "fp32"))
    return problems


# -- conversion ---------------------------------------------------------------------------------


def _coremltools() -> Any:
    """Import coremltools without the warnings it logs about optional parts it cannot load,
    with edgeforge's translations for the ATen ops it lacks registered (`_coreml_ops`)."""
    with _quiet():
        import coremltools

        import edgeforge.runtimes._coreml_ops  # noqa: F401  (registers on import)

    return coremltools


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence coremltools' progress bars and log lines; exceptions still propagate."""
    loggers = [logging.getLogger(name) for name in ("coremltools", "torch", "torchao")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),  # tqdm writes its bars to stderr
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _load_program(path: Path) -> Any:
    """The saved torch.export program, retraced to the ATen dialect coremltools converts.

    The program the ONNX exporter keeps has multi-output ops whose unused results coremltools
    cannot bind; `run_decompositions({})` retraces it without them (and fixes dynamic sizes to
    the example's). When that leaves ops coremltools has no converter for, the core ATen
    decompositions are tried too, and kept if they leave fewer (a transformers BERT builds
    its attention mask with `new_ones`, which decomposes into `full`)."""
    program = load_program(path, "load the torch module again to re-export it")
    try:
        with _quiet():
            aten = program.run_decompositions({})
    except Exception:
        return program  # coremltools may still take it as it is
    missing = len(_ops_without_converter(aten))
    if not missing:
        return aten
    try:
        with _quiet():
            core = program.run_decompositions()
    except Exception:
        return aten
    return core if len(_ops_without_converter(core)) < missing else aten


def _convert(ct: Any, program: Any, outputs: tuple[TensorSpec, ...], precision: str, target: str):
    """coremltools.convert with float32 outputs kept float32 (fp16 builds default to fp16 I/O)."""
    output_types = [
        ct.TensorType(dtype=np.float32) if spec.dtype == "float32" else ct.TensorType()
        for spec in outputs
    ]
    compute = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    with _quiet():
        return ct.convert(
            program,
            convert_to="mlprogram",
            compute_precision=compute,
            minimum_deployment_target=getattr(ct.target, target),
            outputs=output_types,
            skip_model_load=True,  # loading needs macOS; it happens in `open`
        )


def _conversion_problem(exc: BaseException) -> str:
    """One line naming what coremltools stopped at."""
    text = first_line(exc)
    match = _UNSUPPORTED_NODE.search(text) or _NOT_IMPLEMENTED.search(text)
    if match:
        return f"no conversion for op {match.groups()[-1]!r}"
    return text


def _conversion_findings(ct: Any, model: Model) -> list[Finding]:
    """Unsupported ops: every op coremltools' torch frontend has no converter for, found by
    looking each fx node up in its registry; then a real conversion attempt for the rest."""
    assert model.torch_program is not None
    try:
        program = _load_program(model.torch_program)
    except EdgeforgeError as exc:
        return [Finding("coreml", "unsupported", str(exc), "re-export the model", evidence="load")]
    missing = _ops_without_converter(program)
    findings = [
        _unsupported_op(op, tuple(nodes), "coremltools op registry")
        for op, nodes in missing.items()
    ]
    if findings:
        return findings  # conversion would stop at the first of them
    try:
        _convert(ct, program, model.outputs, "fp32", DEFAULT_TARGET)
    except Exception as exc:
        text = first_line(exc)
        match = _UNSUPPORTED_NODE.search(text) or _NOT_IMPLEMENTED.search(text)
        if match:
            groups = match.groups()
            nodes = (groups[0],) if len(groups) == 2 else ()
            return [_unsupported_op(groups[-1], nodes, "conversion attempt")]
        return [
            Finding(
                "coreml",
                "unsupported",
                f"coremltools {ct.__version__} cannot convert it: {text}",
                "simplify the part of the model named in the message, or register a "
                "converter with coremltools' register_torch_op",
                evidence="conversion attempt",
            )
        ]
    return []


def _ops_without_converter(program: Any) -> dict[str, list[str]]:
    """Op name -> fx node names, for ops coremltools' torch frontend cannot convert."""
    try:
        from coremltools.converters.mil.frontend.torch import is_torch_fx_node_supported
    except ImportError:  # a coremltools without it: the conversion attempt still tells
        return {}
    missing: dict[str, list[str]] = {}
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        try:
            with _quiet():
                supported = is_torch_fx_node_supported(node)
        except Exception:
            supported = True  # cannot tell; leave it to the conversion attempt
        if not supported:
            schema = getattr(node.target, "_schema", None)
            name = schema.name if schema is not None else getattr(node.target, "__name__", "?")
            missing.setdefault(name, []).append(node.name)
    return missing


def _unsupported_op(op: str, nodes: tuple[str, ...], evidence: str) -> Finding:
    short = op.split("::")[-1]
    rewrite = _REWRITES.get(short, f"rewrite the module without {short}")
    return Finding(
        "coreml",
        "unsupported",
        f"coremltools has no conversion for {op}",
        f"{rewrite}; or register a composite converter for it with "
        "@coremltools.converters.mil.frontend.torch.register_torch_op built from MIL ops",
        op_type=op,
        nodes=nodes,
        evidence=evidence,
    )


def _trap_findings(model: Model) -> list[Finding]:
    findings = []
    for spec in model.inputs:
        if spec.dynamic_dims:
            dims = ", ".join(f"axis {axis} ({name})" for axis, name in spec.dynamic_dims.items())
            findings.append(
                Finding(
                    "coreml",
                    "trap",
                    f"input {spec.name} has dynamic dimensions ({dims}); the package is built "
                    "at the example's size and Core ML accepts only that shape",
                    "declare the sizes it must take: ct.EnumeratedShapes (runs on the Neural "
                    "Engine) or a bounded ct.RangeDim (CPU/GPU only) in the inputs of "
                    "coremltools.convert",
                    evidence="rule",
                )
            )
    for kind, specs in (("input", model.inputs), ("output", model.outputs)):
        for spec in specs:
            if spec.dtype == "int64":
                findings.append(
                    Finding(
                        "coreml",
                        "trap",
                        f"{kind} {spec.name} is int64; Core ML has no int64 tensors, so it is "
                        "int32 in the package and values beyond ±2^31 wrap",
                        "keep the values below 2^31 (ids and indices usually are) or make the "
                        "tensor int32 in the model",
                        evidence="rule",
                    )
                )
    return findings


def _placement_finding() -> Finding:
    if sys.platform == "darwin":
        message = (
            "which ops Core ML places on the Neural Engine, GPU or CPU is not checked by "
            "edgeforge yet"
        )
    else:
        message = (
            "which ops Core ML places on the Neural Engine, GPU or CPU cannot be checked off "
            "macOS (MLComputePlan needs Core ML itself)"
        )
    return Finding(
        "coreml",
        "info",
        message,
        "on a Mac, load the package with coremltools.models.compute_plan.MLComputePlan "
        "or open it in Xcode's Core ML performance report",
        evidence="rule",
    )


# -- reading a package's spec -------------------------------------------------------------------


def _feature_dtype(feature: Any) -> np.dtype | None:
    from coremltools.proto import FeatureTypes_pb2

    if feature.type.WhichOneof("Type") != "multiArrayType":
        return None
    name = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(
        feature.type.multiArrayType.dataType
    )
    return {
        "FLOAT32": np.dtype(np.float32),
        "FLOAT16": np.dtype(np.float16),
        "DOUBLE": np.dtype(np.float64),
        "INT32": np.dtype(np.int32),
        "INT8": np.dtype(np.int8),
    }.get(name)


def _numpy_dtype(name: str) -> np.dtype | None:
    try:
        return np.dtype(name)
    except TypeError:
        return None


def _signature_problems(
    inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], description: Any
) -> list[str]:
    """How a package's inputs and outputs differ from a declared signature, by position."""
    problems: list[str] = []
    for kind, declared, actual in (
        ("input", inputs, description.input),
        ("output", outputs, description.output),
    ):
        if len(declared) != len(actual):
            problems.append(
                f"the source model declares {len(declared)} {kind}s "
                f"({', '.join(t.name for t in declared)}) but the package has {len(actual)} "
                f"({', '.join(f.name for f in actual)})"
            )
            continue
        for want, have in zip(declared, actual, strict=True):
            problems += _compare_feature(kind, want, have)
    return problems


def _compare_feature(kind: str, want: TensorSpec, have: Any) -> list[str]:
    label = f"{kind} {want.name} (Core ML {have.name})"
    if have.type.WhichOneof("Type") != "multiArrayType":
        return [f"{label} is a {have.type.WhichOneof('Type')}, not a multi-array"]
    problems = []
    dtype = _feature_dtype(have)
    expected = _numpy_dtype(want.dtype)
    # int64 is int32 in Core ML (it has no int64); anything else must match exactly.
    allowed = {np.dtype(np.int32)} if want.dtype == "int64" else {expected}
    if dtype not in allowed:
        problems.append(f"{label} is {dtype} in the package but {want.dtype} in the source")
    array = have.type.multiArrayType
    shape = list(array.shape)
    if want.shape is not None and len(shape) != len(want.shape):
        problems.append(
            f"{label} has shape {shape} in the package but {list(want.shape)} in the source"
        )
    elif want.shape is not None:
        ranges = list(array.shapeRange.sizeRanges)
        for axis, (declared, size) in enumerate(zip(want.shape, shape, strict=True)):
            if not isinstance(declared, int):
                continue  # a symbolic size: the package may fix it to the example's
            flexible = ranges[axis] if axis < len(ranges) else None
            if (
                flexible is not None
                and flexible.lowerBound <= declared
                and (flexible.upperBound < 0 or declared <= flexible.upperBound)
            ):
                continue
            if declared != size:
                problems.append(
                    f"{label} axis {axis} is {size} in the package but {declared} in the source"
                )
    return problems


def _precision_problems(spec: Any, precision: str) -> list[str]:
    """The precision named in the metadata and carried by the weights must be the recipe's."""
    problems = []
    marked = dict(spec.description.metadata.userDefined).get(PRECISION_KEY)
    if marked != precision:
        problems.append(f"the package is marked {marked or 'with no precision'}, not {precision}")
    weights = weight_census(spec)
    if precision == "fp16" and weights["FLOAT32"] and not weights["FLOAT16"]:
        problems.append("the recipe is fp16 but the package's weights are all float32")
    other = _stored_types(weights, "FLOAT32")
    if precision == "fp32" and other:
        problems.append(f"the recipe is fp32 but the package has {other} weights")
    stored = _QUANTIZED_TYPES.get(precision)
    if stored and not any(weights[name] for name in stored):
        problems.append(
            f"the recipe is {precision} but the package has no {' or '.join(stored)} weights "
            f"(only {_stored_types(weights, '') or 'none'})"
        )
    return problems


# The stored weight types each quantized recipe must leave in the package.
_QUANTIZED_TYPES = {"int8-dynamic": ("INT8", "UINT8"), "int4-weight": ("INT4", "UINT4")}


def _stored_types(weights: Counter[str], leave_out: str) -> str:
    return ", ".join(sorted(name for name, n in weights.items() if n and name != leave_out))


def _name_note(kind: str, specs: tuple[TensorSpec, ...], features: Any) -> str:
    pairs = [
        f"{spec.name} -> {feature.name}"
        for spec, feature in zip(specs, features, strict=False)  # a mismatch is validated later
    ]
    return f"Core ML names the {kind} after the torch graph, matched by position: " + ", ".join(
        pairs
    )


def _fixed_dims_notes(specs: tuple[TensorSpec, ...], features: Any) -> list[str]:
    notes = []
    for spec, feature in zip(specs, features, strict=False):
        array = feature.type.multiArrayType
        if array.WhichOneof("ShapeFlexibility") is not None:
            continue
        fixed = [
            f"axis {axis} ({name}) = {array.shape[axis]}"
            for axis, name in spec.dynamic_dims.items()
            if axis < len(array.shape)
        ]
        if fixed:
            notes.append(
                f"input {spec.name}: dynamic sizes fixed to the example's: {', '.join(fixed)}"
            )
    return notes
