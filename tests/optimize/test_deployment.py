"""Issue 12: a candidate is timed the way it will run, and on this machine the measurement, not
the estimate, decides; bf16 only where the device has it; the estimate knows each recipe."""

from __future__ import annotations

import os
from collections import Counter
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeforge.devices import get_device
from edgeforge.devices._catalog import parse_device
from edgeforge.optimize._build import Builder, compute_precision
from edgeforge.optimize._deploy import deployment, has_bf16, is_transformer
from edgeforge.optimize._pareto import Limits, choose
from edgeforge.optimize._plan import Candidate
from edgeforge.optimize._runoff import balanced_sequence, contenders
from edgeforge.optimize.search import optimize

pytest.importorskip("openvino")

HERE = len(os.sched_getaffinity(0))


def _candidate(cid: str, measured: float) -> Candidate:
    return Candidate(
        id=cid,
        runtime="onnxruntime",
        precision="fp32",
        recipe={"precision": "fp32", "options": {}},
        model="source",
        key=cid,
        status="evaluated",
        artifact="unused",
        size_bytes=1000,
        latency_here_ms=measured,
        accuracy_drop=0.0,
    )


def _builder(device_id: str, estimates: dict[str, float], monkeypatch) -> Builder:
    """A Builder whose roofline estimate is `estimates` (candidate id -> ms)."""
    builder = Builder.__new__(Builder)
    builder.device = get_device(device_id)
    builder._profile = lambda name: SimpleNamespace(nodes=[])
    calls: list[str] = []

    def fake_estimate(profile, device, runtime, precision):
        ms = estimates[calls.pop()]
        return SimpleNamespace(
            latency_ms=ms,
            latency_low_ms=ms,
            latency_high_ms=ms,
            peak_memory_bytes=1,
            weight_bytes=1,
        )

    import edgeforge.estimator

    monkeypatch.setattr(edgeforge.estimator, "estimate", fake_estimate)
    builder._calls = calls
    return builder


def _estimated(builder: Builder, candidates: list[Candidate]) -> None:
    for candidate in candidates:
        builder._calls.append(candidate.id)
        builder._estimate(candidate)


def test_a_candidate_measured_slower_here_is_never_chosen_for_this_machine(monkeypatch):
    # The estimate says "fast-on-paper" is 100x faster; here it measured 5x slower.
    fast_on_paper = _candidate("fast-on-paper", measured=5.0)
    measured_fast = _candidate("measured-fast", measured=1.0)
    estimates = {"fast-on-paper": 0.1, "measured-fast": 10.0}
    builder = _builder("this-machine", estimates, monkeypatch)
    _estimated(builder, [fast_on_paper, measured_fast])

    chosen, _ = choose([fast_on_paper.to_dict(), measured_fast.to_dict()], Limits())
    assert chosen == "measured-fast"
    assert measured_fast.device_latency_ms == 1.0
    assert measured_fast.device_latency_source == "measured here"
    assert fast_on_paper.estimated_ms == 0.1  # the estimate is kept, but does not decide


def test_for_another_device_the_estimate_decides(monkeypatch):
    fast_on_paper = _candidate("fast-on-paper", measured=5.0)
    measured_fast = _candidate("measured-fast", measured=1.0)
    builder = _builder("laptop-cpu", {"fast-on-paper": 0.1, "measured-fast": 10.0}, monkeypatch)
    _estimated(builder, [fast_on_paper, measured_fast])
    chosen, _ = choose([fast_on_paper.to_dict(), measured_fast.to_dict()], Limits())
    assert chosen == "fast-on-paper"
    assert fast_on_paper.device_latency_source == "estimated on laptop-cpu"


@pytest.fixture(scope="module")
def on_this_machine(outlier_digits, digits_folder, tmp_path_factory):
    return optimize(
        outlier_digits,
        "this-machine",
        digits_folder,
        out=tmp_path_factory.mktemp("this-machine"),
        runtimes=["onnxruntime", "openvino"],
        precisions=["fp32", "bf16", "int8-dynamic"],
        bench_runs=5,
        cleanup=False,
    )


def test_this_machine_chooses_the_fastest_measured_candidate(on_this_machine):
    result = on_this_machine
    built = [c for c in result.candidates if c.latency_here_ms is not None]
    assert result.chosen is not None
    chosen = result.candidate(result.chosen)
    assert chosen.latency_here_ms == min(c.latency_here_ms for c in built)
    assert all(c.device_latency_ms == c.latency_here_ms for c in built)
    assert result.limits["latency_means"].startswith("measured here")


def test_the_fastest_candidates_are_timed_again_side_by_side(on_this_machine):
    result = on_this_machine
    chosen = result.candidate(result.chosen)
    assert "runoff" in chosen.timed_with, (chosen.id, result.notes)
    finalists = chosen.timed_with["runoff"]
    assert chosen.id in finalists and len(finalists) >= 2
    assert any(note.startswith("runoff: ") for note in result.notes)
    for cid in finalists:
        assert any("interleaved with" in note for note in result.candidate(cid).notes)
    # No accuracy limit: the finalist measured fastest side by side is the one chosen, and no
    # candidate measured slower (in the runoff or alone) is ever chosen over it.
    medians = {cid: result.candidate(cid).timed_with["runoff_median_ms"] for cid in finalists}
    assert medians[chosen.id] == min(medians.values()), medians
    measured = [c for c in result.candidates if c.latency_here_ms is not None]
    assert all(chosen.latency_here_ms <= c.latency_here_ms for c in measured)


def test_runoff_contenders_are_the_fastest_within_the_accuracy_limit():
    def measured(cid, ms, drop):
        made = _candidate(cid, measured=ms)
        made.accuracy_drop = drop
        return made

    pool = [
        measured("broken-but-fastest", 0.5, 0.2),
        measured("a", 1.0, 0.0),
        measured("b", 1.1, 0.001),
        measured("c", 1.2, 0.0),
        measured("d-near", 1.24, 0.0),
        measured("e-far", 3.0, 0.0),
    ]
    assert [c.id for c in contenders(pool, 0.01)] == ["a", "b", "c", "d-near"]
    assert [c.id for c in contenders(pool, None)][:1] == ["broken-but-fastest"]
    assert contenders(pool[:2], 0.01) == []  # one candidate: nothing to decide


@pytest.mark.parametrize("count", [2, 3, 4, 7, 8])
def test_no_contender_always_runs_after_the_same_one(count):
    # What ran just before slows a run (OpenVINO's threads stay busy after theirs): in the
    # runoff's (and bench/peers.py's) sequence, repeated, every session runs right after every
    # other one exactly once per repetition, and as often as every other session.
    sequence = balanced_sequence(count)
    assert Counter(sequence) == dict.fromkeys(range(count), count - 1)
    follows = Counter(pairwise([*sequence, sequence[0]]))  # the repetition wraps around
    assert follows == {(a, b): 1 for a in range(count) for b in range(count) if a != b}


def test_openvino_candidates_are_timed_with_their_deployment_precision(on_this_machine):
    device = get_device("this-machine")
    openvino = [c for c in on_this_machine.candidates if c.runtime == "openvino"]
    assert {c.precision for c in openvino} >= {"fp32", "int8-dynamic"}
    for candidate in openvino:
        assert candidate.status == "evaluated", candidate.detail
        expected = deployment("openvino", candidate.precision, device)
        # What the timed session was configured with, as the session reports it.
        assert candidate.timed_with["inference_precision"] == expected["inference_precision"]
        assert candidate.timed_with["threads"] == HERE
    by_precision = {c.precision: c for c in openvino}
    assert by_precision["fp32"].timed_with["effective_precision"] == "f32"
    # int8-dynamic runs at OpenVINO's default: not pinned to f32 the way parity checks are.
    assert by_precision["int8-dynamic"].timed_with["inference_precision"] == "default"
    if has_bf16(device):
        assert by_precision["bf16"].timed_with["effective_precision"] == "bf16"
        assert by_precision["int8-dynamic"].timed_with["effective_precision"] == "bf16"
        assert by_precision["bf16"].accuracy_drop < 0.01
    else:
        assert "bf16" not in by_precision


def test_bf16_is_not_offered_where_the_device_lacks_it(outlier_digits, digits_folder, tmp_path):
    result = optimize(
        outlier_digits,
        "laptop-cpu",  # AVX2, no AVX-512 BF16 or AMX
        digits_folder,
        out=tmp_path,
        runtimes=["openvino"],
        precisions=["fp32", "bf16"],
        bench_runs=2,
        cleanup=False,
    )
    assert [c.precision for c in result.candidates] == ["fp32"]
    assert any(s["runtime"] == "openvino/bf16" for s in result.skipped)


def test_bf16_is_read_from_a_catalogue_unit_s_features():
    def device(features):
        unit = {
            "kind": "cpu",
            "name": "4 cores",
            "peak": {
                "fp32": {"value": 100, "tag": "derived", "source": "test"},
                "fp16": {"absent": "none"},
                "int8": {"absent": "none"},
            },
        }
        if features is not None:
            unit["features"] = features
        absent = {"absent": "unknown"}
        return parse_device(
            {
                "id": "test-cpu",
                "name": "Test CPU",
                "kind": "laptop",
                "aliases": [],
                "runtimes": ["openvino"],
                "ram_gb": absent,
                "memory_bandwidth_gbps": absent,
                "size_budget_mb": absent,
                "compute": [unit],
            },
            "test",
        )

    assert has_bf16(device(["amx_bf16", "avx512_vnni"]))
    assert not has_bf16(device(["avx512_vnni"]))
    assert not has_bf16(device(None))
    assert not has_bf16(get_device("laptop-cpu"))


def test_the_estimate_prices_each_recipe():
    laptop = get_device("laptop-cpu")

    def nodes(*pairs):
        return SimpleNamespace(nodes=[SimpleNamespace(op_type=o, flops=f) for o, f in pairs])

    cnn = nodes(("Conv", 900), ("Gemm", 100))
    encoder = nodes(("MatMul", 900), ("Softmax", 10))
    assert compute_precision("int8-dynamic", cnn, laptop)[0] == "fp32"
    assert "ConvInteger" in compute_precision("int8-dynamic", cnn, laptop)[1]
    assert compute_precision("int8-dynamic", encoder, laptop)[0] == "int8"
    assert compute_precision("int8-static", cnn, laptop)[0] == "int8"
    assert compute_precision("bf16", encoder, laptop)[0] == "fp32"
    assert compute_precision("fp16", encoder, laptop)[0] == "fp32"  # no fp16 arithmetic
    machine = get_device("this-machine")
    if has_bf16(machine):
        assert compute_precision("bf16", encoder, machine)[0] == "fp16"


def test_a_transformer_is_told_from_a_cnn(tiny_bert, outlier_digits):
    import edgeforge

    assert is_transformer(tiny_bert[0])
    assert not is_transformer(edgeforge.load(Path(outlier_digits)))


@pytest.mark.slow
def test_a_transformer_gets_fused_candidates_and_nncf_s_transformer_scheme(tiny_bert, tmp_path):
    model, data = tiny_bert
    result = optimize(
        model.onnx_path,
        "this-machine",
        data,
        out=tmp_path,
        runtimes=["onnxruntime", "openvino"],
        precisions=["fp32", "int8-static"],
        bench_runs=2,
        cleanup=False,
    )
    by_id = {c.id: c for c in result.candidates}
    fused = by_id["fused/onnxruntime/fp32"]
    assert fused.status == "evaluated", fused.detail
    assert fused.accuracy_drop < 1e-4
    assert "fused/onnxruntime/int8-static-minmax" in by_id
    assert any("fused variant" in note for note in result.notes)
    openvino = by_id["openvino/int8-static"]
    assert openvino.status == "evaluated", openvino.detail
    assert openvino.recipe["options"]["model_type"] == "transformer"
    assert any("SmoothQuant" in note for note in openvino.notes)
    assert any("preset mixed" in note for note in openvino.notes)
    # Both NNCF presets: mixed the more accurate, performance the faster on AMX.
    performance = by_id["openvino/int8-static-performance"]
    assert performance.status == "evaluated", performance.detail
    assert any("preset performance" in note for note in performance.notes)
    ort_int8 = by_id["onnxruntime/int8-static-minmax"]
    assert ort_int8.recipe["options"]["model_type"] == "transformer"
    assert any("feed-forward MatMul(s) (into and out of GELU)" in n for n in ort_int8.notes)
