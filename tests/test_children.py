"""Child processes: a caller's script runs once, a child's output stays out of the way until it
explains a failure, and a failure names its real cause."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

from edgeforge._children import in_child


def _prints_then_succeeds(job):
    print("chatter from a library")
    os.write(2, b"native chatter on fd 2\n")
    return {"runtime": job["runtime"], "status": "verified", "detail": ""}


def _logs_the_cause_then_points_above(job):
    os.write(2, b"native chatter on fd 2\n")
    try:
        raise ValueError("the archive has no version record")
    except ValueError:
        logging.getLogger("some.library").warning("could not read it", exc_info=True)
    raise RuntimeError("We ran into an error. Please check the warnings above for possible errors.")


def _prints_then_dies(job):
    os.write(2, b"fatal: the native library gave up\n")
    os._exit(3)


def test_a_script_without_a_main_guard_runs_once(digits_model, tmp_path):
    """multiprocessing re-runs the caller's main module in each child; a script with no
    `if __name__ == "__main__":` guard then converted again in every child (and failed)."""
    script = tmp_path / "convert_it.py"
    script.write_text(
        textwrap.dedent(
            f"""\
            from pathlib import Path
            from edgeforge.convert import convert

            with open(Path(__file__).with_name("runs.txt"), "a") as runs:
                runs.write("ran\\n")
            result = convert({str(digits_model.onnx_path)!r}, "onnxruntime,onnxruntime-mobile",
                             Path(__file__).with_name("out"))
            print(result.verdict)
            """
        )
    )
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "PASS (exit 0): 2 of 2 targets verified"
    assert (tmp_path / "runs.txt").read_text() == "ran\n"  # the top level ran exactly once


def test_a_child_that_succeeds_keeps_its_output_to_itself(capfd):
    outcome = in_child(_prints_then_succeeds, {"runtime": "quiet"}, timeout=60)
    assert outcome["status"] == "verified"
    assert "log" not in outcome
    captured = capfd.readouterr()
    assert "chatter" not in captured.out + captured.err


def test_a_failure_names_the_cause_that_was_only_logged(capfd):
    outcome = in_child(_logs_the_cause_then_points_above, {"runtime": "vague"}, timeout=60)
    assert outcome["status"] == "failed"
    detail = outcome["detail"]
    assert "\n" not in detail
    assert detail.startswith("RuntimeError: We ran into an error.")
    assert detail.endswith("[cause: ValueError: the archive has no version record]")
    assert "native chatter on fd 2" in outcome["log"]  # kept, because it failed
    assert "chatter" not in capfd.readouterr().err


def test_a_crashed_child_says_what_it_last_printed():
    outcome = in_child(_prints_then_dies, {"runtime": "crashy"}, timeout=60)
    assert outcome["status"] == "crashed"
    assert "exit code 3" in outcome["detail"]
    assert "it last printed: fatal: the native library gave up" in outcome["detail"]


def test_verbose_lets_a_childs_output_through(tmp_path):
    script = tmp_path / "verbose_child.py"
    script.write_text(
        textwrap.dedent(
            """\
            from edgeforge._children import in_child
            from test_children import _prints_then_succeeds

            if __name__ == "__main__":
                print(in_child(_prints_then_succeeds, {"runtime": "loud"}, timeout=60)["status"])
            """
        )
    )
    tests = os.path.dirname(__file__)
    env = os.environ | {
        "EDGEFORGE_VERBOSE": "1",
        "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "chatter from a library" in run.stdout
    assert "native chatter on fd 2" in run.stderr
