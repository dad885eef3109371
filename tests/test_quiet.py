"""Quiet by default: the runtimes' libraries print nothing on the user's terminal, and an
error names its real cause even when the library only logged it."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import edgeforge
from edgeforge._quiet import real_cause, show_warning
from edgeforge.errors import first_line, logged_cause

# What the CLI may print on stderr: its own lines. Progress bars draw only on a terminal.
EDGEFORGE_LINE = re.compile(r"^(edgeforge: |report: )")


@pytest.mark.slow
def test_check_all_prints_nothing_but_edgeforge_lines(digits_factory):
    """absl/TensorFlow, torchao, coremltools and XNNPACK print 15-18 lines here unless
    silenced; stdout must stay parseable JSON."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeforge.cli",
            "check",
            digits_factory,
            "--runtime",
            "all",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    data = json.loads(run.stdout)
    assert run.returncode == data["exit_code"] == 0, data["verdict"]
    assert data["verdict"].startswith("OK (exit 0): ")
    assert [line for line in run.stderr.splitlines() if not EDGEFORGE_LINE.match(line)] == []


def test_a_message_pointing_above_gets_the_cause_printed_above():
    log = (
        "W1205 19:07:26.032000 22798 torch/export/__init__.py:348] Traceback (most recent "
        "call last):\n"
        "W1205 19:07:26.032000 22798 torch/export/__init__.py:348] RuntimeError: Expected "
        'hasRecord("version") to be true, but got false.\n'
        "some later chatter\n"
    )
    message = "RuntimeError: Please check the warnings above for possible errors."
    assert real_cause(message, log) == (
        f'{message} [cause: RuntimeError: Expected hasRecord("version") to be true, but got false.]'
    )
    assert real_cause("ValueError: bad shape", log) == "ValueError: bad shape"


def test_a_corrupt_torch_program_names_the_real_cause_not_warnings_above(tmp_path, capfd):
    """torch.export.load logs the deserialisation error and raises 'check the warnings
    above'; with the warning silenced, that message said nothing."""
    import torch

    path = tmp_path / "broken.pt2"
    # A pickle the archive check lets through (plain data), in an archive torch cannot read as
    # a program: the cause is torch's own, logged before it raised.
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/data.pkl", pickle.dumps({"weights": [1, 2]}, protocol=2))
    with pytest.raises(RuntimeError) as caught, logged_cause("torch.export"):
        torch.export.load(str(path))
    line = first_line(caught.value)
    assert "warnings above" not in line
    assert line.startswith("RuntimeError: Expected hasRecord")
    assert "Traceback" not in capfd.readouterr().err  # recorded, not printed


def test_a_broken_pt2_source_is_one_line_with_its_cause(tmp_path):
    path = tmp_path / "broken.pt2"
    # A pickle the archive check lets through (plain data), in an archive torch cannot read as
    # a program: the cause is torch's own, logged before it raised.
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/data.pkl", pickle.dumps({"weights": [1, 2]}, protocol=2))
    with pytest.raises(edgeforge.EdgeforgeError) as caught:
        edgeforge.load(path, workdir=tmp_path / "out")
    assert "warnings above" not in str(caught.value)
    assert "hasRecord" in str(caught.value)


def test_our_warnings_are_one_line_and_other_libraries_are_not_shown(capsys, monkeypatch):
    monkeypatch.delenv("EDGEFORGE_VERBOSE", raising=False)
    ours = str(Path(edgeforge.__file__).parent / "_load.py")
    show_warning(UserWarning("falling back to TorchScript"), UserWarning, ours, 1)
    show_warning(UserWarning("torch 2.13 is untested"), UserWarning, "/lib/coremltools/x.py", 1)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "edgeforge: warning: falling back to TorchScript\n"
    monkeypatch.setenv("EDGEFORGE_VERBOSE", "1")
    show_warning(UserWarning("torch 2.13 is untested"), UserWarning, "/lib/coremltools/x.py", 1)
    assert "untested" in capsys.readouterr().err
