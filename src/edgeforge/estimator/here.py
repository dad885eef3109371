"""`calibrate --here`: fit this machine's factors from micro-benchmarks it runs.

What it runs (ONNX Runtime, its default threads, one graph per case, built with onnx.helper):
- MatMul of square matrices, Conv 3x3 and depthwise Conv 3x3 across sizes (compute);
- Add of two tensors across sizes, from cache-resident (1 MB each) to far past the caches
  (memory: the largest gives the bandwidth of main memory);
- a chain of tiny MatMuls (the fixed cost of one layer).

How it fits (what a caller can rely on):
- bandwidth = bytes the largest Add truly moves (two reads, one write) / its time; it becomes
  `this-machine`'s memory bandwidth, tagged "measured";
- layer overhead = the tiny chain's time / its length;
- each efficiency is the roofline's own time at efficiency 1 (with the estimator's own byte and
  FLOP accounting) over the measured time less the overhead, median over a class's sizes:
  conv, conv_depthwise and matmul are measured; attention, recurrent and the rest keep their
  prior ratio to matmul (`calibration.PRIORS`); memory efficiency comes from the Adds, median
  over their sizes, so it is above 1 where caches beat main memory (a layer's tensors mostly fit
  them);
- the band is the spread of measured / predicted over every case (at least 0.8-1.25: whole
  models are less regular than single layers).

The result is stored in the cache folder (`$EDGEFORGE_CACHE`, default ~/.cache/edgeforge) under
`calibration/this-machine.json` with the host it was measured on; `this-machine` and
`load_factors()` use it only on that same host (CPU model and core counts).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeforge._io import write_json
from edgeforge._progress import track
from edgeforge.estimator.calibration import PRIOR_DEFAULT, PRIORS, FactorEntry, _band
from edgeforge.estimator.roofline import _peak_gops, roofline_ms

__all__ = ["Case", "HereCalibration", "calibrate_here", "cases"]

_CHAIN = 64  # tiny layers in the overhead case
_MIN_BAND = (0.8, 1.25)


@dataclass(frozen=True)
class Case:
    """One micro-benchmark: a graph, its feeds, and the class it measures."""

    name: str
    kind: str  # "matmul", "conv", "conv_depthwise", "memory", "overhead"
    build: Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray]]]


@dataclass
class HereCalibration:
    """What `calibrate_here` measured and fitted; `to_dict()` is the stored file."""

    host: dict[str, Any]
    date: str
    onnxruntime: str
    bandwidth_gbps: float
    entry: FactorEntry
    cases: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "host": self.host,
            "date": self.date,
            "onnxruntime": self.onnxruntime,
            "bandwidth_gbps": self.bandwidth_gbps,
            "entry": self.entry.to_dict(),
            "cases": self.cases,
        }


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "micro", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _value(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _random(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _matmul(n: int) -> Case:
    def build():
        w = numpy_helper.from_array(_random((n, n), 1), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")
        return _model([node], [_value("x", [n, n])], [_value("y", [n, n])], [w]), {
            "x": _random((n, n))
        }

    return Case(f"matmul {n}x{n}x{n}", "matmul", build)


def _conv(channels: int, size: int, depthwise: bool) -> Case:
    group = channels if depthwise else 1
    kind = "conv_depthwise" if depthwise else "conv"

    def build():
        w = numpy_helper.from_array(_random((channels, channels // group, 3, 3), 1), "w")
        node = helper.make_node(
            "Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1], group=group
        )
        shape = [1, channels, size, size]
        return _model([node], [_value("x", shape)], [_value("y", shape)], [w]), {
            "x": _random(tuple(shape))
        }

    return Case(f"{kind} {channels}ch {size}x{size}", kind, build)


def _add(elements: int) -> Case:
    def build():
        node = helper.make_node("Add", ["a", "b"], ["y"], name="add")
        shape = [elements]
        model = _model([node], [_value("a", shape), _value("b", shape)], [_value("y", shape)], [])
        return model, {"a": _random((elements,)), "b": _random((elements,), 2)}

    return Case(f"add {elements / 1e6:g}M floats", "memory", build)


def _chain() -> Case:
    def build():
        nodes, weights = [], []
        for i in range(_CHAIN):
            weights.append(numpy_helper.from_array(_random((16, 16), i) * 0.1, f"w{i}"))
            source = "x" if i == 0 else f"h{i - 1}"
            target = "y" if i == _CHAIN - 1 else f"h{i}"
            nodes.append(helper.make_node("MatMul", [source, f"w{i}"], [target], name=f"mm{i}"))
        model = _model(nodes, [_value("x", [1, 16])], [_value("y", [1, 16])], weights)
        return model, {"x": _random((1, 16))}

    return Case(f"{_CHAIN} tiny matmuls", "overhead", build)


def cases(quick: bool = False) -> list[Case]:
    """The micro-benchmarks, fewer and smaller when `quick` (for tests)."""
    if quick:
        return [
            _chain(),
            _add(1 << 22),
            _matmul(256),
            _conv(32, 56, False),
            _conv(64, 56, True),
        ]
    return [
        _chain(),
        *(_add(n) for n in (1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 25)),
        *(_matmul(n) for n in (256, 512, 1024)),
        *(_conv(c, s, False) for c, s in ((32, 112), (64, 56), (128, 28), (256, 14))),
        *(_conv(c, s, True) for c, s in ((32, 112), (96, 56), (192, 28), (384, 14))),
    ]


def _time_ms(path: Path, feeds: dict[str, np.ndarray], threads: int | None) -> float:
    """Median time of one run after warm-up, over at least 10 runs or 0.5 s."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, feeds)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 10 or (time.perf_counter() - started < 0.5 and len(times) < 500):
        begin = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def _unit_entry() -> FactorEntry:
    return FactorEntry.scaled(
        "this-machine", "cpu", "*", 1.0, overhead_ms=0.0, band_low=1.0, band_high=1.0
    )


def calibrate_here(
    *, quick: bool = False, threads: int | None = None, save: bool = True
) -> HereCalibration:
    """Run the micro-benchmarks, fit `this-machine`'s factors, and (when `save`) store them."""
    import onnxruntime as ort

    import edgeforge
    from edgeforge.devices._this_machine import (
        calibration_path,
        host_fingerprint,
        read_host_facts,
        this_machine,
    )

    device = this_machine()
    unit = device.compute[0]
    peak = _peak_gops(unit, "fp32", threads, [])
    measured: list[tuple[Case, float, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgeforge-calibrate-") as scratch:
        for index, case in enumerate(track(cases(quick), "micro-benchmarks")):
            model, feeds = case.build()
            path = Path(scratch) / f"case{index}.onnx"
            onnx.save(model, str(path))
            ms = _time_ms(path, feeds, threads)
            measured.append((case, ms, edgeforge.inspect(path)))

    overhead = next(ms for case, ms, _ in measured if case.kind == "overhead") / _CHAIN
    moved = {  # bytes an Add truly moves: two inputs read, one output written
        case.name: 3 * 4 * int(np.prod(profile.nodes[0].output_shapes[0] or [0]))
        for case, _, profile in measured
        if case.kind == "memory"
    }
    largest, largest_ms = max(
        ((case, ms) for case, ms, _ in measured if case.kind == "memory"),
        key=lambda pair: moved[pair[0].name],
    )
    bandwidth = moved[largest.name] / ((largest_ms - overhead) * 1e-3) / 1e9

    def ratios(kind: str, memory: bool) -> list[float]:
        out = []
        for case, ms, profile in measured:
            if case.kind != kind:
                continue
            layers = roofline_ms(
                profile,
                _unit_entry(),
                peak_gops=1e12 if memory else peak,
                bandwidth_gbps=bandwidth if memory else None,
                precision="fp32",
            )
            out.append(sum(layer.ms for layer in layers) / max(ms - overhead, 1e-6))
        return out

    def median(values: list[float]) -> float:
        return math.exp(statistics.median(math.log(v) for v in values))

    memory_efficiency = median(ratios("memory", True))
    compute = {kind: median(ratios(kind, False)) for kind in ("conv", "conv_depthwise", "matmul")}
    matmul = compute["matmul"]
    efficiency = {
        **compute,
        "attention": matmul * PRIORS["attention"] / PRIORS["matmul"],
        "recurrent": matmul * PRIORS["recurrent"] / PRIORS["matmul"],
    }
    entry = FactorEntry(
        device="this-machine",
        unit="cpu",
        precision="*",
        compute_efficiency=efficiency,
        default_compute=matmul * PRIOR_DEFAULT / PRIORS["matmul"],
        memory_efficiency=memory_efficiency,
        layer_overhead_ms=overhead,
        band_low=1.0,
        band_high=1.0,
    )
    rows: list[dict[str, Any]] = []
    spread: list[float] = []
    for case, ms, profile in measured:
        layers = roofline_ms(
            profile, entry, peak_gops=peak, bandwidth_gbps=bandwidth, precision="fp32"
        )
        predicted = sum(layer.ms for layer in layers)
        if case.kind != "overhead":
            spread.append(ms / predicted)
        rows.append(
            {"case": case.name, "kind": case.kind, "measured_ms": ms, "predicted_ms": predicted}
        )
    low, high = _band(spread)
    entry = dataclasses.replace(
        entry,
        band_low=min(low, _MIN_BAND[0]),
        band_high=max(high, _MIN_BAND[1]),
        fit={
            "method": "micro-benchmarks (edgeforge.estimator.here)",
            "cases": len(measured),
            "threads": threads,
            "bandwidth_gbps": bandwidth,
        },
    )
    result = HereCalibration(
        host=host_fingerprint(read_host_facts()),
        date=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        onnxruntime=ort.__version__,
        bandwidth_gbps=bandwidth,
        entry=entry,
        cases=rows,
    )
    if save:
        write_json(calibration_path(), result.to_dict())
        this_machine.cache_clear()
    return result
