"""Screenshots of HTML reports in headless Chromium, to look at a report as a reader does.

One Chromium process per page, with a fresh profile folder (removed afterwards), no network
services and no sandbox (it runs as root in CI containers). Chromium is found as the web runtime
finds it (`$EDGEFORGE_CHROMIUM`, else Debian's, else one on PATH).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from edgeforge.errors import EdgeforgeError

__all__ = ["screenshot"]

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def screenshot(
    page: str | Path, png: str | Path, *, width: int = 1280, height: int = 1600, timeout: float = 90
) -> Path:
    """Render the HTML file `page` at `width` x `height` CSS pixels into `png`; returns `png`.
    Raises EdgeforgeError when there is no Chromium or it writes no image."""
    from edgeforge.runtimes._browser import chromium_binary

    binary = chromium_binary()
    if binary is None:
        raise EdgeforgeError("no Chromium found: install it (apt-get install chromium)")
    page, png = Path(page).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    profile = Path(tempfile.mkdtemp(prefix="edgeforge-shot-"))
    try:
        command = [
            binary,
            *_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            page.as_uri(),
        ]
        try:
            subprocess.run(command, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise EdgeforgeError(f"Chromium took over {timeout:.0f} s to render {page}") from None
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if not png.is_file() or png.stat().st_size == 0:
        raise EdgeforgeError(f"Chromium wrote no screenshot of {page}")
    return png
