"""`edgeforge personalize`: build a personalisation package beside the normal artifact.

The package (a folder) holds:
- `backbone/<runtime>/`: the frozen backbone as a verified edge artifact per runtime (built and
  checked by `edgeforge.convert`), returning the released model's logits and the embedding;
- `head.npz`: the head's base weights (the runtime-independent form trains these in numpy);
- `head_train.pte`: the ExecuTorch training program of the head (forward and backward);
- `head.mlmodel`: the Core ML updatable model of the head (for MLUpdateTask in an app);
- `input_stats.npz`: for the input adapter (`edgeforge.fleet.input_adapter`), aggregates of the
  reference (training) data only: each class's mean of each feature and each feature's
  within-class spread; written only for a model whose one input is a flat feature vector and
  only when reference data is given (the index's `adapter` entry says which, or why not). Every
  form can use it: the adapter is a per-feature gain and offset applied to the input before
  the backbone, fitted in numpy;
- `personalize.json`: the index: the backbone's release (name, version, artifact sha256), the
  inputs, the head's layers, each form's entry (or why it could not be built), the training
  settings, and every file's sha256 (the device checks them when it loads the package).

Invariants: a form that cannot be built here is recorded with its reason, never left out in
silence; the package is written into a temporary folder and renamed into place, so a failed
build leaves no half package behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeforge.errors import EdgeforgeError, first_line
from edgeforge.fleet.personal import FORMS, PACKAGE_FILE, SCHEMA

__all__ = ["DEFAULT_TRAINING", "PersonalizeResult", "personalize"]

# What a device trains with unless told otherwise (the same for every form).
DEFAULT_TRAINING = {
    "lr": 0.01,
    "epochs": 40,
    "batch": 8,
    "folds": 5,
    "margin": 1,
    "guard_z": 1.0,
    "anchor": 0.0,
    "seed": 0,
    "adapter_pull": 10.0,  # the input adapter's pull towards the identity (fleet.personal)
}


@dataclass
class PersonalizeResult:
    """What `personalize` built: the package folder and each form's and runtime's outcome."""

    out: str
    release: dict[str, Any]
    layers: list[dict[str, Any]]
    embedding_size: int
    classes: int
    backbones: dict[str, dict[str, Any]]  # runtime -> {file, sha256} or {error}
    forms: dict[str, dict[str, Any]]  # form -> entry, or {error}
    adapter: dict[str, Any] = field(default_factory=dict)  # {file, ...} or {reason}
    seconds: float = 0.0
    files: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def exit_code(self) -> int:
        """0 when at least one backbone verified and the numpy head exists."""
        ok = any("file" in entry for entry in self.backbones.values())
        return 0 if ok and "file" in self.forms.get("head", {}) else 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source(source: Any, example_inputs: Any) -> tuple[torch.nn.Module, tuple, dict]:
    if isinstance(source, torch.nn.Module):
        if example_inputs is None:
            raise EdgeforgeError("pass example_inputs with a torch module")
        module, inputs, options = source, example_inputs, {}
    else:
        text = str(source)
        if text.endswith((".onnx", ".pt2")) or ":" not in text:
            raise EdgeforgeError(
                f"{text}: personalize splits a torch module into backbone and head, so it "
                "needs the module: pass a 'package.module:factory' or 'file.py:factory' "
                "reference (an .onnx or .pt2 file no longer has its layers)"
            )
        from edgeforge._torch_export import load_factory

        module, inputs, options = load_factory(text)
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    return module, tuple(inputs), dict(options)


def read_reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The input adapter's reference data from an .npz with arrays 'x' [N, F] and 'y' [N]
    (`--reference`, `release --personalize-reference`); never unpickled."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["x"], data["y"]
    except (OSError, ValueError, KeyError) as exc:
        raise EdgeforgeError(
            f"{path}: not an .npz with arrays 'x' (inputs [N, F]) and 'y' (labels [N]): "
            f"{first_line(exc)}"
        ) from None


def personalize(
    source: Any,
    out: str | Path,
    *,
    trainable: str | Sequence[str] | None = None,
    runtimes: str | Sequence[str] = "onnxruntime",
    forms: str | Sequence[str] | None = None,
    example_inputs: Any = None,
    input_names: Sequence[str] | None = None,
    name: str | None = None,
    version: int | None = None,
    artifact_sha256: str | None = None,
    training: dict[str, Any] | None = None,
    reference: tuple[Any, Any] | None = None,
    timeout: float = 600,
    force: bool = False,
) -> PersonalizeResult:
    """Build the personalisation package of `source` (a torch module with `example_inputs`,
    or a factory reference) into `out`. `trainable` names the head's layers (default: the
    last layer with weights); `runtimes` the backbone's; `forms` the head's (default: all).
    `name`, `version` and `artifact_sha256` record the release the backbone belongs to
    (`release --personalize` passes the variant's; by default the name is the model's class,
    no version, and the first verified backbone artifact's sha256). `reference` is
    `(inputs [N, F], labels [N])` of the training data (or a sample of it): the package keeps
    only its per-class feature means and within-class spread, for the input adapter."""
    from edgeforge._api import _names
    from edgeforge._load import load
    from edgeforge.convert import convert
    from edgeforge.personalize._forms import build_coreml, build_executorch
    from edgeforge.personalize._split import split_module

    started = time.perf_counter()
    out = Path(out)
    # Replace a package (or anything, with force); never a folder of the user's own files.
    is_package = (out / PACKAGE_FILE).is_file()
    if out.exists() and any(out.iterdir()) and not force and not is_package:
        raise EdgeforgeError(f"{out} exists and is not a package; choose another --out")
    wanted_forms = _names(forms) or list(FORMS)
    unknown = set(wanted_forms) - set(FORMS)
    if unknown:
        raise EdgeforgeError(f"unknown form {', '.join(sorted(unknown))}; use {', '.join(FORMS)}")
    runtime_names = _names(runtimes) or ["onnxruntime"]
    settings = {**DEFAULT_TRAINING, **(training or {})}
    module, inputs, options = _source(source, example_inputs)
    split = split_module(module, inputs, _names(trainable))
    names = list(input_names or options.get("input_names") or ["input"])
    if len(names) != len(inputs):
        names = [f"input{i}" for i in range(len(inputs))]

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        package = work / "package"
        package.mkdir()
        input_specs = [
            {"name": n, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            for n, t in zip(names, inputs, strict=True)
        ]
        # Checked before the conversion: bad reference data fails fast.
        adapter = _input_stats(input_specs, reference, split.classes, package)
        model = load(
            split.backbone,
            inputs[0] if len(inputs) == 1 else inputs,
            input_names=names,
            output_names=["logits", "embedding"],
            dynamic_axes={n: {0: "batch"} for n in names},
            workdir=work / "source",
        )
        conversion = convert(model, runtime_names, work / "converted", parallel=1, timeout=timeout)
        backbones: dict[str, dict[str, Any]] = {}
        for target in conversion.targets:
            if target.status != "verified" or not target.artifact:
                backbones[target.runtime] = {"error": f"{target.status}: {target.detail}"}
                continue
            artifact = Path(target.artifact)
            folder = artifact if artifact.is_dir() else artifact.parent
            manifest = json.loads((folder / "manifest.json").read_text())
            shutil.copytree(folder, package / "backbone" / target.runtime)
            file = f"backbone/{target.runtime}/{manifest['file']}"
            backbones[target.runtime] = {"file": file, "sha256": _sha256(package / file)}
        verified = [entry for entry in backbones.values() if "file" in entry]
        if not verified:
            reasons = "; ".join(f"{r}: {e['error']}" for r, e in backbones.items())
            raise EdgeforgeError(f"no backbone verified ({reasons}); try --runtime onnxruntime")

        np.savez(package / "head.npz", **split.params)
        built: dict[str, dict[str, Any]] = {}
        for form in FORMS:
            if form not in wanted_forms:
                continue
            try:
                if form == "executorch":
                    built[form] = build_executorch(split, package, int(settings["batch"]))
                elif form == "coreml":
                    built[form] = build_coreml(
                        split,
                        package,
                        float(settings["lr"]),
                        int(settings["batch"]),
                        int(settings["epochs"]),
                    )
                else:
                    built[form] = {"file": "head.npz", "trainer": "numpy SGD on the head"}
            except ModuleNotFoundError as exc:
                built[form] = {"error": f"{exc.name} is not installed here"}
            except EdgeforgeError as exc:
                built[form] = {"error": str(exc)}
            except Exception as exc:  # a converter's failure: recorded, the others still build
                built[form] = {"error": first_line(exc)}
        release = {
            "name": name or type(module).__name__,
            "version": version,
            "sha256": artifact_sha256 or verified[0]["sha256"],
        }
        files = [
            {"path": str(path.relative_to(package)), "sha256": _sha256(path)}
            for path in sorted(package.rglob("*"))
            if path.is_file()
        ]
        index = {
            "schema": SCHEMA,
            "release": release,
            "inputs": input_specs,
            "classes": split.classes,
            "embedding_size": split.embedding_size,
            "head": {"layers": split.layers, "params": "head.npz"},
            "backbones": backbones,
            "forms": built,
            "adapter": adapter,
            "training": settings,
            "files": files,
        }
        (package / PACKAGE_FILE).write_text(json.dumps(index, indent=2))
        if out.exists():
            shutil.rmtree(out)
        package.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return PersonalizeResult(
        out=str(out),
        release=release,
        layers=split.layers,
        embedding_size=split.embedding_size,
        classes=split.classes,
        backbones=backbones,
        forms=built,
        adapter=adapter,
        seconds=round(time.perf_counter() - started, 2),
        files=files,
    )


def _input_stats(
    inputs: list[dict[str, Any]], reference: tuple[Any, Any] | None, classes: int, package: Path
) -> dict[str, Any]:
    """Write `input_stats.npz` when the adapter applies and reference data is given; returns
    the index's `adapter` entry: the file, or the reason there is none."""
    from edgeforge.fleet.input_adapter import InputStats, applies_to

    reason = applies_to(inputs)
    if reason is not None:
        return {"reason": reason}
    if reference is None:
        return {
            "reason": "no reference data was given (personalize(..., reference=(x, y)) or "
            "--reference FILE.npz): devices fit the head only"
        }
    x, y = (np.asarray(value) for value in reference)
    features = inputs[0]["shape"][1]
    if x.ndim != 2 or x.shape[1] != features:
        raise EdgeforgeError(
            f"reference inputs are {list(x.shape)}; the model takes [N, {features}]"
        )
    InputStats.from_data(x, y, classes).save(package / "input_stats.npz")
    return {
        "file": "input_stats.npz",
        "kind": "per-feature gain and offset before the backbone, fitted on the device",
        "reference_rows": len(y),
    }
