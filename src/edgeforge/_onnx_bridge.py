"""The ONNX-to-torch bridge: an ONNX source reaches LiteRT, ExecuTorch and Core ML (issue 18,
class 3).

Those runtimes convert from a `torch.export` program; a pretrained model that ships only as ONNX
has none. The bridge makes one, with onnx2torch (a maintained ONNX-to-torch.fx converter):

1. the ONNX graph with every input fixed to the synthesised samples' shape
   (`edgeforge.evaluate._sizes`: a size the model runs at), folded by onnxslim so that shape
   arithmetic becomes constants;
2. onnx2torch's converters; an op version it lacks is served by its newest older converter when
   the newer ONNX schema has the same inputs and this node sets no attribute the older one lacks
   (most bumps since opset 18 only widen types); ONNX `Gelu` (opset 20) has a one-line shim;
3. the fx module traced at the example inputs into ATen ops, with the values onnx2torch reads
   from constant tensors (Reshape targets, Resize scales) fixed, then `torch.export`;
4. the program run on the synthesised samples against ONNX Runtime on the original file, within
   a tolerance scaled to the outputs (as torch sources are checked when they are exported).

Invariants a caller can rely on:
- the bridged model is the same ONNX file with a torch program beside it in a folder of ours
  (never the user's), its shapes fixed to the example's, and `provenance.exporter` saying
  "onnx2torch bridge"; ONNX-hub runtimes are unaffected;
- a model the bridge cannot take gets an `BridgeRefused` whose message names every op it lacks
  (with a count and the first node), or the step that failed; `convert` reports it on each
  torch-hub target, with a workaround, and never as a crash;
- the bridge runs the model (ONNX Runtime, torch), so `bridged_for` runs it in a child process
  under the time limit and memory budget, as `verify` does (a hostile file costs that child);
- onnx2torch is imported without torchvision (which breaks `import transformers` here): its
  NonMaxSuppression and RoiAlign converters, the only ones that need it, are then counted among
  the ops the bridge lacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import re
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge.errors import EdgeforgeError, first_line
from edgeforge.model import Model

__all__ = ["BRIDGE", "BridgeRefused", "bridge", "bridged_for", "refused_finding"]

BRIDGE = "onnx2torch bridge"
_NEEDS_TORCHVISION = {"NonMaxSuppression", "RoiAlign"}
_SAMPLES = 3
_CHILD = "onnx-bridge"  # the child process's name (edgeforge._children)


class BridgeRefused(EdgeforgeError):
    """The bridge cannot turn this ONNX model into a torch program; the message says why."""


def bridged_for(model: Model, hubs: list[str]) -> Model:
    """`model` with a torch program from the bridge when a torch-hub runtime is among `hubs`
    and it is an ONNX source without one; a refusal goes into `provenance.exporter_note`,
    so that each torch-hub target reports it. Any other model is returned as it is."""
    from edgeforge._children import in_child, inside_child
    from edgeforge._limits import time_limit
    from edgeforge._load import _workdir

    if "torch" not in hubs or not needs_bridge(model):
        return model
    if inside_child():  # that child's limits hold already
        try:
            return bridge(model)
        except EdgeforgeError as exc:  # BridgeRefused, or no size the model runs at
            note = f"the ONNX-to-torch bridge refused it: {exc}"
        except Exception as exc:  # a fault in a library the bridge drives: the others go on
            note = f"the ONNX-to-torch bridge failed ({type(exc).__name__}: {first_line(exc)})"
    else:  # it runs the model: in a child, under the time limit and the memory budget
        job = {"runtime": _CHILD, "model": model, "workdir": str(_workdir(None))}
        outcome = in_child(_bridge_in_child, job, time_limit())
        if "model" in outcome:
            return outcome["model"]
        detail = outcome.get("detail", "")
        if outcome.get("status") == "unsupported":
            note = f"the ONNX-to-torch bridge refused it: {detail}"
        else:
            note = f"the ONNX-to-torch bridge {outcome.get('status', 'failed')} ({detail})"
    return dataclasses.replace(
        model, provenance=dataclasses.replace(model.provenance, exporter_note=note)
    )


def _bridge_in_child(job: dict[str, Any]) -> dict[str, Any]:
    """The child's work: the bridged model, its program in the parent's folder."""
    model = bridge(job["model"], Path(job["workdir"]))
    return {"runtime": _CHILD, "status": "done", "model": model}


def needs_bridge(model: Model) -> bool:
    return (
        model.torch_program is None
        and model.provenance.source_kind == "onnx"
        and not model.provenance.exporter_note
    )


def bridge(model: Model, workdir: Path | None = None) -> Model:
    """`model` with a torch program made from its ONNX graph (see the module docstring)."""
    from edgeforge._load import _workdir
    from edgeforge._torch_export import TORCH_PROGRAM
    from edgeforge.evaluate.synthesis import synthesize

    missing = [m for m in ("torch", "onnx2torch") if importlib.util.find_spec(m) is None]
    if missing:
        raise BridgeRefused(
            f"{' and '.join(missing)} not installed; install the bridge with "
            "`pip install --no-deps onnx2torch==1.5.15` (README, Install)"
        )
    import torch

    samples = synthesize(model, count=_SAMPLES)
    names = [spec.name for spec in model.inputs]
    example = tuple(torch.from_numpy(np.ascontiguousarray(samples.feeds[0][n])) for n in names)
    shapes = {n: tuple(samples.feeds[0][n].shape) for n in names}
    # Weights from the file as loaded: a --shape pin's copy hard-links external data, which
    # onnx.load refuses to read; the pinned dims are in `shapes` already.
    graph = _fixed_graph(model.unpinned or model, shapes)
    _refuse_missing_ops(graph)
    program = _export(graph, example)
    errors = _parity(model, program, samples.feeds, names)
    folder = Path(workdir) if workdir is not None else _workdir(None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TORCH_PROGRAM
    torch.export.save(program, str(path))
    note = (
        f"the torch program comes from the {BRIDGE} at input shapes "
        f"{ {n: list(s) for n, s in shapes.items()} }"
    )
    provenance = dataclasses.replace(
        model.provenance,
        exporter=BRIDGE,
        exporter_note=note,
        export_check=errors,
        torch_version=torch.__version__,
    )
    # A pin already fixed the ONNX graph's dims the bridge used: the torch runtimes build the
    # pinned model itself, not the unpinned original.
    return dataclasses.replace(
        model, provenance=provenance, torch_program=path.resolve(), unpinned=None
    )


def refused_finding(runtime: str, model: Model) -> Any:
    """The `check` finding for a model that still has no torch program: the bridge's refusal
    where it refused (naming the ops), else where the model came from."""
    from edgeforge.runtimes.base import Finding

    note = model.provenance.exporter_note
    if model.provenance.source_kind == "onnx" and note:
        return Finding(
            runtime,
            "unsupported",
            f"{runtime} converts from a torch.export program, and this ONNX model has none: {note}",
            "export the model from its torch source (a module or a .pt2), or keep it on "
            "ONNX Runtime, OpenVINO or the browser",
            op_type=_first_op(note),
            evidence="conversion attempt",
        )
    return Finding(
        runtime,
        "unsupported",
        f"{runtime} converts from a torch.export program, and this model came from "
        f"{model.provenance.source_kind}",
        "load the torch module or a .pt2 instead of the .onnx file",
        evidence="rule",
    )


def _first_op(note: str) -> str | None:
    match = re.search(r"no converter for ([A-Za-z0-9_.]+)", note)
    return match.group(1) if match else None


# -- the steps ------------------------------------------------------------------------------


def _fixed_graph(model: Model, shapes: dict[str, tuple[int, ...]]) -> Any:
    """The ModelProto with weights, inputs fixed to `shapes`, shape arithmetic folded."""
    import onnxslim

    proto = model.proto(load_weights=True)
    for value in proto.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[value.name], strict=True):
                dim.Clear()
                dim.dim_value = int(size)
    try:
        with _quiet():
            proto = onnxslim.slim(proto)
    except Exception as exc:  # onnxslim raises what its passes raise
        raise BridgeRefused(f"onnxslim could not fold the graph ({first_line(exc)})") from None
    _drop_inert_allowzero(proto)
    return proto


def _drop_inert_allowzero(proto: Any) -> None:
    """Reshape's `allowzero=1` (torch's exporter sets it) changes nothing when the target shape
    is a constant without a 0; onnx2torch refuses the attribute, so it goes there."""
    from onnx import numpy_helper

    constants = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        target = constants.get(node.input[1])
        if target is None or (numpy_helper.to_array(target) == 0).any():
            continue
        for attribute in list(node.attribute):
            if attribute.name == "allowzero":
                node.attribute.remove(attribute)


def _refuse_missing_ops(proto: Any) -> None:
    """Every op onnx2torch (with the aliases) cannot convert, named at once."""
    registry = _onnx2torch_registry()
    opsets = {o.domain or "": o.version for o in proto.opset_import}
    lacking: Counter[str] = Counter()
    first_node: dict[str, str] = {}
    for node in proto.graph.node:
        domain = node.domain or ""
        label = node.op_type if not domain else f"{domain}.{node.op_type}"
        reason = _lacks(registry, node, domain, opsets.get(domain, opsets.get("", 0)))
        if reason:
            key = f"{label} ({reason})" if reason is not True else label
            lacking[key] += 1
            first_node.setdefault(key, node.name)
    if lacking:
        listed = ", ".join(
            f"{op} x{n}" + (f" (first node {first_node[op]!r})" if first_node[op] else "")
            for op, n in sorted(lacking.items())
        )
        raise BridgeRefused(
            f"onnx2torch has no converter for {listed}; export the model from its torch source "
            "instead of the .onnx file, or keep it on ONNX Runtime, OpenVINO or the browser"
        )


def _lacks(registry: Any, node: Any, domain: str, version: int) -> str | bool:
    """False when a converter takes `node`; else True or why not."""
    if node.op_type in _NEEDS_TORCHVISION and importlib.util.find_spec("torchvision") is None:
        return "needs torchvision, which edgeforge leaves out"
    try:
        registry.get_converter(node.op_type, version, domain)
        return False
    except NotImplementedError:
        pass
    older = _older_converter(registry, node, domain, version)
    if isinstance(older, str):
        return older
    return older is None


def _older_converter(registry: Any, node: Any, domain: str, version: int) -> Any:
    """Register and return an older converter for `node`'s op version when the schemas agree
    (see the module docstring); a reason (str) or None when there is none."""
    from onnx import defs

    try:
        newer = defs.get_schema(node.op_type, max_inclusive_version=version, domain=domain)
    except Exception:  # an op ONNX does not define (a custom domain): nothing to alias
        return None
    earlier = sorted(
        {
            schema.since_version
            for schema in defs.get_all_schemas_with_history()
            if schema.name == node.op_type
            and schema.domain == domain
            and schema.since_version < newer.since_version
        },
        reverse=True,
    )
    for old_version in earlier:
        try:
            converter = registry.get_converter(node.op_type, old_version, domain)
        except NotImplementedError:
            continue
        older = defs.get_schema(node.op_type, max_inclusive_version=old_version, domain=domain)
        if [i.name for i in older.inputs] != [i.name for i in newer.inputs]:
            return None
        unknown = sorted({a.name for a in node.attribute} - set(older.attributes))
        if unknown:
            return f"opset {version} attribute {', '.join(unknown)}"
        registry.add_converter(node.op_type, newer.since_version, domain)(converter)
        return converter
    return None


def _export(proto: Any, example: tuple[Any, ...]) -> Any:
    """onnx2torch's fx module, traced into ATen ops at `example`, then `torch.export`ed."""
    import onnx2torch
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    _onnx2torch_registry()  # imported the torchvision-free way
    try:
        with _quiet():
            module = onnx2torch.convert(proto).eval()
    except Exception as exc:  # a converter that refuses an attribute value, or a bug in one
        raise BridgeRefused(f"onnx2torch could not convert it ({first_line(exc)})") from None
    try:
        with _quiet(), torch.no_grad():
            # onnx2torch reads Reshape targets and Resize scales out of tensors; tracing with
            # real tensors fixes those values (the shapes are fixed already) instead of
            # leaving data-dependent reads that torch.export refuses.
            traced = make_fx(
                module, tracing_mode="real", pre_dispatch=True, _error_on_data_dependent_ops=False
            )(*example)
            traced.graph.eliminate_dead_code()
            traced.recompile()
            return torch.export.export(traced, example)
    except Exception as exc:  # torch raises many types from tracing
        raise BridgeRefused(
            f"torch.export could not trace onnx2torch's module ({first_line(exc)})"
        ) from None


def _parity(model: Model, program: Any, feeds: list[dict], names: list[str]) -> dict[str, float]:
    """The largest error per output over `feeds`, torch program against ONNX Runtime on the
    original file; BridgeRefused when one exceeds the tolerance."""
    import torch
    import torch.utils._pytree as pytree

    from edgeforge._torch_export import _ATOL, _RTOL, output_error
    from edgeforge.runtimes.onnxruntime import ort_run, ort_session

    session = ort_session(model.onnx_path, "the ONNX source")
    outputs = [spec.name for spec in model.outputs]
    module = program.module()
    errors = dict.fromkeys(outputs, 0.0)
    for feed in feeds:
        expected = ort_run(session, outputs, feed, "the ONNX source")
        with torch.no_grad():
            got = pytree.tree_leaves(module(*(torch.from_numpy(feed[n]) for n in names)))
        if len(got) != len(expected):
            raise BridgeRefused(
                f"the torch program returns {len(got)} outputs, the ONNX graph {len(expected)}"
            )
        for name, want, have in zip(outputs, expected, got, strict=True):
            have = have.detach().numpy()
            if tuple(have.shape) != tuple(want.shape):
                raise BridgeRefused(
                    f"output {name!r} has shape {tuple(have.shape)} in torch but "
                    f"{tuple(want.shape)} in ONNX Runtime"
                )
            error, scale = output_error(want, have)
            if not error <= _ATOL + _RTOL * scale:
                raise BridgeRefused(
                    f"the torch program disagrees with ONNX Runtime on output {name!r} "
                    f"(max abs error {error:.3g} for values up to {scale:.3g}): onnx2torch "
                    "mistranslated an op, or the graph reads its inputs' values"
                )
            errors[name] = max(errors[name], error)
    return errors


# -- onnx2torch, imported without torchvision ---------------------------------------------------


def _onnx2torch_registry() -> Any:
    """onnx2torch's converter registry, with the Gelu shim. onnx2torch imports torchvision at
    import time for two converters only (NonMaxSuppression, RoiAlign); without torchvision, a
    stand-in module satisfies those imports and is removed again at once, so nothing else ever
    sees a torchvision (transformers checks for it)."""
    if "onnx2torch" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        stand_in = types.ModuleType("torchvision")
        stand_in.__path__ = []  # a package, so that `from torchvision.ops import x` resolves
        ops = types.ModuleType("torchvision.ops")

        def absent(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("torchvision is not installed")

        ops.roi_align = absent  # type: ignore[attr-defined]
        ops.nms = absent  # type: ignore[attr-defined]
        stand_in.ops = ops  # type: ignore[attr-defined]
        sys.modules.update({"torchvision": stand_in, "torchvision.ops": ops})
        try:
            import onnx2torch  # noqa: F401
        finally:
            del sys.modules["torchvision"], sys.modules["torchvision.ops"]
    from onnx2torch.node_converters import registry

    _add_gelu(registry)
    return registry


def _add_gelu(registry: Any) -> None:
    """ONNX Gelu (opset 20) is torch's GELU with the same `approximate` attribute."""
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    try:
        registry.get_converter("Gelu", 20)
        return
    except NotImplementedError:
        pass
    import torch

    @registry.add_converter(operation_type="Gelu", version=20)
    def _gelu(node: Any, graph: Any) -> Any:
        approximate = node.attributes.get("approximate", "none")
        return OperationConverterResult(
            torch_module=torch.nn.GELU(approximate=approximate),
            onnx_mapping=onnx_mapping_from_node(node=node),
        )


@contextlib.contextmanager
def _quiet():
    from edgeforge._torch_export import _quiet as exporters_quiet

    with exporters_quiet():
        yield
