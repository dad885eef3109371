"""`edgeforge.load`: every kind of source a user has, turned into a `Model`.

Accepted sources:
- a path to an `.onnx` file (external data allowed, checked for safety);
- a path to a saved `torch.export` program (`.pt2`);
- a `package.module:factory` or `file.py:factory` reference whose factory returns a module and
  its example inputs (this imports and runs that code, by design: pass only code you trust);
- a `torch.nn.Module` with `example_inputs` (Python API only);
- a `Model`, returned as it is.

Untrusted input: a `.pt2` (or any zip) is checked by `check_torch_archive` before torch opens
it, so nothing is unpickled beyond torch's `weights_only` rules.

Torch sources are exported into `workdir` (a fresh temporary folder when not given, removed
when the process exits).
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeforge._archive_check import check_torch_archive
from edgeforge._onnx_file import open_onnx
from edgeforge._torch_export import export_module, export_program, load_factory
from edgeforge.errors import EdgeforgeError
from edgeforge.model import Model

__all__ = ["load"]

_TEMP_DIRS: list[str] = []


def load(
    source: Any,
    example_inputs: Any = None,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int | None = None,
    workdir: str | Path | None = None,
) -> Model:
    """Return a validated `Model` for `source` (see the module docstring for what it takes).

    For torch modules, `input_names`, `output_names` and `dynamic_axes`
    (`{"image": {0: "batch"}}`) carry into the ONNX graph. Raises `EdgeforgeError` on bad input.
    """
    if isinstance(source, Model):
        return source
    options = dict(
        input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes, opset=opset
    )
    if _is_torch_module(source):
        return export_module(
            source, example_inputs, _workdir(workdir), source=type(source).__name__, **options
        )
    if not isinstance(source, (str, Path)):
        raise EdgeforgeError(
            f"cannot load a {type(source).__name__}; pass an .onnx or .pt2 path, a "
            "'module:factory' reference, or a torch.nn.Module with example inputs"
        )
    text = str(source)
    path = Path(text)
    if path.is_file():
        if _is_zip(path):  # torch.export.save writes a zip archive
            check_torch_archive(path)  # before torch unpickles anything in it
            return export_program(path, _workdir(workdir))
        return open_onnx(path)
    if ":" in text and path.suffix.lower() not in {".onnx", ".pt2"}:
        module, inputs, factory_options = load_factory(text)
        unknown = set(factory_options) - set(options)
        if unknown:
            raise EdgeforgeError(
                f"{text}: the factory returned unknown options {sorted(unknown)}; "
                f"use {sorted(options)}"
            )
        merged = {k: v if v is not None else factory_options.get(k) for k, v in options.items()}
        return export_module(
            module, inputs, _workdir(workdir), source=text, source_kind="factory", **merged
        )
    raise EdgeforgeError(
        f"{text}: no such file; pass an .onnx or .pt2 path or a 'package.module:factory' reference"
    )


def _is_torch_module(source: Any) -> bool:
    # A module object can only exist if torch is imported already; never import it here,
    # so that loading an .onnx file stays fast.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(source, torch.nn.Module)


def _is_zip(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix == ".pt2" or (suffix != ".onnx" and zipfile.is_zipfile(path))


def _workdir(workdir: str | Path | None) -> Path:
    if workdir is not None:
        return Path(workdir)
    made = tempfile.mkdtemp(prefix="edgeforge-")
    if not _TEMP_DIRS:
        atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _TEMP_DIRS])
    _TEMP_DIRS.append(made)
    return Path(made)
