"""What `estimate` profiles: a model as `inspect` takes it, or an artifact folder as `bench` and
`verify` take it (a folder with manifest.json, written by `convert` or `optimize`).

For an artifact folder, the runtime and precision default to the artifact's own (the manifest's
runtime and recipe), and the graph profiled is ONNX, found in this order:

1. the manifest's source, when it is an .onnx file that still exists;
2. the artifact's own file, when it is an fp32 or fp16 .onnx file (same graph as the source);
3. a sibling artifact of the same source (same `source_sha256`, e.g. the other runtimes of one
   `convert --out` folder) whose file is an fp32 .onnx;
4. the artifact's own .onnx file at any precision (a quantised graph: its quantise and
   dequantise nodes are costed too, and the notes say so).

Anything else (a .tflite or .mlpackage built from a torch module) raises EdgeforgeError naming
what to pass instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeforge.errors import EdgeforgeError

if TYPE_CHECKING:
    from edgeforge.analysis.profile import Profile
    from edgeforge.runtimes.base import Artifact

__all__ = ["ProfiledSource", "profile_source"]

_MANIFEST = "manifest.json"


@dataclass
class ProfiledSource:
    """A profile to estimate, and what an artifact folder says about how it runs."""

    profile: Profile
    runtime: str | None = None  # the artifact's runtime
    precision: str | None = None  # the artifact's recipe precision ("int8-static" -> "int8")
    artifact: str | None = None  # the folder, when one was given
    notes: list[str] = field(default_factory=list)


def profile_source(source: Any, shapes: dict[str, tuple[int, ...]] | None) -> ProfiledSource:
    """Profile `source` (a Profile, anything `inspect` takes, or an artifact folder)."""
    from edgeforge.analysis.profile import Profile, inspect

    if isinstance(source, Profile):
        return ProfiledSource(source)
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        folder = Path(source)
        if not (folder / _MANIFEST).is_file():
            inside = sorted(p.parent.name for p in folder.glob(f"*/{_MANIFEST}"))
            hint = f"pass one of its artifact folders: {', '.join(inside)}" if inside else ""
            raise EdgeforgeError(
                f"{folder}: a folder without {_MANIFEST}; "
                + (hint or "pass a model file or a folder written by `edgeforge convert`")
            )
        return _from_artifact(folder, shapes)
    return ProfiledSource(inspect(source, shapes=shapes))


def _from_artifact(folder: Path, shapes: dict[str, tuple[int, ...]] | None) -> ProfiledSource:
    from edgeforge.analysis.profile import inspect
    from edgeforge.runtimes import Artifact

    artifact = Artifact.load(folder)
    manifest = artifact.manifest
    recipe = str(manifest.recipe.get("precision", "fp32"))
    family = recipe.split("-")[0]
    notes = []
    if family == "int4":
        # int4 weight-only recipes dequantise weights and compute in float
        notes.append(f"the artifact is {recipe} (weight-only): estimated at fp32 compute")
        family = "fp32"
    onnx_file, why = _onnx_for(artifact, family)
    profile = inspect(onnx_file, shapes=shapes)
    notes.insert(
        0,
        f"artifact {folder} ({manifest.runtime}, {recipe}) of {manifest.source}; graph "
        f"profiled: {onnx_file}" + (f" ({why})" if why else ""),
    )
    return ProfiledSource(profile, manifest.runtime, family, str(folder), notes)


def _onnx_for(artifact: Artifact, precision: str) -> tuple[Path, str]:
    """(the ONNX file to profile, a note on it or ''), by the order in the module docstring."""
    source = Path(artifact.manifest.source)
    if source.suffix == ".onnx" and source.is_file():
        return source, ""
    own = artifact.path if artifact.path.suffix == ".onnx" and artifact.path.is_file() else None
    if own is not None and precision in ("fp32", "fp16"):
        return own, ""
    for sibling in sorted(artifact.folder.parent.glob(f"*/{_MANIFEST}")):
        try:
            data = json.loads(sibling.read_text())
        except ValueError:
            continue
        path = sibling.parent / str(data.get("file", ""))
        same = data.get("source_sha256") == artifact.manifest.source_sha256
        fp32 = data.get("recipe", {}).get("precision", "fp32") == "fp32"
        if same and fp32 and path.suffix == ".onnx" and path.is_file():
            return path, f"the float graph of the same source, from {sibling.parent.name}/"
    if own is not None:
        return own, (
            "profiled the quantised graph itself (the float source is not at hand): its "
            "quantise/dequantise nodes are costed as elementwise work"
        )
    raise EdgeforgeError(
        f"{artifact.folder}: a {artifact.manifest.format} artifact of "
        f"{artifact.manifest.source!r} and no ONNX graph of it beside it; estimate the source "
        f"model with --runtime {artifact.runtime} --precision {precision}"
    )
