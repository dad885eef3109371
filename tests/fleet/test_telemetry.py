"""Device telemetry: fixed-size payloads with no input in them, clipping, the spool's bounds over
60 offline days, and an epsilon ledger that is never exceeded."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
from pathlib import Path

import datasketches as ds
import numpy as np
import pytest

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet import telemetry as T

DAY = 86400.0


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _feeds(rng: np.random.Generator, kind: str, rows: int):
    if kind == "image":
        return {"image": rng.random((rows, 3, 8, 8), dtype=np.float32)}, rng.dirichlet(
            np.ones(10), size=rows
        ).astype(np.float32)
    if kind == "text":
        ids = rng.integers(1, 30000, size=(rows, 32))
        ids[:, rng.integers(4, 32) :] = 0
        return {"ids": ids}, rng.standard_normal((rows, 5)).astype(np.float32)
    if kind == "tabular":
        return rng.standard_normal((rows, 12)), rng.standard_normal((rows, 1))
    if kind == "embedding":
        return rng.random((rows, 3, 8, 8), dtype=np.float32), rng.standard_normal((rows, 384))
    raise AssertionError(kind)


def _payloads(tmp_path: Path, kind: str, calls: int, rows: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    clock = FakeClock()
    tel = T.Telemetry(tmp_path / f"{kind}-{calls}-{rows}-{seed}", window_s=3600, clock=clock)
    tel.set_model("m", 1, output_kind="embedding" if kind == "embedding" else None)
    for _ in range(calls):
        feed, out = _feeds(rng, kind, rows)
        tel.observe(feed, out, float(rng.gamma(2.0, 3.0)))
        clock.t += 1
    tel.record_outcome("canary", True)
    tel.record_error()
    return [base64.b64decode(e["payload"]) for e in tel.drain(flush=True)]


@pytest.mark.parametrize("kind", ["image", "text", "tabular", "embedding"])
def test_payload_size_does_not_depend_on_inputs_or_their_number(tmp_path, kind):
    sizes = set()
    for calls, rows in ((0, 1), (1, 1), (7, 3), (40, 128)):  # the last overflows MAX_ROWS
        for p in _payloads(tmp_path, kind, calls, rows):
            sizes.add(len(p))
            w = T.decode_window(p)
            assert w.counters["rows"] <= T.MAX_ROWS
            assert w.counters["rows"] + w.counters["clipped"] == calls * rows
    assert sizes == {T.PAYLOAD_SIZE}
    assert T.PAYLOAD_SIZE < 12_000  # "a few kB"


@pytest.mark.parametrize("k", [T.K_MAIN, T.K_FEATURE])
def test_kll_slot_holds_every_window_up_to_max_rows(k):
    # How many items a KLL keeps depends on n only; sweep n with two unlike streams.
    for seed, draw in ((0, "normal"), (1, "exponential")):
        values = getattr(np.random.default_rng(seed), draw)(size=T.MAX_ROWS).astype(np.float32)
        sk = ds.kll_floats_sketch(k)
        worst = 0
        for v in values:
            sk.update(float(v))
            worst = max(worst, sk.num_retained)
        assert worst <= T._KLL_ITEMS[k]
        blob = T._encode_kll(sk, k)
        assert len(blob) == T._KLL_SLOT[k]
        back = T._decode_kll(blob, k)  # the wire form is the sketch's content, exactly
        assert back.n == sk.n and back.max == sk.get_max_value()
        assert sorted(back.values.tolist()) == sorted(float(v) for v, _ in sk)
        # DataSketches' own median can sit one retained item away (its sorted view and its
        # iterator disagree on ties of cumulative weight): the same answer within the sketch's
        # rank error is what the server relies on.
        median = back.quantiles([0.5])[0]
        assert abs(sk.get_rank(median) - 0.5) <= sk.normalized_rank_error(False)


def test_class_slot_holds_the_worst_class_mix():
    w = T.Window("m", 1, "c", 0.0, 60.0)
    rng = np.random.default_rng(0)
    ids = rng.integers(T.MAX_CLASS_ID - 500, T.MAX_CLASS_ID + 5000, size=T.MAX_ROWS)
    row = {
        "rows": T.MAX_ROWS,
        "features": {},
        "classes": ids,
        "input_kind": "none",
        "output_kind": "logits",
        "confidence_kind": "margin",
    }
    w.add(row, 1.0, 10)
    assert len(w.to_bytes()) == T.PAYLOAD_SIZE


MARKER = np.array([1234.5677, -8765.4321, 3141.5925, 2718.2817], dtype=np.float32)
TOKENS = np.array([31337, 27182, 16180, 14142], dtype=np.int64)


def _marked(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    img = rng.random((rows, 3, 8, 8), dtype=np.float32)
    img[:, :, 0, :4] = MARKER  # the recognisable pattern, in every channel of every row
    ids = rng.integers(1, 1000, size=(rows, 16))
    ids[:, :4] = TOKENS
    return img, ids


def _needles() -> list[bytes]:
    needles = [MARKER.tobytes(), TOKENS.tobytes(), TOKENS.astype(np.int32).tobytes()]
    needles += [v.tobytes() for v in MARKER] + [v.tobytes() for v in MARKER.astype(np.float64)]
    # One id alone is two significant bytes, which any float32 near 0.7 followed by zero
    # padding also holds: look for consecutive ids, which only the input itself holds.
    needles += [TOKENS[i : i + 2].tobytes() for i in range(len(TOKENS) - 1)]
    needles += [TOKENS[i : i + 2].astype(np.int32).tobytes() for i in range(len(TOKENS) - 1)]
    needles += [f"{v:.4f}".encode() for v in MARKER] + [str(int(t)).encode() for t in TOKENS]
    return needles


@pytest.mark.parametrize("epsilon", [None, 4.0])
def test_no_input_bytes_leave_the_device(tmp_path, epsilon):
    rng = np.random.default_rng(7)
    clock = FakeClock()
    kwargs = {} if epsilon is None else {"epsilon": epsilon, "epsilon_budget": 100.0}
    image_tel = T.Telemetry(tmp_path / "img", window_s=600, clock=clock, **kwargs)
    text_tel = T.Telemetry(tmp_path / "txt", window_s=600, clock=clock, **kwargs)
    image_tel.set_model("vision", 2)
    text_tel.set_model("text", 2, input_kind="text")
    for _ in range(300):
        img, ids = _marked(rng, 4)
        image_tel.observe({"image": img}, rng.dirichlet(np.ones(10), size=4), 3.0)
        text_tel.observe({"ids": ids}, rng.standard_normal((4, 3)), 3.0)
        clock.t += 7
    entries = image_tel.drain(flush=True) + text_tel.drain(flush=True)
    assert len(entries) >= 6
    body = json.dumps({"telemetry": entries}).encode()  # what the report would carry
    for e in entries:
        raw = base64.b64decode(e["payload"])
        assert len(raw) == T.PAYLOAD_SIZE
        for needle in _needles():
            assert needle not in raw, needle
    for needle in _needles():
        assert needle not in body
    full = json.dumps({"events": [], "telemetry": entries[:1] * T.DRAIN_LIMIT}).encode()
    assert len(full) <= T.DRAIN_LIMIT * T.ENTRY_BYTES + 64 < 224 * 1024  # room for events
    # the same number of calls on unmarked inputs gives payloads of the same size
    plain = _payloads(tmp_path, "image", 300, 4, seed=3)
    assert {len(p) for p in plain} == {T.PAYLOAD_SIZE}


def test_contributions_are_clipped(tmp_path):
    clock = FakeClock()
    tel = T.Telemetry(tmp_path, window_s=3600, clock=clock)
    tel.set_model("m", 1, input_kind="tabular", output_kind="regression")
    # a tabular row is summarised by its mean (in0) and spread (in1)
    x = np.array([[1e12] * 6, [-1e12] * 6, [np.nan, np.inf, 0.5, 1.0, 0.0, 0.0]])
    tel.observe(x, np.array([[1e30]] * 3), latency_ms=1e12)
    tel.observe(np.zeros((T.MAX_ROWS + 10, 6)), np.zeros((T.MAX_ROWS + 10, 1)), 1.0)
    (entry,) = tel.drain(flush=True)
    w = T.decode_window(entry["payload"])
    assert w.counters["rows"] == T.MAX_ROWS and w.counters["clipped"] == 13
    lo, hi = T.CLIP["feature"]
    assert w.sketches["in0"].max == pytest.approx(hi)
    assert w.sketches["in0"].min == pytest.approx(lo)
    assert w.sketches["in0"].n == T.MAX_ROWS - 1  # NaN is not summarised
    assert w.sketches["in2"].n == 0  # a tabular input fills two slots only
    assert w.sketches["out0"].max == pytest.approx(hi)
    assert w.sketches["latency_ms"].max == pytest.approx(T.CLIP["latency_ms"][1])
    assert w.classes == {} and w.class_total == 0  # a regression output has no class


def test_confidence_follows_the_output_kind():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    rf = T.row_features(None, probs)
    assert rf["output_kind"] == "probabilities" and rf["confidence_kind"] == "top1"
    np.testing.assert_allclose(rf["features"]["confidence"], [0.7, 0.8], rtol=1e-6)
    assert rf["classes"].tolist() == [0, 2]
    logits = np.array([[2.0, 5.0, -1.0]])
    rf = T.row_features(None, logits)
    assert rf["confidence_kind"] == "margin" and rf["features"]["confidence"][0] == 3.0
    rf = T.row_features(None, np.array([[4.5], [2.0]]))
    assert rf["output_kind"] == "regression" and rf["features"]["out0"].tolist() == [4.5, 2.0]
    emb = np.random.default_rng(0).standard_normal((3, 64))
    a = T.row_features(None, emb, output_kind="embedding")["features"]
    b = T.row_features(None, emb, output_kind="embedding")["features"]
    assert np.array_equal(a["out0"], b["out0"]) and np.isfinite(a["out1"]).all()
    tokens = np.zeros((2, 3, 4))  # a sequence of logits: uniform (row 0), certain (row 1)
    tokens[1, :, 2] = 100.0
    rf = T.row_features(None, tokens)
    assert rf["confidence_kind"] == "entropy" and rf["classes"].tolist() == [-1, -1]
    np.testing.assert_allclose(rf["features"]["confidence"], [np.log(4), 0.0], atol=1e-9)
    text = np.array([[5, 6, 7, 0, 0], [9, 0, 0, 0, 0]])
    assert T.row_features({"ids": text}, None)["features"]["in0"].tolist() == [3, 1]
    with pytest.raises(EdgeforgeError, match="kinds"):
        T.row_features(None, probs, output_kind="histogram")


def test_windows_roll_over_per_model_version_and_period(tmp_path):
    clock = FakeClock(0.0)
    tel = T.Telemetry(tmp_path, device_class="pi4", window_s=100, clock=clock)
    rng = np.random.default_rng(0)
    tel.set_model("m", 1)
    tel.observe(*_feeds(rng, "image", 2), 1.0)
    tel.set_model("m", 2)
    tel.observe(*_feeds(rng, "image", 2), 1.0)
    clock.t = 150.0
    tel.observe(*_feeds(rng, "image", 2), 1.0)  # closes both windows of period 0
    assert len(tel.spool.files()) == 2
    got = [T.decode_window(e["payload"]) for e in tel.drain(flush=True)]
    assert sorted((w.version, w.start) for w in got) == [(1, 0.0), (2, 0.0), (2, 100.0)]
    assert {w.device_class for w in got} == {"pi4"}
    tel.ack([e["id"] for e in tel.drain()])
    assert tel.drain() == []


def test_spool_keeps_its_bound_after_60_offline_days(tmp_path):
    clock = FakeClock(0.0)
    bound = 40 * T.PAYLOAD_SIZE
    tel = T.Telemetry(
        tmp_path, window_s=6 * 3600, clock=clock, spool_max_bytes=bound, spool_max_age_s=7 * DAY
    )
    tel.set_model("m", 1)
    rng = np.random.default_rng(0)
    while clock.t < 60 * DAY:
        tel.observe(*_feeds(rng, "image", 1), 2.0)
        clock.t += 3 * 3600  # offline: nothing drained, nothing acknowledged
        tel.close_due()
        assert tel.spool.size_bytes() <= bound
        files = tel.spool.files()
        assert all(int(f.name.split("-")[0]) / 1e6 >= clock.t - 7 * DAY for f in files)
    windows = 60 * 4
    kept = len(tel.spool.files())
    assert kept == 29  # windows ending in the last 7 days (both ends): age bites before size
    assert tel.spool.dropped == windows - kept - len(tel._open)
    # the newest survive, and the count of drops travels in the next window's header
    entries = tel.drain(flush=True, limit=100)
    starts = [T.decode_window(e["payload"]).start for e in entries]
    assert starts == sorted(starts) and starts[-1] == 60 * DAY - 6 * 3600  # oldest first
    last = T.decode_window(entries[-1]["payload"])
    assert last.counters["spool_dropped"] == tel.spool.dropped
    assert len(tel.drain()) == T.DRAIN_LIMIT  # a report carries at most this many


def test_spool_drops_oldest_first_by_size_and_counts_it(tmp_path):
    spool = T.Spool(tmp_path, max_bytes=3 * T.PAYLOAD_SIZE, max_age_s=1e9)
    for i in range(5):
        spool.put(bytes([i]) * T.PAYLOAD_SIZE, end=float(i), now=10.0)
    assert [p[0] for _, p in spool.pending()] == [2, 3, 4]
    assert spool.dropped == 2
    assert T.Spool(tmp_path, max_bytes=3 * T.PAYLOAD_SIZE).dropped == 2  # persisted


def test_spool_forgets_a_half_written_window_after_a_crash(tmp_path):
    spool = T.Spool(tmp_path)
    spool.put(b"\1" * T.PAYLOAD_SIZE, end=1.0, now=1.0)
    # a crash between write and rename leaves only the temp file behind
    (tmp_path / ".00000000000002000000-abc.win.123.tmp").write_bytes(b"\2" * 100)
    reopened = T.Spool(tmp_path)
    assert len(reopened.pending()) == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_epsilon_ledger_is_never_exceeded(tmp_path):
    clock = FakeClock(0.0)
    rng = np.random.default_rng(0)

    def telemetry() -> T.Telemetry:
        tel = T.Telemetry(tmp_path, window_s=60, clock=clock, epsilon=0.3, epsilon_budget=1.0)
        tel.set_model("m", 1)
        return tel

    tel = telemetry()
    for step in range(20):
        if step == 10:
            tel = telemetry()  # a restart reads the ledger back from disk
        tel.observe(*_feeds(rng, "image", 4), 2.0)
        clock.t += 60
        tel.close_due()
        ledger = json.loads((tmp_path / "epsilon.json").read_text())
        assert ledger["spent"] <= ledger["budget"]
    ledger = json.loads((tmp_path / "epsilon.json").read_text())
    assert ledger["spent"] == pytest.approx(0.9)  # three windows of 0.3 fit in 1.0
    assert ledger["refused"] == 17  # every later window was withheld, and counted
    entries = tel.drain()
    assert len(entries) == 3
    assert all(T.decode_window(e["payload"]).private for e in entries)
    assert tel.status()["epsilon"]["refused"] == 17


def test_private_window_is_noised_yet_mergeable(tmp_path):
    clock = FakeClock(0.0)
    tel = T.Telemetry(tmp_path, window_s=60, clock=clock, epsilon=1.0, epsilon_budget=10.0)
    tel.set_model("m", 1)
    rng = np.random.default_rng(0)
    for _ in range(50):
        tel.observe(*_feeds(rng, "image", 8), 2.0)
    (entry,) = tel.drain(flush=True)
    w = T.decode_window(entry["payload"])
    assert w.private and w.epsilon == 1.0
    assert w.counters["rows"] != 400 or w.counters["calls"] != 50  # noised counts
    assert w.sketches["out0"].is_empty()  # an unused slot stays empty


def test_epsilon_needs_a_budget(tmp_path):
    with pytest.raises(EdgeforgeError, match="budget"):
        T.Telemetry(tmp_path, epsilon=1.0)
    with pytest.raises(EdgeforgeError, match="> 0"):
        T.Telemetry(tmp_path, epsilon=0.0, epsilon_budget=1.0)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_device_side_imports_neither_torch_nor_opendp_without_epsilon(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from edgeforge.fleet.telemetry import Telemetry\n"
        f"t = Telemetry({str(tmp_path)!r}, window_s=1)\n"
        "t.set_model('m', 1)\n"
        "t.observe(np.zeros((1, 3, 4, 4), np.float32), np.ones((1, 4)) / 4, 1.0, now=0.0)\n"
        "assert t.drain(now=5.0)\n"
        "heavy = ('torch', 'opendp', 'onnx', 'edgeforge.fleet.monitor')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr


def test_epsilon_without_opendp_says_what_to_install(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['opendp'] = None  # as on a device where it is not installed\n"
        "sys.modules['opendp.prelude'] = None\n"
        "from edgeforge.errors import EdgeforgeError\n"
        "from edgeforge.fleet.telemetry import Telemetry\n"
        "try:\n"
        f"    Telemetry({str(tmp_path)!r}, epsilon=1.0, epsilon_budget=5.0)\n"
        "except EdgeforgeError as e:\n"
        "    print(e)\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    assert "OpenDP" in done.stdout and "edgeforge[fleet]" in done.stdout


def test_device_facts_where_the_os_gives_them(tmp_path):
    sysfs = tmp_path / "sys"
    for zone, milli in (("thermal_zone0", "41000"), ("thermal_zone1", "57500")):
        (sysfs / "class" / "thermal" / zone).mkdir(parents=True)
        (sysfs / "class" / "thermal" / zone / "temp").write_text(milli + "\n")
    cpufreq = sysfs / "devices" / "system" / "cpu" / "cpu0" / "cpufreq"
    cpufreq.mkdir(parents=True)
    (cpufreq / "scaling_cur_freq").write_text("600000\n")
    (cpufreq / "cpuinfo_max_freq").write_text("1800000\n")
    bat = sysfs / "class" / "power_supply" / "BAT0"
    bat.mkdir(parents=True)
    (bat / "type").write_text("Battery\n")
    (bat / "capacity").write_text("83\n")
    (bat / "status").write_text("Discharging\n")
    assert T.device_facts(sysfs) == {
        "temperature_c": 57.5,
        "throttled": 1,
        "battery_pct": 83.0,
        "on_battery": 1,
    }
    empty = T.device_facts(tmp_path / "nothing")
    assert empty == dict.fromkeys(empty)  # all None
    clock = FakeClock(0.0)
    tel = T.Telemetry(tmp_path / "t", window_s=60, clock=clock, sysfs=sysfs)
    tel.set_model("m", 1)
    tel.observe(*_feeds(np.random.default_rng(0), "image", 1), 1.0)
    (entry,) = tel.drain(flush=True)
    assert T.decode_window(entry["payload"]).facts["temperature_c"] == 57.5


def test_a_corrupt_or_foreign_payload_is_refused():
    with pytest.raises(EdgeforgeError, match="not a format"):
        T.decode_window(b"x" * 10)
    with pytest.raises(EdgeforgeError, match="base64"):
        T.decode_window("not base64!")
    bad = bytearray(T.Window("m", 1, "c", 0.0, 1.0).to_bytes())
    struct.pack_into("<H", bad, 4, 99)
    with pytest.raises(EdgeforgeError, match="format 99"):
        T.decode_window(bytes(bad))
    with pytest.raises(EdgeforgeError, match="longer than 64"):
        T.Telemetry.set_model(T.Telemetry.__new__(T.Telemetry), "n" * 65, 1)


def test_a_disk_that_refuses_writes_never_reaches_predict(tmp_path):
    clock = FakeClock(0.0)
    tel = T.Telemetry(tmp_path, window_s=60, clock=clock)
    tel.set_model("m", 1)
    rng = np.random.default_rng(0)
    tel.observe(*_feeds(rng, "image", 2), 1.0)
    # the spool folder is gone and a file stands in its place: every write fails (ENOTDIR)
    for f in tmp_path.joinpath("spool").iterdir():
        f.unlink()
    tmp_path.joinpath("spool").rmdir()
    tmp_path.joinpath("spool").write_bytes(b"")
    for _ in range(3):
        clock.t += 60
        tel.observe(*_feeds(rng, "image", 2), 1.0)  # closes a window: the write fails quietly
    assert tel.write_failures == 3
    assert tel.spool.dropped == 3
