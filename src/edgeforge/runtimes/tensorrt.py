"""TensorRT: a serialized engine built from the ONNX file by TensorRT's own ONNX parser.

Written against the TensorRT 10 Python API (named I/O tensors, `execute_async_v3`).

Invariants a caller can rely on:
- an engine is built on, and for, the GPU that will run it: it runs only on the same GPU
  model with the same TensorRT version, so building needs a CUDA GPU and the manifest's notes
  name the GPU and version; an engine that cannot be loaded here says to rebuild it;
- a dynamic input dimension gets an optimization profile (1 to `tensorrt_max_dim`, default
  32, or the sizes given in the recipe's `tensorrt_profiles`); a feed outside it is refused
  with the range it accepts;
- TensorRT keeps the ONNX graph's input and output names and element types, so a `Session`
  takes and returns the source model's tensors; device buffers are torch CUDA tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeforge._cache import remember
from edgeforge.errors import EdgeforgeError, first_line
from edgeforge.model import Model
from edgeforge.recipe import Recipe
from edgeforge.runtimes.base import (
    Artifact,
    Finding,
    Runtime,
    RuntimeUnavailable,
    Session,
    model_sha256,
)

__all__ = ["TensorRT", "TensorRTSession"]

ENGINE = "model.engine"
DEFAULT_MAX_DIM = 32
NO_GPU = (
    "no CUDA GPU (torch.cuda.is_available() is false); TensorRT engines run only on NVIDIA GPUs"
)


class TensorRTSession(Session):
    """A deserialized engine with one execution context and one CUDA stream."""

    def __init__(self, artifact: Artifact) -> None:
        import tensorrt as trt
        import torch

        super().__init__(artifact.inputs, artifact.outputs)
        self._trt = trt
        self._logger = _logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(artifact.path.read_bytes())
        if self._engine is None:
            raise EdgeforgeError(
                f"{artifact.path}: TensorRT {trt.__version__} cannot load this engine "
                f"({self._logger.last_error() or 'no error logged'}); an engine runs only on the "
                "GPU model and TensorRT version that built it: rebuild it on this machine"
            )
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = {n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        outputs = set(names) - inputs
        if inputs != {t.name for t in self.inputs} or outputs != {t.name for t in self.outputs}:
            raise EdgeforgeError(
                f"{artifact.path}: the engine's tensors (inputs {sorted(inputs)}, outputs "
                f"{sorted(outputs)}) differ from the manifest's; rebuild the artifact"
            )
        self._context = self._engine.create_execution_context()
        self._device = torch.device("cuda")
        self._stream = torch.cuda.Stream()

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        trt = self._trt
        buffers = []  # kept alive until the stream has finished with them
        with torch.cuda.stream(self._stream):
            for spec in self.inputs:
                dtype = trt.nptype(self._engine.get_tensor_dtype(spec.name))
                host = np.ascontiguousarray(feeds[spec.name], dtype=dtype)
                device = torch.from_numpy(host).to(self._device)
                if not self._context.set_input_shape(spec.name, tuple(host.shape)):
                    low, _, high = self._engine.get_tensor_profile_shape(spec.name, 0)
                    raise EdgeforgeError(
                        f"input {spec.name} has shape {tuple(host.shape)}, outside the engine's "
                        f"optimization profile {tuple(low)} to {tuple(high)}; rebuild with "
                        "the recipe option tensorrt_profiles"
                    )
                self._context.set_tensor_address(spec.name, device.data_ptr())
                buffers.append(device)
            results = []
            for spec in self.outputs:
                shape = tuple(self._context.get_tensor_shape(spec.name))
                if any(size < 0 for size in shape):
                    raise EdgeforgeError(
                        f"output {spec.name} has a data-dependent shape {shape}; running such "
                        "engines needs an output allocator, which edgeforge does not set up yet"
                    )
                dtype = trt.nptype(self._engine.get_tensor_dtype(spec.name))
                torch_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
                device = torch.empty(shape, dtype=torch_dtype, device=self._device)
                self._context.set_tensor_address(spec.name, device.data_ptr())
                results.append(device)
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise EdgeforgeError(
                    f"TensorRT failed to run the engine: {self._logger.last_error() or 'no error'}"
                )
            self._stream.synchronize()
        return [result.cpu().numpy() for result in results]


class TensorRT(Runtime):
    name = "tensorrt"
    format = "tensorrt-engine"
    extra = "tensorrt"
    modules = ("tensorrt",)
    distributions = ("tensorrt",)
    precisions = ("fp32", "fp16")

    def execution_blocker(self) -> str | None:
        import torch

        return None if torch.cuda.is_available() else NO_GPU

    def _build(self, model: Model, recipe: Recipe, folder: Path) -> tuple[str, list[str]]:
        blocker = self.execution_blocker()
        if blocker:
            raise RuntimeUnavailable(
                f"runtime {self.name} cannot build here: {blocker}; build the engine on the "
                "machine that will run it"
            )
        import tensorrt as trt
        import torch

        logger = _logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # TensorRT 10: every network is explicit-batch
        parser = trt.OnnxParser(network, logger)
        # parse_from_file finds external data files beside the model, as ONNX lays them out.
        if not parser.parse_from_file(str(model.onnx_path)):
            errors = _parser_errors(parser)
            first = errors[0] if errors else {"desc": logger.last_error() or "no error logged"}
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise EdgeforgeError(
                f"TensorRT's ONNX parser rejected {model.onnx_path}: {_describe(first)}{more}; "
                "run `edgeforge check` with the tensorrt runtime"
            )
        config = builder.create_builder_config()
        notes = [
            f"built by TensorRT {trt.__version__} for {torch.cuda.get_device_name()} "
            f"(compute capability {'.'.join(map(str, torch.cuda.get_device_capability()))}); "
            "it runs only on that GPU model with that TensorRT version"
        ]
        if recipe.precision == "fp16":
            if not hasattr(trt.BuilderFlag, "FP16"):
                raise EdgeforgeError(
                    f"TensorRT {trt.__version__} has no FP16 builder flag (it builds strongly "
                    "typed networks only); build fp32, or convert the ONNX model to fp16 first"
                )
            config.set_flag(trt.BuilderFlag.FP16)
            notes.append("fp16 allowed: TensorRT picks fp16 or fp32 kernels layer by layer")
        notes += _add_profile(trt, builder, network, config, recipe.options)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EdgeforgeError(
                f"TensorRT could not build an engine: {logger.last_error() or 'no error logged'}"
            )
        with open(folder / ENGINE, "wb") as handle:
            handle.write(serialized)
        return ENGINE, notes

    def _open(self, artifact: Artifact) -> Session:
        return TensorRTSession(artifact)

    def check(self, model: Model) -> list[Finding]:
        """Nodes TensorRT's ONNX parser cannot import; one finding when it cannot run here."""
        available = self.availability()
        if not available.installed:
            return [
                Finding(
                    self.name,
                    "info",
                    f"TensorRT compatibility not checked: {available.reason}",
                    "run the check on a machine with an NVIDIA GPU and TensorRT 10 installed; "
                    "until then, NVIDIA's ONNX operator support matrix lists what its parser "
                    "imports",
                    evidence="not installed",
                )
            ]
        try:
            import tensorrt as trt

            found = remember(
                f"tensorrt-{trt.__version__}/check",
                {"model": model_sha256(model)},
                lambda: [finding.to_dict() for finding in _parser_findings(model)],
            )
        except Exception as exc:  # e.g. no CUDA driver: no builder can be created
            return [
                Finding(
                    self.name,
                    "info",
                    f"TensorRT's ONNX parser could not run here ({first_line(exc)})",
                    "run the check on a machine with an NVIDIA GPU and its driver",
                    evidence="parser",
                )
            ]
        findings = [Finding(**{**data, "nodes": tuple(data["nodes"])}) for data in found]
        dynamic = [spec.name for spec in model.inputs if spec.dynamic_dims]
        if dynamic:
            findings.append(
                Finding(
                    self.name,
                    "info",
                    f"inputs {', '.join(dynamic)} have dynamic dimensions; the engine is built "
                    f"for sizes 1 to {DEFAULT_MAX_DIM} unless the recipe says otherwise",
                    "give the sizes you will feed as the recipe option tensorrt_profiles "
                    '({"input": {"min": [...], "opt": [...], "max": [...]}})',
                    evidence="rule",
                )
            )
        return findings


def _parser_findings(model: Model) -> list[Finding]:
    import tensorrt as trt

    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(model.onnx_path)):
        return []
    errors = _parser_errors(parser)
    if not errors:
        errors = [{"desc": logger.last_error() or "the parser failed without an error"}]
    return [
        Finding(
            "tensorrt",
            "unsupported",
            f"TensorRT's ONNX parser cannot import it: {_describe(error)}",
            "replace the op with ones TensorRT supports (onnxslim or a rewrite in the source "
            "model), or implement it as a TensorRT plugin (IPluginV3)",
            op_type=error.get("op") or None,
            nodes=(error["node"],) if error.get("node") else (),
            evidence="TensorRT ONNX parser",
        )
        for error in errors
    ]


def _parser_errors(parser: Any) -> list[dict[str, str]]:
    errors = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        errors.append(
            {
                "desc": str(error.desc()),
                "op": str(error.node_operator()),
                "node": str(error.node_name()),
            }
        )
    return errors


def _describe(error: dict[str, str]) -> str:
    where = ""
    if error.get("node") or error.get("op"):
        where = f"node {error.get('node') or '?'} ({error.get('op') or '?'}): "
    return where + " ".join(error["desc"].split())[:300]


def _add_profile(
    trt: Any, builder: Any, network: Any, config: Any, options: dict[str, Any]
) -> list[str]:
    """One optimization profile covering every input with a dynamic dimension."""
    given = options.get("tensorrt_profiles", {})
    max_dim = int(options.get("tensorrt_max_dim", DEFAULT_MAX_DIM))
    profile = builder.create_optimization_profile()
    notes = []
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = tuple(tensor.shape)
        if all(size >= 0 for size in shape):
            continue
        if tensor.name in given:
            sizes = given[tensor.name]
            low, opt, high = (tuple(sizes[key]) for key in ("min", "opt", "max"))
        else:
            low = tuple(1 if size < 0 else size for size in shape)
            opt = low
            high = tuple(max_dim if size < 0 else size for size in shape)
        profile.set_shape(tensor.name, low, opt, high)
        notes.append(f"input {tensor.name}: optimization profile {low} (opt {opt}) to {high}")
    if notes:
        config.add_optimization_profile(profile)
    return notes


def _logger(trt: Any) -> Any:
    """A TensorRT logger that keeps errors for our messages instead of printing them."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)

        def last_error(self) -> str:
            return " ".join(self.errors[-1].split())[:300] if self.errors else ""

    return Logger()
