"""How many device check-ins per second the fleet server answers, and how fast.

Setup: a TUF repository with one release, a fresh PostgreSQL schema with 10,000 enrolled
devices (inserted directly: enrolment is not what is measured), and `edgeforge serve
--workers 2` in a subprocess on loopback. Each device first checks in once (its directive is
signed and cached in the database); then the timed phase sends signed check-ins with
`If-None-Match` for unchanged state, which the server answers 304 after verifying the
signature, refusing replays (a nonce row per request) and recomputing the directive.

The load generators run on the same machine, on the same server in one run, each with requests
signed before its clock starts (distinct nonces, timestamps inside the server's window), so the
client's signing never counts against the server:

- `wrk`: Debian's C load generator, with a Lua script that sends the pre-signed requests in turn
  (each once; a thread stops when its share is sent). It takes a few percent of one core, so
  nearly all the CPU goes to the server and PostgreSQL;
- `python`: asyncio over raw keep-alive HTTP/1.1. On two cores it takes about as much CPU as a
  server worker, so its figure is what this machine does with the client beside the server.

Each phase also records the CPU the uvicorn workers and PostgreSQL's processes spent per
check-in (from /proc), and the load average: the machine may be shared, and a figure taken
under load says so. The issue asks >= 2,000 check-ins/s and p99 < 50 ms.

    PYTHONPATH=src .venv/bin/python bench/fleet_bench.py [--devices 10000] [--workers 2]
        [--concurrency 64] [--rounds 3] [--load wrk:16,python:16] [--repeat 3]
        [--wrk-seconds 8] [--out bench/results/fleet.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeforge.fleet import db, protocol
from edgeforge.fleet.repository import Repository
from edgeforge.fleet.server.models import Device
from edgeforge.fleet.server.rollouts import bucket_of

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ADMIN = "bench-admin-token-0123456789abcdef"
ENROLL = "bench-enrol-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _repository(folder: Path) -> Path:
    repo = Repository.init(folder / "repo")
    variant = folder / "variant.json"
    variant.write_text(json.dumps({"name": "demo", "version": 1, "device_class": "bench"}))
    custom = {"edgeforge": {"name": "demo", "version": 1, "device_class": "bench"}}
    with repo.lock():
        repo.publish({"demo/1/bench/variant.json": variant}, {"demo/1/bench/variant.json": custom})
    return repo.path


def _enrol(url: str, count: int) -> list[tuple[str, Ed25519PrivateKey]]:
    devices = [(f"bench-{i:06d}", Ed25519PrivateKey.generate()) for i in range(count)]
    now = time.time()
    rows = [
        {
            "id": device_id,
            "device_class": "bench",
            "public_key": protocol.public_key_bytes(key),
            "facts": "{}",
            "bucket": bucket_of(device_id),
            "enrolled_at": now,
            "rollback_pending": False,
            "active_name": "demo",
            "active_version": 1,
        }
        for device_id, key in devices
    ]
    with db.engine(url).begin() as conn:
        for start in range(0, len(rows), 1000):
            conn.execute(Device.__table__.insert(), rows[start : start + 1000])
    return devices


_BODY = protocol.canonical(
    {"active": {"name": "demo", "version": 1}, "staged": None, "state": "idle"}
)


def _request(port: int, device_id: str, key: Ed25519PrivateKey, etag: str | None) -> bytes:
    headers = protocol.sign_request(key, device_id, "POST", "/v1/checkin", _BODY)
    lines = [
        "POST /v1/checkin HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(_BODY)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    if etag:
        lines.append(f"If-None-Match: {etag}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + _BODY


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return status, headers


async def _run(
    port: int, requests: list[bytes], concurrency: int
) -> tuple[list[float], dict, list]:
    queue = list(reversed(requests))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    etags: list[str] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            request = queue.pop()
            start = time.perf_counter()
            writer.write(request)
            status, headers = await _read_response(reader)
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1
            if "etag" in headers:
                etags.append(headers["etag"])
        writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, statuses, etags


def _cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of process `root` and its descendants (the uvicorn workers)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    family = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in family and pid not in family:
                family.add(pid)
                grew = True
    return sum(times.get(pid, 0.0) for pid in family)


def _postgres_cpu_seconds() -> float:
    """CPU seconds of every process named postgres (the server's backends among them; another
    client of the same PostgreSQL would count too)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, tail = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        if head.split("(", 1)[-1].startswith("postgres"):
            fields = tail.split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


# wrk sends the pre-signed requests of its thread's share in turn for the run's duration; the
# pool is sized so that none is sent twice (a second time is a replay, answered 401, and shows
# in the statuses). Records: "<length>\n<request bytes>".
_WRK_SCRIPT = r"""
local threads, next_id = {}, 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
function init(args)
  local nthreads = tonumber(args[2])
  requests, sent, statuses = {}, 0, {}
  local f = assert(io.open(args[1], "rb"))
  local i = 0
  while true do
    local line = f:read("*l")
    if not line then break end
    local data = f:read(tonumber(line))
    if i % nthreads == tid then requests[#requests + 1] = data end
    i = i + 1
  end
  f:close()
end
function request()
  sent = sent + 1
  return requests[(sent - 1) % #requests + 1]
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(threads) do
    for _, code in ipairs({200, 304, 401, 404, 413, 422, 500, 503}) do
      local got = t:get("statuses")[code]
      if got then counts[#counts + 1] = string.format('"%d": %d', code, got) end
    end
  end
  io.write(string.format(
    '\nRESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"mean_us": %.1f, "max_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"timeout": %d, "status": %d}, "statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, summary.errors.status,
    table.concat(counts, ", ")))
end
"""


def _run_wrk(
    folder: Path,
    port: int,
    requests: list[bytes],
    concurrency: int,
    seconds: float,
    threads: int = 1,
) -> dict:
    """The pre-signed `requests` through wrk for `seconds`; its summary (latencies in
    microseconds)."""
    records = folder / "requests.bin"
    with open(records, "wb") as out:
        for request in requests:
            out.write(f"{len(request)}\n".encode() + request)
    script = folder / "checkin.lua"
    script.write_text(_WRK_SCRIPT)
    command = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds:g}s"]
    command += ["--timeout", "10s"]
    command += ["-s", str(script), f"http://127.0.0.1:{port}/v1/checkin", "--", str(records)]
    command += [str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"wrk gave no result: {done.stdout[-1000:]} {done.stderr[-1000:]}")


def _phase(
    load: str,
    folder: Path,
    server_pid: int,
    port: int,
    timed: list[bytes],
    concurrency: int,
    wrk_seconds: float,
) -> dict:
    """One timed phase: the pre-signed `timed` requests through `load`; its figures."""
    load_before = os.getloadavg()
    cpu_before, pg_before = _cpu_seconds(server_pid), _postgres_cpu_seconds()
    if load == "wrk":
        got = _run_wrk(folder, port, timed, concurrency, wrk_seconds)
        seconds, statuses = got["duration_us"] / 1e6, got["statuses"]
        # what is counted is the 304s; a 401 here is a pre-signed request sent twice (the pool
        # ran out), refused as a replay, and says to give a larger --rounds
        count = int(statuses.get("304", 0))
        p50, p99, mean = got["p50_us"] / 1e3, got["p99_us"] / 1e3, got["mean_us"] / 1e3
    else:
        started = time.perf_counter()
        latencies, codes, _ = asyncio.run(_run(port, timed, concurrency))
        seconds = time.perf_counter() - started
        count, statuses = len(latencies), {str(k): v for k, v in codes.items()}
        p50, p99 = _percentile(latencies, 0.50) * 1e3, _percentile(latencies, 0.99) * 1e3
        mean = statistics.fmean(latencies) * 1e3
    server_cpu = _cpu_seconds(server_pid) - cpu_before
    postgres_cpu = _postgres_cpu_seconds() - pg_before  # < 0 if a backend exited meanwhile
    return {
        "load_generator": load,
        "concurrency": concurrency,
        "requests": count,
        "statuses": statuses,
        "seconds": round(seconds, 3),
        "checkins_per_s": round(count / seconds, 1),
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "mean_ms": round(mean, 2),
        "server_cpu_ms_per_checkin": round(server_cpu / count * 1000, 3),
        "postgres_cpu_ms_per_checkin": (
            round(postgres_cpu / count * 1000, 3) if postgres_cpu >= 0 else None
        ),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def _median_phase(runs: list[dict]) -> dict:
    """The median of each figure over a load generator's repeated phases, and the runs."""
    if len(runs) == 1:
        return runs[0]
    merged = dict(runs[0])
    for key in ("checkins_per_s", "p50_ms", "p99_ms", "mean_ms", "server_cpu_ms_per_checkin"):
        merged[key] = round(statistics.median(r[key] for r in runs), 3)
    known = [r["postgres_cpu_ms_per_checkin"] for r in runs if r["postgres_cpu_ms_per_checkin"]]
    merged["postgres_cpu_ms_per_checkin"] = round(statistics.median(known), 3) if known else None
    merged["requests"] = sum(r["requests"] for r in runs)
    merged["seconds"] = round(sum(r["seconds"] for r in runs), 3)
    statuses: dict[str, int] = {}
    for run in runs:
        for code, count in run["statuses"].items():
            statuses[code] = statuses.get(code, 0) + count
    merged["statuses"] = statuses
    merged["loadavg_before"] = runs[0]["loadavg_before"]
    merged["loadavg_after"] = runs[-1]["loadavg_after"]
    merged["note"] = f"median of {len(runs)} phases, interleaved with the other generators'"
    merged["runs"] = runs
    return merged


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed check-ins per device, per load generator"
    )
    parser.add_argument("--db", default=POSTGRES)
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the --load list this many times, interleaved"
    )
    parser.add_argument(
        "--wrk-seconds", type=float, default=8.0,
        help="how long wrk runs (its pool: --rounds check-ins per device, each sent once)",
    )  # fmt: skip
    parser.add_argument(
        "--load", default="wrk,python", help="load generators, in order, each wrk or python "
        "with an optional :concurrency (else --concurrency); the first one's figures are the "
        "headline",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench/results/fleet.json"))
    args = parser.parse_args()
    args.load = [x.strip() for x in args.load.split(",") if x.strip()]
    kinds = {x.split(":")[0] for x in args.load}
    if (
        not args.load
        or kinds - {"wrk", "python"}
        or not all(x.split(":", 1)[1].isdigit() for x in args.load if ":" in x)
    ):
        raise SystemExit("--load takes wrk and/or python[:concurrency], e.g. wrk:32,python")
    if "wrk" in kinds and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk); or --load python")
    load_before = os.getloadavg()

    import psycopg

    schema = f"edgeforge_bench_{uuid.uuid4().hex[:10]}"
    plain = args.db.replace("+psycopg", "")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{args.db}?options=-csearch_path%3D{schema}"
    server = None
    serve_log = Path(tempfile.gettempdir()) / f"{schema}-serve.log"  # outlives the scratch folder
    try:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            repo = _repository(folder)
            db.upgrade(url)
            started = time.perf_counter()
            devices = _enrol(url, args.devices)
            enrol_s = time.perf_counter() - started
            port = _free_port()
            env = {**os.environ, "EDGEFORGE_ADMIN_TOKEN": ADMIN, "EDGEFORGE_ENROLL_TOKEN": ENROLL}
            argv = ["serve", "--repo", str(repo), "--db", url, "--port", str(port)]
            argv += ["--workers", str(args.workers)]
            code = f"from edgeforge.cli import main; raise SystemExit(main({argv!r}))"
            log = open(serve_log, "wb")  # noqa: SIM115 - lives as long as the server
            server = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=log)
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit(serve_log.read_text()[-2000:]) from None
                    time.sleep(0.2)
            time.sleep(2.0)  # both workers up

            # first check-in of every device: the directive is signed and stored
            first = [_request(port, d, k, None) for d, k in devices]
            started = time.perf_counter()
            lat_first, st_first, etags = asyncio.run(_run(port, first, args.concurrency))
            first_s = time.perf_counter() - started
            etag = etags[0]  # same directive content for every device here? no: it names the device
            del etag
            # unchanged state: each device sends its own ETag back
            by_device = {}
            for device_id, key in devices:
                by_device[device_id] = key
            # one more un-timed round to learn each device's ETag in order
            learn = [_request(port, d, k, None) for d, k in devices]
            _, _, etags = asyncio.run(_run(port, learn, 1))
            tagged = list(zip(devices, etags, strict=True))
            runs: dict[str, list[dict]] = {load: [] for load in args.load}
            for _ in range(args.repeat):  # interleaved: the machine's load moves under all alike
                for load in args.load:
                    kind, _, given = load.partition(":")
                    # fresh signatures for each phase: distinct nonces, timestamps of now
                    timed = [
                        _request(port, d, k, tag)
                        for _ in range(args.rounds)
                        for (d, k), tag in tagged
                    ]
                    runs[load].append(
                        _phase(
                            kind, folder, server.pid, port, timed,
                            int(given or args.concurrency), args.wrk_seconds,
                        )
                    )  # fmt: skip
            phases = {load: _median_phase(done) for load, done in runs.items()}
    except BaseException:
        if server is not None:  # what the server said is the first thing to read
            print(serve_log.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)
        db.dispose(url)
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        serve_log.unlink(missing_ok=True)

    best = phases[args.load[0]]
    result = {
        "what": "signed check-ins, unchanged state (304), against PostgreSQL",
        "devices": args.devices,
        "workers": args.workers,
        "concurrency": best["concurrency"],
        "load_generator": best["load_generator"],
        **{k: best[k] for k in ("requests", "statuses", "seconds", "checkins_per_s", "p50_ms")},
        **{k: best[k] for k in ("p99_ms", "mean_ms", "server_cpu_ms_per_checkin")},
        "postgres_cpu_ms_per_checkin": best["postgres_cpu_ms_per_checkin"],
        "server_cpu_note": "CPU of the uvicorn workers, and of every postgres process, per "
        "check-in; cores / their sum = the check-ins per second the server and its database "
        "could do with the cores to themselves",
        "phases": phases,
        "first_checkin": {
            "what": "each device's first check-in (directive signed and stored)",
            "requests": len(lat_first),
            "statuses": {str(k): v for k, v in st_first.items()},
            "checkins_per_s": round(len(lat_first) / first_s, 1),
            "p50_ms": round(_percentile(lat_first, 0.50) * 1000, 2),
            "p99_ms": round(_percentile(lat_first, 0.99) * 1000, 2),
        },
        "enrol_rows_s": round(enrol_s, 2),
        "goal": {"checkins_per_s": 2000, "p99_ms": 50},
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "note": "load generators on the same machine as the server and PostgreSQL, and "
            "whatever else runs: see each phase's loadavg",
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "command": " ".join(["bench/fleet_bench.py", *sys.argv[1:]]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
