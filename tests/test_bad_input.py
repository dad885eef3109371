"""Bad input on the `load`/`inspect` path is refused with one line that says what to fix.

Every case builds its own files in a fresh folder and is checked through two doors:
- the Python API: `load` and `inspect` raise `EdgeforgeError` with a one-line message that names
  the problem and the fix;
- the CLI: `edgeforge inspect MODEL --json --report FILE.html` exits with status 2, prints one
  `edgeforge: error:` line on stderr and the same error as one JSON object on stdout (and nothing
  else there), shows no traceback, and leaves the report folder empty (neither the HTML nor its
  .json sibling, nor a half-written temporary).

The CLI is called in-process for every case (fast) and as a real `python -m edgeforge.cli`
process for one case per family, which also covers what only a real process shows (the exit
status through `sys.exit`, output written by libraries that hold their own handle on stderr).

Each fixture family has a positive control: the unmodified model (or factory, or override)
is accepted, so no case can pass because its fixture was broken to begin with.

Cases marked xfail are source bugs, found while writing these tests; the reason says what is
wrong. They are strict: when the bug is fixed the test starts passing and the mark must go.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

# `load` must be taken from the package before anything imports `edgeforge.analysis`: that
# import binds the package attribute `load` to the submodule edgeforge/load.py, shadowing the
# lazy public function for the whole session (a bug in edgeforge/__init__.py).
from edgeforge import EdgeforgeError, cli, load
from edgeforge.analysis import inspect, parse_shape

WEIGHT = np.arange(12, dtype=np.float32).reshape(4, 3)


# --- models, built with onnx.helper -------------------------------------------------------


def matmul_model(x_shape: Sequence[int | str] = (1, 4)) -> onnx.ModelProto:
    """X[x_shape] @ W[4, 3] -> Y: the smallest graph with a weight and a shape to get wrong."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "matmul",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [x_shape[0], 3])],
        [numpy_helper.from_array(WEIGHT, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def save_plain(folder: Path, model: onnx.ModelProto | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model or matmul_model(), path)
    return path


def reshape_model() -> onnx.ModelProto:
    """X[3, 4] -> Reshape(shape=[1, 12]) -> Y: a small int64 tensor that inspect must read."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["X", "shape"], ["Y"])],
        "reshape",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 12])],
        [numpy_helper.from_array(np.array([1, 12], dtype=np.int64), "shape")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def constant_model() -> onnx.ModelProto:
    """Y = X @ Constant(W): the weight is a node attribute, not an initializer."""
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(WEIGHT)),
            helper.make_node("MatMul", ["X", "W"], ["Y"]),
        ],
        "constant",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def save_with_external_data(folder: Path, model: onnx.ModelProto | None = None) -> Path:
    """`model.onnx` whose weights live in `weights.bin` (W: 48 bytes at offset 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(
        model or matmul_model(),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
        convert_attribute=True,
    )
    return path


def rewrite_external_data(path: Path, **entries: str | None) -> None:
    """Set (or, with None, remove) external-data keys of every external tensor, then re-save
    the .onnx alone: the weights file is left exactly as it was."""
    proto = onnx.load(str(path), load_external_data=False)
    constants = [a.t for node in proto.graph.node for a in node.attribute if a.HasField("t")]
    for tensor in [*proto.graph.initializer, *constants]:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        info.update(entries)
        del tensor.external_data[:]
        for key, value in info.items():
            if value is not None:
                tensor.external_data.add(key=key, value=value)
    onnx.save(proto, str(path))


def outside_copy_of_weights(folder: Path, outside: Path) -> Path:
    """A real copy of the weights outside the model's folder: only the safety check can fail."""
    outside.mkdir(parents=True, exist_ok=True)
    copy = outside / "x.bin"
    shutil.copyfile(folder / "weights.bin", copy)
    assert copy.read_bytes() == WEIGHT.tobytes()
    return copy


FACTORY_SOURCE = """
import torch


def ok():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3), torch.randn(1, 4)


def make():
    raise ValueError("boom")


def returns_a_string():
    return "not a model"


def returns_an_object_and_a_tensor():
    return object(), torch.zeros(1, 4)


def returns_a_dict_without_the_model():
    return {"example_inputs": torch.zeros(1, 4)}


def returns_an_unknown_option():
    return torch.nn.Linear(4, 3), torch.zeros(1, 4), {"batch_size": 2}


def returns_inputs_the_module_rejects():
    return torch.nn.Linear(4, 3), torch.zeros(1, 5)


def exits():
    raise SystemExit(3)


not_a_function = 3
"""


def write_factory(folder: Path, source: str = FACTORY_SOURCE, name: str = "factory.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


# --- the cases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """What a user passes: the MODEL argument and the --shape values as typed."""

    model: str
    shape_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class BadInput:
    """One mistake or attack. `build` makes its files in an empty folder."""

    build: Callable[[Path], Attempt]
    says: tuple[str, ...]  # fragments the one-line message must contain: the problem and fix
    api_bug: str | None = None  # a known source bug that makes the API check fail
    cli_bug: str | None = None  # a known source bug that makes the CLI check fail


def _truncated_onnx(folder: Path) -> Attempt:
    path = save_plain(folder)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return Attempt(str(path))


def _file_with(content: bytes, name: str = "model.onnx") -> Callable[[Path], Attempt]:
    def build(folder: Path) -> Attempt:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
        return Attempt(str(folder / name))

    return build


def _graph_failing_the_checker(folder: Path) -> Attempt:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "undefined"], ["Y"])],
        "dangling",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return Attempt(str(save_plain(folder, model)))


def _nonexistent_path(folder: Path) -> Attempt:
    return Attempt(str(folder / "no_such_model.onnx"))


def _directory_instead_of_a_file(folder: Path) -> Attempt:
    (folder / "model.onnx").mkdir(parents=True)
    return Attempt(str(folder / "model.onnx"))


def _external_data_missing(folder: Path) -> Attempt:
    path = save_with_external_data(folder)
    (folder / "weights.bin").unlink()
    return Attempt(str(path))


def _external_data_dotdot(folder: Path) -> Attempt:
    path = save_with_external_data(folder / "model")
    outside_copy_of_weights(folder / "model", folder)  # exists at model/../x.bin
    rewrite_external_data(path, location="../x.bin")
    return Attempt(str(path))


def _external_data_absolute(folder: Path) -> Attempt:
    path = save_with_external_data(folder / "model")
    copy = outside_copy_of_weights(folder / "model", folder / "elsewhere")
    rewrite_external_data(path, location=str(copy.resolve()))
    return Attempt(str(path))


def _external_data_symlink_to_file(folder: Path) -> Attempt:
    path = save_with_external_data(folder / "model")
    copy = outside_copy_of_weights(folder / "model", folder / "elsewhere")
    (folder / "model" / "link.bin").symlink_to(copy)
    rewrite_external_data(path, location="link.bin")
    return Attempt(str(path))


def _external_data_symlink_to_folder(folder: Path) -> Attempt:
    path = save_with_external_data(folder / "model")
    outside_copy_of_weights(folder / "model", folder / "elsewhere")
    (folder / "model" / "sub").symlink_to(folder / "elsewhere", target_is_directory=True)
    rewrite_external_data(path, location="sub/x.bin")
    return Attempt(str(path))


def _external_data_truncated(folder: Path) -> Attempt:
    path = save_with_external_data(folder)
    weights = folder / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:24])  # the tensor needs bytes 0..48
    return Attempt(str(path))


def _external_data_entries(**entries: str | None) -> Callable[[Path], Attempt]:
    def build(folder: Path) -> Attempt:
        path = save_with_external_data(folder)
        rewrite_external_data(path, **entries)
        return Attempt(str(path))

    return build


def _external_data_in_a_constant_escaping_with_dotdot(folder: Path) -> Attempt:
    path = save_with_external_data(folder / "model", constant_model())
    outside_copy_of_weights(folder / "model", folder)
    rewrite_external_data(path, location="../x.bin")
    return Attempt(str(path))


def _external_shape_tensor_with_negative_offset(folder: Path) -> Attempt:
    path = save_with_external_data(folder, reshape_model())
    rewrite_external_data(path, offset="-8")
    return Attempt(str(path))


def _inline_weight_shorter_than_its_shape(folder: Path) -> Attempt:
    model = matmul_model()
    weight = model.graph.initializer[0]
    weight.raw_data = weight.raw_data[:44]
    return Attempt(str(save_plain(folder, model)))


def _external_data_without_length_and_empty_file(folder: Path) -> Attempt:
    path = save_with_external_data(folder)
    rewrite_external_data(path, length=None)
    (folder / "weights.bin").write_bytes(b"")
    return Attempt(str(path))


def _factory(name: str) -> Callable[[Path], Attempt]:
    def build(folder: Path) -> Attempt:
        return Attempt(f"{write_factory(folder)}:{name}")

    return build


def _factory_failing_at_import(folder: Path) -> Attempt:
    path = write_factory(folder, 'raise RuntimeError("import-time failure")\n', "broken.py")
    return Attempt(f"{path}:make")


def _factory_file_missing(folder: Path) -> Attempt:
    return Attempt(f"{folder / 'no_such_factory.py'}:make")


def _unimportable_factory_module(folder: Path) -> Attempt:
    return Attempt("no_such_pkg.mod:make")


def _model_with_shapes(x_shape: Sequence[int | str], *shape_args: str) -> Callable[[Path], Attempt]:
    def build(folder: Path) -> Attempt:
        return Attempt(str(save_plain(folder, matmul_model(x_shape))), shape_args)

    return build


DYNAMIC = ("batch", "features")  # X[batch, features] @ W[4, 3]: features can only be 4
BATCH_ONLY = ("batch", 4)

REPARSE = "re-export or re-download it"
BAD_SHAPE = "expected NAME=DxDx... with positive integers, e.g. --shape image=1x3x224x224"

CASES: dict[str, BadInput] = {
    # A model file that is not one.
    "truncated_onnx_cut_in_half": BadInput(
        _truncated_onnx, ("model.onnx: cannot parse as ONNX", "may be truncated", REPARSE)
    ),
    "text_file_named_model_onnx": BadInput(
        _file_with(b"name,score\nalice,3\n"), ("model.onnx: cannot parse as ONNX", REPARSE)
    ),
    "random_bytes_named_model_onnx": BadInput(
        _file_with(np.random.default_rng(0).bytes(512)),
        ("model.onnx: cannot parse as ONNX", REPARSE),
    ),
    "empty_onnx_file": BadInput(_file_with(b""), ("model.onnx: not an ONNX model", REPARSE)),
    "graph_failing_the_onnx_checker": BadInput(
        _graph_failing_the_checker,
        ("model.onnx: fails the ONNX checker", "'undefined'", "re-export the model"),
    ),
    "garbage_named_model_pt2": BadInput(
        _file_with(b"not a zip archive", "model.pt2"),
        ("model.pt2: cannot load as a torch.export program", "save it with torch.export.save"),
    ),
    "inline_weight_shorter_than_its_shape": BadInput(
        _inline_weight_shorter_than_its_shape,
        ("weight 'W' holds 44 bytes but its shape [4, 3] needs 48", "re-export it"),
    ),
    "nonexistent_path": BadInput(
        _nonexistent_path, ("no_such_model.onnx: no such file", "pass an .onnx or .pt2 path")
    ),
    "directory_instead_of_a_file": BadInput(
        _directory_instead_of_a_file, ("model.onnx: no such file", "pass an .onnx or .pt2 path")
    ),
    # External data: missing, truncated, or pointing out of the model's folder.
    "external_data_file_missing": BadInput(
        _external_data_missing,
        ("tensor 'W'", "'weights.bin', which is missing", "copy weights.bin into"),
    ),
    "external_data_location_escaping_with_dotdot": BadInput(
        _external_data_dotdot,
        ("tensor 'W'", "'../x.bin', which leaves the model's folder", "move the data beside"),
    ),
    "external_data_location_absolute_path": BadInput(
        _external_data_absolute,
        ("tensor 'W'", "an absolute path", "external data must sit beside the model"),
    ),
    "external_data_location_symlink_leaving_the_folder": BadInput(
        _external_data_symlink_to_file,
        ("'link.bin', a link that resolves outside the model's folder", "copy the data file"),
    ),
    "external_data_location_through_symlinked_subfolder": BadInput(
        _external_data_symlink_to_folder,
        ("'sub/x.bin', a link that resolves outside the model's folder", "copy the data file"),
    ),
    "external_data_in_a_constant_escaping_with_dotdot": BadInput(
        _external_data_in_a_constant_escaping_with_dotdot,
        ("'../x.bin', which leaves the model's folder", "move the data beside"),
    ),
    "external_data_shorter_than_offset_plus_length": BadInput(
        _external_data_truncated,
        ("holds 24 bytes but the tensor needs bytes 0..48", "truncated, copy it again"),
    ),
    "external_data_without_location": BadInput(
        _external_data_entries(location=""), ("tensor 'W'", "has no location", "re-save")
    ),
    "external_data_offset_not_a_number": BadInput(
        _external_data_entries(offset="abc"),
        ("tensor 'W'", "non-numeric offset or length", "re-save the model"),
    ),
    "external_data_length_not_a_number": BadInput(
        _external_data_entries(length="xyz"),
        ("tensor 'W'", "non-numeric offset or length", "re-save the model"),
    ),
    "external_data_negative_offset": BadInput(
        _external_shape_tensor_with_negative_offset,
        ("tensor 'shape'", "negative offset or length", "re-save the model"),
    ),
    "external_data_without_length_and_empty_file": BadInput(
        _external_data_without_length_and_empty_file,
        ("tensor 'W'", "holds 0 bytes but the tensor needs bytes 0..48", "copy it again"),
    ),
    # Factories: user code that fails, cannot be found, or returns the wrong thing.
    "factory_that_raises": BadInput(
        _factory("make"), ("the factory raised ValueError: boom", "fix the factory")
    ),
    "factory_module_that_cannot_be_imported": BadInput(
        _unimportable_factory_module,
        ("cannot import 'no_such_pkg'", "install it or add its folder to PYTHONPATH"),
    ),
    "factory_file_that_fails_to_import": BadInput(
        _factory_failing_at_import, ("broken.py raised RuntimeError: import-time failure",)
    ),
    "factory_file_missing": BadInput(_factory_file_missing, ("no such file", "no_such_factory.py")),
    "factory_name_missing_from_file": BadInput(
        _factory("no_such_factory"), ("has no callable named 'no_such_factory'",)
    ),
    "factory_name_that_is_not_a_function": BadInput(
        _factory("not_a_function"), ("has no callable named 'not_a_function'",)
    ),
    "factory_reference_with_invalid_name": BadInput(
        _factory("1abc"), ("expected 'package.module:factory' or 'file.py:factory'",)
    ),
    "factory_returning_the_wrong_type": BadInput(
        _factory("returns_a_string"),
        ("the factory returned str", "return (module, example_inputs)"),
    ),
    "factory_returning_a_non_module": BadInput(
        _factory("returns_an_object_and_a_tensor"), ("expected a torch.nn.Module, got object",)
    ),
    "factory_returning_a_dict_without_the_model": BadInput(
        _factory("returns_a_dict_without_the_model"),
        ("needs the keys 'model' and 'example_inputs'",),
    ),
    "factory_returning_an_unknown_option": BadInput(
        _factory("returns_an_unknown_option"),
        ("unknown options ['batch_size']", "use ['dynamic_axes', 'input_names'"),
    ),
    "factory_returning_inputs_the_module_rejects": BadInput(
        _factory("returns_inputs_the_module_rejects"),
        ("the module fails on its example inputs", "pass inputs it accepts"),
    ),
    "factory_calling_sys_exit": BadInput(
        _factory("exits"), ("the factory raised SystemExit: 3", "fix the factory")
    ),
    # --shape overrides that do not fit.
    "shape_override_for_unknown_input": BadInput(
        _model_with_shapes(DYNAMIC, "Z=1x4"), ("shape override names no input 'Z'", "inputs are X")
    ),
    "shape_override_naming_a_weight": BadInput(
        _model_with_shapes(DYNAMIC, "W=4x3"), ("shape override names no input 'W'", "inputs are X")
    ),
    "shape_override_with_wrong_rank": BadInput(
        _model_with_shapes(DYNAMIC, "X=1x4x1"),
        ("shape override for X: the input has rank 2 (batchxfeatures)", "gives 3 dimensions"),
    ),
    "shape_override_contradicting_a_fixed_dim": BadInput(
        _model_with_shapes(BATCH_ONLY, "X=1x5"),
        ("shape override for X: axis 1 is fixed at 4 in the model", "the override gives 5"),
    ),
    "shape_override_with_a_letter": BadInput(
        _model_with_shapes(DYNAMIC, "image=1xAx3"), ("'image=1xAx3'", BAD_SHAPE)
    ),
    "shape_override_without_dims": BadInput(
        _model_with_shapes(DYNAMIC, "image"), ("'image'", BAD_SHAPE)
    ),
    "shape_override_with_a_zero_dim": BadInput(
        _model_with_shapes(DYNAMIC, "image=0x3"), ("'image=0x3'", BAD_SHAPE)
    ),
    "shape_override_with_a_negative_dim": BadInput(
        _model_with_shapes(DYNAMIC, "X=-1x4"), ("'X=-1x4'", BAD_SHAPE)
    ),
    "shape_override_without_a_name": BadInput(
        _model_with_shapes(DYNAMIC, "=1x4"), ("'=1x4'", BAD_SHAPE)
    ),
    "shape_override_inconsistent_with_the_graph": BadInput(
        _model_with_shapes(DYNAMIC, "X=1x5"),
        ("the shape override X=1x5 does not fit the model", "MatMul"),
    ),
}

# One case per family, also run as a real process (a Python start each; torch for some).
REAL_PROCESS_CASES = (
    "truncated_onnx_cut_in_half",
    "garbage_named_model_pt2",
    "nonexistent_path",
    "external_data_location_escaping_with_dotdot",
    "factory_that_raises",
    "shape_override_inconsistent_with_the_graph",
)


def _params(names: Sequence[str], surface: str) -> list[Any]:
    params = []
    for name in names:
        bug = getattr(CASES[name], f"{surface}_bug")
        marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


# --- how each door is called and checked ---------------------------------------------------


@dataclass(frozen=True)
class CliRun:
    status: int
    stdout: str
    stderr: str


def cli_args(attempt: Attempt, report: Path) -> list[str]:
    shapes = [arg for text in attempt.shape_args for arg in ("--shape", text)]
    return ["inspect", attempt.model, *shapes, "--json", "--report", str(report)]


def run_cli_in_process(
    args: list[str],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> CliRun:
    """`main(args)`, with what a real process would show on stderr.

    Log records at WARNING and above reach a real process's stderr (through the library's
    handler or logging's last resort), but under pytest they go to pytest's own capture, so
    they are added to stderr here.
    """
    # main() installs a one-line warning printer for the process, and a module:factory
    # reference puts the current folder on sys.path: undo both after the test.
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    monkeypatch.setattr(sys, "path", [*sys.path])
    capfd.readouterr()
    caplog.clear()
    status = cli.main(args)
    out, err = capfd.readouterr()
    logged = [caplog.handler.format(r) for r in caplog.records if r.levelno >= logging.WARNING]
    return CliRun(status, out, err + "".join(f"{text}\n" for text in logged))


def run_cli_process(args: list[str], cwd: Path) -> CliRun:
    done = subprocess.run(
        [sys.executable, "-m", "edgeforge.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    return CliRun(done.returncode, done.stdout, done.stderr)


def assert_one_helpful_line(message: str, says: Sequence[str]) -> None:
    assert "\n" not in message, message
    for fragment in says:
        assert fragment in message, f"{fragment!r} missing from {message!r}"


def assert_refused_by_cli(run: CliRun, says: Sequence[str], report_dir: Path) -> None:
    assert "Traceback" not in run.stderr, run.stderr
    assert run.status == 2, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("edgeforge: error: "), lines[0]
    # Under --json the error is also the only thing on stdout: one object a script can read.
    printed = json.loads(run.stdout)
    assert printed["schema"] == "edgeforge.error/1"
    assert printed["error"]["kind"] == "bad-input" and printed["error"]["exit_code"] == 2
    assert lines[0] == f"edgeforge: error: {printed['error']['message']}"
    assert_one_helpful_line(lines[0], says)
    assert list(report_dir.iterdir()) == [], "a refused model must leave no report behind"


def api_calls(attempt: Attempt, workdir: Path) -> list[Callable[[], object]]:
    """The API calls a user makes for this attempt: load and inspect, or parse and inspect."""
    if attempt.shape_args:

        def inspect_with_overrides() -> object:
            shapes = dict(parse_shape(text) for text in attempt.shape_args)
            return inspect(attempt.model, shapes=shapes, workdir=workdir)

        return [inspect_with_overrides]
    return [
        lambda: load(attempt.model, workdir=workdir),
        lambda: inspect(attempt.model, workdir=workdir),
    ]


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


# --- the bad inputs, through both doors ----------------------------------------------------


@pytest.mark.parametrize("name", _params(list(CASES), "api"))
def test_api_refuses_with_one_helpful_line(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", [*sys.path])  # load() may add the current folder to it
    case = CASES[name]
    attempt = case.build(tmp_path / "case")
    for call in api_calls(attempt, tmp_path / "work"):
        with pytest.raises(EdgeforgeError) as raised:
            call()
        assert_one_helpful_line(str(raised.value), case.says)


@pytest.mark.parametrize("name", _params(list(CASES), "cli"))
def test_cli_exits_2_with_one_line_and_no_report(
    name: str,
    tmp_path: Path,
    report_dir: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = CASES[name]
    attempt = case.build(tmp_path / "case")
    run = run_cli_in_process(
        cli_args(attempt, report_dir / "report.html"), capfd, caplog, monkeypatch
    )
    assert_refused_by_cli(run, case.says, report_dir)


@pytest.mark.parametrize("name", _params(REAL_PROCESS_CASES, "cli"))
def test_cli_process_exits_2_with_one_line_and_no_report(
    name: str, tmp_path: Path, report_dir: Path
) -> None:
    case = CASES[name]
    attempt = case.build(tmp_path / "case")
    elsewhere = tmp_path / "cwd"  # not the model's folder, and holds no stray weights
    elsewhere.mkdir()
    run = run_cli_process(cli_args(attempt, report_dir / "report.html"), elsewhere)
    assert_refused_by_cli(run, case.says, report_dir)


# --- bad input only the Python API can receive ---------------------------------------------


TORCH_SOURCES: dict[str, tuple[Callable[[], tuple[Any, Any]], tuple[str, ...]]] = {
    "module_without_example_inputs": (
        lambda: (torch.nn.Linear(4, 3), None),
        ("Linear: example inputs are needed", "pass a tensor"),
    ),
    "example_inputs_of_the_wrong_type": (
        lambda: (torch.nn.Linear(4, 3), 42),
        ("example inputs must be a tensor", "not int"),
    ),
    "example_inputs_the_module_rejects": (
        lambda: (torch.nn.Linear(4, 3), torch.zeros(1, 5)),
        ("the module fails on its example inputs", "pass inputs it accepts"),
    ),
    "source_of_an_unsupported_type": (
        lambda: (42, None),
        ("cannot load a int", "pass an .onnx or .pt2 path"),
    ),
}


@pytest.mark.parametrize("name", list(TORCH_SOURCES))
def test_api_refuses_bad_torch_sources(name: str, tmp_path: Path) -> None:
    make, says = TORCH_SOURCES[name]
    source, example_inputs = make()
    for call in (load, inspect):
        with pytest.raises(EdgeforgeError) as raised:
            call(source, example_inputs, workdir=tmp_path / "work")
        assert_one_helpful_line(str(raised.value), says)
    assert not (tmp_path / "work" / "model.onnx").exists()


POSITIVE = "give a sequence of positive integers"


@pytest.mark.parametrize(
    ("shape", "says"),
    [
        pytest.param((0, 4), ("for 'X' is (0, 4)", POSITIVE), id="zero_dim"),
        pytest.param((-1, 4), ("for 'X' is (-1, 4)", POSITIVE), id="negative_dim"),
        pytest.param(("a", 4), ("for 'X' is ('a', 4)", POSITIVE), id="string_dim"),
        pytest.param((True, 4), ("for 'X' is (True, 4)", POSITIVE), id="bool_dim"),
        pytest.param(4, ("for 'X' is 4", POSITIVE), id="not_a_sequence"),
        pytest.param(
            (1, 4, 1),
            ("shape override for X: the input has rank 2", "gives 3 dimensions"),
            id="wrong_rank",
        ),
    ],
)
def test_api_refuses_shape_overrides_that_are_not_positive_integers(
    shape: Any, says: tuple[str, ...], tmp_path: Path
) -> None:
    path = save_plain(tmp_path, matmul_model(DYNAMIC))
    with pytest.raises(EdgeforgeError) as raised:
        inspect(path, shapes={"X": shape})
    assert_one_helpful_line(str(raised.value), says)


# --- positive controls: each fixture family, unmodified, is accepted -------------------------


def test_control_plain_model_loads_and_the_cli_writes_its_report(
    tmp_path: Path,
    report_dir: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = save_plain(tmp_path / "case")
    model = load(path)
    assert [(t.name, t.shape) for t in model.inputs] == [("X", (1, 4))]
    assert inspect(path).macs == 12
    # The same flags the refusals use do write both files when the model is good, so an empty
    # report folder after a refusal means something.
    run = run_cli_in_process(
        cli_args(Attempt(str(path)), report_dir / "report.html"), capfd, caplog, monkeypatch
    )
    assert run.status == 0, run.stderr
    assert '"macs": 12' in run.stdout
    assert sorted(p.name for p in report_dir.iterdir()) == ["report.html", "report.json"]


def test_control_cli_process_writes_its_report(tmp_path: Path, report_dir: Path) -> None:
    path = save_plain(tmp_path / "case")
    run = run_cli_process(cli_args(Attempt(str(path)), report_dir / "report.html"), tmp_path)
    assert run.status == 0, run.stderr
    assert sorted(p.name for p in report_dir.iterdir()) == ["report.html", "report.json"]


@pytest.mark.parametrize(
    ("make_model", "weight_bytes", "macs"),
    [
        pytest.param(matmul_model, WEIGHT.nbytes, 12, id="initializer"),
        pytest.param(constant_model, WEIGHT.nbytes, 12, id="constant_attribute"),
        pytest.param(reshape_model, 16, 0, id="int64_shape_tensor"),
    ],
)
def test_control_external_data_fixture_loads_from_any_working_directory(
    make_model: Callable[[], onnx.ModelProto],
    weight_bytes: int,
    macs: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = save_with_external_data(tmp_path / "model", make_model())
    assert (tmp_path / "model" / "weights.bin").stat().st_size == weight_bytes
    onnx.checker.check_model(str(path))
    onnx.load(str(path))  # reads the weights back
    # Not from the model's folder: external data is found beside the model, not in the cwd.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load(path).uses_external_data
    assert inspect(path).macs == macs


def test_control_rewritten_location_inside_the_folder_is_accepted(tmp_path: Path) -> None:
    """The location-rewriting helper itself leaves a loadable model when the new location is
    a plain file beside the model: the escape cases fail on their location alone."""
    folder = tmp_path / "model"
    path = save_with_external_data(folder)
    (folder / "weights.bin").rename(folder / "renamed.bin")
    rewrite_external_data(path, location="renamed.bin")
    np.testing.assert_array_equal(
        numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0]), WEIGHT
    )
    assert load(path).uses_external_data


def test_control_factory_file_loads(tmp_path: Path) -> None:
    path = write_factory(tmp_path / "case")
    model = load(f"{path}:ok", workdir=tmp_path / "work")
    assert model.provenance.source_kind == "factory"
    assert [t.shape for t in model.inputs] == [(1, 4)]
    assert model.torch_parameters is not None and model.torch_parameters.parameters == 15


def test_control_shape_override_that_fits_is_applied(tmp_path: Path) -> None:
    path = save_plain(tmp_path, matmul_model(DYNAMIC))
    profile = inspect(path, shapes=dict([parse_shape("X=2x4")]))
    assert [(a.name, a.value, a.reason) for a in profile.assumed_dims] == [
        ("batch", 2, "override"),
        ("features", 4, "override"),
    ]
    assert profile.macs == 2 * 4 * 3


@pytest.mark.parametrize("text", ["X=2x4", "X=2,4", " X = 2x4 "])
def test_control_shape_text_forms_parse(text: str) -> None:
    assert parse_shape(text) == ("X", (2, 4))
