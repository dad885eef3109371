"""`estimate`: a model's latency and memory on a catalogue device, from a per-layer roofline.

For each node of a `Profile`:

    time = max(flops / (peak x compute_efficiency[category]),
               bytes_moved / (bandwidth x memory_efficiency)) + layer_overhead

summed over the nodes (plus, where `calibrate --here` measured it, the runtime call's own fixed
cost, once per inference), then scaled to the band the factors' fit error gives. Invariants a
caller can rely on:

- Efficiency factors come from data, never from the model: on a catalogue device, unless
  `factors` are passed, the transfer model (`transfer.py`: per-layer-class multipliers on this
  roofline at the priors' efficiencies, with device, runtime-family and precision terms, and a
  device's own terms when it was in the fit or `calibrate --device` adapted it); on
  `this-machine`, or with `factors` passed, a `Factors` object (fitted by `calibration` or
  `calibrate --here`), whose `lookup` falls back from (device, unit, precision) to wider
  entries. The result's `factors` names what was used (`model: transfer`, or the entry).
- The compute unit and runtime are chosen by one rule (`unit_choices`, then the least time): the
  units of the kind the caller names, else every unit a runtime reaches (`UNIT_RUNTIMES`: the
  runtime the caller names, else the first the device lists that reaches it) and that can run
  the precision; each is estimated and the fastest is kept (the Jetson's GPU with TensorRT, the
  Edge TPU with LiteRT at int8), the result naming the unit, the runtime and the others' times.
  A unit without a peak for fp16 or int8 runs it at its fp32 peak (the notes say so); a unit with
  neither (the Edge TPU at fp32) cannot run it, and a device none of whose units can raises
  EdgeforgeError with each unit's reason (`estimate_devices` reports it for that device alone).
- Bytes moved per node = weights read + outputs written + inputs read. Outputs come from the
  node's inferred shapes; inputs are taken equal to the outputs (the profile keeps no input
  shapes); weights are the profile's weight bytes shared out over conv/matmul nodes in proportion
  to each node's implied weight count (MACs x output channels / output elements).
- Depthwise convolutions (read from the profiled ONNX file: group > 1, one input channel per
  group) take the efficiency of the `conv_depthwise` class, not `conv`: they have the arithmetic
  intensity of an elementwise op and vectorise poorly.
- Fused nodes cost nothing, as runtimes run them inside the kernel before them (ONNX Runtime,
  TensorRT, XNNPACK, OpenVINO and ncnn all fold activations into convs). A node is fused when it
  is an activation, batch norm or elementwise arithmetic op (`_FUSABLE`) whose input is the output
  of a conv/matmul -- or of a node already fused into one -- that nothing else reads, and its
  output is no larger than that conv/matmul's; the chain may take in one more activation (a
  residual Add). A binary op joining an elementwise op's output (read by it alone) with that op's
  own input, as x * sigmoid(x) does, fuses too. Where the entry says the runtime applies fused
  activations as a pass over the conv's output (`activation_pass`, measured by `calibrate
  --here`: ONNX Runtime does so for all but Relu), a fused activation costs that pass.
- A binary elementwise op whose two run-time operands are both broadcast (a pairwise table)
  takes the class `elementwise_outer` where the entry has it.
- Views (`_VIEWS`: Reshape, Squeeze, Flatten, Shape...) move no data and cost nothing; nor do
  nodes whose inputs are all known when the graph loads (weights, constants, static shapes):
  runtimes fold them into constants.
- Bytes are at the estimate's precision: 4 per element for fp32, 2 for fp16, 1 for int8.
- `threads`, when given for a CPU, scales its peak by threads / cores (cores read from the unit's
  name); nothing else uses it. On `this-machine` without `threads`, the threads `calibrate
  --here` measured with (its entry's `fit`), so that a calibration at 1 thread estimates 1 thread.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from edgeforge.devices import RUNTIMES, ComputeUnit, Device
from edgeforge.errors import EdgeforgeError

if TYPE_CHECKING:
    from edgeforge.analysis.profile import NodeProfile, Profile
    from edgeforge.estimator.calibration import FactorEntry, Factors
    from edgeforge.estimator.transfer import TransferModel

__all__ = [
    "BYTES_PER_ELEMENT",
    "UNIT_RUNTIMES",
    "Estimate",
    "LayerTime",
    "MemoryFit",
    "Unavailable",
    "estimate",
    "estimate_devices",
    "roofline_ms",
    "unit_choices",
]

BYTES_PER_ELEMENT: Mapping[str, int] = {"fp32": 4, "fp16": 2, "int8": 1}
# Which runtimes reach which kind of compute unit (XNNPACK/CPU for most; TensorRT the NVIDIA
# GPU; Core ML the Apple GPU and Neural Engine; LiteRT's delegates the Edge TPU and NPUs).
UNIT_RUNTIMES: Mapping[str, tuple[str, ...]] = {
    "cpu": ("onnxruntime", "onnxruntime-mobile", "openvino", "litert", "executorch", "coreml"),
    "gpu": ("tensorrt", "coreml", "openvino"),
    "npu": ("litert", "openvino", "executorch"),
    "tpu": ("litert",),
    "ane": ("coreml", "executorch"),
    "wasm": ("web",),
    "webgpu": ("web",),
}
# Categories whose nodes a runtime launches as kernels; "data movement" is mostly folded into
# neighbours (Reshape, Flatten) and "not counted" has no cost rule, so neither pays an overhead.
_NO_OVERHEAD = {"data movement", "not counted"}
# Ops that run as a view of their input (or a value known when the graph loads): no copy, no cost.
_VIEWS = {
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Dropout",
    "Shape",
    "Size",
    "Constant",
}
# Activations both ONNX Runtime's NCHWc layout runs blocked and runtimes fuse into a conv.
_SIMPLE_ACTIVATIONS = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh"}
# Fused activations a runtime may apply as a pass over the conv's output (ONNX Runtime's MLAS
# does, for all but Relu; `FactorEntry.activation_pass`).
_PASS_ACTIVATIONS = (_SIMPLE_ACTIVATIONS - {"Relu"}) | {"Elu", "Selu", "Celu", "Mish", "Softplus"}
# Ops that runtimes fold into the conv/matmul producing their input: activations, a batch norm,
# a bias or a residual Add.
_FUSABLE = _SIMPLE_ACTIVATIONS | {
    "Elu",
    "Selu",
    "Celu",
    "Mish",
    "Softplus",
    "PRelu",
    "BatchNormalization",
    "Add",
    "Sub",
    "Mul",
    "Div",
}


@dataclass(frozen=True)
class LayerTime:
    """One node's predicted time and which side of the roofline bounds it."""

    name: str
    op_type: str
    category: str
    ms: float  # roofline time plus overhead_ms
    bound: str  # "compute", "memory", "overhead" (no work counted), "fused" or "view" (free)
    overhead_ms: float
    flops: int
    bytes_moved: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class MemoryFit:
    """Whether `need_bytes` fits `limit_bytes`; `short_bytes` is by how much it does not (0 if it
    fits); `limit_bytes` None means the device states no limit, and `fits` is then None."""

    need_bytes: int
    limit_bytes: int | None
    fits: bool | None
    short_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Estimate:
    """The result of `estimate`; `to_dict()` is the JSON contract of `edgeforge estimate`."""

    device: str
    unit: str
    runtime: str | None
    precision: str
    latency_ms: float
    latency_low_ms: float
    latency_high_ms: float
    peak_memory_bytes: int
    weight_bytes: int
    activation_peak_bytes: int
    ram: MemoryFit
    size_budget: MemoryFit
    layers: list[LayerTime]
    factors: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    # the input shapes the profile was computed at, and the dynamic dims it assumed for them
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    assumed_dims: list[dict[str, Any]] = field(default_factory=list)
    unit_name: str = ""
    # every (unit, runtime) estimated, fastest first: {unit, name, runtime, latency_ms}
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    artifact: str | None = None  # the artifact folder estimated, when one was given

    def top_layers(self, count: int = 10) -> list[LayerTime]:
        return sorted(self.layers, key=lambda layer: -layer.ms)[:count]

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "available": True,
            "unit": self.unit,
            "unit_name": self.unit_name,
            "runtime": self.runtime,
            "alternatives": self.alternatives,
            "artifact": self.artifact,
            "precision": self.precision,
            "latency_ms": self.latency_ms,
            "latency_low_ms": self.latency_low_ms,
            "latency_high_ms": self.latency_high_ms,
            "peak_memory_bytes": self.peak_memory_bytes,
            "weight_bytes": self.weight_bytes,
            "activation_peak_bytes": self.activation_peak_bytes,
            "ram": self.ram.to_dict(),
            "size_budget": self.size_budget.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
            "factors": self.factors,
            "notes": self.notes,
            "input_shapes": self.input_shapes,
            "assumed_dims": self.assumed_dims,
        }


@dataclass(frozen=True)
class Unavailable:
    """A device `estimate_devices` could not estimate, and why (one line)."""

    device: str
    precision: str
    runtime: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "available": False,
            "precision": self.precision,
            "runtime": self.runtime,
            "reason": self.reason,
        }


def _cannot_run(unit: ComputeUnit, precision: str) -> str | None:
    """Why `unit` cannot run `precision`, or None when it can (at the fp32 peak if need be)."""
    if precision in unit.peak or (precision != "fp32" and "fp32" in unit.peak):
        return None
    return unit.absent.get(precision) or f"no {precision} or fp32 peak"


def unit_choices(
    device: Device, *, runtime: str | None = None, precision: str = "fp32", unit: str | None = None
) -> list[tuple[ComputeUnit, str | None]]:
    """The (unit, runtime) pairs `estimate` compares, by the rule in the module docstring;
    EdgeforgeError naming each unit's reason when none can run `precision`."""
    kinds = [u.kind for u in device.compute]
    if unit is not None and unit not in kinds:
        raise EdgeforgeError(f"device {device.id!r} has no {unit!r} unit; it has {kinds}")
    if runtime == "tensorrt" and "gpu" not in kinds:
        raise EdgeforgeError(f"tensorrt needs a GPU; device {device.id!r} has {kinds}")
    pairs: list[tuple[ComputeUnit, str | None]] = []
    for candidate in device.compute:
        if unit is not None and candidate.kind != unit:
            continue
        if any(seen.kind == candidate.kind for seen, _ in pairs):
            continue  # a second unit of a kind (RK3588's little cores) is for published rows only
        reaching = UNIT_RUNTIMES.get(candidate.kind, ())
        if runtime is not None:
            if runtime in reaching or unit is not None:
                pairs.append((candidate, runtime))
            continue
        listed = next((name for name in device.runtimes if name in reaching), None)
        if listed is not None or unit is not None:
            pairs.append((candidate, listed))
    if not pairs:  # no listed runtime reaches any unit we know of: any unit, as the device says
        pairs = [(candidate, runtime) for candidate in device.compute]
    can = [(u, r) for u, r in pairs if _cannot_run(u, precision) is None]
    if not can:
        why = "; ".join(f"{u.name}: {_cannot_run(u, precision)}" for u, _ in pairs)
        raise EdgeforgeError(f"{device.id} cannot run {precision}{_on(runtime)}: {why}")
    return can


def _on(runtime: str | None) -> str:
    return f" with {runtime}" if runtime else ""


def _cores(unit: ComputeUnit) -> int | None:
    counts = [int(n) for n in re.findall(r"(\d+)\s*×", unit.name)]
    if counts:
        return sum(counts)
    match = re.search(r"(\d+)[ -](?:performance )?cores?\b", unit.name)
    return int(match.group(1)) if match else None


def _peak_gops(unit: ComputeUnit, precision: str, threads: int | None, notes: list[str]) -> float:
    figure = unit.peak.get(precision)
    if figure is None:
        figure = unit.peak.get("fp32")
        if figure is None:
            raise EdgeforgeError(f"unit {unit.name!r} has no {precision} or fp32 peak")
        notes.append(f"{unit.name} has no {precision} peak; its fp32 peak is used")
    peak = figure.value
    cores = _cores(unit) if unit.kind == "cpu" else None
    if threads is not None and cores:
        peak *= min(threads, cores) / cores
    return peak


def _implied_weights(node: NodeProfile) -> float:
    """Weight elements a conv/matmul node reads, from MACs and its output shape."""
    shape = node.output_shapes[0] if node.output_shapes else None
    if node.category not in ("conv", "matmul", "recurrent") or not shape or node.macs <= 0:
        return 0.0
    elements = math.prod(shape)
    if elements <= 0:
        return 0.0
    channels = shape[1] if node.category == "conv" and len(shape) > 1 else shape[-1]
    return node.macs * channels / elements


@dataclass(frozen=True)
class _GraphRoles:
    """What the profile's nodes do in their graph, beyond their own cost: which convs are
    depthwise, which nodes a runtime fuses into the node before them, which cost class a node
    takes where its graph says more than its op type (`kinds`), how many weight elements are
    tables read by Gather (only the rows looked up are read: not charged as weight reads), and
    the elements a channel-blocked (NCHWc) layout would reorder before each node
    (`reorders_by_block`: block size -> node index -> elements), and the depthwise convs that
    layout cannot block (channels not a multiple of 4: `unaligned_depthwise`)."""

    depthwise: frozenset[int]
    fused: frozenset[int]
    kinds: Mapping[int, str] = field(default_factory=dict)
    lookup_elements: int = 0
    folded: frozenset[int] = frozenset()
    reorders_by_block: Mapping[int, Mapping[int, int]] = field(default_factory=dict)
    unaligned_depthwise: frozenset[int] = frozenset()


# Ops ONNX Runtime's NCHWc layout (x86 with AVX2 or AVX-512) runs on channel-blocked tensors;
# a blocked tensor read by any other op is reordered back to NCHW first (ReorderOutput), and an
# NCHW tensor read by a blocked conv is reordered into blocks (ReorderInput).
_BLOCKED_UNARY = _SIMPLE_ACTIVATIONS | {
    "BatchNormalization",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
}
_BLOCKED_SAME_SHAPE = {"Add", "Sum", "Mul", "Concat"}  # all inputs blocked, no broadcast
_CHANNEL_ALIGNMENT = 4  # channels NCHWc pads up to a block


# Binary elementwise ops: where each operand is broadcast along an axis the other spans (a
# pairwise table, as box IoU builds), runtimes take a general broadcasting loop, many times
# slower per element than two operands of one shape.
_BINARY = {"Add", "Sub", "Mul", "Div", "Min", "Max", "Pow", "Greater", "Less", "Equal"}


def _outer(node: onnx.NodeProto, elements: int, elements_of: dict[str, int], known: set) -> bool:
    """Whether `node` is a binary op both of whose run-time operands are smaller than its
    output (each broadcast: an outer sum, difference, minimum...)."""
    if node.op_type not in _BINARY or len(node.input) != 2 or known.intersection(node.input):
        return False
    sizes = [elements_of.get(name, 0) for name in node.input]
    return all(0 < size < elements for size in sizes)


def _gates_own_input(
    sources: list[str], made_by: dict[str, set[str]], consumers: dict[str, int]
) -> bool:
    """Whether a binary op combines an elementwise op's output (used by it alone) with that op's
    own input, as x * sigmoid(x) does: runtimes run the pair as one kernel (SiLU, HardSwish)."""
    if len(sources) != 2:
        return False
    for gate, other in (sources, sources[::-1]):
        if consumers.get(gate) == 1 and made_by.get(gate) == {other}:
            return True
    return False


def _graph_roles(profile: Profile) -> _GraphRoles | None:
    """Read the profiled ONNX file's graph (no weights loaded) for depthwise convs (weight shape
    [C, 1, k, k], group > 1) and fused nodes (the module docstring's rule); None when the file is
    gone or no longer matches the profile."""
    path = Path(str(profile.model.get("path", "")))
    if not path.is_file():
        return None
    stat = path.stat()
    nodes = tuple((node.category, _output_elements(node)) for node in profile.nodes)
    return _roles_of_file(str(path), stat.st_mtime_ns, stat.st_size, nodes)


@functools.lru_cache(maxsize=32)
def _roles_of_file(
    path: str, mtime_ns: int, size: int, nodes: tuple[tuple[str, int], ...]
) -> _GraphRoles | None:
    """`_graph_roles` for one version of one file, given each profiled node's (category, output
    elements); cached, as a calibration asks for it once per published row."""
    graph = onnx.load(path, load_external_data=False).graph
    if len(graph.node) != len(nodes):
        return None
    dims = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    constants = set(dims) | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output
    }
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for output in graph.output:
        consumers[output.name] = consumers.get(output.name, 0) + 1

    known = set(constants)  # values known when the graph loads, and the nodes folded into them
    folded = set()
    for index, node in enumerate(graph.node):
        if node.op_type == "Shape" or all(name in known for name in node.input if name):
            known.update(node.output)  # shapes are static once `inspect` pins the inputs
            folded.add(index)

    depthwise, fused, unaligned = set(), set(), set()
    kinds: dict[int, str] = {}
    elements_of = _tensor_elements(graph, nodes)
    # tensor -> (whether the chain that made it, a conv/matmul and what was fused into it, has
    # already taken in a second activation such as a residual; the tensor's element count)
    open_chains: dict[str, tuple[bool, int]] = {}
    made_by: dict[str, set[str]] = {}  # an elementwise node's output -> its activation inputs
    producer = {out: index for index, node in enumerate(graph.node) for out in node.output}
    for index, (node, (category, elements)) in enumerate(zip(graph.node, nodes, strict=True)):
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = dims.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if group > 1 and weight is not None and len(weight) > 1 and weight[1] == 1:
            depthwise.add(index)
            kinds[index] = "conv_depthwise"
            if weight[0] % _CHANNEL_ALIGNMENT:
                unaligned.add(index)
        if node.op_type == "MatMul" and not known.intersection(node.input):
            kinds[index] = "matmul_batched"  # two activations: attention's products
        if node.op_type == "LayerNormalization" and node.input[0] in producer:
            before = producer[node.input[0]]
            if graph.node[before].op_type == "Add" and consumers.get(node.input[0]) == 1:
                fused.add(before)  # runtimes add the residual inside the norm (SkipLayerNorm)
                kinds[index] = "normalization_skip"
        if category in ("conv", "matmul"):
            open_chains[node.output[0]] = (False, elements)
            continue
        if _outer(node, elements, elements_of, known):
            kinds[index] = "elementwise_outer"
            continue
        if node.op_type not in _FUSABLE or len(node.output) != 1:
            continue
        sources = [name for name in node.input if name and name not in constants]
        if category == "elementwise":
            made_by[node.output[0]] = set(sources)
        if _gates_own_input(sources, made_by, consumers):  # x * sigmoid(x) and the like
            fused.add(index)
            continue
        chain = next((name for name in sources if name in open_chains), None)
        if chain is None or consumers.get(chain) != 1:
            continue
        extra = len(sources) - 1  # other activations it takes in (a residual for an Add)
        has_residual, chain_elements = open_chains[chain]
        if extra > 1 or (extra == 1 and has_residual) or elements > chain_elements:
            continue  # not an epilogue: a second residual, or a broadcast to a larger tensor
        fused.add(index)
        open_chains[node.output[0]] = (has_residual or extra == 1, chain_elements)
    gathered = {
        name
        for name in dims
        if consumers.get(name)
        and all(
            node.op_type == "Gather" and node.input[0] == name and name not in node.input[1:]
            for node in graph.node
            if name in node.input
        )
    }
    return _GraphRoles(
        depthwise=frozenset(depthwise),
        fused=frozenset(fused),
        unaligned_depthwise=frozenset(unaligned),
        kinds=kinds,
        lookup_elements=sum(math.prod(dims[name]) for name in gathered),
        folded=frozenset(folded),
        reorders_by_block={
            block: _reorders(graph, constants, elements_of, block) for block in (8, 16)
        },
    )


def _tensor_elements(graph: onnx.GraphProto, nodes: tuple[tuple[str, int], ...]) -> dict[str, int]:
    """Element counts of the graph's inputs and of each single-output node's output (from the
    profile); 0 where a dimension is not known."""
    elements = {
        node.output[0]: count
        for node, (_, count) in zip(graph.node, nodes, strict=True)
        if len(node.output) == 1
    }
    for info in graph.input:
        shape = [d.dim_value for d in info.type.tensor_type.shape.dim]
        elements[info.name] = math.prod(shape) if shape and all(shape) else 0
    return elements


def _blocks_conv(outputs: int, inputs: int, group: int, block: int) -> bool:
    """Whether ONNX Runtime's NCHWc layout runs a conv blocked (read from the graphs it
    optimises): a dense conv when it has fewer input channels than a block (read as NCHW) or a
    multiple of 4 (padded to blocks); a depthwise one when its channels are a multiple of 4; a
    grouped one when each group's channels fill whole blocks."""
    if group == 1:
        return inputs < block or inputs % _CHANNEL_ALIGNMENT == 0
    if group == inputs == outputs:
        return outputs % _CHANNEL_ALIGNMENT == 0
    return (inputs // group) % block == 0 and (outputs // group) % block == 0


def _reorders(
    graph: onnx.GraphProto, constants: set[str], elements: dict[str, int], block: int
) -> dict[int, int]:
    """Elements reordered before each node under ONNX Runtime's NCHWc layout with channel
    blocks of `block`: which tensors are blocked follows `_BLOCKED_UNARY` and
    `_BLOCKED_SAME_SHAPE`, which convs are blocked `_blocks_conv`, and each tensor crosses
    between layouts at most once each way; `elements` as `_tensor_elements` counts them."""
    dims = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    blocked: set[str] = set()
    crossed: set[str] = set()
    moved: dict[int, int] = {}

    def cross(index: int, name: str) -> None:
        if name not in crossed:
            crossed.add(name)
            moved[index] = moved.get(index, 0) + elements.get(name, 0)

    for index, node in enumerate(graph.node):
        inputs = [name for name in node.input if name and name not in constants]
        if node.op_type == "Conv":
            weight = dims.get(node.input[1], [0, 0]) if len(node.input) > 1 else [0, 0]
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if len(weight) > 1 and _blocks_conv(weight[0], weight[1] * group, group, block):
                for name in inputs[:1]:
                    if name not in blocked and (group > 1 or weight[1] >= block):
                        cross(index, name)  # ReorderInput (a dense conv of few channels reads NCHW)
                blocked.add(node.output[0])
                continue
        elif (node.op_type in _BLOCKED_UNARY and inputs and inputs[0] in blocked) or (
            node.op_type in _BLOCKED_SAME_SHAPE
            and len(inputs) > 1
            and all(name in blocked for name in inputs)
            and (node.op_type == "Concat" or len({elements.get(n) for n in inputs}) == 1)
        ):
            blocked.add(node.output[0])
            continue
        for name in inputs:
            if name in blocked:
                cross(index, name)  # ReorderOutput
    made_at = {out: index for index, node in enumerate(graph.node) for out in node.output}
    for output in graph.output:  # a graph output leaves in NCHW
        if output.name in blocked:
            cross(made_at[output.name], output.name)
    return moved


def _output_elements(node: NodeProfile) -> int:
    return sum(math.prod(s) for s in node.output_shapes if s)


def roofline_ms(
    profile: Profile,
    entry: FactorEntry,
    *,
    peak_gops: float,
    bandwidth_gbps: float | None,
    precision: str,
) -> list[LayerTime]:
    """Per-node times for `profile` under one factor entry; the core of `estimate`."""
    size = BYTES_PER_ELEMENT[precision]
    implied = [_implied_weights(node) for node in profile.nodes]
    total_implied = sum(implied)
    roles = _graph_roles(profile) or _GraphRoles(frozenset(), frozenset())
    # The profile's weight bytes are at the file's dtype; count elements, then re-size them.
    # Tables that only Gather reads (embeddings) are not read whole: left out of the share.
    weight_elements = int(profile.weights.get("onnx_elements", 0)) - roles.lookup_elements
    reorders = roles.reorders_by_block.get(entry.nchwc_block, {})
    layers: list[LayerTime] = []
    for index, (node, share) in enumerate(zip(profile.nodes, implied, strict=True)):
        # Most specific first: the node's role in its graph, its op (figures `calibrate
        # --here` measured for one op), its category.
        keys = [key for key in (roles.kinds.get(index), node.op_type, node.category) if key]
        if entry.nchwc_block and index in roles.unaligned_depthwise:
            keys.insert(0, "conv_depthwise_unblocked")  # NCHWc cannot block it
        overhead = next(
            (entry.class_overhead_ms[k] for k in keys if k in entry.class_overhead_ms), None
        )
        if overhead is None:
            overhead = 0.0 if node.category in _NO_OVERHEAD else entry.layer_overhead_ms
        extra_ms = 0.0  # a layout copy before the node, or a fused activation's pass
        if index in reorders and bandwidth_gbps:  # a layout copy, read and written, before it
            copied = 2 * reorders[index] * size
            moved_s = copied / (bandwidth_gbps * 1e9 * _memory_efficiency(entry, copied))
            extra_ms = moved_s * 1e3 + entry.layer_overhead_ms
        if index in roles.fused or index in roles.folded or node.op_type in _VIEWS:
            bound = "fused" if index in roles.fused else "view"
            if bound == "fused" and entry.activation_pass and node.op_type in _PASS_ACTIVATIONS:
                # applied by the runtime as a pass over the conv's output, in cache
                efficiency = next(
                    (entry.compute_efficiency[k] for k in keys if k in entry.compute_efficiency),
                    entry.default_compute,
                )
                pass_s = entry.activation_pass * node.flops / (peak_gops * 1e9 * efficiency)
                extra_ms += pass_s * 1e3
            layers.append(
                LayerTime(
                    node.name, node.op_type, node.category, extra_ms, bound, 0.0, node.flops, 0
                )
            )
            continue
        weights = weight_elements * share / total_implied if total_implied else 0.0
        activations = 2 * _output_elements(node)  # outputs written + inputs (taken equal) read
        moved = int((weights + activations) * size)
        compute_s = 0.0
        if node.flops > 0:
            efficiency = next(
                (entry.compute_efficiency[k] for k in keys if k in entry.compute_efficiency),
                entry.default_compute,
            )
            compute_s = node.flops / (peak_gops * 1e9 * efficiency)
        memory_s = streamed_s = 0.0
        if bandwidth_gbps and node.category != "not counted":
            if entry.memory_curve:
                # Tensors at the speed of their own size's stream (caches); weights at that of
                # all the model's weights, as they all pass between two reads of one, and
                # after the compute (a small batch does not hide them behind it).
                read = weights * size
                memory_s = (moved - read) / _memory_efficiency(entry, moved - read)
                memory_s /= bandwidth_gbps * 1e9
                streamed_s = read / _memory_efficiency(entry, weight_elements * size)
                streamed_s /= bandwidth_gbps * 1e9
            else:
                memory_s = moved / (bandwidth_gbps * 1e9 * entry.memory_efficiency)
            memory_s *= next((entry.memory_scale[k] for k in keys if k in entry.memory_scale), 1.0)
        if compute_s == 0.0 and memory_s + streamed_s == 0.0:
            bound = "overhead"
        else:
            bound = "compute" if compute_s >= memory_s + streamed_s else "memory"
        ms = (max(compute_s, memory_s) + streamed_s) * 1e3 + overhead + extra_ms
        layers.append(
            LayerTime(
                node.name, node.op_type, node.category, ms, bound, overhead, node.flops, moved
            )
        )
    return layers


def _memory_efficiency(entry: FactorEntry, stream_bytes: float) -> float:
    """The entry's memory efficiency for a stream of `stream_bytes`: interpolated (log-log)
    on its `memory_curve`, held flat past its ends; `memory_efficiency` without a curve."""
    points = sorted(entry.memory_curve)
    if not points:
        return entry.memory_efficiency
    if stream_bytes <= points[0][0]:
        return points[0][1]
    for (low, low_eff), (high, high_eff) in itertools.pairwise(points):
        if stream_bytes <= high:
            t = math.log(stream_bytes / low) / math.log(high / low)
            return math.exp(math.log(low_eff) + t * math.log(high_eff / low_eff))
    return points[-1][1]


def _this_machine_id() -> str:
    from edgeforge.devices._this_machine import THIS_MACHINE_ID

    return THIS_MACHINE_ID


def _transfer_model(device: Device, explicit_factors: bool) -> TransferModel | None:
    """The shipped transfer model, unless factors were passed or the device is this machine
    (whose `calibrate --here` factors are measured on it, not transferred)."""
    from edgeforge.estimator.transfer import load_transfer

    if explicit_factors or device.id == _this_machine_id():
        return None
    return load_transfer()


def _transfer_summary(model: TransferModel, work: Any) -> dict[str, Any]:
    """What the transfer model used: whether the device's own terms were fitted (or adapted by
    `calibrate --device`) or it is predicted from the pooled terms and its specs alone."""
    own = model.knows(work.device)
    return {
        "entry": f"transfer:{work.device if own else '*'}/{work.engine}/{work.precision}",
        "model": "transfer",
        "device_terms": "fitted" if own else "pooled (device not in the fit)",
        "engine": work.engine,
        "shrink": model.shrink,
        "band_low": model.band[0],
        "band_high": model.band[1],
    }


def _factor_summary(matched: str, entry: FactorEntry) -> dict[str, Any]:
    """The entry used, without the fit's list of row lines (kept in the factors file)."""
    summary = {"entry": matched, **entry.to_dict()}
    summary["fit"] = {k: v for k, v in entry.fit.items() if k != "lines"}
    return summary


def _fit(need: int, limit: float | None) -> MemoryFit:
    if limit is None:
        return MemoryFit(need, None, None, 0)
    limit_bytes = int(limit)
    return MemoryFit(need, limit_bytes, need <= limit_bytes, max(0, need - limit_bytes))


def estimate(
    profile: Profile | Any,
    device: Device | str,
    *,
    runtime: str | None = None,
    precision: str | None = None,
    factors: Factors | None = None,
    unit: str | None = None,
    threads: int | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> Estimate:
    """Predicted latency (with a low-high band), peak memory and fit of a model on `device`.

    `profile` is a `Profile`, anything `inspect` takes (profiled at `shapes`), or an artifact
    folder (its runtime and precision are then the defaults; see `_source`). `device` is a
    `Device` or catalogue id. `runtime` must be one the device lists (None: each unit's first);
    `precision` one of fp32, fp16, int8 (None: the artifact's, else fp32); `factors` defaults to
    the fitted factors shipped with the package; `unit` forces a compute unit kind. Raises
    EdgeforgeError naming the valid choices for a bad runtime or precision, and each unit's
    reason when none of the device's can run the precision.
    """
    from edgeforge.estimator._source import profile_source

    found = profile_source(profile, shapes)
    return _estimate(found, device, runtime, precision, factors, unit, threads)


def estimate_devices(
    source: Any,
    devices: list[Device | str],
    *,
    runtime: str | None = None,
    precision: str | None = None,
    unit: str | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    factors: Factors | None = None,
    threads: int | None = None,
) -> list[Estimate | Unavailable]:
    """`estimate` on each device, the source profiled once; a device that cannot run the
    precision (or does not list the runtime, or lacks the unit) is an `Unavailable` with its
    reason, and the others are estimated all the same. An unknown device id, a bad precision
    or an unreadable source still raise EdgeforgeError."""
    from edgeforge.devices import get_device
    from edgeforge.estimator._source import profile_source

    _check_arguments(precision, threads)
    targets = [get_device(d) if isinstance(d, str) else d for d in devices]
    found = profile_source(source, shapes)
    results: list[Estimate | Unavailable] = []
    for target in targets:
        try:
            results.append(_estimate(found, target, runtime, precision, factors, unit, threads))
        except EdgeforgeError as error:
            wanted = precision or found.precision or "fp32"
            reason = str(error).removeprefix(f"{target.id} ")  # the row names the device
            results.append(Unavailable(target.id, wanted, runtime or found.runtime, reason))
    return results


def _check_arguments(precision: str | None, threads: int | None) -> None:
    """EdgeforgeError for a precision `estimate` does not know or fewer than one thread."""
    if precision is not None and precision not in BYTES_PER_ELEMENT:
        raise EdgeforgeError(
            f"unknown precision {precision!r}; valid: {', '.join(BYTES_PER_ELEMENT)}"
        )
    if threads is not None and threads < 1:
        raise EdgeforgeError(f"threads must be 1 or more, not {threads}")


def _estimate(
    found: Any,
    device: Device | str,
    runtime: str | None,
    precision: str | None,
    factors: Factors | None,
    unit: str | None,
    threads: int | None,
) -> Estimate:
    from edgeforge.devices import get_device
    from edgeforge.estimator.calibration import load_factors

    profile = found.profile
    device = get_device(device) if isinstance(device, str) else device
    precision = precision or found.precision or "fp32"
    runtime = runtime or found.runtime
    _check_arguments(precision, threads)
    if runtime is not None and runtime not in device.runtimes:
        known = "" if runtime in RUNTIMES else f" (known runtimes: {', '.join(RUNTIMES)})"
        raise EdgeforgeError(
            f"device {device.id!r} does not run {runtime!r}; it runs "
            f"{', '.join(device.runtimes)}{known}"
        )
    explicit_factors = factors is not None
    factors = factors if factors is not None else load_factors()
    notes: list[str] = list(found.notes)
    if found.precision is not None and precision != found.precision:
        notes.append(f"estimated at {precision} as asked; the artifact itself is {found.precision}")
    bandwidth = device.memory_bandwidth_gbps.value if device.memory_bandwidth_gbps else None
    if bandwidth is None:
        notes.append("device states no memory bandwidth: memory time not counted")
    if _graph_roles(profile) is None:
        notes.append(
            "the profiled ONNX file is gone or no longer matches the profile: depthwise convs "
            "are costed as dense convs and no node as fused"
        )
    transfer = _transfer_model(device, explicit_factors)
    tried = []
    for candidate, reached_by in unit_choices(
        device, runtime=runtime, precision=precision, unit=unit
    ):
        unit_notes: list[str] = []
        peak = _peak_gops(candidate, precision, threads, unit_notes)
        moved = None
        run_ms = 0.0  # the runtime call's own cost, once per inference (`calibrate --here`)
        if transfer is not None:
            from edgeforge.estimator.transfer import transfer_layers

            moved = transfer_layers(
                transfer,
                profile,
                device,
                candidate.kind,
                precision,
                threads=threads,
                runtime=reached_by,
            )
        if moved is not None:
            layers, work = moved
            band = transfer.band
            summary = _transfer_summary(transfer, work)
        else:
            entry, matched = factors.lookup(device.id, candidate.kind, precision)
            measured_at = entry.fit.get("threads") if device.id == _this_machine_id() else None
            if threads is None and measured_at:  # the threads `calibrate --here` measured at
                peak = _peak_gops(candidate, precision, measured_at, [])
                unit_notes.append(
                    f"estimated at the {measured_at} thread(s) `calibrate --here` measured with; "
                    "pass threads to ask for others"
                )
            layers = roofline_ms(
                profile, entry, peak_gops=peak, bandwidth_gbps=bandwidth, precision=precision
            )
            band = (entry.band_low, entry.band_high)
            summary = _factor_summary(matched, entry)
            run_ms = entry.run_overhead_ms
        latency = sum(layer.ms for layer in layers) + run_ms
        tried.append((latency, candidate, reached_by, band, summary, layers, unit_notes))
    tried.sort(key=lambda t: t[0])
    latency, chosen, reached_by, band, summary, layers, unit_notes = tried[0]
    notes.extend(unit_notes)
    alternatives = [
        {"unit": u.kind, "name": u.name, "runtime": r, "latency_ms": ms} for ms, u, r, *_ in tried
    ]
    if len(tried) > 1:
        others = ", ".join(f"{a['unit']} {a['latency_ms']:.3g} ms" for a in alternatives[1:])
        notes.insert(
            0,
            f"runs on the {chosen.kind} ({chosen.name}){_on(reached_by)}: the fastest of its "
            f"units at {precision} (others: {others}); pass a unit or runtime to choose",
        )

    size = BYTES_PER_ELEMENT[precision]
    weight_bytes = int(profile.weights.get("onnx_elements", 0)) * size
    # The activation peak was measured at the file's dtype (fp32 for our exports).
    activation_bytes = int(profile.activation_memory.peak_bytes * size / 4)
    peak_memory = weight_bytes + activation_bytes
    ram = _fit(peak_memory, device.ram_gb.value * 1e9 if device.ram_gb else None)
    budget = _fit(
        weight_bytes, device.size_budget_mb.value * 1e6 if device.size_budget_mb else None
    )
    if ram.fits is False:
        notes.append(f"needs {ram.short_bytes / 1e6:.1f} MB more than the device's RAM")
    if budget.fits is False:
        notes.append(f"weights exceed the size budget by {budget.short_bytes / 1e6:.1f} MB")
    return Estimate(
        device=device.id,
        unit=chosen.kind,
        runtime=reached_by,
        precision=precision,
        latency_ms=latency,
        latency_low_ms=latency * band[0],
        latency_high_ms=latency * band[1],
        peak_memory_bytes=peak_memory,
        weight_bytes=weight_bytes,
        activation_peak_bytes=activation_bytes,
        ram=ram,
        size_budget=budget,
        layers=layers,
        factors=summary,
        notes=notes,
        input_shapes={name: list(shape) for name, shape in profile.input_shapes().items()},
        assumed_dims=[dim.to_dict() for dim in profile.assumed_dims if dim.reason != "override"],
        unit_name=chosen.name,
        alternatives=alternatives,
        artifact=found.artifact,
    )
