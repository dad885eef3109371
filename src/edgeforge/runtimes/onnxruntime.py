"""ONNX Runtime: the `.onnx` file itself, and the `.ort` format for ONNX Runtime Mobile.

Both build every precision in `edgeforge.recipe.PRECISIONS` but bf16 with ONNX Runtime's own tools
(`_ort_quantize`); the `.ort` file is converted from the quantized ONNX file, so the two
runtimes run the same graph. Inputs and outputs stay float32 at every precision.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgeforge.errors import EdgeforgeError
from edgeforge.model import Model
from edgeforge.recipe import PRECISIONS, Recipe
from edgeforge.runtimes.base import Artifact, Finding, Runtime, Session

__all__ = ["OnnxRuntime", "OnnxRuntimeMobile", "OrtSession", "ort_run", "ort_session"]


def ort_session(path: Path, what: str, options=None):
    """An ONNX Runtime CPU session on `path`; a model it refuses (invalid graph, a type or
    shape error, an op without a kernel) is bad input: EdgeforgeError naming `what` (issue 13,
    class 6: never an internal error)."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types
        raise EdgeforgeError(
            f"{what} {path.name}: ONNX Runtime cannot load it ({_ort_message(exc)})"
        ) from None


def ort_run(session, names: list[str], feeds: dict[str, np.ndarray], what: str) -> list:
    """`session.run`; a model that fails on these inputs (out-of-range indices, shapes its
    own graph rejects, memory it cannot get) is a model problem: EdgeforgeError naming `what`."""
    try:
        return session.run(names, feeds)
    except Exception as exc:
        raise EdgeforgeError(
            f"{what}: ONNX Runtime failed to run it ({_ort_message(exc)}); "
            "check the model with `edgeforge check` and the inputs given with --data"
        ) from None


def _ort_message(exc: BaseException) -> str:
    """ONNX Runtime's message without its `[ONNXRuntimeError] : 1 : FAIL :` prefix, one line."""
    text = " ".join(str(exc).split())
    text = text.split(" : ", 3)[-1] if text.startswith("[ONNXRuntimeError]") else text
    text = re.sub(r"^Load model from .*? failed: ?", "", text)
    return text[:300] or type(exc).__name__


class OrtSession(Session):
    def __init__(self, path: Path, artifact: Artifact, threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__(artifact.inputs, artifact.outputs)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._what = f"the {artifact.runtime} artifact {path.name}"
        self._session = ort_session(path, "the artifact", options)
        self._names = [o.name for o in self._session.get_outputs()]

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return ort_run(self._session, self._names, feeds, self._what)


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    format = "onnx"
    modules = ("onnxruntime",)
    distributions = ("onnxruntime",)
    precisions = tuple(p for p in PRECISIONS if p != "bf16")  # bf16 is OpenVINO's

    def _build(self, model: Model, recipe: Recipe, folder: Path) -> tuple[str, list[str]]:
        return "model.onnx", _write_onnx(model, recipe, folder)

    def _open(self, artifact: Artifact) -> Session:
        return OrtSession(artifact.path, artifact, self.threads)

    def intermediates(
        self, artifact: Artifact, feeds: dict[str, np.ndarray], names: list[str], scratch: Path
    ) -> dict[str, np.ndarray]:
        from edgeforge.evaluate.localize import expose_all

        exposed = scratch / "candidate_all_outputs.onnx"
        expose_all(artifact.path, exposed)
        session = ort_session(exposed, "the candidate with every tensor exposed")
        available = [o.name for o in session.get_outputs()]
        wanted = [n for n in names if n in set(available)]
        values = ort_run(session, wanted, feeds, "the candidate with every tensor exposed")
        return dict(zip(wanted, values, strict=True))

    def check(self, model: Model) -> list[Finding]:
        """ONNX Runtime's CPU provider: an op it has no kernel for fails session creation."""
        import onnxruntime as ort

        try:
            ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            return [
                Finding(
                    self.name,
                    "unsupported",
                    f"ONNX Runtime cannot create a session: {str(exc).splitlines()[0][:300]}",
                    "replace the op with supported ones or lower the opset; "
                    "see the ONNX Runtime operator kernels list",
                    evidence="session creation",
                )
            ]
        return []


class OnnxRuntimeMobile(OnnxRuntime):
    """The ORT format: a flatbuffer that ONNX Runtime Mobile loads without protobuf."""

    name = "onnxruntime-mobile"
    format = "ort"

    def intermediates(self, artifact, feeds, names, scratch) -> dict[str, np.ndarray]:
        return {}  # the ORT format cannot be edited to expose more outputs

    def _build(self, model: Model, recipe: Recipe, folder: Path) -> tuple[str, list[str]]:
        source = folder / "source"
        source.mkdir()
        notes = _write_onnx(model, recipe, source)
        # "Fixed" bakes in this machine's optimizations; for fp16 those insert casts to fp32
        # and fold the weights back to fp32 (the file grows past the fp32 one), so fp16 keeps
        # only basic optimizations and lets the device's kernels decide at load time.
        style = "Runtime" if recipe.precision == "fp16" else "Fixed"
        # The converter is ONNX Runtime's own tool; run it as it is meant to be run.
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "onnxruntime.tools.convert_onnx_models_to_ort",
                "--optimization_style",
                style,
                "--output_dir",
                str(folder),
                str(source / "model.onnx"),
            ],
            capture_output=True,
            text=True,
        )
        shutil.rmtree(source)
        produced = sorted(folder.glob("*.ort"))
        if result.returncode != 0 or not produced:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise EdgeforgeError(f"ORT format conversion failed: {tail[0][:300]}")
        produced[0].rename(folder / "model.ort")
        for config in folder.glob("*.config"):
            config.unlink()
        return "model.ort", [
            *notes,
            "optimizations left to the device at load time (fp16)"
            if style == "Runtime"
            else "optimized for fixed hardware (basic graph optimizations applied)",
        ]


def _write_onnx(model: Model, recipe: Recipe, folder: Path) -> list[str]:
    """`folder`/model.onnx at the recipe's precision; returns the build notes."""
    if recipe.precision == "fp32":
        _copy_onnx(model, folder)
        return []
    from edgeforge.runtimes._ort_quantize import quantize

    # The quantizers read the model from a folder of its own (external data beside it).
    source = folder / "fp32"
    source.mkdir()
    try:
        _copy_onnx(model, source)
        return quantize(model, recipe, source / "model.onnx", folder / "model.onnx")
    finally:
        shutil.rmtree(source)


def _copy_onnx(model: Model, folder: Path) -> None:
    """Copy the ONNX file and its external data files into `folder`."""
    from edgeforge._onnx_file import external_data_files

    shutil.copy2(model.onnx_path, folder / "model.onnx")
    proto = model.proto(load_weights=False)
    for location, path in external_data_files(proto, model.onnx_path.parent).items():
        target = folder / location
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
