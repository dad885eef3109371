"""ONNX graph clean-up: onnxslim, then ONNX Runtime's offline graph optimisation.

- onnxslim folds constants, removes dead and identity nodes and fuses common patterns, in
  standard ONNX ops only, so its output runs on every ONNX runtime.
- ONNX Runtime saves the graph it would run (`SessionOptions.optimized_model_filepath`) at the
  level asked for. "basic" rewrites keep to standard ONNX ops (constant folding, redundant node
  removal, Conv+BatchNorm/Add/Mul fusion): portable. "extended" adds fusions into ONNX Runtime's
  contrib ops (domain com.microsoft: FusedConv, Gelu, Attention...), which other runtimes
  (OpenVINO, TensorRT, the browser's WebGPU backend) may not know: use it only for models that
  will run on ONNX Runtime. The result's notes name any contrib op that appeared.

What a caller can rely on: the source model's files are left as they are; the new `Model`
passed `edgeforge`'s ONNX checks, keeps the source's inputs, outputs and provenance, and its
outputs matched the source's in ONNX Runtime (both run with graph optimisations off) on the
given samples or on synthesised ones, within fp32 tolerances; otherwise the pass raises.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from edgeforge._onnx_file import open_onnx
from edgeforge._progress import status
from edgeforge.errors import EdgeforgeError, first_line
from edgeforge.evaluate.compare import Tolerance, compare, tolerance_for
from edgeforge.evaluate.data import Samples, synthesize
from edgeforge.model import Model
from edgeforge.passes.base import Footprint, Pass, PassResult

__all__ = ["CleanupPass", "cleanup", "graph_footprint"]

Level = Literal["none", "basic", "extended"]
_LEVELS = ("none", "basic", "extended")
# protobuf cannot serialise a message of 2 GiB or more; stay well below it.
_INLINE_LIMIT = 1_800_000_000


class CleanupPass(Pass):
    """Simplify an ONNX graph without changing what it computes."""

    name = "cleanup"
    consumes = "onnx"

    def __init__(
        self,
        *,
        slim: bool = True,
        onnxruntime_level: Level = "basic",
        workdir: str | Path | None = None,
        samples: Samples | None = None,
        tolerance: Tolerance | None = None,
    ) -> None:
        if onnxruntime_level not in _LEVELS:
            raise EdgeforgeError(
                f"unknown ONNX Runtime level {onnxruntime_level!r}; choose none, basic "
                "(portable) or extended (ONNX Runtime only)"
            )
        if not slim and onnxruntime_level == "none":
            raise EdgeforgeError("cleanup has nothing to do: enable slim or an ONNX Runtime level")
        self.slim = slim
        self.level = onnxruntime_level
        self.workdir = workdir
        self.samples = samples
        self.tolerance = tolerance or tolerance_for("fp32")

    def apply(self, source: Model, example_inputs: Any = None) -> PassResult:
        from edgeforge._load import _workdir

        out_dir = _workdir(self.workdir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = source.onnx_path.stem
        targets = (out_dir / f"{stem}.slim.onnx", out_dir / f"{stem}.cleaned.onnx")
        if source.onnx_path in {t.resolve() for t in targets}:
            raise EdgeforgeError(
                f"workdir {out_dir} holds the source model; give another folder for the result"
            )
        current = source.onnx_path
        notes = []
        if self.slim:
            with status("Slimming the graph (onnxslim)"):
                current = _slim(current, targets[0])
            notes.append("onnxslim: constants folded, dead and redundant nodes removed")
        if self.level != "none":
            with status(f"ONNX Runtime {self.level} graph optimisation"):
                current = _optimize(current, targets[1], self.level)
            notes.append(f"ONNX Runtime offline optimisation at the {self.level} level")
        made = open_onnx(current, provenance=source.provenance)
        # The torch.export program is not carried: it is the source's graph, not this one.
        made = replace(made, torch_parameters=source.torch_parameters)
        contrib = sorted(
            {n.op_type for n in made.proto().graph.node if n.domain not in ("", "ai.onnx")}
        )
        if contrib:
            notes.append(
                f"ONNX Runtime-only ops in the result: {', '.join(contrib)}; run it on ONNX "
                "Runtime, or clean up at the basic level for other runtimes"
            )
        metrics = self._check_outputs(source, made)
        return PassResult(
            self.name, made, graph_footprint(source), graph_footprint(made), metrics, notes
        )

    def _check_outputs(self, source: Model, made: Model) -> dict[str, float]:
        samples = self.samples or synthesize(source)
        want = _run(source.onnx_path, samples)
        have = _run(made.onnx_path, samples)
        metrics: dict[str, float] = {}
        for spec in source.outputs:
            result = compare(spec.name, want[spec.name], have[spec.name], self.tolerance)
            if not result.passed:
                raise EdgeforgeError(
                    f"cleanup changed output {spec.name!r} ({result.reason}); run with "
                    "slim=False or onnxruntime_level='none' to find the step, and report it"
                )
            metrics[f"max_abs_error[{spec.name}]"] = result.max_abs
        return metrics


def _slim(path: Path, out: Path) -> Path:
    import onnxslim

    proto = onnx.load(str(path))  # with weights: folding needs them
    try:
        # onnxslim prints a summary table; the caller's terminal is not the place for it.
        with contextlib.redirect_stdout(io.StringIO()):
            slimmed = onnxslim.slim(proto)
    except Exception as exc:  # onnxslim raises whatever its rewrites meet
        raise EdgeforgeError(
            f"onnxslim failed on {path.name} ({first_line(exc)}); run with slim=False"
        ) from None
    _save(slimmed, out)
    return out


def _optimize(path: Path, out: Path, level: str) -> Path:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[level]
    options.optimized_model_filepath = str(out)
    if path.stat().st_size + _external_bytes(path) > _INLINE_LIMIT:
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", f"{out.name}.data"
        )
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own exception types
        raise EdgeforgeError(
            f"ONNX Runtime could not optimise {path.name} ({first_line(exc)}); "
            "use onnxruntime_level='none'"
        ) from None
    return out


def _external_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.suffix == ".data")


def _save(proto: onnx.ModelProto, out: Path) -> None:
    if proto.ByteSize() > _INLINE_LIMIT:
        onnx.save(
            proto,
            str(out),
            save_as_external_data=True,
            location=f"{out.name}.data",
            all_tensors_to_one_file=True,
        )
    else:
        onnx.save(proto, str(out))


def _run(path: Path, samples: Samples) -> dict[str, list[np.ndarray]]:
    """Outputs by name, one array per sample, with ONNX Runtime's own rewrites off so that the
    graph on disk is what is compared."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in samples.feeds:
        for name, value in zip(names, session.run(names, feed), strict=True):
            got[name].append(np.asarray(value))
    return got


def graph_footprint(model: Model) -> Footprint:
    """Elements in the graph's initializers, and its (top-level) node count."""
    graph = model.proto(load_weights=False).graph
    parameters = sum(int(np.prod(t.dims)) if t.dims else 1 for t in graph.initializer)
    return Footprint(parameters=parameters, nodes=len(graph.node))


def cleanup(
    model: Model,
    *,
    slim: bool = True,
    onnxruntime_level: Level = "basic",
    workdir: str | Path | None = None,
    samples: Samples | None = None,
) -> PassResult:
    """A cleaned copy of `model` (`result.model`) whose outputs match it; `result.before` and
    `result.after` hold the node counts. `onnxruntime_level="extended"` fuses further into
    ONNX Runtime-only ops."""
    return CleanupPass(
        slim=slim, onnxruntime_level=onnxruntime_level, workdir=workdir, samples=samples
    )(model)
