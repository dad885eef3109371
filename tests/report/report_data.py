"""An `optimize` result as `OptimizeResult.to_dict()` writes it (the fields the report reads),
built here so that the plot and page tests need no optimize run: eight candidates, three on
the Pareto front, one chosen."""

from __future__ import annotations

from typing import Any

# id, size bytes, latency on the device ms, on the front
_CANDIDATES = [
    ("onnxruntime/fp32", 155_320, 0.538, False),
    ("onnxruntime/fp16", 79_000, 0.530, False),
    ("onnxruntime/int8-dynamic", 44_500, 0.518, True),
    ("onnxruntime/int8-static-minmax", 46_500, 0.518, False),
    ("onnxruntime/int8-static-entropy", 46_500, 0.518, False),
    ("onnxruntime/int8-static-percentile", 46_600, 0.519, False),
    ("onnxruntime/int4-weight", 40_100, 0.538, True),
    ("openvino/int8-static", 61_000, 0.401, True),
]
CHOSEN = "onnxruntime/int8-dynamic"
FRONT = [c[0] for c in _CANDIDATES if c[3]]


def optimize_result(drops: list[float] | None = None) -> dict[str, Any]:
    """The result, with accuracy drops (fractions) per candidate: all 0 by default."""
    drops = drops if drops is not None else [0.0] * len(_CANDIDATES)
    candidates = []
    for (name, size, ms, front), drop in zip(_CANDIDATES, drops, strict=True):
        candidates.append(
            {
                "id": name,
                "status": "evaluated",
                "cached": False,
                "size_bytes": size,
                "latency_here_ms": 0.03,
                "device_latency_ms": ms,
                "memory_bytes": 28_000_000,
                "memory_source": "measured here",
                "accuracy": {"candidate": 0.99 - drop},
                "accuracy_drop": drop,
                "on_front": front,
                "verdict": "chosen" if name == CHOSEN else ("kept" if front else "dropped"),
                "reason": "meets every limit" if name == CHOSEN else "dominated",
            }
        )
    return {
        "model": "digits.onnx",
        "device": "raspberry-pi-4",
        "limits": {
            "max_accuracy_drop": 0.01,
            "max_size_bytes": None,
            "max_latency_ms": None,
            "max_memory_bytes": None,
            "latency_means": "estimated on raspberry-pi-4",
        },
        "data": {"folder": "data", "source": "192 .npz files", "split": "64 calibrate, 128 judge"},
        "reference": {"task_means": "top-1 accuracy", "metric": "top1_accuracy", "value": 0.99},
        "chosen": CHOSEN,
        "chosen_path": "out/chosen/model.onnx",
        "unmet": [],
        "skipped": [],
        "notes": [],
        "candidates": candidates,
    }
