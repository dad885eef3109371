"""Which candidates `optimize` builds: the model variants the user's options produce, then, for
each, the device's runtimes, their precisions and recipes, each with its cache key.

What a caller can rely on:
- the first variant is the ONNX one ("cleaned" when the clean-up pass was asked for, else
  "source"; with the torch program where the source has one); "pruned" and "distilled" follow
  for `--passes` (torch sources only; fine-tuned on the calibration part, cached under
  `out/passes/`, and built for ONNX Runtime only, in fp32 and int8-static);
- candidates follow the device's runtime order; a runtime that is not installed here, or that
  needs a torch program the source lacks, is skipped with a reason (once, for the first variant);
- int8-static comes once per calibration method where the runtime takes that option, its recipe
  reading the calibration part (written as .npz under `out/data/`) through `data` and
  `calibration_samples`;
- a candidate's key (its folder under `out/candidates/`) digests the source model, the passes,
  the runtime and its tool versions, the recipe, the data and the split, the benchmark runs and
  the deployment settings it is timed and scored with (`_deploy.deployment`):
  equal keys mean the same build and the same measurement;
- when an int8-static candidate breaks the accuracy limit, `sensitivity` plans one more: ONNX
  Runtime int8-static with the most harmful layers kept in float, on the recipe of the least
  harmed ONNX Runtime int8-static candidate;
- a transformer (`_deploy.is_transformer`) also gets a "fused" variant, the ONNX variant
  after ONNX Runtime's transformer optimizer (fused attention, skip layer norms, GELU: ONNX
  Runtime's contrib ops), built for ONNX Runtime only in fp32, int8-dynamic and int8-static
  (minmax and percentile), and its int8-static recipes on OpenVINO and ONNX Runtime take
  `model_type: transformer` (NNCF's transformer scheme with SmoothQuant, once with preset
  mixed and once, `-performance`, with preset performance; ONNX Runtime: the weight products
  only, the feed-forward block float);
- a bf16 recipe is planned only where the device computes in bf16 (`_deploy.has_bf16`);
- planning builds nothing but the variants: candidates come back with status "planned".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeforge._io import write_json
from edgeforge.errors import EdgeforgeError
from edgeforge.evaluate.data import Samples
from edgeforge.model import Model
from edgeforge.optimize._data import Split
from edgeforge.optimize._deploy import deployment
from edgeforge.recipe import Recipe

if TYPE_CHECKING:
    from edgeforge.devices import Device

__all__ = ["BUILT", "TORCH_PASSES", "Candidate", "Planner", "Variant"]

_CACHE_VERSION = 4  # bump when what a cached candidate holds changes
# Runtimes whose int8-static recipe takes `calibration_method`, for those that do not declare
# it themselves (a runtime may set a `calibration_methods` attribute).
_CALIBRATION_METHODS = {
    "onnxruntime": ("minmax", "entropy", "percentile"),
    "onnxruntime-mobile": ("minmax", "entropy", "percentile"),
}
TORCH_PASSES = ("prune", "distill")
_MADE_BY = {"prune": "pruned", "distill": "distilled"}
_FUSED_PRECISIONS = ("fp32", "int8-dynamic", "int8-static")
_FUSED_METHODS = ("minmax", "percentile")
BUILT = ("evaluated", "built-not-run")  # the statuses of a candidate that has an artifact


@dataclass
class Candidate:
    """One recipe on one runtime, with everything measured about it."""

    id: str  # "onnxruntime/int8-static-minmax", "pruned/onnxruntime/fp32"
    runtime: str
    precision: str
    recipe: dict[str, Any]
    model: str  # which model it was built from: "cleaned", "source", "pruned", "distilled"
    key: str  # cache key: out/candidates/<key>/
    status: str = "planned"  # evaluated | built-not-run | unsupported | failed | crashed | ...
    cached: bool = False
    detail: str = ""
    artifact: str | None = None
    size_bytes: int | None = None
    latency_here_ms: float | None = None  # measured here, p50 at batch 1
    timed_with: dict[str, Any] = field(default_factory=dict)  # the timed session's settings
    device_latency_ms: float | None = None  # on the device: measured (this-machine) or estimated
    device_latency_source: str = ""  # "measured here" or "estimated on <device>"
    estimated_ms: float | None = None  # the roofline estimate, kept beside a measurement
    device_latency_band_ms: list[float] | None = None  # [low, high]
    memory_bytes: int | None = None
    memory_source: str = ""  # "measured here" or "estimated on the device"
    accuracy: dict[str, Any] | None = None  # `Score.to_dict()` on the held-out part
    accuracy_drop: float | None = None
    build_seconds: float | None = None
    on_front: bool = False
    dominated_by: str | None = None
    verdict: str = ""  # chosen | kept | dropped | failed
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Variant:
    name: str  # cleaned | source | pruned | distilled
    passes: list[str]
    onnx_model: Model  # what the ONNX-hub runtimes build from
    torch_model: Model | None  # what the torch-hub runtimes build from (None: ONNX-only)
    runtimes: tuple[str, ...] | None = None  # None: every runtime of the device


class Planner:
    """The variants and candidates for one model, device and split."""

    def __init__(
        self,
        out: Path,
        model: Model,
        device: Device,
        split: Split,
        bench_runs: int,
        calibration_folder: Path | None = None,
        metric: Any = None,
    ):
        from edgeforge.runtimes.base import model_sha256

        # The metric is part of every key: a cached candidate holds its score.
        self.metric = (
            f"{getattr(metric, '__module__', '')}:{getattr(metric, '__qualname__', '')}"
            if callable(metric)
            else metric
        )
        self.out = out
        self.calibration_folder = calibration_folder or split.folder
        self.model = model
        self.device = device
        self.split = split
        self.bench_runs = bench_runs
        self.digest = model_sha256(model)  # the source model's, in every key
        self.variant_of: dict[str, Variant] = {}
        from edgeforge.optimize._deploy import has_bf16, is_transformer

        self.transformer = is_transformer(model)
        self.bf16 = has_bf16(device)

    # -- model variants --------------------------------------------------------------------

    def variants(self, source, example_inputs, cleanup, passes, notes) -> list[Variant]:
        onnx_model, applied = self.model, []
        if cleanup:
            onnx_model = self._cleaned(notes)
            applied = ["cleanup"] if onnx_model is not self.model else []
        torch_model = self.model if self.model.torch_program is not None else None
        found = [Variant("cleaned" if applied else "source", applied, onnx_model, torch_model)]
        if self.transformer and "onnxruntime" in self.device.runtimes:
            fused = self._fused(onnx_model, notes)
            if fused is not None:
                found.append(
                    Variant("fused", [*applied, "ort-fusion"], fused, None, ("onnxruntime",))
                )
        for name in passes:
            if name in TORCH_PASSES:
                made = self._torch_pass(name, source, example_inputs, notes)
                if made is not None:
                    found.append(Variant(_MADE_BY[name], [name], made, None, ("onnxruntime",)))
        self.variant_of = {v.name: v for v in found}
        return found

    def _cleaned(self, notes: list[str]) -> Model:
        """The source after the ONNX clean-up pass, or the source itself (noted) when it fails."""
        from edgeforge.passes.cleanup import cleanup

        folder = self.out / "passes" / f"cleanup-{self.digest[:16]}"
        try:
            return cleanup(self.model, workdir=folder).model
        except EdgeforgeError as exc:
            notes.append(f"ONNX clean-up skipped: {exc}")
            return self.model

    def _fused(self, model: Model, notes: list[str]) -> Model | None:
        """`model` after ONNX Runtime's transformer optimizer, or None (noted) when it fuses
        nothing or fails."""
        from edgeforge.passes.ort_fusion import fuse_transformer

        folder = self.out / "passes" / f"ort-fusion-{model_sha256_of(model)[:16]}"
        try:
            fused, fusions = fuse_transformer(model, folder)
        except EdgeforgeError as exc:
            notes.append(f"ONNX Runtime transformer fusion skipped: {exc}")
            return None
        if fused is None:
            notes.append("ONNX Runtime's transformer optimizer fused nothing: no fused variant")
            return None
        notes.append(f"fused variant (ONNX Runtime transformer optimizer): {fusions}")
        return fused

    def _torch_pass(self, name, source, example_inputs, notes) -> Model | None:
        """The source pruned or distilled (cached under out/passes/), exported to ONNX."""
        from edgeforge._load import _is_torch_module, load
        from edgeforge._torch_export import load_factory

        key = _digest([self.digest, name, self.split.digest, self.split.calibration])[:16]
        folder = self.out / "passes" / f"{name}-{key}"
        record = folder / "pass.json"
        if record.is_file():
            return load(json.loads(record.read_text())["onnx"])
        if _is_torch_module(source):
            module, inputs, options = source, example_inputs, {}
        elif isinstance(source, str) and ":" in source and not Path(source).is_file():
            module, inputs, options = load_factory(source)
        else:
            notes.append(
                f"--passes {name} skipped: it needs a torch source (a module or a "
                "'package.module:factory' reference), not an ONNX file"
            )
            return None
        from edgeforge.passes.distill import distill
        from edgeforge.passes.prune import prune

        fine_tune = Samples(
            self.split.calibration_feeds,
            self.split.labels_calibration,
            f"the calibration part of --data {self.split.folder}",
        )
        if name == "prune":
            made = prune(module, inputs, ratio=0.5, data=fine_tune, epochs=3)
        else:
            made = distill(module, inputs, fine_tune, width=0.5, steps=300)
        options = dict(options or {})
        model = load(
            made.module,
            inputs,
            input_names=[t.name for t in self.model.inputs],
            output_names=[t.name for t in self.model.outputs],
            dynamic_axes=options.get("dynamic_axes"),
            workdir=folder,
        )
        write_json(record, {"onnx": str(model.onnx_path), "pass": made.to_dict()})
        notes.append(
            f"{name}: {'; '.join(made.notes) or 'done'} (fine-tuned on the calibration part)"
        )
        return model

    # -- candidates ------------------------------------------------------------------------

    def plan(self, variants, runtimes, precisions) -> tuple[list[Candidate], list[dict]]:
        from edgeforge.runtimes import get_runtime

        plans: list[Candidate] = []
        skipped: list[dict[str, str]] = []
        for variant in variants:
            for name in self.device.runtimes:
                if runtimes and name not in runtimes:
                    continue
                if variant.runtimes is not None and name not in variant.runtimes:
                    continue
                runtime = get_runtime(name)
                available = runtime.availability()
                if not available.installed:
                    if variant is variants[0]:
                        skipped.append({"runtime": name, "reason": available.reason})
                    continue
                model = variant.onnx_model if runtime.hub == "onnx" else variant.torch_model
                if model is None:
                    if variant is variants[0]:
                        skipped.append(
                            {
                                "runtime": name,
                                "reason": "converts from a torch.export program; this model "
                                "came as ONNX (load the torch module instead)",
                            }
                        )
                    continue
                wanted = list(runtime.precisions)
                if variant.name in ("pruned", "distilled"):
                    wanted = [p for p in wanted if p in ("fp32", "int8-static")]
                if variant.name == "fused":
                    wanted = [p for p in wanted if p in _FUSED_PRECISIONS]
                if "bf16" in wanted and not self.bf16:
                    wanted.remove("bf16")
                    if variant is variants[0] and (not precisions or "bf16" in precisions):
                        skipped.append(
                            {
                                "runtime": f"{name}/bf16",
                                "reason": f"{self.device.id} has no bf16 arithmetic "
                                "(AVX-512 BF16 or AMX)",
                            }
                        )
                for precision in wanted:
                    if precisions and precision not in precisions:
                        continue
                    for suffix, options in self._recipes(runtime, precision, variant):
                        plans.append(self._candidate(variant, runtime, precision, suffix, options))
        return plans, skipped

    def _recipes(self, runtime, precision, variant=None) -> list[tuple[str, dict[str, Any]]]:
        if precision != "int8-static":
            return [("", {})]
        options: dict[str, Any] = {
            "data": str(self.calibration_folder),
            "calibration_samples": self.split.calibration,
        }
        if self.transformer and runtime.name in ("openvino", "onnxruntime"):
            options["model_type"] = "transformer"
        if self.transformer and runtime.name == "openvino":
            # NNCF's presets trade: mixed is the more accurate, performance (symmetric
            # activations) the faster on AMX (`_quantize_openvino`); the measurement decides.
            return [
                ("", options | {"preset": "mixed"}),
                ("-performance", options | {"preset": "performance"}),
            ]
        methods = getattr(runtime, "calibration_methods", None) or _CALIBRATION_METHODS.get(
            runtime.name, ()
        )
        if variant is not None and variant.name == "fused":
            methods = tuple(m for m in methods if m in _FUSED_METHODS)
        if not methods:
            return [("", options)]
        return [(f"-{m}", options | {"calibration_method": m}) for m in methods]

    def _candidate(self, variant, runtime, precision, suffix, options, extra=None) -> Candidate:
        prefix = "" if variant.name in ("cleaned", "source") else f"{variant.name}/"
        recipe = Recipe(precision, options).to_dict()
        key_recipe = {**recipe, "options": {**options, "data": self.split.digest}}
        if "data" not in options:
            key_recipe["options"].pop("data")
        key = _digest(
            [
                _CACHE_VERSION,
                self.digest,
                variant.passes,
                runtime.name,
                runtime.versions(),
                key_recipe,
                self.split.digest,
                self.split.calibration,
                self.bench_runs,
                self.metric,
                extra,
                deployment(runtime.name, precision, self.device),  # how it is timed and scored
            ]
        )[:20]
        return Candidate(
            id=f"{prefix}{runtime.name}/{precision}{suffix}",
            runtime=runtime.name,
            precision=precision,
            recipe=recipe,
            model=variant.name,
            key=key,
        )

    # -- sensitivity -----------------------------------------------------------------------

    def sensitivity(
        self, plans: list[Candidate], bound: float | None, notes: list[str]
    ) -> tuple[Candidate, dict[str, float]] | None:
        """When an int8-static candidate breaks the accuracy limit `bound`, the ONNX Runtime
        candidate with the most harmful layers kept in float, and the job that tunes it on the
        calibration part (pass it to `Builder.evaluate`); None when there is none to try."""
        if bound is None:
            return None
        broken = [
            c
            for c in plans
            if c.precision == "int8-static"
            and c.model in ("cleaned", "source")
            and c.accuracy_drop is not None
            and c.accuracy_drop > bound
        ]
        if not broken:
            return None
        ort = [
            c
            for c in plans
            if c.runtime == "onnxruntime"
            and c.precision == "int8-static"
            and c.model in ("cleaned", "source")
            and c.status == "evaluated"
        ]
        if not ort:
            notes.append(
                "an int8-static candidate breaks --max-accuracy-drop, but ONNX Runtime "
                "built no int8-static candidate here: no sensitivity candidate"
            )
            return None
        base = min(ort, key=lambda c: c.accuracy_drop if c.accuracy_drop is not None else 1e9)
        from edgeforge.runtimes import get_runtime

        variant = self.variant_of[base.model]
        options = dict(base.recipe["options"])
        method = options.get("calibration_method", "")
        job = {"limit": 1.0 - bound}
        candidate = self._candidate(
            variant,
            get_runtime("onnxruntime"),
            "int8-static",
            f"-{method}-sensitivity" if method else "-sensitivity",
            options,
            extra=job,
        )
        return candidate, job


def model_sha256_of(model: Model) -> str:
    from edgeforge.runtimes.base import model_sha256

    return model_sha256(model)


def _digest(parts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
