"""The child process that runs a variant's canary set, or the health probe, for the agent.

Run as `python -m edgeforge.fleet.agent._child canary|probe SLOT [--count N]`; prints one JSON
object on stdout. The parent (`run_child`) holds it to the memory budget by watching its resident
memory (not an address-space limit, which breaks runtimes' thread stacks before a model loads)
and to a time limit; a child that crashes, is killed or overruns is a failed canary, never a
failed agent. A child whose parent dies exits too.

Canary set: `canary.npz` holds `in/<input>` arrays (one feed) and `out/<output>` reference
outputs; tolerances come from variant.json (`canary.atol`/`rtol` or `tolerances`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["canary_spec", "load_canary", "run_child"]


def canary_spec(index: dict[str, Any]) -> tuple[str, float, float]:
    """(canary file name, atol, rtol) from a variant.json index."""
    canary = index.get("canary")
    spec = canary if isinstance(canary, dict) else {}
    name = canary if isinstance(canary, str) else str(spec.get("file", "canary.npz"))
    tolerances = index.get("tolerances") if isinstance(index.get("tolerances"), dict) else spec
    atol = float(tolerances.get("atol", 1e-3))
    rtol = float(tolerances.get("rtol", 1e-3))
    return name, atol, rtol


def load_canary(slot: Path, index: dict[str, Any]) -> tuple[list[dict], list[dict], float, float]:
    """(feeds, references, atol, rtol): one feed per canary entry."""
    import numpy as np

    name, atol, rtol = canary_spec(index)
    with np.load(slot / name, allow_pickle=False) as data:
        inputs = {k[3:]: data[k] for k in data.files if k.startswith("in/")}
        outputs = {k[4:]: data[k] for k in data.files if k.startswith("out/")}
    return [inputs], [outputs], atol, rtol


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(70)
        time.sleep(0.2)


def _main(argv: list[str]) -> int:
    import numpy as np

    from edgeforge.fleet.agent._loaders import open_session

    mode, slot = argv[0], Path(argv[1])
    count = int(argv[argv.index("--count") + 1]) if "--count" in argv else 10
    budget_ms = float(argv[argv.index("--budget-ms") + 1]) if "--budget-ms" in argv else 0.0
    parent = int(os.environ.get("EDGEFORGE_AGENT_PARENT", os.getppid()))
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    index = json.loads((slot / "variant.json").read_text())
    feeds, references, atol, rtol = load_canary(slot, index)
    started = time.perf_counter()
    session = open_session(slot, index)
    load_ms = (time.perf_counter() - started) * 1e3
    latencies: list[float] = []
    result: dict[str, Any] = {"ok": True, "detail": "", "load_ms": load_ms}
    if mode == "canary":
        worst = 0.0
        for feed, reference in zip(feeds, references, strict=True):
            started = time.perf_counter()
            outputs = session.run(feed)
            latencies.append((time.perf_counter() - started) * 1e3)
            for name, expected in reference.items():
                actual = outputs.get(name)
                if actual is None or np.shape(actual) != np.shape(expected):
                    result.update(ok=False, detail=f"output {name} missing or of another shape")
                    break
                error = float(np.max(np.abs(actual.astype(float) - expected.astype(float))))
                worst = max(worst, error)
                if not np.allclose(actual, expected, atol=atol, rtol=rtol):
                    result.update(
                        ok=False,
                        detail=f"output {name} differs from the reference by {error:.3g} "
                        f"(atol {atol:g}, rtol {rtol:g})",
                    )
        result["max_abs_error"] = worst
    else:
        for i in range(count):
            feed = feeds[i % len(feeds)]
            started = time.perf_counter()
            outputs = session.run(feed)
            latencies.append((time.perf_counter() - started) * 1e3)
            if not all(np.all(np.isfinite(v)) for v in outputs.values() if v.dtype.kind == "f"):
                result.update(ok=False, detail=f"inference {i + 1} gave non-finite outputs")
                break
            if budget_ms and latencies[-1] > budget_ms:
                result.update(
                    ok=False,
                    detail=f"inference {i + 1} took {latencies[-1]:.1f} ms, "
                    f"over the {budget_ms:.1f} ms budget",
                )
                break
    result["latency_ms"] = latencies
    result["count"] = len(latencies)
    print(json.dumps(result))
    return 0


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def run_child(
    mode: str,
    slot: Path,
    *,
    memory_limit: int | None,
    timeout: float,
    count: int = 10,
    budget_ms: float = 0.0,
) -> dict[str, Any]:
    """Run the canary or probe for `slot` in a child; the result dict always has `ok`/`detail`,
    `peak_rss` and `wall_ms`. Never raises for what the child does."""
    command = [sys.executable, "-m", "edgeforge.fleet.agent._child", mode, str(slot)]
    command += ["--count", str(count), "--budget-ms", str(budget_ms)]
    env = {**os.environ, "EDGEFORGE_AGENT_PARENT": str(os.getpid())}
    env.pop("EDGEFORGE_AGENT_PAUSE_AT", None)
    started = time.monotonic()
    peak = 0
    verdict: str | None = None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            while child.poll() is None:
                peak = max(peak, _rss_bytes(child.pid))
                if memory_limit and peak > memory_limit:
                    verdict = (
                        f"{mode} used {peak / 2**20:.0f} MB resident, over the "
                        f"{memory_limit / 2**20:.0f} MB memory limit"
                    )
                    break
                if time.monotonic() - started > timeout:
                    verdict = f"{mode} ran past its {timeout:g} s limit"
                    break
                time.sleep(0.01)
        finally:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        wall_ms = (time.monotonic() - started) * 1e3
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    base = {"peak_rss": peak, "wall_ms": wall_ms, "exit_code": child.returncode}
    if verdict is not None:
        return {"ok": False, "detail": verdict, **base}
    if child.returncode != 0:
        how = (
            f"was killed by signal {-child.returncode}"
            if child.returncode < 0
            else f"exited with status {child.returncode}"
        )
        last = stderr.strip().splitlines()[-1:] or [""]
        return {"ok": False, "detail": f"{mode} runtime {how} {last[0][:200]}".strip(), **base}
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "detail": f"{mode} child printed no result", **base}
    return {**result, **base}


if __name__ == "__main__":
    try:
        sys.exit(_main(sys.argv[1:]))
    except Exception as exc:  # a failed load or run is a failed canary, said in one line
        print(json.dumps({"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}))
        sys.exit(0)
