"""The conversion corpus (issue 18): 30 architectures nobody here wrote, each converted to every
runtime, each cell verified, built-not-run with the reason, or an explained refusal.

The architectures are `tests/corpus_models.py`'s (`transformers` models from small configs, an
MTCNN-structured network, a pretrained ONNX model from a wheel). Each goes through
`edgeforge.convert` to six runtimes; the per-runtime coverage is verified cells over all cells
(Core ML: built and signature-validated, since it runs only on macOS). Each target runs in its
own process held to `--timeout` seconds (a cell past it is "timed-out", never a pass). Results
are merged into the JSON per architecture as each row finishes, with the time it was measured
(`measured`), so `--only` reruns a few and keeps the rest, and runs over disjoint `--only`
lists may share one file.

    .venv/bin/python bench/conversion_corpus.py [--only bert,gpt2] [--out FILE.json] [--timeout S]

`make corpus` runs it all: a row took 3 to 12 minutes on two cores shared with other jobs
(load average about 20), so hours in one process; disjoint `--only` runs may go side by side.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import corpus_models  # noqa: E402

from edgeforge.convert import convert  # noqa: E402

TARGETS = ["onnxruntime", "openvino", "litert", "executorch", "web", "coreml"]
# What counts as covered, per runtime: Core ML cannot run off macOS, so built and validated.
COVERED = {name: ("verified",) for name in TARGETS} | {"coreml": ("verified", "built-not-run")}


def run(
    names: list[str], work: Path, save: Callable[[str, dict], None], timeout: float = 600
) -> None:
    """Convert each architecture, printing its row and saving it as soon as it is done."""
    for name in names:
        started = time.time()
        source, inputs = corpus_models.build(name)
        try:
            result = convert(
                source, TARGETS, work / name, example_inputs=inputs, force=True, timeout=timeout
            )
        except Exception as exc:  # a load failure is one row of refusals, not the end
            row = {t: {"status": "failed", "detail": str(exc)} for t in TARGETS}
        else:
            row = {t.runtime: {"status": t.status, "detail": t.detail} for t in result.targets}
        cells = ", ".join(f"{r}={c['status']}" for r, c in row.items())
        print(f"{name} ({time.time() - started:.0f} s): {cells}", flush=True)
        for runtime, cell in row.items():
            if cell["status"] != "verified":
                print(f"    {runtime}: {cell['detail']}", flush=True)
        save(name, row)


def coverage(rows: dict[str, dict[str, dict[str, str]]]) -> dict[str, float]:
    return {
        runtime: round(
            100
            * sum(row[runtime]["status"] in COVERED[runtime] for row in rows.values())
            / len(rows),
            1,
        )
        for runtime in TARGETS
    }


def table(rows: dict[str, dict[str, dict[str, str]]]) -> str:
    lines = ["| architecture | " + " | ".join(TARGETS) + " |", "|" + " --- |" * (len(TARGETS) + 1)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(row[r]["status"] for r in TARGETS) + " |")
    cover = coverage(rows)
    lines.append("| **covered** | " + " | ".join(f"{cover[r]}%" for r in TARGETS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated architectures (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/conversion_corpus.json")
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds per target (default: 600)"
    )
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(corpus_models.ARCHITECTURES)
    unknown = sorted(set(names) - set(corpus_models.ARCHITECTURES))
    if unknown:
        sys.exit(
            f"unknown architectures {unknown}; choose from {list(corpus_models.ARCHITECTURES)}"
        )

    def save(name: str, row: dict) -> None:
        """Merge one row into the file, under a lock: another run may be writing it too."""
        args.out.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(args.out.parent, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            report = json.loads(args.out.read_text()) if args.out.exists() else {}
            rows = report.get("rows", {}) | {name: row}
            ordered = {n: rows[n] for n in corpus_models.ARCHITECTURES if n in rows}
            measured = report.get("measured", {})
            measured[name] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            report.get("remeasured", {}).pop(name, None)  # notes on an older row
            report |= {
                "command": "python bench/conversion_corpus.py",
                "machine": f"{platform.machine()}, Python {platform.python_version()}",
                "targets": TARGETS,
                "timeout_s_per_target": args.timeout,
                "architectures": len(ordered),
                "missing": [n for n in corpus_models.ARCHITECTURES if n not in rows],
                "coverage_percent": coverage(ordered),
                "measured": {n: measured[n] for n in ordered if n in measured},
                "rows": ordered,
            }
            args.out.write_text(json.dumps(report, indent=1) + "\n")
        finally:
            os.close(lock)  # releases the lock

    with tempfile.TemporaryDirectory() as work:
        run(names, Path(work), save, args.timeout)
    rows = json.loads(args.out.read_text())["rows"]
    print(table(rows))
    for name, row in rows.items():
        for runtime in TARGETS:
            if row[runtime]["status"] != "verified":
                print(f"{name} / {runtime}: {row[runtime]['status']}: {row[runtime]['detail']}")


if __name__ == "__main__":
    main()
