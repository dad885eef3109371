"""`edgeforge personalize`: a personalisation package beside the normal artifact."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_verbs"]


def add_verbs(verbs: Any) -> None:
    from edgeforge.cli import _output_options, _runtime_option, _timeout_option

    verb = verbs.add_parser(
        "personalize",
        help="build a personalisation package: the frozen backbone (verified artifacts) and a "
        "trainable head as an ExecuTorch training program, a Core ML updatable model and "
        "numpy weights, for devices to fit to their user",
    )
    verb.add_argument(
        "source",
        metavar="SOURCE",
        help="a 'package.module:factory' or 'file.py:factory' reference returning (module, "
        "inputs): the torch classifier to split (it imports and runs that code)",
    )
    verb.add_argument(
        "--trainable",
        metavar="LAYERS",
        help="comma list of the layers devices train (module names; default: the last "
        "layer with weights); the head runs from the first of them to the output",
    )
    _runtime_option(verb, "the backbone's runtimes, comma list", default="onnxruntime")
    verb.add_argument(
        "--form",
        default="executorch,coreml,head",
        help="the head's forms to build, comma list",
    )
    verb.add_argument(
        "--reference",
        type=Path,
        metavar="FILE.npz",
        help="the training data (arrays 'x' [N, F] and 'y' [N]) for the input adapter: the "
        "package keeps only per-class feature means and within-class spread (models whose "
        "input is a flat feature vector)",
    )
    verb.add_argument("--out", type=Path, required=True, help="the package folder")
    verb.add_argument("--name", help="the release's name (default: the model's class)")
    verb.add_argument("--version", type=int, help="the release's version")
    verb.add_argument(
        "--artifact-sha256",
        help="the released artifact's sha256 the head is bound to (default: the backbone's)",
    )
    _timeout_option(verb, "backbone conversion")
    _output_options(verb)
    verb.set_defaults(run=_personalize)


def _personalize(args: argparse.Namespace) -> int:
    from edgeforge.cli import _emit
    from edgeforge.personalize.build import personalize, read_reference

    reference = None if args.reference is None else read_reference(args.reference)
    result = personalize(
        args.source,
        args.out,
        trainable=args.trainable,
        runtimes=args.runtime,
        forms=args.form,
        name=args.name,
        version=args.version,
        artifact_sha256=args.artifact_sha256,
        reference=reference,
        timeout=args.timeout,
        force=args.overwrite,
    )

    def show() -> None:
        head = ", ".join(
            f"{layer['name']} ({layer['kind']}{', trained' if layer['trainable'] else ''})"
            for layer in result.layers
        )
        print(f"package: {result.out}")
        print(f"head: {head}; embedding {result.embedding_size}, {result.classes} classes")
        for runtime, entry in result.backbones.items():
            print(f"  backbone {runtime}: {entry.get('file') or 'not built: ' + entry['error']}")
        for form, entry in result.forms.items():
            print(f"  form {form}: {entry.get('file') or 'not built: ' + entry['error']}")
        adapter = result.adapter
        print(f"  input adapter: {adapter.get('file') or 'none: ' + adapter['reason']}")

    _emit(args, "personalize", result.to_dict(), show)
    return result.exit_code
