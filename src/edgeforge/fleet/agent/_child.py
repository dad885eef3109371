"""The child process that runs a variant's canary set, or the health probe, for the agent.

Run as `python -m edgeforge.fleet.agent._child canary|probe|bench SLOT [--count N] [--warmup W]`
(bench: W untimed runs, the first one timed apart, then N timed ones), or
`... personalize PACKAGE --out DIR --time-limit S [--form F]` with the user's samples as an
.npz on stdin (`labels` and `in/<input>`); prints one JSON object on stdout. The parent
(`run_child`) holds it to the memory budget by watching its resident memory (not an
address-space limit, which breaks runtimes' thread stacks before a model loads) and to a time
limit; a child that crashes, is killed or overruns is a failed canary, never a
failed agent. A child whose parent dies exits too.

Canary set: `canary.npz` holds `in/<input>` and `out/<output>` arrays, axis 0 the sample (the
release's layout); the tolerance comes from variant.json (`canary.tolerance`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edgeforge.fleet.agent._spawn import Launcher, Subprocess

__all__ = ["canary_spec", "load_canary", "run_child"]


def canary_spec(index: dict[str, Any]) -> tuple[str, dict[str, float | None]]:
    """(canary file name, tolerance) from a variant.json index: `canary.file` and
    `canary.tolerance` ({rtol, atol, min_cosine, min_top1}; None: not judged)."""
    canary = index.get("canary")
    spec = canary if isinstance(canary, dict) else {}
    name = canary if isinstance(canary, str) else str(spec.get("file") or "canary.npz")
    given = spec.get("tolerance") if isinstance(spec.get("tolerance"), dict) else {}
    tolerance: dict[str, float | None] = {"rtol": 1e-3, "atol": 1e-4, "min_cosine": None}
    tolerance["min_top1"] = None
    for key in tolerance:
        if key in given:
            value = given[key]
            tolerance[key] = None if value is None else float(value)
    return name, tolerance


def load_canary(slot: Path, index: dict[str, Any]) -> tuple[list[dict], list[dict], dict]:
    """(feeds, references, tolerance): axis 0 of every `in/<name>` and `out/<name>` array is
    the sample (the release's layout)."""
    import numpy as np

    name, tolerance = canary_spec(index)
    with np.load(slot / name, allow_pickle=False) as data:
        inputs = {k[3:]: data[k] for k in data.files if k.startswith("in/")}
        outputs = {k[4:]: data[k] for k in data.files if k.startswith("out/")}
    if not inputs:
        raise ValueError(f"{name} has no in/<input> arrays")
    samples = min(len(v) for v in inputs.values())
    feeds = [{k: v[i] for k, v in inputs.items()} for i in range(samples)]
    references = [{k: v[i] for k, v in outputs.items()} for i in range(samples)]
    return feeds, references, tolerance


def judge(name: str, got: list, expected: list, tolerance: dict[str, float | None]) -> str:
    """ "" when `got` matches `expected` for one output over all samples, else why not: the
    release's rule, max|got-ref| <= atol + rtol*max|ref|, cosine >= min_cosine, top-1
    agreement >= min_top1 (a None tolerance is not judged)."""
    import numpy as np

    if any(np.shape(g) != np.shape(e) for g, e in zip(got, expected, strict=True)):
        return f"output {name} has another shape than its reference"
    actual = np.stack([np.asarray(g, dtype=np.float64) for g in got])
    reference = np.stack([np.asarray(e, dtype=np.float64) for e in expected])
    if not np.all(np.isfinite(actual)):
        return f"output {name} has non-finite values"
    error = float(np.max(np.abs(actual - reference))) if actual.size else 0.0
    atol, rtol = tolerance.get("atol"), tolerance.get("rtol")
    if atol is not None and rtol is not None:
        bound = atol + rtol * float(np.max(np.abs(reference)) if reference.size else 0.0)
        if error > bound:
            return f"output {name} differs from the reference by {error:.3g} (> {bound:.3g})"
    if tolerance.get("min_cosine") is not None and actual.size:
        a, b = actual.ravel(), reference.ravel()
        norm = float(np.linalg.norm(a) * np.linalg.norm(b))
        cosine = float(a @ b / norm) if norm else float(np.array_equal(a, b))
        if cosine < float(tolerance["min_cosine"]):
            return f"output {name} cosine {cosine:.5f} < {tolerance['min_cosine']}"
    if tolerance.get("min_top1") is not None and actual.ndim >= 2 and actual.shape[-1] > 1:
        agree = float(np.mean(actual.argmax(-1) == reference.argmax(-1)))
        if agree < float(tolerance["min_top1"]):
            return f"output {name} top-1 agreement {agree:.3f} < {tolerance['min_top1']}"
    return ""


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(70)
        time.sleep(0.2)


def _main(argv: list[str]) -> int:
    import numpy as np

    from edgeforge.fleet.agent._loaders import open_session

    mode, slot = argv[0], Path(argv[1])
    if mode == "personalize":
        return _personalize(slot, argv)
    count = int(argv[argv.index("--count") + 1]) if "--count" in argv else 10
    budget_ms = float(argv[argv.index("--budget-ms") + 1]) if "--budget-ms" in argv else 0.0
    warmup = int(argv[argv.index("--warmup") + 1]) if "--warmup" in argv else 0
    parent = int(os.environ.get("EDGEFORGE_AGENT_PARENT", os.getppid()))
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    index = json.loads((slot / "variant.json").read_text())
    feeds, references, tolerance = load_canary(slot, index)
    started = time.perf_counter()
    session = open_session(slot, index)
    load_ms = (time.perf_counter() - started) * 1e3
    latencies: list[float] = []
    result: dict[str, Any] = {"ok": True, "detail": "", "load_ms": load_ms}
    if mode == "canary":
        got: dict[str, list] = {name: [] for name in references[0]} if references else {}
        for feed in feeds:
            started = time.perf_counter()
            outputs = session.run(feed)
            latencies.append((time.perf_counter() - started) * 1e3)
            for name in got:
                if name not in outputs:
                    result.update(ok=False, detail=f"the model gives no output {name}")
                    break
                got[name].append(np.asarray(outputs[name]))
            if not result["ok"]:
                break
        for name, values in got.items() if result["ok"] else ():
            expected = [r[name] for r in references]
            worst = max(
                (float(np.max(np.abs(np.asarray(g, float) - np.asarray(e, float)))) for g, e in
                 zip(values, expected, strict=True) if np.shape(g) == np.shape(e)),
                default=0.0,
            )  # fmt: skip
            result["max_abs_error"] = max(result.get("max_abs_error", 0.0), worst)
            why = judge(name, values, expected, tolerance)
            if why:
                result.update(ok=False, detail=why)
                break
    else:
        if mode == "bench":  # what was timed: the canary set's first sample, e.g. "x: 1x8 float32"
            result["inputs"] = ", ".join(
                f"{k}: {'x'.join(map(str, np.shape(v)))} {np.asarray(v).dtype}"
                for k, v in feeds[0].items()
            )
        for i in range(warmup if mode == "bench" else 0):  # untimed, as `edgeforge bench` does
            started = time.perf_counter()
            session.run(feeds[i % len(feeds)])
            if i == 0:
                result["first_inference_ms"] = (time.perf_counter() - started) * 1e3
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


def _personalize(folder: Path, argv: list[str]) -> int:
    """Train a personal head on the samples read from stdin; save it to --out if kept."""
    import io

    import numpy as np

    from edgeforge.fleet.personal import PersonalizationPackage

    out = Path(argv[argv.index("--out") + 1])
    limit = float(argv[argv.index("--time-limit") + 1])
    form = argv[argv.index("--form") + 1] if "--form" in argv else None
    parent = int(os.environ.get("EDGEFORGE_AGENT_PARENT", os.getppid()))
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    with np.load(io.BytesIO(sys.stdin.buffer.read()), allow_pickle=False) as data:
        labels = data["labels"]
        samples = {k[3:]: data[k] for k in data.files if k.startswith("in/")}
    package = PersonalizationPackage.load(folder)
    model = package.train(samples, labels, form=form, time_limit_s=limit)
    if model.kept:
        model.save(out)
    fields = ("kept", "reason", "form", "train_samples", "check_samples", "base_accuracy",
              "personal_accuracy", "train_seconds", "peak_bytes")  # fmt: skip
    print(json.dumps({"ok": True, "detail": "", **{k: getattr(model, k) for k in fields}}))
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
    warmup: int = 0,
    launcher: Launcher | None = None,
    extra: list[str] | None = None,
    stdin_data: bytes | None = None,
) -> dict[str, Any]:
    """Run the canary or probe for `slot` in a child (started by `launcher`, by default a fresh
    interpreter); the result dict always has `ok`/`detail`, `peak_rss` and `wall_ms`. Never
    raises for what the child does. `extra` adds arguments; `stdin_data` reaches the child
    through an anonymous temporary file (never named), so such a child is always a fresh
    interpreter."""
    argv = [mode, str(slot), "--count", str(count), "--budget-ms", str(budget_ms)]
    argv += ["--warmup", str(warmup), *(extra or [])]
    if stdin_data is not None:
        launcher = Subprocess()
    started = time.monotonic()
    peak = 0
    verdict: str | None = None
    with (
        tempfile.TemporaryDirectory(prefix="edgeforge-child-") as scratch,
        tempfile.TemporaryFile() as given,
    ):
        given.write(stdin_data or b"")
        given.seek(0)
        out, err = Path(scratch) / "out", Path(scratch) / "err"
        child = (launcher or Subprocess()).start(
            "edgeforge.fleet.agent._child", argv, env={"EDGEFORGE_AGENT_PAUSE_AT": None},
            out=out, err=err, stdin=given if stdin_data is not None else None,
        )  # fmt: skip
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
            child.kill()
            returncode = child.wait()
        wall_ms = (time.monotonic() - started) * 1e3
        stdout = out.read_bytes().decode(errors="replace") if out.exists() else ""
        stderr = err.read_bytes().decode(errors="replace") if err.exists() else ""
    base = {"peak_rss": peak, "wall_ms": wall_ms, "exit_code": returncode}
    if verdict is not None:
        return {"ok": False, "detail": verdict, **base}
    if returncode != 0:
        how = (
            f"was killed by signal {-returncode}"
            if returncode < 0
            else f"exited with status {returncode}"
        )
        last = stderr.strip().splitlines()[-1:] or [""]
        return {"ok": False, "detail": f"{mode} runtime {how} {last[0][:200]}".strip(), **base}
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "detail": f"{mode} child printed no result", **base}
    return {**result, **base}


def main(argv: list[str]) -> int:
    """The child's entry (`python -m`, or a forked child): one JSON line on stdout."""
    try:
        return _main(argv)
    except Exception as exc:  # a failed load or run is a failed canary, said in one line
        print(json.dumps({"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}))
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
