"""`split`: cut a model so that the device runs the head and the cloud the tail.

For every separating cut with at most `max_tensors` crossing tensors (see `_cuts`), the
end-to-end time is

    device_ms (head, per-layer roofline on the device)
    + transfer_ms (rtt + crossing tensors up + graph outputs down, `network.transfer_ms`)
    + cloud_ms (tail, per-layer roofline on a cloud-class Device, or the caller's callable)

and the cut with the least time (objective "latency") or the fewest bytes sent (objective
"bytes", ties broken by time) is the best split. All-edge (nothing sent) and all-cloud (the raw
inputs sent uncompressed) are always costed beside it, and `chosen` is what to run: with the
"latency" objective, the fastest of all-edge, all-cloud and the best split (ties go to all-edge,
then the split); with "bytes", the best split, and a note says when all-edge or all-cloud is
faster and by how much.

Invariants a caller can rely on:

- `split` is always a cut (`kind` "split"); `chosen.kind` says which of the three was chosen.
- `head.onnx` and `tail.onnx` (the best split's, whatever is chosen) are cut from the model by
  `onnx.utils.Extractor`; the head's outputs and the tail's inputs are the crossing tensors,
  under their names in the original graph (a graph input the tail reads is sent as it is and is
  listed among the tail's inputs).
- tail(head(x)) is run in ONNX Runtime on the samples (`data`, else synthesised by input role)
  and compared with the whole model at fp32 tolerances; with `compress`, the crossing float
  tensors are also sent through fp16 or int8 (per-tensor affine, scale and zero point computed
  per message on the device: 8 more bytes) and the error that adds is measured and reported.
- With `out`, the two models and `split.json` are written into a staging folder beside `out` and
  moved into place only when complete; a folder holding anything else is never replaced.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeforge._io import guard_output
from edgeforge._load import load
from edgeforge.devices import Device
from edgeforge.errors import EdgeforgeError
from edgeforge.evaluate.compare import (
    OutputComparison,
    compare,
    cosine_similarity,
    relative_error,
    tolerance_for,
)
from edgeforge.evaluate.data import Samples, load_data, synthesize
from edgeforge.hybrid._cuts import Cut, GraphCuts, extract
from edgeforge.hybrid.network import CloudNodeTimes, check_network, network_dict, transfer_ms
from edgeforge.model import Model, dtype_size

__all__ = [
    "COMPRESSIONS",
    "OBJECTIVES",
    "Compression",
    "PipelineCheck",
    "Placement",
    "SplitResult",
    "split",
]

OBJECTIVES = ("latency", "bytes")
COMPRESSIONS = ("fp16", "int8")
_OUTPUT_FILES = {"head.onnx", "tail.onnx", "head.data", "tail.data", "split.json"}
_INT8_HEADER_BYTES = 8  # a float32 scale and an int32 zero point per tensor and message


@dataclass(frozen=True)
class Placement:
    """One way to run the model: all on the device, all in the cloud, or cut at `position`."""

    kind: str  # "all-edge", "all-cloud" or "split"
    position: int  # nodes [0, position) run on the device
    tensors: tuple[str, ...]  # what is sent up: crossing tensors, or the raw inputs
    device_ms: float
    upload_bytes: int
    download_bytes: int
    transfer_ms: float
    cloud_ms: float

    @property
    def total_ms(self) -> float:
        return self.device_ms + self.transfer_ms + self.cloud_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "position": self.position,
            "tensors": list(self.tensors),
            "device_ms": _finite(self.device_ms),
            "upload_bytes": self.upload_bytes,
            "download_bytes": self.download_bytes,
            "transfer_ms": _finite(self.transfer_ms),
            "cloud_ms": _finite(self.cloud_ms),
            "total_ms": _finite(self.total_ms),
        }


@dataclass
class Compression:
    """What sending the crossing tensors at a lower precision costs in accuracy."""

    precision: str
    tensors: list[dict[str, Any]]  # name, max relative error, cosine of the sent tensor
    outputs: list[OutputComparison]  # tail outputs against the whole model
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "tensors": self.tensors,
            "outputs": [o.to_dict() for o in self.outputs],
            "passed": self.passed,
        }


@dataclass
class PipelineCheck:
    """tail(head(x)) against the whole model, run in ONNX Runtime."""

    samples: int
    data: str
    outputs: list[OutputComparison]
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "data": self.data,
            "outputs": [o.to_dict() for o in self.outputs],
            "passed": self.passed,
        }


@dataclass
class SplitResult:
    """The result of `split`; `to_dict()` is the JSON contract of `edgeforge split`."""

    model: str
    device: str
    cloud: str
    network: dict[str, Any]
    objective: str
    compress: str | None
    chosen: Placement  # what to run: all-edge, all-cloud or the best split (module docstring)
    split: Placement  # the best cut by the objective; head.onnx and tail.onnx hold it
    all_edge: Placement
    all_cloud: Placement
    candidates: list[Placement]  # every separating cut considered, in topological order
    head: str | None  # paths, when written
    tail: str | None
    check: PipelineCheck
    compression: Compression | None
    notes: list[str] = field(default_factory=list)

    @property
    def beats_all_edge(self) -> bool:
        """Whether the best split is faster than running everything on the device."""
        return self.split.total_ms < self.all_edge.total_ms

    @property
    def beats_all_cloud(self) -> bool:
        """Whether the best split is faster than sending the raw inputs to the cloud."""
        return self.split.total_ms < self.all_cloud.total_ms

    @property
    def fastest(self) -> str:
        """Which of all-edge, the best split and all-cloud takes the least time end to end."""
        return _fastest(self.all_edge, self.split, self.all_cloud).kind

    @property
    def passed(self) -> bool:
        return self.check.passed and (self.compression is None or self.compression.passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "device": self.device,
            "cloud": self.cloud,
            "network": self.network,
            "objective": self.objective,
            "compress": self.compress,
            "chosen": self.chosen.to_dict(),
            "split": self.split.to_dict(),
            "all_edge": self.all_edge.to_dict(),
            "all_cloud": self.all_cloud.to_dict(),
            "beats_all_edge": self.beats_all_edge,
            "beats_all_cloud": self.beats_all_cloud,
            "fastest": self.fastest,
            "head": self.head,
            "tail": self.tail,
            "check": self.check.to_dict(),
            "compression": self.compression.to_dict() if self.compression else None,
            "passed": self.passed,
            "candidates": [c.to_dict() for c in self.candidates],
            "notes": self.notes,
        }


def split(
    source: Any,
    device: Device | str,
    network: Any,
    *,
    cloud: Device | str | CloudNodeTimes,
    out: str | Path | None = None,
    objective: str = "latency",
    compress: str | None = None,
    cut: str | list[str] | None = None,
    max_tensors: int = 1,
    precision: str = "fp32",
    data: str | Path | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    samples: int = 6,
) -> SplitResult:
    """Choose where to cut `source` (anything `edgeforge.load` takes) between `device` (a
    catalogue id or `Device`) and the cloud over `network` (rtt_ms, uplink_mbps, downlink_mbps,
    loss), write head.onnx and tail.onnx into `out`, and check tail(head(x)).

    `cloud` is a cloud-class `Device` (or catalogue id) costed with the roofline, or a callable
    `(start, stop) -> ms` for nodes [start, stop). `cut` forces the crossing tensors (a name, or
    a comma-separated list); `compress` sends crossing float tensors as fp16 or int8;
    `precision` is the device's. Raises EdgeforgeError for bad input, naming valid choices.
    """
    from edgeforge.analysis import inspect
    from edgeforge.analysis._shapes import resolve_shapes
    from edgeforge.devices import get_device
    from edgeforge.estimator import estimate

    if objective not in OBJECTIVES:
        raise EdgeforgeError(f"unknown objective {objective!r}; choose {' or '.join(OBJECTIVES)}")
    if compress is not None and compress not in COMPRESSIONS:
        raise EdgeforgeError(
            f"unknown --compress {compress!r}; choose {' or '.join(COMPRESSIONS)} (or leave it "
            "out to send fp32)"
        )
    if max_tensors < 1:
        raise EdgeforgeError(f"--max-tensors {max_tensors}: at least 1 tensor must cross a cut")
    network = check_network(network)
    if out is not None:  # refuse before any work (issue 13): inputs, foreign files, a file
        _check_out(Path(out), [source, data])
    model = load(source)
    device = get_device(device) if isinstance(device, str) else device
    profile = inspect(model, shapes=shapes)
    shaped = resolve_shapes(model.proto(load_weights=False), model.onnx_path.parent, shapes)
    cuts = GraphCuts(shaped.graph, shaped.weights)
    if cuts.size != len(profile.nodes):
        raise EdgeforgeError(
            f"{model.onnx_path.name}: the profile has {len(profile.nodes)} nodes but the graph "
            f"{cuts.size}; re-export the model without local functions"
        )

    device_ms = _prefix(
        [layer.ms for layer in estimate(profile, device, precision=precision).layers]
    )
    cloud_name, cloud_ms = _cloud_times(cloud, profile, get_device, estimate)
    size = cuts.size
    notes = [
        f"times are per-layer roofline estimates at {precision} on {device.id} and the "
        f"server's times from {cloud_name}; dynamic dims as `inspect` assumes them",
    ]

    def bytes_of(names: tuple[str, ...], shrink: bool) -> int | None:
        total = 0
        for name in names:
            elem_type, shape = shaped.types.get(name, (0, None))
            if shape is None:
                return None
            elements = math.prod(shape)
            if shrink and _is_float(elem_type):
                total += elements * (2 if compress == "fp16" else 1)
                total += _INT8_HEADER_BYTES if compress == "int8" else 0
            else:
                total += int(elements * dtype_size(elem_type))
        return total

    down = bytes_of(tuple(cuts.outputs), False) or 0

    def placement(kind: str, position: int, tensors: tuple[str, ...]) -> Placement | None:
        up = bytes_of(tensors, kind == "split" and compress is not None)
        if up is None:
            return None
        sent = kind != "all-edge"
        return Placement(
            kind,
            position,
            tensors,
            device_ms[position],
            up if sent else 0,
            down if sent else 0,
            transfer_ms(network, up, down) if sent else 0.0,
            cloud_ms(position, size) if position < size else 0.0,
        )

    all_edge = placement("all-edge", size, ())
    all_cloud = placement("all-cloud", 0, tuple(cuts.inputs))
    if all_edge is None or all_cloud is None:
        raise EdgeforgeError(
            f"{model.onnx_path.name}: the shapes of the inputs or outputs are not known; "
            "pin them with --shape NAME=DIMS"
        )
    if any(_is_float(shaped.types.get(n, (0, None))[0]) for n in cuts.inputs):
        notes.append(
            "all-cloud sends the raw float inputs uncompressed; an app that sends an encoded "
            "image (JPEG, uint8) sends less"
        )
    if cut is not None:
        names = cut.split(",") if isinstance(cut, str) else list(cut)
        forced = cuts.cut_at([n.strip() for n in names if n.strip()], max_tensors)
        chosen_cuts = [forced]
    else:
        chosen_cuts = cuts.cuts(max_tensors)
    candidates = [p for c in chosen_cuts if (p := placement("split", c.position, c.tensors))]
    if len(candidates) < len(chosen_cuts):
        notes.append(
            f"{len(chosen_cuts) - len(candidates)} cuts left out: a crossing tensor's shape is "
            "not known (pin the inputs with --shape)"
        )
    if not candidates:
        raise EdgeforgeError(
            f"no cut with at most {max_tensors} crossing tensor(s) of known shape separates "
            f"{model.onnx_path.name}; raise --max-tensors or pin the input shapes with --shape"
        )
    if objective == "latency":
        best = min(candidates, key=lambda p: (p.total_ms, p.upload_bytes))
        chosen = _fastest(all_edge, best, all_cloud)
        if chosen is not best:
            notes.append(
                f"{chosen.kind} is fastest ({chosen.total_ms:.3g} ms): the best split takes "
                f"{best.total_ms:.3g} ms, {_times(best, chosen)} as long; head.onnx and tail.onnx "
                "hold that split all the same"
            )
    else:
        best = min(candidates, key=lambda p: (p.upload_bytes, p.total_ms))
        chosen = best
        faster = _fastest(all_edge, best, all_cloud)
        if faster is not best and faster.total_ms < best.total_ms:
            notes.append(
                f"{faster.kind} ({faster.total_ms:.3g} ms) is {_times(best, faster)} faster than "
                f"the split that sends least ({best.total_ms:.3g} ms); --objective latency "
                "chooses it"
            )
    if math.isinf(best.transfer_ms):
        notes.append("the network sends nothing (offline): only all-edge can run")

    samples_used = load_data(Path(data), model.inputs) if data else synthesize(model, count=samples)
    result = SplitResult(
        model=model.provenance.source,
        device=device.id,
        cloud=cloud_name,
        network=network_dict(network),
        objective=objective,
        compress=compress,
        chosen=chosen,
        split=best,
        all_edge=all_edge,
        all_cloud=all_cloud,
        candidates=candidates,
        head=None,
        tail=None,
        check=PipelineCheck(0, "", [], False),
        compression=None,
        notes=notes,
    )
    cut_chosen = Cut(best.position, best.tensors)
    _write_and_check(model, shaped.graph, cuts, cut_chosen, samples_used, result, out)
    return result


def _write_and_check(
    model: Model,
    graph: onnx.GraphProto,
    cuts: GraphCuts,
    cut: Cut,
    samples: Samples,
    result: SplitResult,
    out: str | Path | None,
) -> None:
    """Cut the models into a staging folder, check them, and move them into `out`."""
    if out is not None:
        out = Path(out)
        _check_out(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    else:
        staging = Path(tempfile.mkdtemp(prefix="edgeforge-split-"))
    try:
        proto = model.proto(load_weights=True)
        if proto.functions:
            proto = onnx.inliner.inline_local_functions(proto)
        if len(proto.graph.node) != cuts.size:
            raise EdgeforgeError(
                f"{model.onnx_path.name}: inlining changed the node count; re-export the model "
                "without local functions"
            )
        proto = onnx.shape_inference.infer_shapes(proto)
        types = {
            v.name: v
            for v in [*graph.value_info, *graph.input, *graph.output]
            if v.name in cut.tensors
        }
        head_inputs = cuts.used_inputs(cut.position)
        head_outputs = [name for name in cut.tensors if name not in cuts.inputs]
        extract(proto, head_inputs, head_outputs, staging / "head.onnx", types)
        extract(proto, list(cut.tensors), cuts.outputs, staging / "tail.onnx", types)
        result.check, result.compression = _run_pipeline(
            model, staging, head_inputs, list(cut.tensors), samples, result.compress
        )
        if out is None:
            return
        result.head, result.tail = str(out / "head.onnx"), str(out / "tail.onnx")
        (staging / "split.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_out(out: Path, inputs: tuple[Any, ...] | list[Any] = ()) -> None:
    # Rule (as convert's --out): never an input or a folder holding one, nor under a file.
    guard_output(out, inputs, force=True, folder=True)
    if out.exists() and not out.is_dir():
        raise EdgeforgeError(f"--out {out}: is a file; pass a folder for head.onnx and tail.onnx")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in _OUTPUT_FILES)
        if other:
            raise EdgeforgeError(
                f"--out {out}: the folder holds other files ({', '.join(other[:3])}); pass a new "
                "folder or one written by `edgeforge split`"
            )


def _run_pipeline(
    model: Model,
    folder: Path,
    head_inputs: list[str],
    crossing: list[str],
    samples: Samples,
    compress: str | None,
) -> tuple[PipelineCheck, Compression | None]:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    whole = ort.InferenceSession(str(model.onnx_path), providers=providers)
    head = ort.InferenceSession(str(folder / "head.onnx"), providers=providers)
    tail = ort.InferenceSession(str(folder / "tail.onnx"), providers=providers)
    head_names = [o.name for o in head.get_outputs()]
    output_names = [o.name for o in whole.get_outputs()]
    expected: list[list[np.ndarray]] = [[] for _ in output_names]
    got: list[list[np.ndarray]] = [[] for _ in output_names]
    squeezed: list[list[np.ndarray]] = [[] for _ in output_names]
    sent_errors: dict[str, list[tuple[float, float]]] = {name: [] for name in crossing}
    for feed in samples.feeds:
        for i, value in enumerate(whole.run(output_names, feed)):
            expected[i].append(value)
        values = dict(zip(head_names, head.run(head_names, _only(feed, head_inputs)), strict=True))
        values.update({name: feed[name] for name in crossing if name in feed})
        for i, value in enumerate(tail.run(output_names, _only(values, crossing))):
            got[i].append(value)
        if compress is not None:
            sent = {name: _through(values[name], compress) for name in crossing}
            for name in crossing:
                sent_errors[name].append(
                    (
                        relative_error(values[name], sent[name]),
                        cosine_similarity(values[name], sent[name]),
                    )
                )
            for i, value in enumerate(tail.run(output_names, sent)):
                squeezed[i].append(value)
    exact = tolerance_for("fp32")
    outputs = [compare(name, expected[i], got[i], exact) for i, name in enumerate(output_names)]
    check = PipelineCheck(
        len(samples.feeds), samples.source, outputs, all(o.passed for o in outputs)
    )
    if compress is None:
        return check, None
    lossy = tolerance_for(compress)
    compared = [
        compare(name, expected[i], squeezed[i], lossy) for i, name in enumerate(output_names)
    ]
    tensors = [
        {
            "name": name,
            "max_relative_error": max(e for e, _ in errors),
            "min_cosine": min(c for _, c in errors),
        }
        for name, errors in sent_errors.items()
    ]
    return check, Compression(compress, tensors, compared, all(o.passed for o in compared))


def _through(value: np.ndarray, compress: str) -> np.ndarray:
    """`value` as the cloud receives it after sending it at `compress` precision."""
    if value.dtype.kind != "f":
        return value
    if compress == "fp16":
        return value.astype(np.float16).astype(value.dtype)
    low, high = float(value.min()), float(value.max())
    scale = (high - low) / 255 or 1.0
    zero = round(-low / scale) - 128
    codes = np.clip(np.round(value / scale) + zero, -128, 127).astype(np.int8)
    return ((codes.astype(np.float32) - zero) * scale).astype(value.dtype)


def _only(values: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    return {name: values[name] for name in names}


def _cloud_times(
    cloud: Device | str | CloudNodeTimes, profile: Any, get_device: Callable, estimate: Callable
) -> tuple[str, Callable[[int, int], float]]:
    if isinstance(cloud, str):
        cloud = get_device(cloud)
    if isinstance(cloud, Device):
        prefix = _prefix([layer.ms for layer in estimate(profile, cloud).layers])
        return cloud.id, lambda start, stop: prefix[stop] - prefix[start]
    if callable(cloud):
        return getattr(cloud, "__name__", type(cloud).__name__), cloud
    raise EdgeforgeError(
        f"cloud {cloud!r}: pass a cloud-class Device, a catalogue id, or a callable "
        "(start, stop) -> ms"
    )


def _fastest(all_edge: Placement, split: Placement, all_cloud: Placement) -> Placement:
    """The least total time; a tie goes to all-edge (nothing leaves the device), then the split."""
    return min((all_edge, split, all_cloud), key=lambda p: p.total_ms)


def _times(slow: Placement, fast: Placement) -> str:
    """'15x', how many times `fast` is faster than `slow`."""
    if fast.total_ms <= 0 or math.isinf(slow.total_ms):
        return "far"
    return f"{slow.total_ms / fast.total_ms:.3g}x"


def _prefix(values: list[float]) -> list[float]:
    sums = [0.0]
    for value in values:
        sums.append(sums[-1] + value)
    return sums


def _is_float(elem_type: int) -> bool:
    return elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else "inf"
