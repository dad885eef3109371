"""The transfer latency model (issue 19, items 3 and 4): grouped splits that never leak a
model or device into both sides, a fit that predicts an unseen device from pooled terms, and a
few-shot adaptation that brings a held-out device's error down."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics

import pytest

from edgeforge.estimator.transfer import (
    CLASSES,
    RowWork,
    TransferModel,
    engine_of,
    fit_transfer,
    fit_with_inner_split,
    grouped_folds,
    load_transfer,
    median_abs_pct,
    validation_groups,
)

DEVICES = [f"dev{i}" for i in range(6)]
MODELS = [f"net{i}" for i in range(8)]
# The truth the synthetic rows come from: per-class slowdowns, a per-device scale that the
# specs do not explain, and a per-layer overhead.
TRUE_THETA = {"conv": 0.7, "conv_depthwise": 1.6, "matmul": 0.4, "other": 1.1}
TRUE_DEVICE = {"dev0": 0.0, "dev1": 0.4, "dev2": -0.3, "dev3": 0.2, "dev4": -0.1, "dev5": 1.2}


def _row(device: str, model: str, rng: random.Random) -> tuple[RowWork, float]:
    seed = random.Random(model)  # a model's work mix is the same on every device
    work = tuple(seed.uniform(0.2, 5.0) for _ in CLASSES)
    layers = seed.randint(20, 120)
    row = RowWork(work, layers, device, "cpu", "fp32", "ncnn/cpu", (0.0, 0.0, 0.0))
    scale = math.exp(TRUE_DEVICE[device])
    true = sum(w * math.exp(TRUE_THETA[c]) for w, c in zip(work, CLASSES, strict=True)) * scale
    true += layers * 0.01
    return row, true * math.exp(rng.gauss(0, 0.05))


@pytest.fixture(scope="module")
def rows() -> list[tuple[RowWork, float]]:
    rng = random.Random(19)
    return [_row(d, m, rng) for d in DEVICES for m in MODELS]


def test_grouped_folds_never_put_a_group_on_both_sides():
    groups = ["resnet50", "squeezenet", "resnet50", "mobilenet", "squeezenet", "resnet50"]
    folds = list(grouped_folds(groups))
    assert [group for group, _, _ in folds] == ["mobilenet", "resnet50", "squeezenet"]
    for group, train, test in folds:
        assert {groups[i] for i in test} == {group}
        assert group not in {groups[i] for i in train}
        assert sorted(train + test) == list(range(len(groups)))


def test_the_inner_validation_part_is_whole_groups_and_never_all():
    held = validation_groups([f"m{i}" for i in range(7)] * 3)
    assert held and len(held) < 7
    assert validation_groups(["only", "only"]) == set()


def test_engine_reads_the_runtime_family_and_ncnn_core_choice():
    assert engine_of("ncnn benchncnn Vulkan gpu_device=0 powersave=0", "gpu") == "ncnn/gpu"
    assert engine_of("ncnn benchncnn CPU threads=4 powersave=2", "cpu") == "ncnn/cpu/ps2"
    assert engine_of("PyTorch CUDA (torch2trt baseline)", "gpu") == "pytorch/gpu"
    assert engine_of("TensorRT via torch2trt (fp16_mode)", "gpu") == "tensorrt/gpu"
    assert engine_of(None, "cpu") == "other/cpu"


def test_fit_recovers_the_class_efficiencies_on_devices_it_saw(rows):
    model = fit_transfer([w for w, _ in rows], [m for _, m in rows], shrink=0.3)
    assert median_abs_pct(model, [w for w, _ in rows], [m for _, m in rows]) < 5
    # Depthwise convolutions are the slowest class per prior-roofline ms, matmul the fastest.
    assert model.theta["conv_depthwise"] > model.theta["conv"] > model.theta["matmul"]


def test_an_unseen_device_is_predicted_from_the_pooled_terms_and_round_trips(rows, tmp_path):
    seen = [(w, m) for w, m in rows if w.device != "dev3"]
    model = fit_with_inner_split(
        [w for w, _ in seen], [m for _, m in seen], [w.device for w, _ in seen]
    )
    assert not model.knows("dev3")
    unseen = [(w, m) for w, m in rows if w.device == "dev3"]
    # dev3's true scale is exp(0.2) off the pooled one: about 20% error, not orders of magnitude.
    assert median_abs_pct(model, [w for w, _ in unseen], [m for _, m in unseen]) < 40
    path = tmp_path / "transfer.json"
    path.write_text(json.dumps(model.to_dict()))
    again = load_transfer(path, adapted=False)
    assert again == TransferModel.from_dict(model.to_dict())
    assert again.predict(unseen[0][0]) == pytest.approx(model.predict(unseen[0][0]))


def test_few_shot_adaptation_cuts_the_error_on_models_it_did_not_see(rows):
    # dev5 runs everything 3.3x slower than its specs say; the fit never saw it.
    seen = [(w, m) for w, m in rows if w.device != "dev5"]
    model = fit_transfer([w for w, _ in seen], [m for _, m in seen], shrink=3.0)
    own = [(w, m) for w, m in rows if w.device == "dev5"]
    references, others = own[:3], own[3:]  # three reference models; score on the other five
    before = median_abs_pct(model, [w for w, _ in others], [m for _, m in others])
    adapted = model.adapt([w for w, _ in references], [m for _, m in references])
    after = median_abs_pct(adapted, [w for w, _ in others], [m for _, m in others])
    assert before > 50
    assert after < before / 3
    assert adapted.knows("dev5") and not model.knows("dev5")
    # The shared terms are untouched: the other devices predict exactly as before.
    assert adapted.predict(seen[0][0]) == pytest.approx(model.predict(seen[0][0]))


def test_adaptation_moves_each_unit_of_the_device_apart(rows):
    # dev5's GPU runs 2x faster than its CPU relative to the pooled GPU terms: CPU references
    # alone leave its GPU at the device's scale, GPU references move the GPU term itself.
    seen = [(w, m) for w, m in rows if w.device != "dev5"]
    gpu = [
        (dataclasses.replace(w, kind="gpu", engine="ncnn/gpu"), m)
        for w, m in rows
        if w.device != "dev5"
    ]
    model = fit_transfer([w for w, _ in seen + gpu], [m for _, m in seen + gpu], shrink=3.0)
    own_cpu = [(w, m) for w, m in rows if w.device == "dev5"]
    own_gpu = [(dataclasses.replace(w, kind="gpu", engine="ncnn/gpu"), m / 2) for w, m in own_cpu]
    references = own_cpu[:3] + own_gpu[:3]
    adapted = model.adapt([w for w, _ in references], [m for _, m in references])
    assert {"dev5/ncnn/cpu/fp32", "dev5/ncnn/gpu/fp32"} <= set(adapted.device_unit)
    assert (
        adapted.device_unit["dev5/ncnn/gpu/fp32"] < adapted.device_unit["dev5/ncnn/cpu/fp32"] - 0.3
    )
    for part in (own_cpu[3:], own_gpu[3:]):
        assert median_abs_pct(adapted, [w for w, _ in part], [m for _, m in part]) < 15
    assert not model.device_unit  # the pooled fit has no unit terms


def test_one_reference_moves_the_estimate_part_of_the_way_and_more_move_it_further(rows):
    # A shrinkage estimator: dev5's offset (1.2 in log) is learned more fully from more rows,
    # and a single row never overshoots it.
    seen = [(w, m) for w, m in rows if w.device != "dev5"]
    model = fit_with_inner_split(
        [w for w, _ in seen], [m for _, m in seen], [w.device for w, _ in seen]
    )
    own = [(w, m) for w, m in rows if w.device == "dev5"]
    moved = []
    for count in (1, 3, 6):
        adapted = model.adapt([w for w, _ in own[:count]], [m for _, m in own[:count]])
        moved.append(math.log(adapted.predict(own[-1][0]) / model.predict(own[-1][0])))
    assert 0 < moved[0] < moved[1] < moved[2] < 1.3


def test_adaptation_variances_come_from_devices_held_out_of_the_fit(rows):
    # The training devices' scales spread by ~0.5 in log; a fit that saw each device would
    # call that spread almost nothing, one that held each out sees it.
    seen = [(w, m) for w, m in rows if w.device != "dev5"]
    model = fit_with_inner_split(
        [w for w, _ in seen], [m for _, m in seen], [w.device for w, _ in seen]
    )
    device, group, row = model.adapt_variances
    assert device + group > 0.02
    assert row < 0.01  # the rows' own noise is 5%
    again = TransferModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.adapt_variances == model.adapt_variances


def test_published_int8_rows_of_ncnn_on_vulkan_ran_on_the_cpu():
    from edgeforge.estimator.published import unit_of_runtime

    runtime = "ncnn benchncnn Vulkan gpu_device=0 threads=1 powersave=0"
    assert unit_of_runtime(runtime, "int8") == "cpu"
    assert unit_of_runtime(runtime, "fp16") == "gpu"
    assert unit_of_runtime("TensorRT", "int8") == "gpu"


def test_adapt_refuses_rows_of_several_devices(rows):
    from edgeforge.errors import EdgeforgeError

    model = fit_transfer([w for w, _ in rows], [m for _, m in rows])
    with pytest.raises(EdgeforgeError, match="one device"):
        model.adapt([rows[0][0], rows[-1][0]], [1.0, 2.0])
    assert statistics.fmean(model.band) > 0


# -- calibrate --device ID --measurements FILE -----------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "edgeforge.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_calibrate_device_without_measurements_is_one_line_exit_2():
    result = _cli("calibrate", "--device", "raspberry-pi-4")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--device and --measurements go together" in result.stderr


def test_calibrate_device_refuses_this_machine_and_a_missing_file(tmp_path):
    from edgeforge import calibrate
    from edgeforge.errors import EdgeforgeError

    with pytest.raises(EdgeforgeError, match="no such file"):
        calibrate(device="raspberry-pi-4", measurements=tmp_path / "none.csv")
    table = tmp_path / "m.csv"
    table.write_text("device,runtime,model,input,precision,batch,latency_ms,fps,source\n")
    with pytest.raises(EdgeforgeError, match="calibrate --here"):
        calibrate(device="this-machine", measurements=table)


@pytest.mark.slow
def test_calibrate_device_adapts_estimates_to_measurements(tmp_path, monkeypatch):
    """A Pi 4 that runs SqueezeNet 3x slower than the shipped model says: after calibrating on
    it, `estimate` on that device (read back from the stored terms) moves the same way."""
    import edgeforge
    from edgeforge import calibrate
    from edgeforge.zoo import catalog

    monkeypatch.setenv("EDGEFORGE_CACHE", str(tmp_path / "cache"))
    model = load_transfer()
    if model is None:
        pytest.skip("this checkout ships no transfer model (scripts/fit_transfer.py)")
    module, inputs, options = catalog.build("squeezenet1_1")
    profile = edgeforge.inspect(module, inputs, workdir=tmp_path / "sq", **options)
    predicted = edgeforge.estimate(profile, "raspberry-pi-4", unit="cpu").latency_ms
    header = "device,runtime,model,input,precision,batch,latency_ms,fps,source\n"
    line = "My Pi,ncnn benchncnn CPU threads=4 powersave=0,squeezenet,227x227x3,fp32,1,{ms},,me\n"
    table = tmp_path / "measured.csv"
    table.write_text(
        header + line.format(ms=3 * predicted) + "My Pi,x,not-a-net,1x1,fp32,1,1,,me\n"
    )
    result = calibrate(device="raspberry-pi-4", measurements=table).to_dict()
    assert result["mode"] == "device" and result["rows"] == 1
    assert [s["line"] for s in result["skipped"]] == [3]
    assert result["after_median_abs_pct_error"] < result["before_median_abs_pct_error"]
    after = edgeforge.estimate(profile, "raspberry-pi-4", unit="cpu").latency_ms
    # One reference row moves the device's scale part of the way (it is shrunk toward the
    # pooled value as one row deserves), in the measured direction.
    assert after > 1.2 * predicted


def test_ncnn_powersave_1_rows_are_costed_on_the_little_cores():
    from edgeforge.devices import get_device
    from edgeforge.estimator.transfer import _unit

    rk3588 = get_device("rockchip-rk3588")
    little = _unit(rk3588, "cpu", "ncnn benchncnn CPU threads=4 powersave=1")
    big = _unit(rk3588, "cpu", "ncnn benchncnn CPU threads=4 powersave=2")
    assert little is not None and "A55" in little.name
    assert big is not None and "A76" in big.name
    assert little.peak["fp16"].value < big.peak["fp16"].value
    # A device without a little-cluster unit keeps its one CPU unit.
    pi5 = get_device("raspberry-pi-5")
    assert _unit(pi5, "cpu", "powersave=1") == next(u for u in pi5.compute if u.kind == "cpu")
