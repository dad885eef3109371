"""`edgeforge setup web`: install what the `web` runtime runs models with.

Two things live outside Python: a headless Chromium (Debian's `chromium` package; any Chromium
or Chrome on PATH, or `$EDGEFORGE_CHROMIUM`) and onnxruntime-web from npm, pinned to
`ORT_WEB_VERSION`, in `$EDGEFORGE_WEB_DIR` (default ~/.cache/edgeforge/web) — outside the
package, so a wheel installed anywhere finds them.

Invariants: idempotent (a second run finds both and runs nothing); npm runs with
`--ignore-scripts` (the browser files are plain dist files; no package needs to run code here);
Chromium is installed only when asked (`install_browser`) and only as root with apt-get; a
missing npm or browser is reported with the command that fixes it, never half-installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeforge.errors import EdgeforgeError

__all__ = ["WebSetup", "setup_web"]


@dataclass
class WebSetup:
    """Where the web runtime's parts are, and what this run did; `ready` when both are there."""

    web_dir: str
    ort_web_version: str | None
    ort_web_pinned: str
    chromium: str | None
    done: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.missing

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ready": self.ready}


def setup_web(
    web_dir: str | Path | None = None, *, install_browser: bool = False, timeout: float = 600
) -> WebSetup:
    """Install onnxruntime-web `ORT_WEB_VERSION` into `web_dir` (default `$EDGEFORGE_WEB_DIR`,
    else ~/.cache/edgeforge/web) with npm unless it is there, and check for Chromium (with
    `install_browser`, install Debian's as root). A given `web_dir` becomes this process's
    $EDGEFORGE_WEB_DIR, so the web runtime finds it. Returns what is there and what is missing."""
    from edgeforge.runtimes import _browser

    if web_dir is not None:
        os.environ["EDGEFORGE_WEB_DIR"] = str(Path(web_dir).expanduser().resolve())
    folder = _browser.web_dir()
    done: list[str] = []
    missing: list[str] = []

    can_install = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if _browser.chromium_binary() is None and install_browser and can_install:
        _run(["apt-get", "update", "-qq"], timeout, "apt-get update")
        _run(["apt-get", "install", "-y", "-qq", "chromium"], timeout, "apt-get install")
        done.append("installed Debian's chromium")
    chromium = _browser.chromium_binary()
    if chromium is None:
        missing.append(
            "chromium: install it (Debian: sudo apt-get install chromium; or "
            "`edgeforge setup web --install-browser` as root), or point $EDGEFORGE_CHROMIUM at "
            "a Chromium or Chrome executable"
        )

    pinned = _browser.ORT_WEB_VERSION
    if _browser.installed_ort_web_version() != pinned:
        npm = shutil.which("npm")
        if npm is None:
            missing.append(
                f"onnxruntime-web {pinned}: npm is missing; install Node.js 20 and npm, then "
                "run `edgeforge setup web` again"
            )
        else:
            folder.mkdir(parents=True, exist_ok=True)
            _run(
                [
                    npm,
                    "install",
                    "--prefix",
                    str(folder),
                    "--save-exact",
                    "--ignore-scripts",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    f"onnxruntime-web@{pinned}",
                ],
                timeout,
                "npm install",
            )
            if _browser.installed_ort_web_version() != pinned:
                raise EdgeforgeError(
                    f"npm installed no onnxruntime-web {pinned} bundle in {_browser.ort_web_dist()}"
                    "; remove that folder and run `edgeforge setup web` again"
                )
            done.append(f"installed onnxruntime-web {pinned} into {folder}")
    return WebSetup(
        web_dir=str(folder),
        ort_web_version=_browser.installed_ort_web_version(),
        ort_web_pinned=pinned,
        chromium=chromium,
        done=done,
        missing=missing,
    )


def _run(command: list[str], timeout: float, what: str) -> None:
    try:
        subprocess.run(command, check=True, timeout=timeout, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as exc:
        raise EdgeforgeError(
            f"{what} failed with status {exc.returncode}: {' '.join(command)}; see its output "
            "above, fix it and run `edgeforge setup web` again"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise EdgeforgeError(
            f"{what} took over {timeout:.0f} s; check the network and run `edgeforge setup web` "
            "again"
        ) from exc
