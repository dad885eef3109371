"""OpenVINO: the IR (`model.xml` + `model.bin`) converted from ONNX by OpenVINO's own converter.

What a caller can rely on:
- an fp32 artifact keeps fp32 weights: `openvino.save_model` compresses weights to fp16 unless
  told not to, so the fp32 recipe always passes `compress_to_fp16=False`;
- int8-static, int8-dynamic (weight-only int8) and int4-weight are NNCF's, applied to a model
  converted for that build alone (NNCF changes the model it is given); see
  `_quantize_openvino` for the options each takes;
- a session on an fp32 artifact computes in fp32: OpenVINO's CPU plugin otherwise computes in
  bf16 on CPUs with AMX or avx512_bf16, which breaks parity with the source model; a bf16
  artifact's session computes in bf16; `inference_precision="default"` leaves the choice to
  OpenVINO (what a user who compiles without settings gets), and a session records the
  precision the compiled model reports in `effective_precision`;
- sessions map inputs and outputs by position onto the source model's names, and keep the
  dynamic dimensions the ONNX graph declared (each run takes the shapes it is given);
- an AveragePool whose window covers its whole input (transformers' EfficientNet), which
  OpenVINO's converter refuses, is converted as the GlobalAveragePool it computes;
- `check` answers from OpenVINO itself (a conversion attempt, then `Core.query_model` per
  device) and caches the answer per OpenVINO version and model hash.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeforge._cache import remember
from edgeforge.errors import EdgeforgeError
from edgeforge.model import Model, TensorSpec
from edgeforge.recipe import Recipe
from edgeforge.runtimes._quantize_openvino import QUANTIZED, quantize
from edgeforge.runtimes.base import (
    Artifact,
    Finding,
    Runtime,
    RuntimeUnavailable,
    Session,
    model_sha256,
)

__all__ = ["OpenVino", "OpenVinoSession"]

# Bump when `check` learns something new, so that cached answers from older code are not reused.
_CHECK_VERSION = 2

# The ops every plugin lists or never needs to: they carry data, they compute nothing.
_DATA_OPS = frozenset({"Parameter", "Constant", "Result"})

# OpenVINO's ONNX frontend reports ops it could not convert in a summary such as
#   "-- No conversion rule found for operations: Det-20, com.example.Foo"
#   "-- Conversion is failed for: Resize-20"
# preceded, for failures, by a detailed block "-- Resize-20 with a message:\n...".
_NO_RULE = re.compile(r"^-- No conversion rule found for operations: (.+)$", re.M)
_FAILED = re.compile(r"^-- Conversion is failed for: (.+)$", re.M)
_DETAIL = re.compile(r"^-- (\S+) with a message:\n(.*?)(?=^-- |^Summary:|\Z)", re.M | re.S)


class OpenVinoSession(Session):
    """An OpenVINO IR compiled for one device (the CPU unless told otherwise)."""

    def __init__(
        self,
        artifact: Artifact,
        *,
        device: str = "CPU",
        threads: int | None = None,
        inference_precision: str | None = None,
    ) -> None:
        super().__init__(artifact.inputs, artifact.outputs)
        core, ov_model = _read_ir(artifact)
        config = _compile_config(device, threads, inference_precision)
        try:
            self._compiled = core.compile_model(ov_model, device, config)
        except RuntimeError as exc:
            raise EdgeforgeError(
                f"{artifact.path}: OpenVINO cannot compile it for {device} ({_last_line(exc)})"
            ) from None
        self._request = self._compiled.create_infer_request()
        self.inference_precision = config.get("INFERENCE_PRECISION_HINT", "default")
        self.threads = config.get("INFERENCE_NUM_THREADS")
        try:
            found = self._compiled.get_property("INFERENCE_PRECISION_HINT")
            self.effective_precision = found.get_type_name()  # "f32", "bf16"
        except (RuntimeError, AttributeError):  # not every plugin reports it
            self.effective_precision = None

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for spec in self.inputs:
            _check_shape(spec, feeds[spec.name].shape)
        try:
            # The IR's parameters are in the ONNX graph's input order, as are self.inputs.
            self._request.infer({i: feeds[spec.name] for i, spec in enumerate(self.inputs)})
        except RuntimeError as exc:
            raise EdgeforgeError(f"OpenVINO cannot run these inputs: {_last_line(exc)}") from None
        # The request reuses its output buffers on the next run: hand out copies.
        return [
            np.array(self._request.get_output_tensor(i).data, copy=True)
            for i in range(len(self.outputs))
        ]


class OpenVino(Runtime):
    name = "openvino"
    format = "openvino-ir"
    extra = "openvino"
    modules = ("openvino",)
    distributions = ("openvino",)
    precisions = ("fp32", "fp16", "bf16", "int8-dynamic", "int8-static", "int4-weight")

    def __init__(
        self, *, threads: int | None = None, inference_precision: str | None = None
    ) -> None:
        """Options for the sessions `open` returns: a CPU thread count, and OpenVINO's
        INFERENCE_PRECISION_HINT ("f32", "bf16", "f16", or "default" for OpenVINO's own
        choice; None: "bf16" for a bf16 artifact, else "f32")."""
        self.threads = threads
        self.inference_precision = inference_precision

    def _build(self, model: Model, recipe: Recipe, folder: Path) -> tuple[str, list[str]]:
        import openvino as ov

        # A fresh conversion per build: NNCF changes the model it quantizes.
        ov_model = _convert(model.onnx_path, model)
        if recipe.precision in QUANTIZED:
            ov_model, notes = quantize(ov_model, model, recipe)
            # Float weights NNCF left alone (and its scales) stay fp32.
            ov.save_model(ov_model, folder / "model.xml", compress_to_fp16=False)
            return "model.xml", notes
        fp16 = recipe.precision == "fp16"
        # save_model compresses weights to fp16 by default: an fp32 recipe must say no. A
        # bf16 recipe keeps fp32 weights too: fp16 cannot hold an attention mask's stand-in
        # for -inf (float32's lowest), which becomes -inf and then NaN.
        ov.save_model(ov_model, folder / "model.xml", compress_to_fp16=fp16)
        if recipe.precision == "bf16":
            notes = [
                "weights kept in fp32 (compress_to_fp16=False); sessions compute in bf16 "
                "(INFERENCE_PRECISION_HINT bf16: AMX or AVX-512 BF16 on x86 CPUs)"
            ]
        elif fp16:
            notes = [
                "weights stored as fp16 (compress_to_fp16); the CPU plugin decompresses them "
                "and computes at the session's inference precision"
            ]
        else:
            notes = ["weights kept in fp32 (compress_to_fp16=False)"]
        return "model.xml", notes

    def _open(self, artifact: Artifact) -> Session:
        precision = self.inference_precision
        if precision is None and artifact.manifest.recipe.get("precision") == "bf16":
            precision = "bf16"
        return OpenVinoSession(artifact, threads=self.threads, inference_precision=precision)

    def check(self, model: Model) -> list[Finding]:
        """What OpenVINO cannot convert or place, and its traps, asked of OpenVINO itself.

        Conversion failures name the ONNX op and its nodes; ops that convert but that a
        device's plugin does not implement come from `Core.query_model` (the CPU always, GPU
        and NPU when this machine has them). The answer is cached per OpenVINO version, the
        model's sha256 and the devices present.
        """
        available = self.availability()
        if not available.installed:
            raise RuntimeUnavailable(f"runtime {self.name}: {available.reason}")
        import openvino as ov

        core = ov.Core()
        devices = sorted(core.available_devices)
        version = self.versions()["openvino"]
        key = {"check": _CHECK_VERSION, "model_sha256": model_sha256(model), "devices": devices}
        data = remember(
            f"openvino-{version}/query",
            key,
            lambda: [f.to_dict() for f in self._findings(model, core, devices, version)],
        )
        return [Finding(**{**d, "nodes": tuple(d["nodes"])}) for d in data]

    def intermediate_outputs(
        self,
        artifact: Artifact,
        feeds: dict[str, np.ndarray],
        tensor_names: Sequence[str],
        *,
        inference_precision: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Values of the named ONNX tensors inside the IR for one run of `feeds`.

        The IR keeps the ONNX tensor names it did not fold or fuse away (OpenVINO's converter
        merges a Conv's bias Add into the Conv's output, folds constants, and so on). Names
        the IR lacks are left out of the result: compare its keys with `tensor_names`.
        """
        if artifact.runtime != self.name:
            raise EdgeforgeError(
                f"{artifact.folder} was built for {artifact.runtime}, not {self.name}"
            )
        available = self.availability()
        if not available.can_execute:
            raise RuntimeUnavailable(f"runtime {self.name} cannot run here: {available.reason}")
        expected = [t.name for t in artifact.inputs]
        if sorted(feeds) != sorted(expected):
            raise EdgeforgeError(
                f"inputs {sorted(feeds)} do not match the model's inputs {expected}"
            )
        arrays = [np.asarray(feeds[spec.name]) for spec in artifact.inputs]
        for spec, array in zip(artifact.inputs, arrays, strict=True):
            _check_shape(spec, array.shape)
        core, ov_model = _read_ir(artifact)
        known = {name for op in ov_model.get_ops() for out in op.outputs() for name in out.names}
        found = list(dict.fromkeys(n for n in tensor_names if n in known))
        if not found:
            return {}
        ov_model.add_outputs(found)
        config = _compile_config("CPU", None, inference_precision)
        compiled = core.compile_model(ov_model, "CPU", config)
        request = compiled.create_infer_request()
        request.infer(dict(enumerate(arrays)))
        return {
            name: np.array(request.get_tensor(compiled.output(name)).data, copy=True)
            for name in found
        }

    def intermediates(
        self, artifact: Artifact, feeds: dict[str, np.ndarray], names: list[str], scratch: Path
    ) -> dict[str, np.ndarray]:
        """The base contract's hook for finding the first diverging layer; see
        `intermediate_outputs` (OpenVINO adds outputs in memory, so `scratch` stays unused)."""
        return self.intermediate_outputs(artifact, feeds, names)

    # -- check's answer, computed ----------------------------------------------------------

    def _findings(self, model: Model, core: Any, devices: list[str], version: str) -> list[Finding]:
        import openvino as ov

        proto = model.proto(load_weights=False)
        try:
            ov_model = ov.convert_model(str(model.onnx_path))
        except Exception as exc:  # OpenVINO raises OpConversionFailure or a bare RuntimeError
            ov_model = _whole_input_pools(model.onnx_path)  # what `_build` converts instead
            if ov_model is None:
                return _conversion_findings(self.name, version, str(exc), proto)

        nodes = _NodeIndex(proto)
        findings: list[Finding] = []
        placed = [d for d in devices if d == "CPU" or d.split(".")[0] in ("GPU", "NPU")]
        for device in placed:
            findings.extend(self._placement(core, ov_model, device, nodes))
        if not any(d.split(".")[0] in ("GPU", "NPU") for d in devices):
            findings.append(
                Finding(
                    self.name,
                    "info",
                    f"GPU and NPU placement could not be checked here: OpenVINO sees only "
                    f"{', '.join(devices) or 'no devices'} on this machine",
                    "run `edgeforge check` on a machine with the Intel GPU or NPU driver "
                    "installed to learn which ops those plugins lack",
                    evidence="available_devices",
                )
            )
        findings.extend(self._input_traps(ov_model))
        return findings

    def _placement(self, core: Any, ov_model: Any, device: str, nodes: _NodeIndex) -> list[Finding]:
        try:
            supported = core.query_model(ov_model, device)
        except RuntimeError as exc:
            return [
                Finding(
                    self.name,
                    "unsupported",
                    f"OpenVINO's {device} plugin cannot take the model: {_last_line(exc)}",
                    "run on another device, or change the model as the message says",
                    evidence="query_model",
                )
            ]
        missing: dict[str, list[str]] = {}
        for op in ov_model.get_ordered_ops():
            if op.get_type_name() in _DATA_OPS or op.get_friendly_name() in supported:
                continue
            node = nodes.find(op)
            op_type = node.op_type if node is not None else f"{op.get_type_name()} (OpenVINO op)"
            names = missing.setdefault(op_type, [])
            name = _node_label(node) if node is not None else op.get_friendly_name()
            if name not in names:
                names.append(name)
        workaround = (
            "replace the op before export"
            if device == "CPU"
            else f"compile for HETERO:{device},CPU so that these ops run on the CPU, "
            "or replace them before export"
        )
        return [
            Finding(
                self.name,
                "unsupported",
                f"OpenVINO's {device} plugin has no implementation for {op_type} "
                f"({len(names)} node{'s' if len(names) != 1 else ''})",
                workaround,
                op_type=op_type,
                nodes=tuple(names),
                evidence="query_model",
            )
            for op_type, names in missing.items()
        ]

    def _input_traps(self, ov_model: Any) -> list[Finding]:
        import openvino as ov

        findings = []
        dynamic = [port for port in ov_model.inputs if port.get_partial_shape().is_dynamic]
        if dynamic:
            described = ", ".join(f"{p.any_name} {p.get_partial_shape()}" for p in dynamic)
            pinned = " ".join(f"--shape {p.any_name}={_example_shape(p)}" for p in dynamic)
            findings.append(
                Finding(
                    self.name,
                    "trap",
                    f"dynamic input dimensions ({described}): OpenVINO's CPU and GPU plugins "
                    "run them, but the NPU plugin needs static shapes",
                    f"for an NPU, pin the shapes ({pinned}) or call ov_model.reshape(...) "
                    "before compiling",
                    evidence="converted model",
                )
            )
        wide = [port.any_name for port in ov_model.inputs if port.get_element_type() == ov.Type.i64]
        if wide:
            findings.append(
                Finding(
                    self.name,
                    "trap",
                    f"int64 inputs ({', '.join(wide)}): OpenVINO converts them internally; fine "
                    "on the CPU, but the NPU plugin prefers int32",
                    "for an NPU, export these inputs as int32 (values must fit in 32 bits)",
                    evidence="converted model",
                )
            )
        return findings


# -- helpers ------------------------------------------------------------------------------


def _convert(onnx_path: Path, model: Model | None = None) -> Any:
    import openvino as ov

    try:
        return ov.convert_model(str(onnx_path))
    except Exception as exc:  # OpConversionFailure, or a bare RuntimeError from shape code
        failure = exc
    rewritten = _whole_input_pools(onnx_path)
    if rewritten is not None:
        return rewritten
    ops = _unconverted_ops(str(failure))
    what = ", ".join(f"{op} ({reason})" if reason else op for op, reason in ops)
    fixed = _fixed_shapes_convert(onnx_path, model)
    if fixed:
        raise EdgeforgeError(
            f"{onnx_path}: OpenVINO cannot convert it with dynamic input shapes "
            f"({what or _last_line(failure)}); it does convert with them fixed: pass {fixed} "
            "(or other sizes the model takes)"
        ) from None
    raise EdgeforgeError(
        f"{onnx_path}: OpenVINO cannot convert it ({what or _last_line(failure)}); "
        "`edgeforge check` lists what to change"
    ) from None


def _fixed_shapes_convert(onnx_path: Path, model: Model | None) -> str:
    """The `--shape` options under which OpenVINO converts a model it refused with dynamic
    input axes (the sizes synthesis picks, which ONNX Runtime runs), or "" when it has none
    or still refuses. Silero VAD's STFT leaves a Conv whose input rank OpenVINO cannot infer
    until the audio length is known."""
    import openvino as ov

    if model is None or not any(spec.dynamic_dims for spec in model.inputs):
        return ""
    from edgeforge.evaluate.synthesis import synthesize

    try:
        feed = synthesize(model, count=1).feeds[0]
        ov.convert_model(str(onnx_path), input={n: list(a.shape) for n, a in feed.items()})
    except Exception:  # no size the model takes, or OpenVINO refuses it even then
        return ""
    return " ".join(
        f"--shape {spec.name}={'x'.join(map(str, feed[spec.name].shape))}"
        for spec in model.inputs
        if spec.dynamic_dims
    )


def _whole_input_pools(onnx_path: Path) -> Any:
    """The model converted with every AveragePool whose window covers its whole unpadded input
    made a GlobalAveragePool, or None when it has no such pool or OpenVINO still refuses.

    transformers' EfficientNet pools with `AvgPool2d(hidden_dim, ceil_mode=True)`: a 1280-wide
    kernel over a 7x7 map. ONNX Runtime and torch clip the window to the input and average what
    is there, which is the global mean; OpenVINO's converter refuses a kernel larger than its
    input. With no padding and a 1x1 output the two ops compute the same thing."""
    import openvino as ov

    model = onnx.load(str(onnx_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        info.name: [d.dim_value if d.HasField("dim_value") else None for d in dims.dim]
        for info in (*inferred.graph.value_info, *inferred.graph.input)
        for dims in [info.type.tensor_type.shape]
    }
    changed = 0
    for node in model.graph.node:
        if node.op_type != "AveragePool" or not node.input or node.input[0] not in shapes:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if not _covers_whole_input(attrs, shapes[node.input[0]][2:]):
            continue
        node.op_type = "GlobalAveragePool"
        del node.attribute[:]
        changed += 1
    if not changed:
        return None
    try:  # OpenVINO reads an ONNX model from bytes as it does from a file
        return ov.convert_model(io.BytesIO(model.SerializeToString()))
    except Exception:  # still refused: the caller reports the first failure
        return None


def _covers_whole_input(attrs: dict[str, Any], spatial: list[int | None]) -> bool:
    """Whether an AveragePool with these attributes averages its whole input into one value
    per channel: no padding, a known input size, a window at least that large, and one output
    position (the window equals the input, or ceil_mode keeps the one clipped window)."""
    kernel = list(attrs.get("kernel_shape", []))
    strides = list(attrs.get("strides", [1] * len(kernel)))
    if any(attrs.get("pads", [])) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        return False
    if not kernel or len(kernel) != len(spatial) or None in spatial:
        return False
    for k, stride, size in zip(kernel, strides, spatial, strict=True):
        assert size is not None
        if k < size or (k > size and not (attrs.get("ceil_mode", 0) and k - size < stride)):
            return False
    return True


def _read_ir(artifact: Artifact) -> tuple[Any, Any]:
    """An OpenVINO Core and the artifact's IR, checked against the manifest's signature."""
    import openvino as ov

    core = ov.Core()
    try:
        ov_model = core.read_model(artifact.path)
    except RuntimeError as exc:
        raise EdgeforgeError(
            f"{artifact.path}: OpenVINO cannot read it ({_last_line(exc)}); rebuild the artifact"
        ) from None
    counts = (len(ov_model.inputs), len(ov_model.outputs))
    if counts != (len(artifact.inputs), len(artifact.outputs)):
        raise EdgeforgeError(
            f"{artifact.path}: the IR has {counts[0]} inputs and {counts[1]} outputs, its "
            f"manifest {len(artifact.inputs)} and {len(artifact.outputs)}; rebuild the artifact"
        )
    return core, ov_model


def _compile_config(
    device: str, threads: int | None, inference_precision: str | None
) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if inference_precision is None and device.split(".")[0] in ("CPU", "GPU"):
        # fp32 weights mean fp32 arithmetic: the CPU plugin would pick bf16 on AMX CPUs.
        # fp16 weights run at fp32 too unless asked otherwise, so that the only loss
        # measured is the weights' own.
        inference_precision = "f32"
    if inference_precision not in (None, "default"):
        config["INFERENCE_PRECISION_HINT"] = inference_precision
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def _conversion_findings(
    runtime: str, version: str, message: str, proto: onnx.ModelProto
) -> list[Finding]:
    ops = _unconverted_ops(message)
    if not ops:
        return [
            Finding(
                runtime,
                "unsupported",
                f"OpenVINO {version} cannot convert the model: {_last_line(message)}",
                "simplify the graph (onnxslim, fixed shapes) and retry; if it persists, "
                "report it to OpenVINO with the model",
                evidence="conversion attempt",
            )
        ]
    findings = []
    for token, reason in ops:
        domain, op_type, opset = _split_op(token)
        nodes = tuple(
            _node_label(n)
            for n in _all_nodes(proto.graph)
            if n.op_type == op_type and (n.domain or "ai.onnx") == (domain or "ai.onnx")
        )
        qualified = f"{domain}.{op_type}" if domain else op_type
        at = f" (opset {opset})" if opset else ""
        if reason:
            message = f"OpenVINO {version} cannot convert {qualified}{at}: {reason}"
            workaround = (
                f"change {qualified}'s attributes or inputs to a form the message allows, "
                "or replace it before export"
            )
        else:
            message = f"OpenVINO {version} has no conversion rule for {qualified}{at}"
            workaround = (
                f"replace {qualified} with supported ops before export, or register an "
                "OpenVINO ConversionExtension for it"
            )
        findings.append(
            Finding(
                runtime,
                "unsupported",
                message,
                workaround,
                op_type=qualified,
                nodes=nodes,
                evidence="conversion attempt",
            )
        )
    return findings


def _unconverted_ops(message: str) -> list[tuple[str, str]]:
    """(op token such as "Det-20", reason or "") for each op OpenVINO's summary names."""
    reasons = {
        token: _last_line(detail) for token, detail in _DETAIL.findall(message) if detail.strip()
    }
    ops: list[tuple[str, str]] = []
    for match in _NO_RULE.finditer(message):
        ops.extend((t.strip(), "") for t in match.group(1).split(",") if t.strip())
    for match in _FAILED.finditer(message):
        ops.extend((t.strip(), reasons.get(t.strip(), "")) for t in match.group(1).split(","))
    return [(token, reason) for token, reason in ops if token]


def _split_op(token: str) -> tuple[str, str, str]:
    """ "Det-20" -> ("", "Det", "20"); "com.example.Foo" -> ("com.example", "Foo", "")."""
    name, dash, opset = token.rpartition("-")
    if not (dash and opset.isdigit()):
        name, opset = token, ""
    domain, _, op_type = name.rpartition(".")
    return domain, op_type, opset


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, including those in If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _all_nodes(subgraph)


def _node_label(node: onnx.NodeProto) -> str:
    """A node's name, or for an unnamed node its op type and first output."""
    return node.name or f"{node.op_type}->{node.output[0] if node.output else '?'}"


class _NodeIndex:
    """Finds the ONNX node an OpenVINO op came from.

    OpenVINO's ONNX frontend names an op after its node ("node_Conv_19"), after the node's
    output tensor (a graph output), or after the node with a suffix for the ops it split off
    ("node_Conv_19/WithoutBiases"); the op's output tensors keep the ONNX tensor names.
    """

    def __init__(self, proto: onnx.ModelProto) -> None:
        self._by_name: dict[str, onnx.NodeProto] = {}
        self._by_output: dict[str, onnx.NodeProto] = {}
        for node in _all_nodes(proto.graph):
            if node.name:
                self._by_name.setdefault(node.name, node)
            for output in node.output:
                if output:
                    self._by_output.setdefault(output, node)

    def find(self, op: Any) -> onnx.NodeProto | None:
        for port in op.outputs():
            for tensor in port.names:
                if tensor in self._by_output:
                    return self._by_output[tensor]
        name = op.get_friendly_name()
        while name:
            node = self._by_name.get(name) or self._by_output.get(name)
            if node is not None:
                return node
            name = name.rpartition("/")[0]
        return None


def _check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    """Refuse a feed whose rank or fixed dimensions differ from the model's signature."""
    if spec.shape is None:
        return
    fixed = all(not isinstance(d, int) or d == n for d, n in zip(spec.shape, shape, strict=False))
    if len(shape) != len(spec.shape) or not fixed:
        expected = "x".join(str(d) if isinstance(d, int) else str(d or "?") for d in spec.shape)
        raise EdgeforgeError(
            f"input {spec.name} has shape {'x'.join(map(str, shape)) or 'scalar'}; "
            f"the model expects {expected or 'a scalar'}"
        )


def _example_shape(port: Any) -> str:
    """The input's shape for `--shape`, with 1 for every dynamic dimension."""
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        return "1"
    return "x".join(str(d.get_length()) if d.is_static else "1" for d in shape)


def _last_line(text: object) -> str:
    """The line of an OpenVINO error that says what went wrong (not where in its source)."""
    noise = ("Check '", "Exception from ", "FrontEnd API failed", "While validating", "[ONNX")
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(noise)] or lines or ["no message"]
    return useful[-1][:300]
