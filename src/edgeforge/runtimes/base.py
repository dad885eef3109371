"""The runtime plug-in contract: `Runtime`, `Session`, `Artifact` and `Finding`.

A runtime is one file with one class that fills in `_build` and `_open` (and, where it can
tell more than a conversion attempt does, `check`). The base class enforces the contract:
- `build` refuses when the runtime is not installed (naming the pip extra), when it cannot
  carry out the recipe, or when it needs a torch program the model lacks; it refuses an output
  folder that holds the model or that edgeforge did not write (unless `force`, see
  `edgeforge._io.guard_output`); it builds into a staging folder and swaps the finished
  artifact, with its manifest, into place with renames only at the end, so a failed build
  leaves nothing behind;
- a manifest lists every file of its artifact and records the verification outcome:
  `verification` is None until someone checked the artifact (`record_verification`), so an
  artifact whose check never finished (a time-out, a killed child) does not look finished;
- `Artifact.load` refuses a manifest whose `file` (or any listed file) leaves the artifact
  folder, by `..`, an absolute path or a symbolic link: an artifact names only its own files;
- `open` refuses an artifact of another runtime and says plainly when this machine cannot
  execute it (Core ML off macOS, TensorRT without a GPU);
- a runtime that converts from the torch program builds a `--shape`-pinned model's unpinned
  original (the program keeps its own dims) and its manifest's notes say so; an ONNX source
  gets its program from the ONNX-to-torch bridge (`edgeforge._onnx_bridge`) at the pinned or
  synthesised shapes, or the bridge's refusal, naming the ops it lacks;
- a `Session` takes and returns tensors under the source model's own input and output names,
  whatever the runtime calls them internally, and checks the feeds against its signature.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeforge._io import guard_output, replace_folder, write_json
from edgeforge.errors import EdgeforgeError
from edgeforge.model import Model, TensorSpec
from edgeforge.recipe import Recipe

__all__ = [
    "Artifact",
    "Availability",
    "Finding",
    "Manifest",
    "Runtime",
    "RuntimeUnavailable",
    "Session",
    "file_sha256",
    "model_sha256",
    "record_verification",
    "settle_artifact",
]

MANIFEST = "manifest.json"


class RuntimeUnavailable(EdgeforgeError):
    """The runtime is not installed, or cannot execute on this machine."""


@dataclass(frozen=True)
class Availability:
    installed: bool
    can_execute: bool
    reason: str = ""  # why not installed, or why it cannot execute here

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Finding:
    """One thing `check` learned about a model on a runtime, with what to do about it."""

    runtime: str
    severity: str  # unsupported | fallback | trap | info
    message: str
    workaround: str
    op_type: str | None = None
    nodes: tuple[str, ...] = ()
    evidence: str = ""  # how we know: conversion attempt, query_model, probe model, rule

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["nodes"] = list(self.nodes)
        return data


@dataclass(frozen=True)
class Manifest:
    """What an artifact is and what built it; stored as manifest.json in its folder."""

    runtime: str
    format: str
    file: str  # the artifact's main file, relative to its folder
    source: str
    source_sha256: str
    recipe: dict[str, Any]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    tools: dict[str, str]
    created: str
    notes: list[str] = field(default_factory=list)
    files: list[str] | None = None  # every file of the artifact (None: an older manifest)
    # None until checked; then {"status": "verified" | "parity-failed" | "built-not-run" |
    # "failed", "detail": ...}
    verification: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Artifact:
    """A built artifact: a folder holding the runtime's files and manifest.json."""

    folder: Path
    manifest: Manifest

    @property
    def path(self) -> Path:
        return self.folder / self.manifest.file

    @property
    def runtime(self) -> str:
        return self.manifest.runtime

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(_spec(t) for t in self.manifest.inputs)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(_spec(t) for t in self.manifest.outputs)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())

    @classmethod
    def load(cls, folder: Path) -> Artifact:
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise EdgeforgeError(
                f"{folder}: no {MANIFEST}; pass a folder written by `edgeforge convert`"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            manifest = Manifest(**data)
        except (ValueError, TypeError, OSError) as exc:
            message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise EdgeforgeError(
                f"{path}: unreadable manifest ({message}); rebuild the artifact"
            ) from None
        _confined(folder, manifest)
        return cls(folder, manifest)

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "path": str(self.path), **self.manifest.to_dict()}


class Session(ABC):
    """A loaded artifact, run with the source model's input and output names."""

    def __init__(self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
        self.inputs = inputs
        self.outputs = outputs

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in the order of `self.outputs`."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = [t.name for t in self.inputs]
        if sorted(feeds) != sorted(expected):
            raise EdgeforgeError(
                f"inputs {sorted(feeds)} do not match the model's inputs {expected}"
            )
        arrays = {name: np.asarray(feeds[name]) for name in expected}
        for spec in self.inputs:
            _check_feed(spec, arrays[spec.name])
        results = self._run(arrays)
        if len(results) != len(self.outputs):
            raise EdgeforgeError(
                f"the runtime returned {len(results)} outputs, the model declares "
                f"{len(self.outputs)}"
            )
        return {t.name: np.asarray(r) for t, r in zip(self.outputs, results, strict=True)}

    def close(self) -> None:  # noqa: B027 - most sessions hold nothing to release
        """Release what the session holds (processes, servers)."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Runtime(ABC):
    """One runtime. Subclasses set the class attributes and fill in `_build` and `_open`."""

    name: ClassVar[str]
    format: ClassVar[str]  # onnx, ort, openvino-ir, tflite, mlpackage, pte, tensorrt-engine
    extra: ClassVar[str | None] = None  # the pip extra that installs it (None: a core dependency)
    hub: ClassVar[str] = "onnx"  # what it converts from: "onnx" or "torch" (a torch.export program)
    modules: ClassVar[tuple[str, ...]] = ()  # Python modules it imports
    distributions: ClassVar[tuple[str, ...]] = ()  # packages whose versions go in manifests
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    # CPU threads for the sessions `open` returns, for runtimes that take a count (None: the
    # runtime's own default). Set it on the instance before `open`.
    threads: int | None = None

    # -- what a subclass provides -----------------------------------------------------------

    @abstractmethod
    def _build(self, model: Model, recipe: Recipe, folder: Path) -> tuple:
        """Write the artifact into `folder`; return (main file name, notes), or (main file
        name, notes, {input: shape}) when the artifact fixed dynamic input dimensions."""

    @abstractmethod
    def _open(self, artifact: Artifact) -> Session:
        """Load a built artifact for execution."""

    def check(self, model: Model) -> list[Finding]:
        """What this runtime lacks or runs on a fallback for `model` (default: nothing known)."""
        return []

    def intermediates(
        self, artifact: Artifact, feeds: dict[str, np.ndarray], names: list[str], scratch: Path
    ) -> dict[str, np.ndarray]:
        """Values of the named intermediate (ONNX) tensors for `feeds`, as far as this runtime
        can expose them; {} when it cannot (used to find the first diverging layer)."""
        return {}

    def execution_blocker(self) -> str | None:
        """Why this machine cannot execute artifacts although the runtime is installed."""
        return None

    # -- the contract, enforced here ----------------------------------------------------------

    def availability(self) -> Availability:
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            how = f"pip install 'edgeforge[{self.extra}]'" if self.extra else "reinstall edgeforge"
            return Availability(False, False, f"{', '.join(missing)} is not installed ({how})")
        blocker = self.execution_blocker()
        return Availability(True, blocker is None, blocker or "")

    def versions(self) -> dict[str, str]:
        found = {}
        for name in ("edgeforge", "onnx", *self.distributions):
            try:
                found[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                found[name] = "not installed"
        return found

    def build(self, model: Model, recipe: Recipe, out: Path, *, force: bool = False) -> Artifact:
        """Build `model` with `recipe` into the folder `out` (replaced if it exists and
        edgeforge wrote it, or with `force`; never when it holds the model)."""
        available = self.availability()
        if not available.installed:
            raise RuntimeUnavailable(f"runtime {self.name}: {available.reason}")
        if recipe.precision not in self.precisions:
            raise EdgeforgeError(
                f"runtime {self.name} cannot build {recipe.precision}; it builds "
                f"{', '.join(self.precisions)}"
            )
        if self.hub == "torch":  # an ONNX source reaches torch runtimes through the bridge
            from edgeforge._onnx_bridge import bridged_for

            model = bridged_for(model, [self.hub])
        pin_note = []
        if self.hub == "torch" and model.provenance.exporter == "onnx2torch bridge":
            pin_note = [f"{model.provenance.exporter_note}, checked against ONNX Runtime"]
        if self.hub == "torch" and model.unpinned is not None:
            from edgeforge._pin import for_hub, torch_hub_note

            pin_note = [torch_hub_note(model)]
            model = for_hub(model, self.hub)
        if self.hub == "torch" and model.torch_program is None:
            if model.provenance.source_kind != "onnx" and model.provenance.exporter_note:
                raise EdgeforgeError(  # a torch source torch.export could not trace
                    f"runtime {self.name} converts from a torch.export program, and this "
                    f"model has none: {model.provenance.exporter_note}; make the module "
                    "traceable by torch.export (no Python control flow on tensor values)"
                )
            if model.provenance.exporter_note:  # an ONNX source the bridge refused
                raise EdgeforgeError(
                    f"runtime {self.name} converts from a torch.export program, and this ONNX "
                    f"model has none: {model.provenance.exporter_note}"
                )
            raise EdgeforgeError(
                f"runtime {self.name} converts from a torch.export program, and this model "
                f"came from {model.provenance.source_kind}; load the torch module or a .pt2 "
                "instead of the .onnx file"
            )
        out = Path(out)
        sources = [model.onnx_path, model.torch_program]
        guard_output(out, sources, force=force, folder=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            main_file, notes, *fixed = self._build(model, recipe, staging)
            inputs = _with_shapes(model.inputs, fixed[0] if fixed else {})
            manifest = Manifest(
                runtime=self.name,
                format=self.format,
                file=main_file,
                source=model.provenance.source,
                source_sha256=model_sha256(model),
                recipe=recipe.to_dict(),
                inputs=[t.to_dict() for t in inputs],
                outputs=[t.to_dict() for t in model.outputs],
                tools=self.versions(),
                created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                notes=[*pin_note, *notes],
                files=sorted(
                    p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()
                ),
            )
            _confined(staging, manifest)  # a runtime's own file name must stay inside too
            (staging / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
            guard_output(out, sources, force=force, folder=True)  # again: the build took a while
            replace_folder(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return Artifact(out, manifest)

    def open(self, artifact: Artifact) -> Session:
        if artifact.runtime != self.name:
            raise EdgeforgeError(
                f"{artifact.folder} was built for {artifact.runtime}, not {self.name}"
            )
        available = self.availability()
        if not available.can_execute:
            raise RuntimeUnavailable(f"runtime {self.name} cannot run here: {available.reason}")
        return self._open(artifact)


def record_verification(artifact: Artifact, status: str, detail: str = "") -> Artifact:
    """Write the verification outcome into the artifact's manifest (atomically); returns the
    artifact with the updated manifest."""
    outcome = {
        "status": status,
        "detail": detail,
        "checked": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    manifest = dataclasses.replace(artifact.manifest, verification=outcome)
    write_json(artifact.folder / MANIFEST, manifest.to_dict())
    return Artifact(artifact.folder, manifest)


def settle_artifact(folder: Path, status: str, detail: str, since: float) -> None:
    """After a target ended without recording its outcome (a time-out, a killed or crashed
    child), write that outcome into the manifest it left at `folder`, if one was written at
    or after `since` (a Unix time): an artifact nobody checked never looks finished."""
    path = Path(folder) / MANIFEST
    try:
        if path.stat().st_mtime < since:
            return
        artifact = Artifact.load(Path(folder))
    except (OSError, EdgeforgeError):
        return
    if artifact.manifest.verification is None:
        record_verification(artifact, status, detail)


def _confined(folder: Path, manifest: Manifest) -> None:
    """Rule: an artifact's files lie inside its folder (issue 13: a manifest pointing outside
    made `verify` pass on a model elsewhere)."""
    base = folder.resolve()
    listed = manifest.files if isinstance(manifest.files, list) else []
    for name in [manifest.file, *listed]:
        if not isinstance(name, str) or not name:
            raise EdgeforgeError(
                f"{folder / MANIFEST}: a file entry is {name!r}, not a file name; rebuild the "
                "artifact with edgeforge convert"
            )
        inside = (base / name).resolve()
        if os.path.isabs(name) or ".." in Path(name).parts or not inside.is_relative_to(base):
            raise EdgeforgeError(
                f"{folder / MANIFEST}: the file {name!r} lies outside the artifact folder; an "
                "artifact names only its own files: rebuild it with edgeforge convert"
            )


def _with_shapes(
    specs: tuple[TensorSpec, ...], shapes: dict[str, tuple[int, ...]]
) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(t.name, t.dtype, tuple(shapes[t.name])) if t.name in shapes else t for t in specs
    )


def _check_feed(spec: TensorSpec, array: np.ndarray) -> None:
    """A feed must have the input's rank and every fixed dimension."""
    if spec.shape is None:
        return
    fixed = ["x".join(str(d) if isinstance(d, int) else "?" for d in spec.shape)]
    if array.ndim != len(spec.shape) or any(
        isinstance(want, int) and got != want
        for got, want in zip(array.shape, spec.shape, strict=False)
    ):
        raise EdgeforgeError(
            f"input {spec.name!r} has shape {'x'.join(map(str, array.shape))}, the artifact "
            f"takes {fixed[0]}"
        )


def _spec(data: dict[str, Any]) -> TensorSpec:
    shape = data.get("shape")
    return TensorSpec(data["name"], data["dtype"], None if shape is None else tuple(shape))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_sha256(model: Model) -> str:
    """Hash of the ONNX file and its external data files, in a stable order."""
    from edgeforge._onnx_file import external_data_files

    digest = hashlib.sha256(file_sha256(model.onnx_path).encode())
    files = external_data_files(model.proto(load_weights=False), model.onnx_path.parent)
    for location in sorted(files):
        digest.update(location.encode())
        digest.update(file_sha256(files[location]).encode())
    return digest.hexdigest()
