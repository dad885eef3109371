"""`edgeforge bench MODEL --on DEVICE_ID|CLASS --server URL`: benchmarks on the user's own devices.

The admin side of the server's benchmark jobs (`edgeforge.fleet.server.jobs`): queue a job for a
released NAME@VERSION, wait for the device (an agent started with `--accept-jobs`) to measure
it, and turn its figures into a `BenchResult` naming the device. `append_csv` writes them as rows
of the published-measurements format (`device, runtime, model, input, precision, batch,
latency_ms, fps, source`), which `edgeforge calibrate --rows FILE` fits: name the device class
after the catalogue device it is (e.g. `raspberry-pi-5`) and the model after its zoo
architecture, and the rows map.
"""

from __future__ import annotations

import csv
import os
import re
import time
from pathlib import Path
from typing import Any

from edgeforge.errors import EdgeforgeError

__all__ = ["append_csv", "bench_on", "bench_result", "parse_model_ref", "queue", "wait"]

CSV_COLUMNS = ("device", "runtime", "model", "input", "precision", "batch", "latency_ms", "fps",
               "source")  # fmt: skip
_REF = re.compile(r"^([A-Za-z0-9._-]{1,128})@(\d+)$")


def parse_model_ref(text: str) -> tuple[str, int]:
    """`NAME@VERSION` (a released version) as (name, version)."""
    match = _REF.match(text.strip())
    if not match:
        raise EdgeforgeError(
            f"{text!r}: with --on, MODEL is a released NAME@VERSION, e.g. digits@3"
        )
    return match.group(1), int(match.group(2))


def _token(token: str | None) -> str:
    token = token or os.environ.get("EDGEFORGE_ADMIN_TOKEN")
    if not token:
        raise EdgeforgeError("bench --on needs the admin token: set EDGEFORGE_ADMIN_TOKEN")
    return token


def _call(method: str, url: str, token: str, body: Any = None) -> dict[str, Any]:
    import httpx

    try:
        response = httpx.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
    except httpx.HTTPError as exc:
        raise EdgeforgeError(f"{url}: the fleet server does not answer ({exc})") from exc
    if response.status_code >= 400:
        try:
            message = response.json().get("error") or response.text
        except ValueError:
            message = response.text
        raise EdgeforgeError(f"{url}: HTTP {response.status_code}: {message}")
    return response.json()


def queue(
    server: str, model: str, on: str, *, token: str | None = None, warmup: int = 10,
    runs: int = 50,
) -> dict[str, Any]:  # fmt: skip
    """Queue a benchmark job; returns the job as the server holds it."""
    name, version = parse_model_ref(model)
    body = {"name": name, "version": version, "on": on, "warmup": warmup, "runs": runs}
    return _call("POST", server.rstrip("/") + "/v1/admin/jobs", _token(token), body)["job"]


def wait(
    server: str, job_id: int, *, token: str | None = None, timeout: float = 600.0,
    poll: float = 0.5,
) -> dict[str, Any]:  # fmt: skip
    """The job once done or failed; EdgeforgeError if still waiting after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    url = f"{server.rstrip('/')}/v1/admin/jobs/{int(job_id)}"
    while True:
        job = _call("GET", url, _token(token))["job"]
        if job["state"] in ("done", "failed"):
            return job
        if time.monotonic() > deadline:
            raise EdgeforgeError(
                f"benchmark job {job_id} is still {job['state']} after {timeout:g} s: is an agent "
                f"of {job['on']} running with --accept-jobs?"
            )
        time.sleep(poll)


def bench_result(job: dict[str, Any]) -> Any:
    """A done job as a `BenchResult` whose `device` names the device that measured it."""
    from edgeforge.bench import BenchResult

    if job.get("state") != "done":
        raise EdgeforgeError(
            f"benchmark job {job.get('id')} on {job.get('on')} failed: {job.get('detail')}"
        )
    r = job["result"]
    p50 = float(r["latency_ms"]["p50"])
    return BenchResult(
        model=f"{job['name']}@{job['version']}",
        runtime=str(r.get("runtime", "")),
        artifact=str(r.get("artifact", "")),
        artifact_bytes=int(r.get("artifact_bytes", 0)),
        threads=None,
        warmup=int(job["options"].get("warmup", 0)),
        runs=int(r.get("runs", 0)),
        repeats=1,
        inputs=str(r.get("inputs", "")),
        load_ms=float(r.get("load_ms", 0.0)),
        first_inference_ms=float(r.get("first_inference_ms", 0.0)),
        latency_ms={k: float(v) for k, v in r["latency_ms"].items()},
        median_spread=0.0,
        throughput=[{"batch": 1, "p50_ms": p50, "items_per_s": 1e3 / p50 if p50 else 0.0}],
        peak_rss_mb=float(r.get("peak_rss_mb", 0.0)),
        model_memory_mb=0.0,
        settings={
            "device_class": r.get("device_class"),
            "precision": r.get("precision"),
            "facts": r.get("facts", {}),
            "job": job["id"],
        },
        device=str(r.get("device_id")),
    )


def _input_column(inputs: str) -> str:
    """The first input's shape in the CSV's HxWxC spelling when it is an NCHW image, else as is
    ("x: 1x3x224x224 float32" -> "224x224x3")."""
    first = inputs.split(",")[0].split(":")[-1].split()
    dims = first[0].split("x") if first else []
    if len(dims) == 4 and dims[1] in ("1", "3") and dims[2] == dims[3]:
        return f"{dims[2]}x{dims[3]}x{dims[1]}"
    return first[0] if first else ""


def append_csv(path: str | Path, result: Any) -> None:
    """Append `result` (a device's `BenchResult`) as one published-measurements row; the header
    is written when the file is new. device = the device's class, model = the released name."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
        missing = [c for c in CSV_COLUMNS[:7] if c not in header]
        if missing:
            raise EdgeforgeError(f"{path}: not a published-measurements CSV (no {missing[0]})")
    p50 = float(result.latency_ms["p50"])
    row = {
        "device": result.settings.get("device_class") or result.device,
        "runtime": f"{result.runtime} (edgeforge agent)",
        "model": result.model.split("@")[0],
        "input": _input_column(result.inputs),
        "precision": result.settings.get("precision") or "",
        "batch": 1,
        "latency_ms": f"{p50:.6g}",
        "fps": f"{1e3 / p50:.6g}" if p50 else "",
        "source": f"edgeforge fleet job {result.settings.get('job')} on device {result.device}",
    }
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def bench_on(
    model: str, on: str, server: str, *, token: str | None = None, warmup: int = 10,
    runs: int = 50, timeout: float = 600.0, csv_path: str | Path | None = None,
) -> Any:  # fmt: skip
    """Queue, wait, and return the device's `BenchResult` (appended to `csv_path` if given)."""
    job = queue(server, model, on, token=token, warmup=warmup, runs=runs)
    result = bench_result(wait(server, job["id"], token=token, timeout=timeout))
    if csv_path is not None:
        append_csv(csv_path, result)
    return result
