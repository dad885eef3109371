"""Which pip extra brings a missing import, so that a verb names what to install.

`pip install edgeforge` is the light base (onnx, onnxruntime, numpy and the CLI's own); torch,
each runtime beyond ONNX Runtime and the training passes are extras (pyproject.toml). A verb that
reaches for a module the base lacks fails with `ModuleNotFoundError`; `missing_extra` turns that
into one `EdgeforgeError` line naming the extra. Runtimes name their own extra when they report
themselves unavailable (`runtimes/base.py`); this covers everything else (torch sources, .pt2
programs, the zoo, prune and distill, the demo).
"""

from __future__ import annotations

from edgeforge.errors import EdgeforgeError

__all__ = ["EXTRAS", "missing_extra"]

# Top-level module name -> (extra, what needs it).
EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "torch models, .pt2 programs and the zoo"),
    "onnxscript": ("torch", "torch's ONNX exporter"),
    "torch_pruning": ("train", "the prune pass"),
    "sklearn": ("train", "the digits data set (demo, distill examples)"),
    "openvino": ("openvino", "the OpenVINO runtime"),
    "nncf": ("openvino", "OpenVINO's quantizer"),
    "litert_torch": ("litert", "the LiteRT converter"),
    "ai_edge_litert": ("litert", "the LiteRT interpreter"),
    "ai_edge_quantizer": ("litert", "LiteRT's quantizer"),
    "coremltools": ("coreml", "the Core ML converter"),
    "executorch": ("executorch", "the ExecuTorch runtime"),
}


def missing_extra(exc: ModuleNotFoundError) -> EdgeforgeError | None:
    """An `EdgeforgeError` naming the extra that provides the missing module, or None when the
    module is not one an extra provides (then it is a bug, not a missing install)."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    extra, needed_for = EXTRAS[top]
    return EdgeforgeError(
        f"{top} is not installed ({needed_for} need it); install the extra: "
        f"pip install 'edgeforge[{extra}]' (README: Install)"
    )
