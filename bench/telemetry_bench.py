"""What fleet telemetry costs: on the device per inference call and per window, on the server
per window merged and per drift verdict.

The device figures run in a fresh child process (so the import time and resident memory are
those of `edgeforge.fleet.telemetry` alone, and the child checks that neither torch nor OpenDP
was imported).

    .venv/bin/python bench/telemetry_bench.py [--out bench/results/telemetry.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import textwrap
import time

import numpy as np

_DEVICE = textwrap.dedent(
    """
    import json, sys, tempfile, time
    from pathlib import Path
    t0 = time.perf_counter()
    import numpy as np
    from edgeforge.fleet.telemetry import PAYLOAD_SIZE, Telemetry
    import_s = time.perf_counter() - t0

    def rss_mb():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

    out = {"import_s": import_s, "rss_after_import_mb": rss_mb(), "payload_bytes": PAYLOAD_SIZE}
    tel = Telemetry(Path(tempfile.mkdtemp()), window_s=3600)
    tel.set_model("m", 1)
    rng = np.random.default_rng(0)
    cases = {
        "image 1x3x224x224, 1000 logits": ((1, 3, 224, 224), (1, 1000), "f"),
        "image 8x3x32x32, 10 logits": ((8, 3, 32, 32), (8, 10), "f"),
        "text 1x128 ids, 2 logits": ((1, 128), (1, 2), "i"),
    }
    out["observe_us"] = {}
    for name, (shape, oshape, kind) in cases.items():
        x = rng.random(shape, dtype=np.float32) if kind == "f" else rng.integers(1, 999, shape)
        y = rng.standard_normal(oshape).astype(np.float32)
        n = 500
        t = time.perf_counter()
        for i in range(n):
            tel.observe({"x": x}, y, 5.0, now=1000.0 + i * 1e-3)
        out["observe_us"][name] = 1e6 * (time.perf_counter() - t) / n
    t = time.perf_counter()
    entries = tel.drain(now=4000.0)
    out["close_and_spool_window_ms"] = 1e3 * (time.perf_counter() - t)
    out["rss_end_mb"] = rss_mb()
    out["heavy_modules"] = [m for m in ("torch", "opendp", "onnx") if m in sys.modules]
    assert len(entries) == 1
    print(json.dumps(out))
    """
)


def server(devices: int) -> dict[str, float]:
    from edgeforge.fleet import monitor as M
    from edgeforge.fleet import telemetry as T

    rng = np.random.default_rng(0)
    payloads = []
    for d in range(devices):
        w = T.Window("m", 1, "pi4", 0.0, 3600.0)
        img = rng.random((256, 3, 8, 8), dtype=np.float32)
        probs = rng.dirichlet(np.ones(10), size=256).astype(np.float32)
        w.add(T.row_features({"x": img}, probs), float(rng.gamma(3, 2)), 10)
        payloads.append((f"d{d}", w.to_bytes()))
    t = time.perf_counter()
    (agg,) = M.aggregate_windows(payloads).values()
    merge_s = time.perf_counter() - t
    ref = M.reference_from_data(
        rng.dirichlet(np.ones(10), size=5000), {"x": rng.random((5000, 3, 8, 8))}
    )
    t = time.perf_counter()
    report = M.drift(agg, ref)
    drift_s = time.perf_counter() - t
    return {
        "devices": devices,
        "decode_and_merge_ms_per_window": 1e3 * merge_s / devices,
        "drift_verdict_ms": 1e3 * drift_s,
        "aggregate_json_bytes": len(json.dumps(agg.to_dict())),
        "verdict": report.verdict,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    child = subprocess.run(
        [sys.executable, "-c", _DEVICE], capture_output=True, text=True, check=True
    )
    result = {
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "device": json.loads(child.stdout),
        "server": server(1000),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
