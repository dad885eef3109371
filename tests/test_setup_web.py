"""`edgeforge setup web` installs the browser runtime's assets outside the package.

What these defend against: re-running npm when the pinned onnxruntime-web is already there,
running package scripts during the install, installing into the wrong folder, a half-installed
state reported as ready, and a missing npm or browser failing without the command that fixes it.
(The real npm install runs in `scripts/check-wheel.sh`, against a fresh folder.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeforge import setup_web as web_setup
from edgeforge.cli import main
from edgeforge.runtimes._browser import ORT_WEB_BUNDLE, ORT_WEB_VERSION


def fake_install(folder: Path, version: str = ORT_WEB_VERSION) -> None:
    package = folder / "node_modules" / "onnxruntime-web"
    (package / "dist").mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"version": version}))
    (package / "dist" / ORT_WEB_BUNDLE).write_text("// bundle")


@pytest.fixture
def browser(monkeypatch):
    monkeypatch.setenv("EDGEFORGE_CHROMIUM", sys.executable)  # any executable passes


def test_a_second_run_finds_both_and_runs_nothing(tmp_path, monkeypatch, browser):
    fake_install(tmp_path)

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    result = web_setup.setup_web(tmp_path)
    assert result.ready and result.done == [] and result.ort_web_version == ORT_WEB_VERSION
    assert result.web_dir == str(tmp_path.resolve())


def test_npm_installs_the_pinned_version_without_running_package_scripts(
    tmp_path, monkeypatch, browser
):
    fake_install(tmp_path / "old", version="1.0.0")  # another version elsewhere: not ours
    ran: list[list[str]] = []

    def fake_npm(command, **kwargs):
        ran.append(command)
        fake_install(Path(command[command.index("--prefix") + 1]))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(web_setup.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "run", fake_npm)
    result = web_setup.setup_web(tmp_path / "web")
    (command,) = ran
    assert command[:2] == ["/usr/bin/npm", "install"] and "--ignore-scripts" in command
    assert command[-1] == f"onnxruntime-web@{ORT_WEB_VERSION}"
    assert command[command.index("--prefix") + 1] == str((tmp_path / "web").resolve())
    assert result.ready and result.done == [
        f"installed onnxruntime-web {ORT_WEB_VERSION} into {(tmp_path / 'web').resolve()}"
    ]


def test_an_install_that_leaves_no_bundle_is_an_error(tmp_path, monkeypatch, browser):
    monkeypatch.setattr(web_setup.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(
        subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(command, 0)
    )
    with pytest.raises(web_setup.EdgeforgeError, match="no onnxruntime-web"):
        web_setup.setup_web(tmp_path)


def test_missing_npm_is_reported_with_the_fix_and_exit_status_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEFORGE_CHROMIUM", str(tmp_path / "no-browser"))
    monkeypatch.setattr(web_setup.shutil, "which", lambda name: None)
    assert main(["setup", "web", "--dir", str(tmp_path), "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["schema"] == "edgeforge.setup/1" and printed["ready"] is False
    assert any("npm is missing" in line for line in printed["missing"])
    assert any(line.startswith("chromium:") for line in printed["missing"])
