"""Torch sources into ONNX: `nn.Module` + example inputs, saved `.pt2` programs, factories.

Invariants:
- export goes through `torch.onnx.export(dynamo=True)`; the TorchScript exporter is used only
  when that fails, and a warning says why;
- the torch program beside the ONNX file (for LiteRT, ExecuTorch and Core ML) comes from
  `torch.export` on its own path, whichever exporter wrote the ONNX file (issue 18, class 2):
  a module the dynamo ONNX exporter cannot translate (Swin, BEiT, T5) still reaches the torch
  runtimes when `torch.export` traces it; when it cannot, the model has no program and the
  provenance note says why;
- the exported file passes `onnx.checker` and, run once in ONNX Runtime on the example inputs,
  matches torch's own outputs within a tolerance scaled to the outputs' magnitude, else the
  model is refused;
- the ONNX file is written into a temporary folder and moved into place only when accepted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import logging
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeforge._extras import EXTRAS
from edgeforge._flat_outputs import flat_outputs, flatten, is_flat
from edgeforge._onnx_file import open_onnx
from edgeforge._progress import status
from edgeforge.errors import EdgeforgeError, first_line, logged_cause
from edgeforge.model import Model, Provenance, TorchParameters

__all__ = ["ExportOptions", "export_module", "export_program", "load_factory", "load_program"]

# ONNX files above this size are written with external data (protobuf's limit is 2 GiB).
_SINGLE_FILE_LIMIT = 1_800_000_000
_RTOL, _ATOL = 1e-3, 1e-4


def output_error(want: np.ndarray, have: np.ndarray) -> tuple[float, float]:
    """The largest absolute difference between a reference output and another, and the
    reference's largest magnitude (the scale the relative tolerance applies to)."""
    diff = np.abs(want.astype(np.float64) - have.astype(np.float64))
    error = float(diff.max()) if diff.size else 0.0
    return error, float(np.abs(want).max()) if want.size else 0.0


TORCH_PROGRAM = "model.pt2"


# Keyword options a caller or a factory may give: input_names, output_names,
# dynamic_axes ({input: {axis: name}}), opset.
ExportOptions = dict[str, Any]


def export_module(
    module: Any,
    example_inputs: Any,
    out_dir: Path,
    *,
    source: str,
    source_kind: str = "torch-module",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int | None = None,
) -> Model:
    """Export an `nn.Module` called as `module(*args, **kwargs)` to `out_dir/model.onnx`.

    Outputs other than a tensor or a flat tuple of tensors (a `ModelOutput`, a dict, nested
    tuples) are flattened and named after their fields first (see `edgeforge._flat_outputs`);
    `output_names`, when given, win."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise EdgeforgeError(f"{source}: expected a torch.nn.Module, got {type(module).__name__}")
    args, kwargs = _split_inputs(example_inputs, source)
    module = module.eval()
    if input_names is None and kwargs and not args:
        input_names = list(kwargs)
    with torch.no_grad():
        try:
            reference = module(*args, **kwargs)
        except Exception as exc:
            raise EdgeforgeError(
                f"{source}: the module fails on its example inputs "
                f"({first_line(exc)}); pass inputs it accepts"
            ) from None
    counts = _torch_counts(module)
    # One flat tuple of named tensors for the ONNX file and the torch program alike.
    module, field_names = flat_outputs(module, reference)
    reference = flatten(reference)
    output_names = output_names or field_names
    common = dict(input_names=input_names, output_names=output_names, opset_version=opset)
    # First, before either ONNX exporter touches the module: the TorchScript exporter leaves
    # it in a state torch.export cannot trace (a transformers Swin then fails a guard).
    with status("Exporting the torch program (torch.export)"):
        plain = _plain_export(module, args, kwargs)

    def dynamo(path: Path) -> None:
        program = torch.onnx.export(
            module, args, kwargs=kwargs or None, dynamo=True, dynamic_axes=dynamic_axes, **common
        )
        _save_program(program, path, plain)

    def torchscript(path: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                module,
                args,
                str(path),
                kwargs=kwargs or None,
                dynamo=False,
                dynamic_axes=dynamic_axes,
                **common,
            )

    return _export_checked(
        dynamo,
        torchscript,
        out_dir,
        args,
        kwargs,
        reference,
        Provenance(source=source, source_kind=source_kind, torch_version=torch.__version__),
        counts,
        plain=lambda: plain,
    )


def export_program(path: Path, out_dir: Path) -> Model:
    """Export a saved `torch.export` program (`.pt2`) to ONNX."""
    import torch

    program = load_program(path, "save it with torch.export.save")
    if program.example_inputs is None:
        raise EdgeforgeError(
            f"{path}: the saved program has no example inputs; export it with example "
            "inputs (torch.export.export(module, args)) and save it again"
        )
    args, kwargs = program.example_inputs
    with torch.no_grad():
        reference = program.module()(*args, **kwargs)
    counts = TorchParameters(
        parameters=sum(p.numel() for p in program.parameters()),
        buffers=sum(b.numel() for b in program.buffers()),
    )
    output_names = None
    if not is_flat(reference):  # a ModelOutput or a dict: export it again with flat outputs
        program, output_names = _flat_program(program, args, kwargs, reference, path)
        reference = flatten(reference)

    def dynamo(onnx_path: Path) -> None:
        exported = torch.onnx.export(
            program, args, kwargs=kwargs or None, dynamo=True, output_names=output_names
        )
        _save_program(exported, onnx_path, program)

    return _export_checked(
        dynamo,
        None,
        out_dir,
        args,
        kwargs,
        reference,
        Provenance(source=str(path), source_kind="torch-export", torch_version=torch.__version__),
        counts,
    )


def load_program(path: Path, hint: str) -> Any:
    """`torch.export.load(path)`, or an `EdgeforgeError` that says why not.

    torch logs the real cause as a warning and raises "check the warnings above"; that cause
    is caught here and put in the message, with `hint` (what the user can do) after it. A
    program whose outputs name a `transformers` class (a `ModelOutput` saved by an older
    edgeforge or by the user) loads once that class's module is imported, so it is imported
    and the load tried again; no module but transformers' `modeling_outputs` and
    `models.<name>.modeling_<name>` is ever imported because a file names it.
    """
    import torch

    for attempt in range(2):
        try:
            with _quiet(), logged_cause("torch.export"):  # it logs the cause, then raises
                return torch.export.load(str(path))
        except Exception as exc:  # torch raises whatever its unpickling and checks raise
            cause = first_line(exc)
        if attempt == 0 and _import_output_class(cause):
            continue
        break
    raise EdgeforgeError(f"{path}: cannot load as a torch.export program ({cause}); {hint}")


def load_factory(reference: str) -> tuple[Any, Any, ExportOptions]:
    """Call `package.module:factory` or `path/to/file.py:factory`.

    The factory returns `(module, example_inputs)`, `(module, example_inputs, options)` or a
    dict with keys `model`, `example_inputs` and any of the ExportOptions keys.
    """
    target, _, name = reference.rpartition(":")
    if not target or not name.isidentifier():
        raise EdgeforgeError(
            f"{reference!r}: expected 'package.module:factory' or 'file.py:factory'"
        )
    module = _import_target(target, reference)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise EdgeforgeError(f"{reference}: {target} has no callable named {name!r}")
    try:
        made = factory()
    except (Exception, SystemExit) as exc:  # a factory calling sys.exit() is a bad factory too
        raise EdgeforgeError(
            f"{reference}: the factory raised {first_line(exc)}; "
            "fix the factory so that it returns (module, example_inputs)"
        ) from None
    if isinstance(made, Mapping):
        made = dict(made)
        if "model" not in made or "example_inputs" not in made:
            raise EdgeforgeError(
                f"{reference}: a factory's dict needs the keys 'model' and 'example_inputs'"
            )
        model, inputs = made.pop("model"), made.pop("example_inputs")
        return model, inputs, made
    if isinstance(made, tuple) and len(made) in (2, 3):
        options = dict(made[2]) if len(made) == 3 else {}
        return made[0], made[1], options
    raise EdgeforgeError(
        f"{reference}: the factory returned {type(made).__name__}; "
        "return (module, example_inputs) or a dict with 'model' and 'example_inputs'"
    )


def _import_target(target: str, reference: str) -> Any:
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_file():
            raise EdgeforgeError(f"{reference}: no such file {file}")
        spec = importlib.util.spec_from_file_location(f"_edgeforge_factory_{file.stem}", file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        loader = spec.loader.exec_module
        arg: Any = module
    else:
        module, loader, arg = None, _import_from_cwd_too, target
    try:
        result = loader(arg)
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        fix = (
            f"install the extra: pip install 'edgeforge[{extra[0]}]'"
            if extra
            else "install it or add its folder to PYTHONPATH"
        )
        raise EdgeforgeError(f"{reference}: cannot import {exc.name!r}; {fix}") from None
    except (Exception, SystemExit) as exc:
        raise EdgeforgeError(f"{reference}: importing {target} raised {first_line(exc)}") from None
    return module if module is not None else result


def _import_from_cwd_too(name: str) -> Any:
    """Import `name`, looking in the current folder as well (as other tools that take
    module:attribute references do), without leaving the folder on sys.path."""
    added = "" not in sys.path and "." not in sys.path
    if added:
        sys.path.append("")  # last: a local file must never shadow an installed module
    try:
        return importlib.import_module(name)
    finally:
        if added:
            sys.path.remove("")


def _split_inputs(example_inputs: Any, source: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    import torch

    if example_inputs is None:
        raise EdgeforgeError(
            f"{source}: example inputs are needed to export a torch module; pass a tensor, "
            "a tuple of tensors or a dict of named tensors"
        )
    if isinstance(example_inputs, torch.Tensor):
        return (_standard(example_inputs),), {}
    if isinstance(example_inputs, Mapping):
        return (), {k: _standard(v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(_standard(v) for v in example_inputs), {}
    raise EdgeforgeError(
        f"{source}: example inputs must be a tensor, a tuple of tensors or a dict of tensors, "
        f"not {type(example_inputs).__name__}"
    )


def _standard(value: Any) -> Any:
    """A tensor with standard contiguous strides. Tensors made from numpy arrays can carry odd
    strides on size-1 axes (64, 1, 8, 1); torch.export records them as a dim order that
    ExecuTorch and Core ML then refuse or mis-run."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.clone(memory_format=torch.contiguous_format)
    return value


def _torch_counts(module: Any) -> TorchParameters:
    return TorchParameters(
        parameters=sum(p.numel() for p in module.parameters()),
        buffers=sum(b.numel() for b in module.buffers()),
    )


def _save_program(program: Any, path: Path, torch_program: Any = None) -> None:
    """Save the ONNX model and, beside it, the torch.export program for the runtimes that
    convert from torch: `torch_program` when given, else the ONNX exporter's own."""
    import torch

    size = sum(
        v.const_value.nbytes
        for v in program.model.graph.initializers.values()
        if v.const_value is not None
    )
    program.save(str(path), external_data=size > _SINGLE_FILE_LIMIT)
    torch_program = torch_program or program.exported_program
    if torch_program is not None:
        torch.export.save(torch_program, str(path.with_name(TORCH_PROGRAM)))


def _flat_program(
    program: Any, args: tuple, kwargs: dict, reference: Any, path: Path
) -> tuple[Any, list[str] | None]:
    """`program` exported again from its module with its outputs flattened (see
    `edgeforge._flat_outputs`), so that the saved program loads anywhere; with the outputs'
    names. The export sees only the example inputs: axes the saved program left dynamic are
    fixed to the example's sizes."""
    import torch

    module, names = flat_outputs(program.module(), reference)
    try:
        with _quiet():
            return torch.export.export(module, args, kwargs=kwargs or None), names
    except Exception as exc:
        raise EdgeforgeError(
            f"{path}: cannot flatten the program's outputs into a tuple of tensors "
            f"({first_line(exc)}); export the module with outputs that are tensors, "
            "e.g. return_dict=False for a transformers model"
        ) from None


# The file names the class; only transformers' output modules qualify, so a file can make
# us import nothing else (model files are data, never code).
_UNREGISTERED = re.compile(
    r"Deserializing (transformers\.(?:modeling_outputs|models\.\w+\.modeling_\w+))\.\w+ "
    "in pytree is not registered"
)


def _import_output_class(cause: str) -> bool:
    """Import the `transformers` module that defines (and so registers) the output class
    `cause` says is missing; True when it did."""
    match = _UNREGISTERED.search(cause)
    if match is None:
        return False
    try:
        importlib.import_module(match.group(1))
    except Exception:  # not installed, or broken: the original cause stands
        return False
    return True


def _plain_export(module: Any, args: tuple, kwargs: dict) -> Any:
    """`torch.export` of the module at the example shapes, before any decomposition.

    The ONNX exporter's program has been decomposed for ONNX (down to prims such as
    convert_element_type), which LiteRT, ExecuTorch and Core ML cannot lower; their own
    pipelines expect an ATen-level program. None when torch.export cannot trace the module.
    """
    import torch

    try:
        with _quiet():
            return torch.export.export(module, args, kwargs=kwargs or None)
    except Exception:  # the ONNX exporter's program is the fallback
        return None


def _export_checked(
    dynamo, torchscript, out_dir, args, kwargs, reference, provenance, counts, plain=None
):
    """Run the exporter(s) into a temporary folder, check, then move into `out_dir`. When the
    TorchScript exporter wrote the ONNX file, `plain()` (a `torch.export` of the module, or
    None) supplies the torch program instead of the dynamo exporter."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        path = staging / "model.onnx"
        exporter, note = "torch.onnx dynamo", None
        try:
            with status("Exporting to ONNX (torch.onnx, dynamo)"), _quiet():
                dynamo(path)
        except EdgeforgeError:
            raise
        except Exception as exc:
            if torchscript is None:
                raise EdgeforgeError(
                    f"{provenance.source}: torch.onnx (dynamo) could not export it "
                    f"({first_line(exc)})"
                ) from None
            note = f"dynamo export failed ({first_line(exc)})"
            warnings.warn(f"{note}; falling back to the TorchScript exporter", stacklevel=3)
            exporter = "torch.onnx torchscript"
            for leftover in staging.iterdir():
                leftover.unlink()
            try:
                with status("Exporting to ONNX (TorchScript exporter)"), _quiet():
                    torchscript(path)
            except Exception as exc2:
                raise EdgeforgeError(
                    f"{provenance.source}: both ONNX exporters failed; dynamo: "
                    f"{first_line(exc)}; torchscript: {first_line(exc2)}"
                ) from None
            if plain is not None:
                note += "; " + _save_plain_program(plain, path)
        try:
            onnx.checker.check_model(str(path), full_check=False)
        except onnx.checker.ValidationError as exc:
            raise EdgeforgeError(
                f"{provenance.source}: the exported ONNX fails the checker ({first_line(exc)})"
            ) from None
        with status("Checking the export in ONNX Runtime"):
            errors = _compare_with_onnxruntime(path, args, kwargs, reference, provenance.source)
        wrote_program = (staging / TORCH_PROGRAM).is_file()
        for item in staging.iterdir():
            shutil.move(str(item), out_dir / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    accepted = Provenance(
        source=provenance.source,
        source_kind=provenance.source_kind,
        exporter=exporter,
        exporter_note=note,
        torch_version=provenance.torch_version,
        export_check=errors,
    )
    model = open_onnx(out_dir / "model.onnx", accepted)
    program = out_dir / TORCH_PROGRAM
    if not wrote_program:
        program.unlink(missing_ok=True)  # a stale one from an earlier export
    elif exporter != "torch.onnx dynamo" and not _program_fits(program, model.inputs):
        program.unlink()
        note = (note or "") + (
            "; the torch program takes other inputs than the ONNX file (the TorchScript "
            "exporter dropped some): the torch runtimes cannot use it"
        )
        accepted = dataclasses.replace(accepted, exporter_note=note)
    return Model(
        model.onnx_path,
        model.inputs,
        model.outputs,
        accepted,
        counts,
        torch_program=program.resolve() if program.is_file() else None,
    )


def _save_plain_program(plain, path: Path) -> str:
    """Save `plain()` beside `path` as the torch program; what happened, for the note."""
    import torch

    program = plain()
    if program is None:
        return "torch.export cannot trace the module either: no torch program"
    torch.export.save(program, str(path.with_name(TORCH_PROGRAM)))
    return "the torch program comes from torch.export, apart from the ONNX export"


def _program_fits(path: Path, inputs: tuple) -> bool:
    """Whether the saved program takes one tensor per ONNX input (positional binding)."""
    import torch
    import torch.utils._pytree as pytree

    program = torch.export.load(str(path))
    leaves, _ = pytree.tree_flatten(program.example_inputs)
    return sum(isinstance(leaf, torch.Tensor) for leaf in leaves) == len(inputs)


def _compare_with_onnxruntime(path, args, kwargs, reference, source) -> dict[str, float]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = _feeds(session, args, kwargs)
    names = [o.name for o in session.get_outputs()]
    got = session.run(names, feeds)
    expected = [t.detach().cpu().numpy() for t in _tensor_leaves(reference)]
    if len(expected) != len(got):
        raise EdgeforgeError(
            f"{source}: the ONNX model has {len(got)} outputs but torch returned "
            f"{len(expected)}; check the module's return value"
        )
    errors: dict[str, float] = {}
    for name, want, have in zip(names, expected, got, strict=True):
        if tuple(want.shape) != tuple(have.shape):
            raise EdgeforgeError(
                f"{source}: output {name!r} has shape {have.shape} in ONNX Runtime but "
                f"{tuple(want.shape)} in torch"
            )
        error, scale = output_error(want, have)
        if error > _ATOL + _RTOL * scale:
            raise EdgeforgeError(
                f"{source}: the exported ONNX disagrees with torch on output {name!r} "
                f"(max abs error {error:.3g} for values up to {scale:.3g}); the exporter "
                "mistranslated an op: try another opset or report the op"
            )
        errors[name] = error
    return errors


def _feeds(session, args, kwargs) -> dict[str, np.ndarray]:
    onnx_inputs = [i.name for i in session.get_inputs()]
    flat = _tensor_leaves(list(args))
    named = {k: v for k, v in kwargs.items() if v is not None}
    if named and all(name in named for name in onnx_inputs):
        return {name: _to_numpy(named[name]) for name in onnx_inputs}
    flat += _tensor_leaves(list(named.values()))
    if len(flat) != len(onnx_inputs):
        raise EdgeforgeError(
            f"the exported model takes inputs {onnx_inputs} but {len(flat)} example tensors "
            "were given; pass exactly the tensors the model uses"
        )
    return {name: _to_numpy(t) for name, t in zip(onnx_inputs, flat, strict=True)}


def _to_numpy(tensor: Any) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _tensor_leaves(value: Any) -> list[Any]:
    """Tensors of a nested output in the exporter's order (dicts by insertion order)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _tensor_leaves(item)]
    return []


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' own prints; errors still propagate."""
    # torch.onnx logs progress; torch.export logs a traceback before it raises. The exception
    # itself still reaches the caller, who turns it into one line.
    names = ("torch.onnx", "torch.export", "torch._export")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        sys.stdout.flush()
