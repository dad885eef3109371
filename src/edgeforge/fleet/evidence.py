"""The evidence gate: each variant of a release is built (or taken), retested against its source,
held to the limits given, and described by the evidence devices and people will rely on.

Invariants:
- a variant passes only if it was retested here: built, loaded in its runtime, run on `--data`
  (or synthesised inputs) and matched the source within its precision's tolerance; a variant
  this machine cannot execute (Core ML off macOS) is refused, not waved through;
- every limit given (`--max-accuracy-drop`, `--max-size`, `--max-latency`, each for all classes
  or `CLASS:VALUE`) is a check with its figure, its limit and its verdict; a refusal names the
  variant and the figure (`android=onnxruntime:int8-dynamic: size 2.1 MB > 1 MB`);
- the canary set is plain arrays (`np.savez`, read back with `allow_pickle=False`): inputs under
  `in/<name>` and the source's outputs under `out/<name>`, axis 0 the sample; it passed on this
  machine before it ships, under the tolerance written beside it;
- lineage: the source's hash, the recipe and the artifact's hash travel together; an artifact
  taken with `--from` must name the same source hash as the model given, or it is refused.
- whatever reads `--data` or runs a model does so in a child process (`edgeforge._children`),
  as `convert` and `verify` do.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge.errors import EdgeforgeError

__all__ = [
    "Limits",
    "VariantEvidence",
    "VariantSpec",
    "data_sha256",
    "gather",
    "parse_limits",
    "parse_variants",
]

CANARY_FILE = "canary.npz"
REFERENCE_FILE = "reference.json"  # the monitor's baseline (`reference_from_data`)
CANARY_COUNT = 32
_TOOLS = ("edgeforge", "numpy", "onnx", "onnxruntime", "torch", "openvino", "tuf")


@dataclass(frozen=True)
class VariantSpec:
    """`CLASS=RUNTIME[:PRECISION]`: one device class and the artifact it gets."""

    device_class: str
    runtime: str
    precision: str = "fp32"

    @property
    def label(self) -> str:
        return f"{self.device_class}={self.runtime}:{self.precision}"


def parse_variants(text: str | list[str]) -> list[VariantSpec]:
    """'linux-x86=openvino,linux-arm=onnxruntime:int8-static' (or a list of those items)."""
    from edgeforge.fleet.registry import check_name
    from edgeforge.runtimes import get_runtime

    items = text.split(",") if isinstance(text, str) else list(text)
    specs: list[VariantSpec] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        device_class, sep, rest = item.partition("=")
        runtime, _, precision = rest.partition(":")
        if not sep or not device_class.strip() or not runtime.strip():
            raise EdgeforgeError(
                f"--variants {item!r}: write CLASS=RUNTIME[:PRECISION], e.g. "
                "android=litert or linux-arm=onnxruntime:int8-static"
            )
        try:
            check_name(device_class.strip())
        except EdgeforgeError:
            raise EdgeforgeError(
                f"--variants {item!r}: a device class is letters, digits, '.', '_' or '-'"
            ) from None
        spec = VariantSpec(device_class.strip(), runtime.strip(), precision.strip() or "fp32")
        get_runtime(spec.runtime)  # an unknown name lists the valid ones
        if spec.device_class in {s.device_class for s in specs}:
            raise EdgeforgeError(
                f"--variants: device class {spec.device_class!r} is named twice; one variant "
                "per class"
            )
        specs.append(spec)
    if not specs:
        raise EdgeforgeError("--variants: name at least one CLASS=RUNTIME[:PRECISION]")
    return specs


@dataclass(frozen=True)
class Limits:
    """The limits a variant is held to; each maps a device class (None: every class) to a value."""

    max_accuracy_drop: dict[str | None, float] = field(default_factory=dict)  # a fraction
    max_size: dict[str | None, int] = field(default_factory=dict)  # bytes
    max_latency: dict[str | None, float] = field(default_factory=dict)  # ms

    def for_class(self, device_class: str) -> dict[str, Any]:
        return {
            key: getattr(self, key).get(device_class, getattr(self, key).get(None))
            for key in ("max_accuracy_drop", "max_size", "max_latency")
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            key: {("*" if k is None else k): v for k, v in getattr(self, key).items()}
            for key in ("max_accuracy_drop", "max_size", "max_latency")
        }


def _per_class(text: Any, parse: Any, flag: str, classes: set[str]) -> dict[str | None, Any]:
    """'1%' (every class) or 'android:30ms,ios:20ms' (one per class), or a mapping of those."""
    if text is None:
        return {}
    if isinstance(text, dict):
        pairs = [(k, v) for k, v in text.items()]
    elif isinstance(text, int | float):
        pairs = [(None, text)]
    else:
        pairs = []
        for item in (i.strip() for i in str(text).split(",")):
            if not item:
                continue
            key, sep, value = item.rpartition(":")
            pairs.append((key.strip(), value) if sep else (None, item))
    limits: dict[str | None, Any] = {}
    for key, value in pairs:
        if key is not None and key != "*" and key not in classes:
            raise EdgeforgeError(
                f"{flag} {key}:{value}: no variant for device class {key!r} (classes: "
                f"{', '.join(sorted(classes))})"
            )
        parsed = parse(value)
        if parsed is None or not math.isfinite(parsed) or parsed < 0:
            raise EdgeforgeError(f"{flag} {value!r}: give a finite value >= 0")
        limits[None if key == "*" else key] = parsed
    return limits


def parse_limits(
    specs: list[VariantSpec],
    *,
    max_accuracy_drop: Any = None,
    max_size: Any = None,
    max_latency: Any = None,
) -> Limits:
    from edgeforge.optimize._pareto import parse_bytes, parse_ms, parse_share

    classes = {s.device_class for s in specs}

    def size(value: Any) -> int | None:
        parsed = parse_bytes(value)
        if parsed is None:
            return None
        return parsed

    return Limits(
        _per_class(max_accuracy_drop, parse_share, "--max-accuracy-drop", classes),
        _per_class(max_size, size, "--max-size", classes),
        _per_class(max_latency, parse_ms, "--max-latency", classes),
    )


def data_sha256(folder: Path) -> str:
    """One hash of a data folder: every file's relative path and SHA-256, in sorted order."""
    from edgeforge.runtimes.base import file_sha256

    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode("utf-8", "surrogateescape"))
        digest.update(b"\0" + file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


def tool_versions() -> dict[str, str]:
    found = {}
    for name in _TOOLS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


@dataclass
class Check:
    """One figure held to one limit (or a pass/fail step such as the retest)."""

    name: str
    passed: bool
    value: Any = None
    limit: Any = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class VariantEvidence:
    """What the gate learned about one variant; `passed` when every check passed."""

    spec: VariantSpec
    folder: Path | None = None  # the artifact folder (None when it was never built)
    status: str = ""
    detail: str = ""
    source_sha256: str = ""
    artifact_sha256: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    size_bytes: int | None = None
    verification: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    latency: dict[str, Any] = field(default_factory=dict)
    canary: dict[str, Any] | None = None
    canary_file: Path | None = None
    # the telemetry reference: the variant's own outputs (and inputs) on the evaluation data
    reference_file: Path | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        """'CLASS=RUNTIME:PRECISION: figure' for every failed check."""
        return [f"{self.spec.label}: {c.detail}" for c in self.checks if not c.passed]

    def evidence(self) -> dict[str, Any]:
        """The evidence as it is signed into variant.json and kept in the registry."""
        return {
            "verification": _verification_summary(self.verification),
            "accuracy": self.accuracy,
            "size_bytes": self.size_bytes,
            "latency": self.latency,
            "tools": self.tools,
            "recipe": self.recipe,
            "lineage": {
                "source_sha256": self.source_sha256,
                "recipe": self.recipe,
                "artifact_sha256": self.artifact_sha256,
            },
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_class": self.spec.device_class,
            "runtime": self.spec.runtime,
            "precision": self.spec.precision,
            "status": self.status,
            "detail": self.detail,
            "passed": self.passed,
            "failures": self.failures,
            "canary": self.canary,
            **self.evidence(),
        }


def _verification_summary(verification: dict[str, Any] | None) -> dict[str, Any] | None:
    if verification is None:
        return None
    keep = (
        "verdict",
        "passed",
        "precision",
        "tolerance",
        "samples",
        "samples_available",
        "data",
        "outputs",
        "task_metric",
        "notes",
        "created",
    )
    return {k: verification.get(k) for k in keep}


def gather(
    model: Any,
    specs: list[VariantSpec],
    workdir: Path,
    *,
    data: Path | None = None,
    limits: Limits | None = None,
    sources: list[Path] | None = None,
    devices: dict[str, str] | None = None,
    max_samples: int | None = None,
    bench_runs: int = 20,
    canary_count: int = CANARY_COUNT,
    timeout: float = 600,
) -> list[VariantEvidence]:
    """Build (or take from `sources`, folders written by optimize/convert), retest and describe
    every variant; `model` is a loaded `Model`. Bad input raises `EdgeforgeError`; a variant
    that fails a check comes back with `passed` False and its failures named."""
    from edgeforge.runtimes import get_runtime
    from edgeforge.runtimes.base import model_sha256

    limits = limits or Limits()
    devices = dict(devices or {})
    for spec in specs:  # refuse before any work (exit 2): a runtime that is not here
        runtime = get_runtime(spec.runtime)
        available = runtime.availability()
        if not available.installed:
            raise EdgeforgeError(
                f"variant {spec.label}: runtime {spec.runtime} is not installed here "
                f"({available.reason})"
            )
        if spec.precision not in runtime.precisions:
            raise EdgeforgeError(
                f"variant {spec.label}: {spec.runtime} builds "
                f"{', '.join(runtime.precisions)}, not {spec.precision}"
            )
        wanted = limits.for_class(spec.device_class)
        if (
            wanted["max_latency"] is not None
            and bench_runs < 1
            and not _device_for(spec.device_class, devices)
        ):
            raise EdgeforgeError(
                f"--max-latency for {spec.device_class}: no latency to check; name its catalogue "
                f"device (--device {spec.device_class}=ID) or measure here (--bench-runs > 0)"
            )
    for device_class, device in devices.items():
        if device_class not in {s.device_class for s in specs}:
            raise EdgeforgeError(f"--device {device_class}={device}: no variant for that class")
        from edgeforge.devices import get_device

        get_device(device)  # an unknown id lists the catalogue
    if data is not None:
        _check_data(model, Path(data))
    source_sha256 = model_sha256(model)
    found = _from_sources(sources or [], specs, source_sha256)
    built = _build(model, [s for s in specs if s not in found], workdir, data, max_samples, timeout)
    results = []
    for spec in specs:
        evidence = found.get(spec) or built[spec]
        evidence.source_sha256 = source_sha256
        if evidence.folder is not None and spec in found:
            _retest(model, evidence, data, max_samples, timeout)
        _judge(model, evidence, workdir, data, limits, devices, bench_runs, canary_count, timeout)
        results.append(evidence)
    return results


def _device_for(device_class: str, devices: dict[str, str]) -> str | None:
    """The catalogue device a class stands for: `--device CLASS=ID`, or the class's own name
    when it is a catalogue id."""
    if device_class in devices:
        return devices[device_class]
    from edgeforge.devices import list_devices

    return device_class if device_class in {d.id for d in list_devices()} else None


def _check_data(model: Any, folder: Path) -> None:
    """`--data` must fit the model: one sample read here, the rest when each variant is
    retested (that child names the file that does not fit)."""
    from edgeforge.evaluate.data import load_data

    load_data(folder, model.inputs, limit=1)


def _from_sources(
    sources: list[Path], specs: list[VariantSpec], source_sha256: str
) -> dict[VariantSpec, VariantEvidence]:
    """Artifacts that optimize/convert already built: each folder (and its sub-folders, two
    levels down) is searched for manifest.json of the variant's runtime and precision; where
    several match, optimize's `chosen/` is the one taken."""
    from edgeforge.runtimes import Artifact

    if not sources:
        return {}
    artifacts: list[Artifact] = []
    for folder in sources:
        folder = Path(folder)
        if not folder.is_dir():
            raise EdgeforgeError(f"--from {folder}: not a folder written by optimize or convert")
        manifests = [
            folder / "manifest.json",
            *folder.glob("*/manifest.json"),
            *folder.glob("*/*/manifest.json"),
        ]
        here = [Artifact.load(m.parent) for m in sorted(manifests) if m.is_file()]
        if not here:
            raise EdgeforgeError(
                f"--from {folder}: no artifact (manifest.json) in it or its sub-folders; pass "
                "the --out folder of optimize or convert"
            )
        artifacts += here
    found: dict[VariantSpec, VariantEvidence] = {}
    for spec in specs:
        matches = [
            a
            for a in artifacts
            if a.runtime == spec.runtime and a.manifest.recipe.get("precision") == spec.precision
        ]
        if not matches:
            continue
        same = [a for a in matches if a.manifest.source_sha256 == source_sha256]
        if not same:
            raise EdgeforgeError(
                f"--from: the {spec.runtime}:{spec.precision} artifact at {matches[0].folder} was "
                "built from another source (its source hash differs from the model given); "
                "release the model it was built from"
            )
        chosen = [a for a in same if a.folder.name == "chosen"]  # optimize's choice wins
        same = chosen or same
        if len(same) > 1:
            raise EdgeforgeError(
                f"--from: {len(same)} {spec.runtime}:{spec.precision} artifacts of this source "
                f"({', '.join(str(a.folder) for a in same)}); pass the one to release"
            )
        artifact = same[0]
        found[spec] = VariantEvidence(
            spec,
            folder=artifact.folder,
            status="taken",
            recipe=artifact.manifest.recipe,
            tools=dict(artifact.manifest.tools),
        )
    return found


def _build(
    model: Any,
    specs: list[VariantSpec],
    workdir: Path,
    data: Path | None,
    max_samples: int | None,
    timeout: float,
) -> dict[VariantSpec, VariantEvidence]:
    """`convert` each (runtime, precision) once: build, load, run and verify in a child."""
    from edgeforge.convert import convert
    from edgeforge.runtimes import Artifact

    results: dict[VariantSpec, VariantEvidence] = {}
    by_recipe: dict[tuple[str, str], list[VariantSpec]] = {}
    for spec in specs:
        by_recipe.setdefault((spec.runtime, spec.precision), []).append(spec)
    for (runtime, precision), group in by_recipe.items():
        out = Path(workdir) / "build" / f"{runtime}-{precision}"
        conversion = convert(
            model,
            [runtime],
            out,
            precision=precision,
            data=data,
            timeout=timeout,
            max_samples=max_samples if data else None,
        )
        target = conversion.targets[0]
        folder = Path(target.artifact).parent if target.artifact else None
        manifest = Artifact.load(folder).manifest if folder and folder.is_dir() else None
        for spec in group:
            results[spec] = VariantEvidence(
                spec,
                folder=folder if manifest else None,
                status=target.status,
                detail=target.detail,
                recipe=manifest.recipe if manifest else {"precision": precision},
                tools=dict(manifest.tools) if manifest else {},
                verification=target.verification,
            )
    return results


def _retest(
    model: Any,
    evidence: VariantEvidence,
    data: Path | None,
    max_samples: int | None,
    timeout: float,
) -> None:
    """An artifact taken with --from is retested here, as a built one is."""
    from edgeforge.evaluate import verify
    from edgeforge.runtimes import get_runtime

    runtime = get_runtime(evidence.spec.runtime)
    if not runtime.availability().can_execute:
        evidence.status = "built-not-run"
        evidence.detail = f"cannot run here: {runtime.availability().reason}"
        return
    try:
        result = verify(
            model,
            evidence.folder,
            data=data,
            max_samples=max_samples if data else None,
            timeout=timeout,
        )
    except EdgeforgeError as exc:
        evidence.status, evidence.detail = "failed", str(exc)
        return
    evidence.verification = result.to_dict()
    evidence.status = "verified" if result.passed else "parity-failed"
    evidence.detail = result.verdict


def _judge(
    model: Any,
    evidence: VariantEvidence,
    workdir: Path,
    data: Path | None,
    limits: Limits,
    devices: dict[str, str],
    bench_runs: int,
    canary_count: int,
    timeout: float,
) -> None:
    """Every check of one variant, in order; later checks need a retested artifact."""
    from edgeforge.runtimes import Artifact
    from edgeforge.runtimes.base import file_sha256

    spec = evidence.spec
    evidence.tools = {**tool_versions(), **evidence.tools}
    retested = evidence.status == "verified" and evidence.folder is not None
    why = evidence.detail or evidence.status
    if evidence.status == "built-not-run":
        why = f"cannot be retested on this machine ({why})"
    evidence.checks.append(
        Check("retest", retested, detail="retest passed" if retested else f"retest failed: {why}")
    )
    if not retested:
        return
    artifact = Artifact.load(evidence.folder)
    evidence.artifact_sha256 = file_sha256(artifact.path)
    evidence.size_bytes = artifact.size_bytes()
    wanted = limits.for_class(spec.device_class)
    _accuracy(evidence, data, wanted["max_accuracy_drop"])
    if wanted["max_size"] is not None:
        size, limit = evidence.size_bytes, wanted["max_size"]
        evidence.checks.append(
            Check(
                "size",
                size <= limit,
                size,
                limit,
                f"size {_bytes(size)} > {_bytes(limit)}"
                if size > limit
                else f"size {_bytes(size)} <= {_bytes(limit)}",
            )
        )
    _latency(evidence, artifact, devices, bench_runs, wanted["max_latency"], timeout)
    _canary(model, evidence, artifact, workdir, data, canary_count, timeout)


def _bytes(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} B"


def _accuracy(evidence: VariantEvidence, data: Path | None, limit: float | None) -> None:
    """Accuracy from the retest's task metric (labelled --data), with the data's hash; without
    labels, top-1 agreement with the source stands in (and says so)."""
    verification = evidence.verification or {}
    metric = verification.get("task_metric")
    if metric:
        worse = metric["reference"] - metric["candidate"]
        if metric["metric"] != "top-1 accuracy":  # an error metric: up is worse
            worse = -worse
        evidence.accuracy = {
            "metric": metric["metric"],
            "reference": metric["reference"],
            "candidate": metric["candidate"],
            "drop": worse,
        }
    else:
        agreement = next(
            (o.get("top1") for o in verification.get("outputs", []) if o.get("top1") is not None),
            None,
        )
        if agreement is not None and agreement != "inf":
            evidence.accuracy = {
                "metric": "top-1 agreement with the source (no labels)",
                "reference": 1.0,
                "candidate": float(agreement),
                "drop": 1.0 - float(agreement),
            }
    if evidence.accuracy is not None:
        evidence.accuracy["samples"] = verification.get("samples")
        evidence.accuracy["data"] = verification.get("data")
        evidence.accuracy["data_sha256"] = data_sha256(data) if data else None
    if limit is None:
        return
    if evidence.accuracy is None:
        raise EdgeforgeError(
            f"--max-accuracy-drop for {evidence.spec.device_class}: the retest has no accuracy "
            "to check; pass --data with labels (or a classifier's outputs to compare)"
        )
    drop = float(evidence.accuracy["drop"])
    evidence.checks.append(
        Check(
            "accuracy_drop",
            drop <= limit,
            drop,
            limit,
            f"accuracy drop {drop:.2%} {'<=' if drop <= limit else '>'} {limit:.2%} "
            f"({evidence.accuracy['metric']})",
        )
    )


def _latency(
    evidence: VariantEvidence,
    artifact: Any,
    devices: dict[str, str],
    bench_runs: int,
    limit: float | None,
    timeout: float,
) -> None:
    """Estimated on the class's catalogue device (when it has one), measured here (unless
    `bench_runs` is 0); `--max-latency` checks the estimate, else the measurement."""
    from edgeforge.bench import bench
    from edgeforge.estimator import estimate

    latency: dict[str, Any] = {"estimated_ms": None, "device": None, "measured_ms": None}
    device = _device_for(evidence.spec.device_class, devices)
    if device is not None:
        try:
            estimated = estimate(artifact.folder, device)
            latency |= {
                "device": device,
                "estimated_ms": estimated.latency_ms,
                "estimated_range_ms": [estimated.latency_low_ms, estimated.latency_high_ms],
            }
        except EdgeforgeError as exc:
            latency["estimate_note"] = str(exc)
    if bench_runs > 0:
        measured = bench(
            artifact.folder,
            runtime=artifact.runtime,
            warmup=2,
            runs=bench_runs,
            repeats=1,
            timeout=timeout,
        )
        latency |= {
            "measured_ms": measured.latency_ms.get("p50"),
            "measured_p90_ms": measured.latency_ms.get("p90"),
            "measured_on": "this machine (the release host)",
            "measured_runs": bench_runs,
        }
    evidence.latency = latency
    if limit is None:
        return
    value, where = (
        (latency["estimated_ms"], f"estimated on {device}")
        if latency["estimated_ms"] is not None
        else (latency["measured_ms"], "measured here")
    )
    if value is None:
        raise EdgeforgeError(
            f"--max-latency for {evidence.spec.device_class}: no latency "
            f"({latency.get('estimate_note', 'no estimate')}); measure here with --bench-runs > 0"
        )
    evidence.checks.append(
        Check(
            "latency",
            value <= limit,
            value,
            limit,
            f"latency {value:.3g} ms {'<=' if value <= limit else '>'} {limit:g} ms ({where})",
        )
    )


def _canary(
    model: Any,
    evidence: VariantEvidence,
    artifact: Any,
    workdir: Path,
    data: Path | None,
    count: int,
    timeout: float,
) -> None:
    """Write the canary set and check that the artifact passes it here."""
    from edgeforge._children import in_child
    from edgeforge.evaluate.compare import tolerance_for

    tolerance = tolerance_for(evidence.spec.precision)
    out = Path(workdir) / "canary" / evidence.spec.device_class / CANARY_FILE
    job = {
        "runtime": artifact.runtime,
        "model": model,
        "folder": str(artifact.folder),
        "data": str(data) if data else None,
        "count": count,
        "precision": evidence.spec.precision,
        "tolerance": tolerance,
        "out": str(out),
    }
    outcome = in_child(_canary_child, job, timeout)
    if outcome.get("status") != "done":
        evidence.checks.append(
            Check("canary", False, detail=f"canary set failed: {outcome.get('detail', '')}")
        )
        return
    evidence.canary_file = out
    if outcome.get("reference"):
        evidence.reference_file = Path(outcome["reference"])
    evidence.canary = {
        "file": CANARY_FILE,
        "samples": outcome["samples"],
        "inputs": outcome["inputs"],
        "outputs": outcome["outputs"],
        "layout": "in/<input> and out/<output>; axis 0 is the sample",
        "tolerance": {
            k: (None if not math.isfinite(v) else v) for k, v in tolerance.to_dict().items()
        },
        "tolerance_rule": "per output over all samples: max|got-ref| <= atol + rtol*max|ref|, "
        "cosine >= min_cosine, top-1 agreement >= min_top1 (None: not judged)",
        "source": outcome["source"],
        "sha256": _sha256(out),
    }
    passed = outcome["passed"]
    evidence.checks.append(
        Check(
            "canary",
            passed,
            detail="canary set passes here"
            if passed
            else f"canary set fails here: {outcome['reason']}",
        )
    )


def _sha256(path: Path) -> str:
    from edgeforge.runtimes.base import file_sha256

    return file_sha256(path)


def _write_reference(path: Path, feeds: list[dict[str, Any]], outputs: list[Any]) -> str | None:
    """The telemetry reference of the variant's first output (and first input) on the evaluation
    data, as JSON at `path`; None (no reference, so no drift verdict) when the shapes do not
    summarise (e.g. an output with no batch axis)."""
    from edgeforge.fleet.monitor import reference_from_data

    try:
        first = next(iter(feeds[0]))
        got = np.concatenate([np.asarray(o) for o in outputs], axis=0)
        fed = np.concatenate([np.asarray(f[first]) for f in feeds], axis=0)
        reference = reference_from_data(got, fed if len(fed) == len(got) else None)
    except (EdgeforgeError, ValueError, TypeError, IndexError, StopIteration):
        return None
    path.write_text(json.dumps(reference.to_dict(), sort_keys=True) + "\n")
    return str(path)


def _canary_child(job: dict[str, Any]) -> dict[str, Any]:
    """In a child: draw the inputs, run the source (the reference) and the artifact, save."""
    from edgeforge.evaluate.compare import compare
    from edgeforge.evaluate.data import load_data, synthesize
    from edgeforge.runtimes import Artifact, get_runtime
    from edgeforge.runtimes.onnxruntime import ort_run, ort_session

    model = job["model"]
    artifact = Artifact.load(Path(job["folder"]))
    if job["data"]:
        samples = load_data(Path(job["data"]), artifact.inputs, limit=job["count"])
    else:
        samples = synthesize(model, artifact.inputs, count=job["count"])
    feeds = samples.feeds
    first = {name: a.shape for name, a in feeds[0].items()}
    feeds = [f for f in feeds if {n: a.shape for n, a in f.items()} == first]  # stackable
    names = [t.name for t in model.outputs]
    reference = ort_session(model.onnx_path, "the reference")
    expected: list[list[np.ndarray]] = [[] for _ in names]
    got: list[list[np.ndarray]] = [[] for _ in names]
    with get_runtime(artifact.runtime).open(artifact) as session:
        for feed in feeds:
            for i, value in enumerate(ort_run(reference, names, feed, "the reference")):
                expected[i].append(value)
            result = session.run(feed)
            for i, name in enumerate(names):
                got[i].append(result[name])
    comparisons = [compare(n, expected[i], got[i], job["tolerance"]) for i, n in enumerate(names)]
    arrays = {f"in/{n}": np.stack([f[n] for f in feeds]) for n in feeds[0]}
    arrays |= {f"out/{n}": np.stack(expected[i]) for i, n in enumerate(names)}
    out = Path(job["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    reference = _write_reference(out.parent / REFERENCE_FILE, feeds, got[0] if names else [])
    return {
        "reference": reference,
        "runtime": job["runtime"],
        "status": "done",
        "samples": len(feeds),
        "inputs": list(feeds[0]),
        "outputs": names,
        "source": samples.source,
        "passed": all(c.passed for c in comparisons),
        "reason": "; ".join(f"{c.name}: {c.reason}" for c in comparisons if c.reason),
    }
