"""`calibrate --here`: fit this machine's factors from micro-benchmarks it runs.

What it runs (ONNX Runtime, the threads asked for, else its default as `bench` uses; one small
graph per case, built with onnx.helper, never a model of the zoo): for every cost class the
roofline tells apart, layers at sizes sampled across the range real layers have -- MatMul
(square, transformer-shaped, a classifier head), attention's activation-by-activation
MatMuls, Conv 3x3 / 1x1 / strided / 7x7 stem, depthwise 3x3 / 5x5 / strided and of channels
the NCHWc layout cannot block (each conv that keeps its shape alone and four in a row), depthwise
rows with and without a fused activation (Clip, HardSwish, Sigmoid), LSTM and GRU, Softmax,
LayerNorm with and without a residual Add before it, elementwise ops (Sigmoid, HardSwish,
HardSigmoid, Relu, Clip, Erf, Gelu, Where, a channel-broadcast Mul), pairwise broadcasts (Max,
Sub of [n, 1] against [1, n]), pooling, ReduceMean, Transpose and Concat; Adds of two tensors
from cache-resident to far past the caches; one tiny Relu, and chains of 64 tiny MatMuls and of
64 tiny Concats.

How it fits (what a caller can rely on):
- the runtime call's own cost (once per inference) and the layer overhead (once per node) from
  one tiny Relu and a chain of 64 tiny MatMuls (call + 1 node, call + 64 nodes); the data
  movement classes' own fixed cost = the Concat chain's time less the call, / 64; every other
  case's time has the call's cost taken off before it is fitted;
- bandwidth = bytes the largest Add truly moves (two reads, one write) / its time; it becomes
  `this-machine`'s memory bandwidth, tagged "measured"; the memory efficiency is a curve over
  stream sizes (each Add's roofline time over its measured time), so that a layer whose
  tensors fit the caches is priced at cache speed, and weights at the speed of a stream as long
  as all the model's weights;
- each class's compute efficiency = the roofline's compute time at efficiency 1 (with the
  estimator's own FLOP accounting, the graph read for depthwise, fused and skip-norm nodes)
  over the measured time less the overheads, median (log space) over the class's cases; a
  conv's own time is the difference between its row of four and its lone run, which removes
  the layout copies ONNX Runtime adds at a graph's NCHW ends; lone convs have those copies,
  costed as memory moves, taken off; ops of the light classes measured alone also get their
  own figure (a Where is slower than a Relu), which the roofline prefers, and so do LSTM and
  GRU; data movement ops get a multiplier on their memory time;
- the pass a fused activation costs (`activation_pass`) = what it adds to a depthwise row over
  its compute time as a node of its own (its op's figure), median over the activations;
- the NCHWc channel block is read from ONNX Runtime's own layout of a small conv (the output
  channels it pads the weights to); the roofline then costs the copies where a blocked conv
  meets an op that is not blocked, and prices the depthwise convs it cannot block (channels not
  a multiple of 4) with their own class, measured on such convs;
- attention and recurrent classes without cases keep their prior ratio to matmul;
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

_CHAIN = 64  # tiny layers in the overhead cases
_REPEAT = 4  # convs in a row in a conv case
_MIN_BAND = (0.8, 1.25)
_RELU6 = {"low": 0.0, "high": 6.0}  # a Clip's bounds as MobileNets use it


@dataclass(frozen=True)
class Case:
    """One micro-benchmark: a graph, its feeds, and the class it measures."""

    name: str
    kind: str  # a cost class (`COMPUTE_CLASSES`), "memory", or "overhead..."
    build: Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray]]]
    repeat: int = 1  # identical layers in a row (conv cases come as a lone one and a row)
    op: str = ""  # the one op it runs, where a class's ops differ enough to get their own figure


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


def _model(nodes, inputs, outputs, initializers, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "micro", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _value(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _random(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _single(
    name: str,
    kind: str,
    op: str,
    inputs: dict[str, list[int]],
    output: list[int],
    weights: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    **attributes: Any,
) -> Case:
    """A one-node graph: `inputs` fed at run time, `weights` stored as initializers."""

    def build():
        stored = {
            key: numpy_helper.from_array(value, key) for key, value in (weights or {}).items()
        }
        node = helper.make_node(op, [*inputs, *stored], ["y"], name=op.lower(), **attributes)
        model = _model(
            [node],
            [_value(key, shape) for key, shape in inputs.items()],
            [_value("y", output)],
            list(stored.values()),
            opset,
        )
        feeds = {key: _random(tuple(shape), i) for i, (key, shape) in enumerate(inputs.items())}
        return model, feeds

    return Case(name, kind, build, op=op)


def _matmul(m: int, k: int, n: int) -> Case:
    return _single(
        f"matmul {m}x{k}x{n}", "matmul", "MatMul", {"x": [m, k]}, [m, n], {"w": _random((k, n), 1)}
    )


def _batched_matmul(heads: int, m: int, k: int, n: int) -> Case:
    """Attention's products: both operands are activations."""
    return _single(
        f"batched matmul {heads}x{m}x{k}x{n}",
        "matmul_batched",
        "MatMul",
        {"a": [heads, m, k], "b": [heads, k, n]},
        [heads, m, n],
    )


def _convs(
    channels: int,
    size: int,
    depthwise: bool,
    out_channels: int | None = None,
    kernel: int = 3,
    stride: int = 1,
    kind: str = "",
) -> list[Case]:
    """A lone conv, and `_REPEAT` of them in a row when it keeps its input's shape: the
    difference is the conv's own time, free of the fixed cost and of the layout copies ONNX
    Runtime adds at the graph's ends (NCHW in and out), which the lone one then gives."""
    out_channels = out_channels or channels
    pad = kernel // 2
    out = (size + 2 * pad - kernel) // stride + 1
    repeats = (1, _REPEAT) if (out_channels, out) == (channels, size) else (1,)
    return [
        _conv(channels, size, depthwise, out_channels, kernel, stride, repeat, kind)
        for repeat in repeats
    ]


def _conv(
    channels: int,
    size: int,
    depthwise: bool,
    out_channels: int,
    kernel: int,
    stride: int,
    repeat: int,
    kind: str = "",
) -> Case:
    group = channels if depthwise else 1
    kind = kind or ("conv_depthwise" if depthwise else "conv")
    pad = kernel // 2
    out = (size + 2 * pad - kernel) // stride + 1

    def build():
        shape = [1, channels, size, size]
        nodes, weights = [], []
        for i in range(repeat):
            weight = _random((out_channels, channels // group, kernel, kernel), i) * 0.1
            weights.append(numpy_helper.from_array(weight, f"w{i}"))
            source = "x" if i == 0 else f"h{i - 1}"
            target = "y" if i == repeat - 1 else f"h{i}"
            nodes.append(
                helper.make_node(
                    "Conv",
                    [source, f"w{i}"],
                    [target],
                    name=f"conv{i}",
                    pads=[pad] * 4,
                    strides=[stride, stride],
                    group=group,
                )
            )
        output = [1, out_channels, out, out]
        model = _model(nodes, [_value("x", shape)], [_value("y", output)], weights)
        return model, {"x": _random(tuple(shape))}

    name = f"{kind} {channels}->{out_channels}ch {kernel}x{kernel}/{stride} {size}x{size}"
    return Case(f"{name} x{repeat}", kind, build, repeat)


def _recurrent(op: str, steps: int, features: int, hidden: int) -> Case:
    gates = {"LSTM": 4, "GRU": 3}[op]
    return _single(
        f"{op.lower()} {steps} steps {features}->{hidden}",
        "recurrent",
        op,
        {"x": [steps, 1, features]},
        [steps, 1, 1, hidden],
        {
            "w": _random((1, gates * hidden, features), 1) * 0.1,
            "r": _random((1, gates * hidden, hidden), 2) * 0.1,
        },
        hidden_size=hidden,
    )


def _unary(
    op: str, kind: str, shape: list[int], output: list[int] | None = None, **attrs: Any
) -> Case:
    label = "x".join(map(str, shape))
    return _single(f"{op} {label}", kind, op, {"x": shape}, output or shape, **attrs)


def _where(heads: int, tokens: int) -> Case:
    """Attention's masking: a boolean mask broadcast over the heads picks 0 or the scores."""
    shape = [1, heads, tokens, tokens]

    def build():
        zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
        node = helper.make_node("Where", ["mask", "zero", "x"], ["y"], name="where")
        mask = helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 1, tokens, tokens])
        model = _model([node], [mask, _value("x", shape)], [_value("y", shape)], [zero])
        feeds = {"mask": _random((1, 1, tokens, tokens)) > 1.0, "x": _random(tuple(shape))}
        return model, feeds

    return Case(f"Where {'x'.join(map(str, shape))}", "elementwise", build, op="Where")


def _concat(channels: int, size: int) -> Case:
    shape = [1, channels, size, size]

    def build():
        node = helper.make_node("Concat", ["a", "b"], ["y"], name="concat", axis=1)
        output = [1, 2 * channels, size, size]
        model = _model([node], [_value("a", shape), _value("b", shape)], [_value("y", output)], [])
        return model, {"a": _random(tuple(shape)), "b": _random(tuple(shape), 1)}

    return Case(f"Concat 2x{channels}ch {size}x{size}", "data movement", build, op="Concat")


def _scale(channels: int, size: int) -> Case:
    """A squeeze-excitation's channel scale: a broadcast Mul."""
    shape = [1, channels, size, size]
    return _single(
        f"Mul {channels}ch {size}x{size} by channel",
        "elementwise",
        "Mul",
        {"x": shape, "s": [1, channels, 1, 1]},
        shape,
    )


def _pairwise(op: str, boxes: int) -> Case:
    """A pairwise table, as box IoU builds: [1, n, 1, 2] against [1, 1, n, 2]."""
    return _single(
        f"{op} pairwise {boxes}x{boxes}",
        "elementwise_outer",
        op,
        {"a": [1, boxes, 1, 2], "b": [1, 1, boxes, 2]},
        [1, boxes, boxes, 2],
    )


def _layer_norm(tokens: int, hidden: int, skip: bool) -> Case:
    """LayerNorm over the last axis; with `skip`, a residual Add before it (one kernel in
    ONNX Runtime, SkipLayerNormalization)."""
    kind = "normalization_skip" if skip else "normalization"

    def build():
        weights = [
            numpy_helper.from_array(np.ones(hidden, np.float32), "gamma"),
            numpy_helper.from_array(np.zeros(hidden, np.float32), "beta"),
        ]
        nodes = []
        source = "x"
        if skip:
            nodes.append(helper.make_node("Add", ["x", "r"], ["sum"], name="residual"))
            source = "sum"
        nodes.append(
            helper.make_node(
                "LayerNormalization", [source, "gamma", "beta"], ["y"], name="norm", axis=-1
            )
        )
        shape = [1, tokens, hidden]
        inputs = [_value("x", shape)] + ([_value("r", shape)] if skip else [])
        feeds = {"x": _random(tuple(shape))} | ({"r": _random(tuple(shape), 2)} if skip else {})
        return _model(nodes, inputs, [_value("y", shape)], weights), feeds

    return Case(f"{kind} {tokens}x{hidden}", kind, build)


def _activated_convs(activation: str, channels: int = 144, size: int = 56) -> Case:
    """`_REPEAT` depthwise convs in a row, each followed by `activation` (none: "") that the
    runtime fuses into it: against the row without, the cost of applying it."""

    def build():
        nodes, weights = [], []
        source = "x"
        for i in range(_REPEAT):
            weight = _random((channels, 1, 3, 3), i) * 0.1
            weights.append(numpy_helper.from_array(weight, f"w{i}"))
            nodes.append(
                helper.make_node("Conv", [source, f"w{i}"], [f"c{i}"], pads=[1] * 4, group=channels)
            )
            source = f"c{i}"
            if activation:
                bounds = ["low", "high"] if activation == "Clip" else []  # ReLU6
                nodes.append(helper.make_node(activation, [source, *bounds], [f"a{i}"]))
                source = f"a{i}"
        if activation == "Clip":
            weights += [numpy_helper.from_array(np.float32(v), k) for k, v in _RELU6.items()]
        shape = [1, channels, size, size]
        model = _model(nodes, [_value("x", shape)], [_value(source, shape)], weights)
        return model, {"x": _random(tuple(shape))}

    label = activation or "no activation"
    return Case(
        f"depthwise row {channels}ch {size}x{size}, {label}",
        "activation pass",
        build,
        op=activation,
    )


def _add(elements: int) -> Case:
    def build():
        node = helper.make_node("Add", ["a", "b"], ["y"], name="add")
        shape = [elements]
        model = _model([node], [_value("a", shape), _value("b", shape)], [_value("y", shape)], [])
        return model, {"a": _random((elements,)), "b": _random((elements,), 2)}

    return Case(f"add {elements / 1e6:g}M floats", "memory", build)


def _call() -> Case:
    """One tiny Relu: the runtime call's own cost (feeds bound, the output returned) and one
    node's."""
    return _single("one tiny Relu", "overhead call", "Relu", {"x": [1, 16]}, [1, 16])


def _chain(op: str = "MatMul") -> Case:
    """`_CHAIN` tiny nodes in a row: MatMuls (any layer's fixed cost) or Concats (a data
    movement's: each appends the input to what came before; no optimizer removes them)."""

    def build():
        nodes, weights = [], []
        for i in range(_CHAIN):
            source = "x" if i == 0 else f"h{i - 1}"
            target = "y" if i == _CHAIN - 1 else f"h{i}"
            if op == "MatMul":
                weights.append(numpy_helper.from_array(_random((16, 16), i) * 0.1, f"w{i}"))
                nodes.append(helper.make_node("MatMul", [source, f"w{i}"], [target], name=f"n{i}"))
            else:
                nodes.append(
                    helper.make_node("Concat", [source, "x"], [target], name=f"n{i}", axis=0)
                )
        rows = 1 if op == "MatMul" else _CHAIN + 1
        model = _model(nodes, [_value("x", [1, 16])], [_value("y", [rows, 16])], weights)
        return model, {"x": _random((1, 16))}

    kind = "overhead" if op == "MatMul" else "overhead data movement"
    return Case(f"{_CHAIN} tiny {op}s", kind, build)


def cases(quick: bool = False) -> list[Case]:
    """The micro-benchmarks, fewer and smaller when `quick` (for tests): each is one class's
    layer (the `Case.kind`; convs also in a row), at sizes sampled across the range layers
    have."""
    image = [1, 96, 56, 56]
    pool = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    if quick:
        return [
            _call(),
            _chain(),
            _chain("Concat"),
            _add(1 << 22),
            _matmul(256, 256, 256),
            _batched_matmul(4, 64, 32, 64),
            *_convs(32, 56, False),
            *_convs(64, 56, True),
            *_convs(30, 28, True, kind="conv_depthwise_unblocked"),
            _recurrent("LSTM", 16, 32, 64),
            _unary("Softmax", "softmax", [4, 64, 64], axis=-1),
            _layer_norm(64, 128, False),
            _layer_norm(64, 128, True),
            _unary("Sigmoid", "elementwise", [1, 32, 28, 28]),
            *(_activated_convs(op, 32, 28) for op in ("", "Sigmoid")),
            _where(4, 32),
            _pairwise("Max", 64),
            _unary("Transpose", "data movement", [1, 32, 4, 16], [1, 4, 32, 16], perm=[0, 2, 1, 3]),
            _unary("MaxPool", "pooling", [1, 32, 56, 56], [1, 32, 28, 28], **pool),
            _unary("ReduceMean", "reduction", [1, 64, 14, 14], [1, 64, 1, 1], axes=[2, 3]),
        ]
    convs = [
        *((c, s, False, c, 3, 1) for c, s in ((32, 112), (64, 56), (128, 28), (256, 14))),
        *((c, s, False, c, 1, 1) for c, s in ((128, 56), (256, 28), (512, 14), (1024, 7))),
        (64, 56, False, 128, 1, 1),
        (64, 56, False, 128, 3, 2),
        (3, 224, False, 64, 7, 2),
        *((c, s, True, c, 3, 1) for c, s in ((32, 112), (96, 56), (192, 28), (384, 14))),
        (240, 28, True, 240, 5, 1),
        (96, 112, True, 96, 3, 2),
        # channels NCHWc cannot block (not a multiple of 4): ONNX Runtime's plain grouped conv
        *((c, s, True, c, 3, 1, "conv_depthwise_unblocked") for c, s in ((30, 56), (90, 28))),
    ]
    return [
        _call(),
        _chain(),
        _chain("Concat"),
        *(_add(n) for n in (1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 25)),
        *(_matmul(n, n, n) for n in (256, 512, 1024)),
        *(_matmul(m, k, n) for m, k, n in ((64, 384, 384), (128, 384, 1536), (128, 1536, 384))),
        _matmul(1, 1280, 1000),
        *(_batched_matmul(*s) for s in ((12, 64, 32, 64), (12, 128, 32, 128), (12, 128, 128, 32))),
        *(case for args in convs for case in _convs(*args)),
        *(_recurrent(op, 50, 40, 128) for op in ("LSTM", "GRU")),
        *(_recurrent(op, 100, 64, 256) for op in ("LSTM", "GRU")),
        *(
            _unary("Softmax", "softmax", s, axis=-1)
            for s in ([12, 64, 64], [12, 128, 128], [1, 1000])
        ),
        *(
            _layer_norm(t, h, skip)
            for t, h in ((64, 384), (128, 384), (512, 768))
            for skip in (False, True)
        ),
        *(
            _unary(op, "elementwise", image)
            for op in ("Sigmoid", "HardSwish", "HardSigmoid", "Relu", "Erf")
        ),
        _single(
            "Clip (ReLU6) 1x96x56x56",
            "elementwise",
            "Clip",
            {"x": image},
            image,
            {key: np.array(value, np.float32) for key, value in _RELU6.items()},
        ),
        *(_activated_convs(op) for op in ("", "Clip", "HardSwish", "Sigmoid")),
        *(_unary("Gelu", "elementwise", [1, t, 1536], opset=20) for t in (64, 128)),
        *(_where(12, t) for t in (64, 128)),
        *(_pairwise(op, n) for op, n in (("Max", 100), ("Sub", 300))),
        *(
            _unary("Transpose", "data movement", [1, t, 12, 32], [1, 12, t, 32], perm=[0, 2, 1, 3])
            for t in (64, 128)
        ),
        _concat(58, 28),
        _concat(64, 56),
        _scale(96, 56),
        _scale(480, 14),
        _unary("MaxPool", "pooling", [1, 64, 112, 112], [1, 64, 56, 56], **pool),
        _unary("GlobalAveragePool", "pooling", [1, 1024, 7, 7], [1, 1024, 1, 1]),
        *(
            _unary("ReduceMean", "reduction", s, [*s[:2], 1, 1], axes=[2, 3])
            for s in (image, [1, 1280, 7, 7])
        ),
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


# The cost classes the micro-benchmarks measure, each fitted on its own cases.
COMPUTE_CLASSES = (
    "conv",
    "conv_depthwise",
    "conv_depthwise_unblocked",
    "matmul",
    "matmul_batched",
    "recurrent",
    "softmax",
    "normalization",
    "normalization_skip",
    "elementwise",
    "elementwise_outer",
    "pooling",
    "reduction",
)


_PER_OP_CLASSES = ("elementwise", "softmax", "pooling", "reduction", "recurrent")


def _unit_entry(block: int = 0) -> FactorEntry:
    """Every class at efficiency 1, no overhead: the roofline's own time for a case."""
    return FactorEntry(
        "this-machine",
        "cpu",
        "*",
        dict.fromkeys(COMPUTE_CLASSES, 1.0),
        1.0,
        1.0,
        0.0,
        1.0,
        1.0,
        nchwc_block=block,
    )


def nchwc_block() -> int:
    """The channel block of ONNX Runtime's NCHWc layout on this CPU (its MLAS kernels block by 8
    or 16 floats, by CPU), as ONNX Runtime itself lays out a conv of 4 output channels: it pads
    the conv's weights to one block of output channels; 0 where it does not use the layout."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgeforge-nchwc-") as scratch:
        weight = numpy_helper.from_array(_random((4, 4, 3, 3)), "w")
        conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
        model = _model([conv], [_value("x", [1, 4, 8, 8])], [_value("y", [1, 4, 8, 8])], [weight])
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(scratch) / "conv.onnx")
        options.log_severity_level = 3  # its warning that the saved graph is CPU-specific
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    weights = {tensor.name: list(tensor.dims) for tensor in optimized.graph.initializer}
    for node in optimized.graph.node:
        if node.domain.endswith("nchwc") and node.op_type == "Conv":
            return int(weights.get(node.input[1], [0])[0])
    return 0


def _geomean_median(values: list[float]) -> float:
    return math.exp(statistics.median(math.log(v) for v in values))


def calibrate_here(
    *, quick: bool = False, threads: int | None = None, save: bool = True
) -> HereCalibration:
    """Run the micro-benchmarks, fit `this-machine`'s factors, and (when `save`) store them.

    The graphs stay on disk until the fit is done: the roofline reads each one's graph (for
    depthwise convs, fused nodes and layout reorders) when it costs it."""
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
    block = nchwc_block()
    with tempfile.TemporaryDirectory(prefix="edgeforge-calibrate-") as scratch:
        measured: list[tuple[Case, float, Any]] = []
        for index, case in enumerate(track(cases(quick), "micro-benchmarks")):
            model, feeds = case.build()
            path = Path(scratch) / f"case{index}.onnx"
            onnx.save(model, str(path))
            ms = _time_ms(path, feeds, threads)
            measured.append((case, ms, edgeforge.inspect(path)))
        entry, bandwidth = _fit(measured, peak, block)
        rows: list[dict[str, Any]] = []
        spread: list[float] = []
        for case, ms, profile in measured:
            layers = roofline_ms(
                profile, entry, peak_gops=peak, bandwidth_gbps=bandwidth, precision="fp32"
            )
            predicted = sum(layer.ms for layer in layers) + entry.run_overhead_ms
            if not case.kind.startswith("overhead"):
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


def _fit(
    measured: list[tuple[Case, float, Any]], peak: float, block: int
) -> tuple[FactorEntry, float]:
    """The entry and bandwidth the measured cases give (the module docstring's rules); each
    case's graph file must still exist."""
    chain = next(ms for case, ms, _ in measured if case.kind == "overhead")
    call = next(ms for case, ms, _ in measured if case.kind == "overhead call")
    overhead = max(chain - call, 0.0) / (_CHAIN - 1)
    run = max(call - overhead, 0.0)
    moves = [ms for case, ms, _ in measured if case.kind == "overhead data movement"]
    class_overhead = {"data movement": max(moves[0] - run, 0.0) / _CHAIN} if moves else {}
    # Every other case's time less the call's own cost: what its nodes take.
    measured = [
        (case, ms if case.kind.startswith("overhead") else max(ms - run, 0.05 * ms), profile)
        for case, ms, profile in measured
    ]
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
    # Memory efficiency by stream size (caches): the roofline's own time for each Add (its
    # bytes as the roofline counts them) over the measured time.
    curve = []
    for case, ms, profile in measured:
        if case.kind == "memory":
            layers = roofline_ms(
                profile, _unit_entry(), peak_gops=1e12, bandwidth_gbps=bandwidth, precision="fp32"
            )
            efficiency = sum(layer.ms for layer in layers) / max(ms - overhead, 1e-6)
            curve.append((float(layers[0].bytes_moved), efficiency))
    memory_efficiency = _geomean_median([efficiency for _, efficiency in curve])
    # Each class's compute efficiency: the roofline's compute time at efficiency 1 over the
    # measured time less the overheads, median over the class's cases. A conv's time is the
    # difference between a row of them and a lone one; a lone conv (no row) has the layout
    # copies ONNX Runtime adds at the graph's ends (NCHW in and out) taken off, costed as
    # memory moves.
    unit = dataclasses.replace(_unit_entry(), layer_overhead_ms=overhead, memory_curve=tuple(curve))
    with_copies = dataclasses.replace(unit, nchwc_block=block)
    alone = {
        case.name.rsplit(" x", 1)[0]: ms
        for case, ms, _ in measured
        if case.kind.startswith("conv") and case.repeat == 1
    }
    per_layer = {  # a row of convs' name -> one conv's own time
        case.name: (ms - alone[case.name.rsplit(" x", 1)[0]]) / (case.repeat - 1)
        for case, ms, _ in measured
        if case.repeat > 1
    }
    efficiency: dict[str, float] = {}
    for kind in COMPUTE_CLASSES:
        ratios = []
        for case, ms, profile in measured:
            paired = case.repeat == 1 and case.name.replace(" x1", f" x{_REPEAT}") in per_layer
            if case.kind != kind or paired:
                continue  # a lone conv measured in a row too: the row gives its time
            layers = roofline_ms(
                profile, unit, peak_gops=peak, bandwidth_gbps=None, precision="fp32"
            )
            overheads = sum(layer.overhead_ms for layer in layers)
            work = sum(layer.ms for layer in layers) - overheads
            if case.name in per_layer:
                own = per_layer[case.name] - overhead
                ratios.append(work / case.repeat / max(own, 0.05 * ms / case.repeat))
                continue
            copies = _roofline_total(profile, with_copies, 1e12, bandwidth) - _roofline_total(
                profile, unit, 1e12, bandwidth
            )
            ratios.append(work / max(ms - overheads - copies, 0.05 * ms))
        if ratios:
            efficiency[kind] = _geomean_median(ratios)
    # Ops of the lighter classes differ a lot (a Where or an Erf is slower than a Relu): each op
    # measured alone also gets its own figure, which the roofline prefers to its class's.
    by_op: dict[str, list[float]] = {}
    for case, ms, profile in measured:
        if case.op and case.kind in _PER_OP_CLASSES:
            work = _roofline_total(profile, _unit_entry(), peak, None)
            by_op.setdefault(case.op, []).append(work / max(ms - overhead, 0.05 * ms))
    efficiency.update({op: _geomean_median(ratios) for op, ratios in by_op.items()})
    # A data movement op's memory time, as measured (less the fixed cost of its class) over the
    # roofline's.
    moves: dict[str, list[float]] = {}
    for case, ms, profile in measured:
        if case.kind == "data movement" and case.op:
            stream = _roofline_total(
                profile, dataclasses.replace(unit, layer_overhead_ms=0.0), peak, bandwidth
            )
            spent = ms - class_overhead.get("data movement", 0.0)
            if stream > 0 and ms > 0:
                moves.setdefault(case.op, []).append(max(spent, 0.05 * ms) / stream)
    memory_scale = {op: _geomean_median(ratios) for op, ratios in moves.items()}
    activation_pass = _activation_pass(measured, efficiency, peak)
    matmul = efficiency["matmul"]
    efficiency.setdefault("attention", matmul * PRIORS["attention"] / PRIORS["matmul"])
    efficiency.setdefault("recurrent", matmul * PRIORS["recurrent"] / PRIORS["matmul"])
    entry = FactorEntry(
        device="this-machine",
        unit="cpu",
        precision="*",
        compute_efficiency=efficiency,
        default_compute=efficiency.get("elementwise", matmul * PRIOR_DEFAULT / PRIORS["matmul"]),
        memory_efficiency=memory_efficiency,
        layer_overhead_ms=overhead,
        band_low=1.0,
        band_high=1.0,
        class_overhead_ms=class_overhead,
        memory_curve=tuple(curve),
        memory_scale=memory_scale,
        nchwc_block=block,
        run_overhead_ms=run,
        activation_pass=activation_pass,
    )
    return entry, bandwidth


def _activation_pass(
    measured: list[tuple[Case, float, Any]], efficiency: dict[str, float], peak: float
) -> float:
    """The time a fused activation adds to a conv's row (against the row without) over its
    compute time as a node of its own (the fitted figure of its op, else of `elementwise`),
    median over the activations measured; 0 without such cases."""
    rows = [(case, ms, profile) for case, ms, profile in measured if case.kind == "activation pass"]
    plain = {case.name.rsplit(", ", 1)[0]: ms for case, ms, _ in rows if not case.op}
    ratios = []
    for case, ms, profile in rows:
        base = plain.get(case.name.rsplit(", ", 1)[0])
        if not case.op or base is None:
            continue
        own = efficiency.get(case.op, efficiency.get("elementwise", 1.0))
        flops = sum(node.flops for node in profile.nodes if node.op_type == case.op)
        alone_ms = flops / (peak * 1e9 * own) * 1e3
        if alone_ms > 0:
            ratios.append(max(ms - base, 0.0) / alone_ms)
    positive = [ratio for ratio in ratios if ratio > 0]
    return _geomean_median(positive) if positive and len(positive) * 2 > len(ratios) else 0.0


def _roofline_total(
    profile: Any, entry: FactorEntry, peak: float, bandwidth: float | None
) -> float:
    layers = roofline_ms(profile, entry, peak_gops=peak, bandwidth_gbps=bandwidth, precision="fp32")
    return sum(layer.ms for layer in layers)
