"""`release ... --personalize LAYERS`: a personalisation package beside each released variant.

`check(source, layers, forms)` runs before the release gathers any evidence: the source must
be a torch module (a factory reference), the layers must split it into a backbone and a head
the device can train, and the forms must exist; anything else is bad input (exit 2) and the
release touches nothing. `build(...)` runs after the gate passed, before the repository is
locked: one package per backbone runtime (and forms), built by `personalize` into the release's
scratch folder. `stage(...)` copies a variant's package to `personalize/` in its staged files
and rewrites the package's release record to the variant's (name, version, artifact sha256),
so a head a device trains is bound to exactly the release it came with.

Invariants:
- every variant's outcome is recorded: `{"present": True, "layers", "forms", "backbone"}` or
  `{"present": False, "reason"}`; a variant whose runtime cannot run a backbone on a device (the
  device side runs `BACKBONE_RUNTIMES`), or whose package failed to build, still goes out, and
  its evidence says why: never a silent skip;
- the numpy head (`head`) is in every package; the ExecuTorch training program is added for an
  ExecuTorch variant (or wherever `forms` asks for it), as is the Core ML updatable model;
- the package's `personalize.json` is the only file rewritten after the build; its own hash is
  not in its file list, so the device's check of every other file still holds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.personal import BACKBONE_RUNTIMES, FORMS, PACKAGE_FILE

__all__ = ["FOLDER", "Outcome", "build", "check", "forms_for", "stage"]

FOLDER = "personalize"  # where the agent looks inside the variant (`package_folder`)


@dataclass
class Outcome:
    """What one variant gets: a package folder (built here) or the reason it has none."""

    folder: Path | None = None
    reason: str = ""
    layers: list[str] = field(default_factory=list)
    forms: dict[str, str] = field(default_factory=dict)  # form -> "built" or why not
    backbone: str = ""

    def summary(self) -> dict[str, Any]:
        """The evidence entry (signed into variant.json and kept in the registry)."""
        if self.folder is None:
            return {"present": False, "reason": self.reason}
        return {
            "present": True,
            "path": FOLDER,
            "layers": self.layers,
            "forms": self.forms,
            "backbone": self.backbone,
        }


def _layers(value: str | Sequence[str]) -> list[str]:
    from edgeforge._api import _names

    layers = _names(value)
    if not layers:
        raise EdgeforgeError(
            "--personalize needs the head's layers, e.g. --personalize fc or --personalize 2,4"
        )
    return layers


def _forms(value: str | Sequence[str] | None) -> list[str] | None:
    from edgeforge._api import _names

    forms = _names(value)
    if forms is None:
        return None
    unknown = sorted(set(forms) - set(FORMS))
    if unknown:
        raise EdgeforgeError(
            f"--personalize-form {', '.join(unknown)}: not a package form; use {', '.join(FORMS)}"
        )
    return forms


def check(
    source: Any,
    layers: str | Sequence[str],
    forms: str | Sequence[str] | None = None,
    example_inputs: Any = None,
) -> tuple[list[str], list[str] | None]:
    """Refuse what cannot make a package (bad input), before any work: returns the layers and
    the forms asked for. Splits the model once to check that the layers make a head."""
    from edgeforge.personalize._split import split_module
    from edgeforge.personalize.build import _source

    names = _layers(layers)
    wanted = _forms(forms)
    try:
        module, inputs, _ = _source(source, example_inputs)
    except EdgeforgeError as exc:
        raise EdgeforgeError(f"--personalize: {exc}") from None
    message = None
    try:
        split_module(module, inputs, names)
    except EdgeforgeError as exc:
        message = str(exc).replace("--trainable", "--personalize")
    if message:
        raise EdgeforgeError(message)
    return names, wanted


def forms_for(runtime: str, wanted: list[str] | None) -> list[str]:
    """The forms a variant of `runtime` gets: the numpy head always, and the asked forms (by
    default the training form of the variant's own runtime, where there is one)."""
    extra = wanted if wanted is not None else [f for f in FORMS if f == runtime]
    return [f for f in FORMS if f in extra or f == "head"]


def build(
    source: Any,
    runtimes: dict[str, str],
    layers: list[str],
    forms: list[str] | None,
    work: Path,
    *,
    name: str,
    timeout: float = 600,
    example_inputs: Any = None,
    reference: tuple[Any, Any] | None = None,
) -> dict[str, Outcome]:
    """One package per backbone runtime, for the variants `runtimes` ({class: runtime});
    returns each class's outcome (a package folder or why it has none)."""
    from edgeforge.personalize.build import personalize

    built: dict[tuple[str, tuple[str, ...]], Outcome] = {}
    outcomes: dict[str, Outcome] = {}
    for device_class, runtime in runtimes.items():
        if runtime not in BACKBONE_RUNTIMES:
            outcomes[device_class] = Outcome(
                reason=f"a {runtime} device cannot run the package's backbone (the device "
                f"side runs {', '.join(BACKBONE_RUNTIMES)}); this variant ships no package"
            )
            continue
        chosen = forms_for(runtime, forms)
        key = (runtime, tuple(chosen))
        if key not in built:
            out = work / "personalize" / f"{runtime}-{'-'.join(chosen)}"
            try:
                result = personalize(
                    source,
                    out,
                    trainable=layers,
                    runtimes=[runtime],
                    forms=chosen,
                    example_inputs=example_inputs,
                    name=name,
                    reference=reference,
                    timeout=timeout,
                )
            except EdgeforgeError as exc:
                built[key] = Outcome(reason=f"the package did not build: {exc}")
            else:
                head = result.forms.get("head", {})
                if "file" not in head:
                    built[key] = Outcome(
                        reason=f"the package's numpy head did not build: {head.get('error')}"
                    )
                else:
                    built[key] = Outcome(
                        folder=out,
                        layers=[layer["name"] for layer in result.layers if layer["trainable"]],
                        forms={
                            form: "built" if "file" in entry else str(entry.get("error"))
                            for form, entry in result.forms.items()
                        },
                        backbone=runtime,
                    )
        outcomes[device_class] = built[key]
    return outcomes


def stage(outcome: Outcome, folder: Path, release: dict[str, Any]) -> dict[str, Path]:
    """Copy the package to `folder/personalize/`, its release record set to `release`
    ({name, version, sha256}); returns {relative path in the variant: staged file}."""
    assert outcome.folder is not None
    target = folder / FOLDER
    shutil.copytree(outcome.folder, target)
    index = json.loads((target / PACKAGE_FILE).read_text())
    index["release"] = release
    (target / PACKAGE_FILE).write_text(json.dumps(index, indent=2))
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(target.rglob("*"))
        if path.is_file()
    }
