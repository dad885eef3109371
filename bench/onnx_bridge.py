"""How many ONNX-only models the ONNX-to-torch bridge takes (issue 18, class 3).

The corpus is what is installed here without downloading anything: every ONNX model the onnx
wheel ships for its backend tests (`onnx/backend/test/data/light/*.onnx`: AlexNet, DenseNet-121,
Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512) and every variant Silero
VAD's wheel ships. Each is loaded and bridged (`edgeforge._onnx_bridge.bridge`: onnx2torch, then
`torch.export`, then parity against ONNX Runtime on synthesised inputs); the row says whether it
bridged, the largest parity error, or the refusal, and the seconds it took (on a loaded machine
these say little). The onnx wheel's "light" models carry stand-in weights that make every output
the same constant: for them a bridged row proves op coverage and shapes, not numerical parity
(the tests check that on a CNN, a YOLO-like detector and a BERT encoder with real weights).

    PYTHONPATH=src .venv/bin/python bench/onnx_bridge.py   # writes bench/results/onnx_bridge.json
"""

from __future__ import annotations

import contextlib
import json
import time
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def corpus() -> list[Path]:
    found = sorted(Path(str(resources.files("onnx"))).glob("backend/test/data/light/*.onnx"))
    with contextlib.suppress(ModuleNotFoundError):  # silero-vad is a dev dependency
        found += sorted(Path(str(resources.files("silero_vad"))).glob("data/*.onnx"))
    return found


def main() -> None:
    import edgeforge
    from edgeforge._onnx_bridge import bridge
    from edgeforge.errors import EdgeforgeError

    rows = []
    for path in corpus():
        started = time.perf_counter()
        try:
            bridged = bridge(edgeforge.load(path))
            errors = bridged.provenance.export_check
            row = {"status": "bridged", "max_abs_error": max(errors.values(), default=0.0)}
        except EdgeforgeError as exc:
            row = {"status": "refused", "reason": str(exc)}
        package = "onnx" if "backend" in path.parts else "silero_vad"
        row = {"model": f"{package}/{path.name}", **row}
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(f"{row['model']:45} {row['status']:8} {row.get('reason', row.get('max_abs_error'))}")
    bridged_count = sum(r["status"] == "bridged" for r in rows)
    print(f"{bridged_count} of {len(rows)} bridged")
    out = ROOT / "bench" / "results" / "onnx_bridge.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"bridged": bridged_count, "models": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
