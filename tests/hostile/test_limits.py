"""The child-process limits of issue 13: an allocation past the budget fails in the child, and
the fuzz harness runs end to end (its findings are measured by `bench/fuzz_load.py` itself)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]


def test_child_allocation_past_budget_fails_there() -> None:
    code = textwrap.dedent(
        """
        import numpy as np
        from edgeforge._limits import apply_child_limits
        apply_child_limits(256 << 20, cpu_seconds=60)
        try:
            np.ones(16 << 30, dtype=np.uint8)  # 16 GiB: past the budget and its allowance
        except MemoryError:
            print("refused")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(_ROOT / "src"), "PATH": "/usr/bin"},
    )
    assert done.stdout.strip() == "refused", done.stderr


@pytest.mark.slow
def test_fuzz_harness_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "results" / "fuzz.json"
    done = subprocess.run(
        [sys.executable, str(_ROOT / "bench" / "fuzz_load.py"), "--minutes", "0.2",
         "--out", str(out), "--case-timeout", "20"],
        capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(_ROOT / "src"), "PATH": "/usr/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["executions"] > 0
    # Finding crashes is the harness's job, not this test's (a rare one would make it flaky):
    # it checks only that every crash comes with a reproducer.
    for crash in result["crashes"]:
        assert (out.parent / "fuzz_crashes").is_dir() and crash["argv"], crash


def test_fuzz_harness_tells_a_file_named_traceback_from_a_traceback() -> None:
    # The 30-minute run flagged a refused external-data location named 'Traceback'.
    import importlib.util

    spec = importlib.util.spec_from_file_location("fuzz_load", _ROOT / "bench" / "fuzz_load.py")
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    refused = "edgeforge: error: tensor 'W' points to external data 'Traceback', which is missing"
    assert harness._classify(2, refused) == "error"
    internal = "Traceback (most recent call last):\n  File 'x.py'\nValueError: boom"
    assert harness._classify(1, internal) == "crash"
