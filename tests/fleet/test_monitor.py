"""Server-side monitoring: order-independent merges, drift verdicts that agree with the same tests
on raw data, no verdict below the minimum of reporters, per-day aggregates memoised by the
server exactly as computed afresh, and a fleet of numpy devices (the same windows, no agents)
whose drift is caught within 3 windows with at most one false alarm in 20 unshifted runs. The
same through the fleet simulator's real agents and the real server:
`tests/fleet/test_simulate_drift.py` and `bench/drift_bench.py`."""

from __future__ import annotations

import base64
import json
import random

import numpy as np
import pytest

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet import monitor as M
from edgeforge.fleet import telemetry as T

DAY = 86400.0


def device_window(name, version, start, feed, outputs, latencies, *, batch=8, **kinds) -> bytes:
    """One device's window through the device's own code path (Window.add, to_bytes), its rows
    taken `batch` at a time (one call each). The per-row features, hence every drift verdict,
    do not depend on `batch`; the number of calls and latency samples does."""
    w = T.Window(name, version, "pi4", start, DAY)
    rows = len(
        next(iter(feed.values()))
        if isinstance(feed, dict)
        else (feed if feed is not None else outputs)
    )
    for i, at in enumerate(range(0, rows, batch)):
        part = None if feed is None else {k: v[at : at + batch] for k, v in feed.items()}
        out = None if outputs is None else outputs[at : at + batch]
        rf = T.row_features(part, out, **kinds)
        w.add(rf, float(latencies[i % len(latencies)]), 0 if out is None else out.shape[-1])
    return w.to_bytes()


def _tabular(rng, n):
    return {"x": rng.standard_normal((n, 1))}


def _fleet_pairs(seed: int, devices: int, days: int = 2):
    rng = np.random.default_rng(seed)
    pairs = []
    for d in range(devices):
        for day in range(days):
            probs = rng.dirichlet(np.ones(6) * 0.7, size=64).astype(np.float32)
            img = {"image": rng.random((64, 3, 4, 4), dtype=np.float32)}
            lat = rng.gamma(3.0, 2.0, size=8)
            pairs.append((f"dev{d}", device_window("m", 1, day * DAY, img, probs, lat)))
    return pairs


def test_merge_is_order_independent():
    pairs = _fleet_pairs(0, devices=12)
    forward = M.aggregate_windows(pairs)
    shuffled = list(pairs)
    random.Random(1).shuffle(shuffled)
    backward = M.aggregate_windows(shuffled)
    assert forward.keys() == backward.keys() and len(forward) == 2
    for key in forward:
        assert forward[key].to_dict() == backward[key].to_dict()
    a, b = forward.values()
    ab, ba = a.merge(b), b.merge(a)
    assert ab.to_dict() == ba.to_dict()
    qs = [i / 20 for i in range(1, 20)]
    for slot in ("latency_ms", "confidence", "in0", "in4"):
        assert ab.slots[slot].quantile(qs) == ba.slots[slot].quantile(qs)
    assert ab.classes == ba.classes and sum(ab.classes.values()) == 12 * 2 * 64
    c = M.aggregate_windows(_fleet_pairs(5, devices=3, days=1))[("m", 1, "pi4", "1970-01-01")]
    assert a.merge(b).merge(c).to_dict() == a.merge(b.merge(c)).to_dict()
    assert ab.reporters() == 12 and ab.windows == 24 and ab.day == ""
    assert M.Aggregate.from_dict(json.loads(json.dumps(ab.to_dict()))).to_dict() == ab.to_dict()


def test_merging_other_versions_is_refused():
    a = M.Aggregate("m", 1, "pi4", "1970-01-01")
    with pytest.raises(EdgeforgeError, match="cannot merge"):
        a.merge(M.Aggregate("m", 2, "pi4", "1970-01-01"))


def test_no_verdict_and_no_figure_below_min_reporters():
    rng = np.random.default_rng(0)
    ref = M.reference_from_data(None, _tabular(rng, 4000))

    def aggregate(devices):
        pairs = [
            (f"d{i}", device_window("m", 1, 0.0, _tabular(rng, 200), None, [5.0]))
            for i in range(devices)
        ]
        return next(iter(M.aggregate_windows(pairs).values()))

    few, enough = aggregate(9), aggregate(10)
    report = M.drift(few, ref)
    assert report.verdict == "insufficient" and report.features == {}
    assert report.drift_psi is None
    row = M.gate_metrics([few], {("m", 1): ref})["m@1/pi4"]
    figures = ("latency_p95", "confidence_p50", "drift_psi", "rows", "windows", "error_rate")
    assert all(row[f] is None for f in figures)
    assert M.drift(enough, ref).verdict == "ok"
    row = M.gate_metrics([enough], {("m", 1): ref})["m@1/pi4"]
    assert row["latency_p95"] == pytest.approx(5.0, rel=0.01) and row["drift_psi"] < 0.05
    text = M.render_monitor_text(M.monitor_summary([few], {("m", 1): ref}))
    assert "insufficient" in text and "at least 10 devices" in text


def _numeric_cases():
    cases = [(mu, 1.0) for mu in np.linspace(0.0, 0.8, 17)]
    cases += [(0.0, s) for s in np.linspace(0.6, 1.8, 13)]
    cases += [(mu, 1.25) for mu in (0.1, 0.2, 0.3, 0.45, 0.6)]
    return cases


def test_sketch_verdicts_agree_with_raw_data_verdicts():
    rng = np.random.default_rng(42)
    thr = M.Thresholds()
    ref_raw = rng.standard_normal(20_000)
    ref = M.reference_from_data(None, {"x": ref_raw[:, None]})
    agree, total = 0, 0
    for mu, scale in _numeric_cases():
        devices = [mu + scale * rng.standard_normal(400) for _ in range(20)]
        pairs = [
            (f"d{i}", device_window("m", 1, 0.0, {"x": x[:, None]}, None, [1.0], batch=400))
            for i, x in enumerate(devices)
        ]
        agg = next(iter(M.aggregate_windows(pairs).values()))
        sketch = M.drift(agg, ref).features["in0"]["drift"]
        raw = np.concatenate(devices)
        raw_verdict = M.psi_raw(ref_raw, raw) > thr.psi or M.ks_raw(ref_raw, raw) > thr.ks
        agree += sketch == raw_verdict
        total += 1
    # class-mix shifts, Jensen-Shannon on the frequent-items sketches against raw counts
    ref_labels = rng.integers(0, 10, size=20_000)
    ref_out = np.full((20_000, 10), 0.01, dtype=np.float32)
    ref_out[np.arange(20_000), ref_labels] = 0.91
    cref = M.reference_from_data(ref_out)
    raw_ref_counts = {str(k): int(v) for k, v in enumerate(np.bincount(ref_labels))}
    for tilt in np.linspace(0.0, 0.6, 13):
        probs = np.full(10, (1 - tilt) / 10)
        probs[:2] += tilt / 2
        pairs, raw_counts = [], np.zeros(10, dtype=int)
        for i in range(20):
            labels = rng.choice(10, size=400, p=probs)
            raw_counts += np.bincount(labels, minlength=10)
            out = np.full((400, 10), 0.01, dtype=np.float32)
            out[np.arange(400), labels] = 0.91
            pairs.append((f"d{i}", device_window("m", 1, 0.0, None, out, [1.0], batch=400)))
        agg = next(iter(M.aggregate_windows(pairs).values()))
        sketch = M.drift(agg, cref).verdict == "drift"
        raw_js = M.js_distance(raw_ref_counts, {str(k): int(v) for k, v in enumerate(raw_counts)})
        agree += sketch == (raw_js > thr.js)
        total += 1
    assert total == 48
    assert agree / total >= 0.95, f"{agree}/{total}"


# --- a simulated fleet ------------------------------------------------------------------------

CLASSES = 8
BASE = np.random.default_rng(123).uniform(0.3, 0.7, size=(CLASSES, 3))


def _images(rng, n, *, brightness=0.0, classes=None):
    labels = rng.integers(0, CLASSES, size=n) if classes is None else rng.choice(classes, size=n)
    means = BASE[labels] + rng.normal(0, 0.05, size=(n, 3)) + brightness
    img = means[:, :, None, None] + rng.normal(0, 0.05, size=(n, 3, 4, 4))
    return img.astype(np.float32)


def _model(img):
    """A nearest-centroid classifier with softmax outputs (probabilities)."""
    means = img.reshape(img.shape[0], 3, -1).mean(-1)
    logits = -((means[:, None, :] - BASE[None]) ** 2).sum(-1) / (2 * 0.05**2)
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def fleet_reference():
    img = _images(np.random.default_rng(0), 5000)
    return M.reference_from_data(_model(img), {"image": img})


def _run_fleet(seed, ref, *, windows, shift_from=None, shift="brightness", devices=30):
    """Verdict per window (one window = one day) for `devices` numpy devices, 30% of which see
    shifted inputs from window `shift_from` on."""
    rng = np.random.default_rng(seed)
    shifted = set(rng.choice(devices, size=int(0.3 * devices), replace=False).tolist())
    verdicts = []
    for w in range(windows):
        pairs = []
        for d in range(devices):
            on = shift_from is not None and w >= shift_from and d in shifted
            kw = {}
            if on:
                kw = {"brightness": 0.25} if shift == "brightness" else {"classes": [0, 1]}
            img = _images(rng, 100, **kw)
            lat = rng.gamma(3.0, 2.0, size=13)  # drawn for every device: the seeds' images
            # One call per window: the verdicts only read the rows' features (device_window).
            window = device_window("m", 1, w * DAY, {"image": img}, _model(img), lat, batch=100)
            pairs.append((f"d{d}", window))
        (agg,) = M.aggregate_windows(pairs).values()
        verdicts.append(M.drift(agg, ref).verdict)
    return verdicts


@pytest.mark.slow
def test_false_alarms_at_most_one_in_20_unshifted_runs(fleet_reference):
    alarms = 0
    for run in range(20):
        verdicts = _run_fleet(1000 + run, fleet_reference, windows=3)
        assert set(verdicts) <= {"ok", "drift"}
        alarms += "drift" in verdicts
    assert alarms <= 1


@pytest.mark.parametrize("shift", ["brightness", "class-mix"])
def test_drift_fires_within_3_windows_when_30_percent_of_devices_shift(fleet_reference, shift):
    verdicts = _run_fleet(7, fleet_reference, windows=5, shift_from=2, shift=shift)
    assert verdicts[:2] == ["ok", "ok"]
    assert "drift" in verdicts[2:5]


def test_gate_metrics_see_a_slower_version():
    rng = np.random.default_rng(3)
    pairs = []
    for version, slow in ((1, 1.0), (2, 1.3)):
        for d in range(12):
            img = _images(rng, 64)
            lat = slow * rng.gamma(4.0, 2.0, size=8)
            pairs.append(
                (f"d{d}", device_window("m", version, 0.0, {"image": img}, _model(img), lat))
            )
    metrics = M.gate_metrics(M.aggregate_windows(pairs).values())
    v1, v2 = metrics["m@1/pi4"], metrics["m@2/pi4"]
    assert v2["latency_p95"] > 1.1 * v1["latency_p95"]
    assert v1["confidence_kind"] == "top1" and 0 < v1["confidence_p50"] <= 1
    assert v1["drift"] == "no-reference" and v1["drift_psi"] is None
    assert v1["error_rate"] == 0.0 and v1["reporters"] == 12


def test_monitor_summary_json_and_text(fleet_reference):
    rng = np.random.default_rng(5)
    pairs = []
    for day in range(2):
        for d in range(10):
            img = _images(rng, 50, brightness=0.3 if day else 0.0)
            lat = rng.gamma(3.0, 2.0, size=7)
            pairs.append(
                (f"d{d}", device_window("m", 1, day * DAY, {"image": img}, _model(img), lat))
            )
    summary = M.monitor_summary(M.aggregate_windows(pairs).values(), {("m", 1): fleet_reference})
    json.dumps(summary)  # the --json contract: plain JSON
    (row,) = summary["versions"]
    assert [d["drift"] for d in row["days"]] == ["ok", "drift"]
    assert row["reporters"] == 10 and row["latency_p95"] is not None
    text = M.render_monitor_text(summary)
    assert "m@1" in text and "1970-01-02" in text and "drift" in text
    assert M.monitor_summary([], model="m")["versions"] == []


def test_a_lying_device_cannot_outweigh_an_honest_window_or_crash_the_server():
    import subprocess
    import sys

    code = """
import numpy as np, random, struct
from edgeforge.errors import EdgeforgeError
from edgeforge.fleet import telemetry as T
rng = np.random.default_rng(0)
w = T.Window("m", 1, "pi4", 0.0, 60.0)
probs = rng.dirichlet(np.ones(6), size=500).astype(np.float32)
w.add(T.row_features({"x": rng.random((500, 3, 4, 4))}, probs), 3.0, 6)
good = w.to_bytes()
refused = decoded = 0
r = random.Random(1)
for i in range(600):
    bad = bytearray(good)
    for _ in range(r.randint(1, 8)):
        bad[r.randrange(T._HEADER.size - 60, len(bad))] = r.randrange(256)
    try:
        T.decode_window(bytes(bad))
        decoded += 1
    except EdgeforgeError:
        refused += 1
for i in range(300):  # garbage behind a valid magic and format
    junk = bytearray(r.randbytes(len(good)))
    junk[:6] = good[:6]
    try:
        T.decode_window(bytes(junk))
        decoded += 1
    except EdgeforgeError:
        refused += 1
heavy = bytearray(good)
struct.pack_into("<I", heavy, T._HEADER.size - 54, 10**9)  # rows
try:
    T.decode_window(bytes(heavy)); print("heavy accepted")
except EdgeforgeError as e:
    print("heavy refused:", e)
print(decoded, refused)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]  # no crash of the decoder on any of them
    assert "heavy refused" in done.stdout
    decoded, refused = map(int, done.stdout.split()[-2:])
    assert decoded + refused == 900 and refused >= 300


def test_the_enrolled_class_wins_over_the_class_a_window_claims():
    rng = np.random.default_rng(0)
    img = _images(rng, 16)
    payload = device_window("m", 1, 0.0, {"image": img}, _model(img), [2.0])
    aggs = M.aggregate_windows([("d1", payload)], device_classes={"d1": "jetson"})
    assert list(aggs) == [("m", 1, "jetson", "1970-01-01")]


def test_report_entries_resent_or_broken_are_counted_once_or_set_aside():
    rng = np.random.default_rng(0)
    rows = []
    for d in range(3):
        img = _images(rng, 16)
        payload = device_window("m", 1, 0.0, {"image": img}, _model(img), [2.0])
        entry = {"id": T.window_id(payload), "payload": base64.b64encode(payload).decode()}
        rows += [(f"d{d}", json.dumps(entry)), (f"d{d}", entry)]  # resent after a lost ack
    rows.append(("liar", {"id": "x", "payload": base64.b64encode(b"EFTW" + bytes(50)).decode()}))
    invalid: list[tuple[str, str]] = []
    (agg,) = M.aggregate_windows(rows, invalid=invalid).values()
    assert agg.windows == 3 and agg.counters["rows"] == 48
    assert [d for d, _ in invalid] == ["liar"]
    with pytest.raises(EdgeforgeError, match="not a format"):
        M.aggregate_windows(rows)


def test_memoised_day_aggregates_equal_fresh_ones_and_only_changed_days_are_decoded(tmp_path):
    from edgeforge.fleet import db
    from edgeforge.fleet.server import monitoring

    url = db.sqlite_url(tmp_path / "fleet.db")
    db.upgrade(url)
    engine = db.engine(url)
    insert = monitoring._upsert_ignore(engine, monitoring.W)
    rng = np.random.default_rng(5)

    class Dev:
        def __init__(self, i: int) -> None:
            self.id, self.device_class = f"d{i}", "pi4"

    def store(device: int, day: int) -> None:
        img = rng.random((16, 3, 4, 4), dtype=np.float32)
        payload = device_window("m", 1, day * DAY, {"x": img}, None, [2.0])
        entries = monitoring.decode_entries([base64.b64encode(payload).decode()])
        with engine.begin() as conn:
            monitoring.store_windows(conn, insert, Dev(device), entries, now=0.0)

    def dicts(aggs):
        return sorted(json.dumps(a.to_dict(), sort_keys=True) for a in aggs)

    for day in range(3):
        for device in range(4):
            store(device, day)
    cache = monitoring.AggregateCache()
    with engine.connect() as conn:
        fresh = monitoring.load_aggregates(conn, name="m", cache=None)
        first = monitoring.load_aggregates(conn, name="m", cache=cache)
        again = monitoring.load_aggregates(conn, name="m", cache=cache)
    assert len(fresh) == 3 and dicts(first) == dicts(fresh) == dicts(again)
    assert cache.decoded_days == 3  # the second read decoded nothing
    store(9, 1)  # a late window for day 1
    with engine.connect() as conn:
        later = monitoring.load_aggregates(conn, name="m", cache=cache)
        fresh = monitoring.load_aggregates(conn, name="m", cache=None)
    assert dicts(later) == dicts(fresh) and cache.decoded_days == 4  # day 1 only
    assert sorted(a.reporters() for a in later) == [4, 4, 5]
    db.dispose(url)
