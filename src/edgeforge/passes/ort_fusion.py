"""ONNX Runtime's transformer optimizer: the graph fusions ONNX Runtime itself recommends for
BERT-like encoders (attention, embedding and skip layer norms, bias GELU), as Optimum's
`ORTOptimizer` applies them.

What a caller can rely on: the source model's files are left as they are; the result is saved
under `folder` (reused when it is there) and keeps the source's inputs, outputs and
provenance; it holds ONNX Runtime contrib ops (domain com.microsoft), so it runs on ONNX Runtime
only; `fuse_transformer` returns None when the optimizer fused nothing, and raises
EdgeforgeError when it fails. Whether the fused graph computes the same function is judged by
whoever runs it (`optimize` scores every candidate against the original).
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeforge._onnx_file import open_onnx
from edgeforge.errors import EdgeforgeError, first_line
from edgeforge.model import Model

__all__ = ["fuse_transformer"]


def fuse_transformer(model: Model, folder: Path) -> tuple[Model | None, str]:
    """(the fused model, 'Attention 6, SkipLayerNormalization 12, ...'), or (None, '') when
    nothing was fused."""
    folder = Path(folder)
    target, record = folder / "fused.onnx", folder / "fusions.json"
    if record.is_file():
        fusions = json.loads(record.read_text())
    else:
        fusions = _optimize(model, target)
        folder.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(fusions))
    if not fusions:
        return None, ""
    text = ", ".join(f"{op} {count}" for op, count in sorted(fusions.items()))
    return open_onnx(target, provenance=model.provenance), text


def _optimize(model: Model, target: Path) -> dict[str, int]:
    from onnxruntime.transformers.optimizer import optimize_model

    from edgeforge.runtimes._ort_quantize import quiet

    try:
        with quiet():
            # num_heads / hidden_size 0: read from the graph.
            optimized = optimize_model(
                str(model.onnx_path), model_type="bert", num_heads=0, hidden_size=0
            )
            stats = optimized.get_fused_operator_statistics()
            fusions = {op: int(n) for op, n in stats.items() if n}
            if fusions:
                target.parent.mkdir(parents=True, exist_ok=True)
                optimized.save_model_to_file(str(target))
    except Exception as exc:  # the optimizer raises whatever its pattern matching meets
        raise EdgeforgeError(
            f"ONNX Runtime's transformer optimizer failed ({first_line(exc)})"
        ) from None
    return fusions
