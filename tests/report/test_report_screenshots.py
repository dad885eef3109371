"""Each kind of HTML report rendered in headless Chromium: the screenshot exists and is not
blank. Set EDGEFORGE_SCREENSHOTS=DIR to keep the PNGs and look at them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeforge.report import write_report
from edgeforge.report._screenshot import screenshot
from edgeforge.runtimes._browser import chromium_binary

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_binary() is None, reason="no Chromium (apt-get install chromium)"),
]

PAGES = {
    "demo": ("demo", "inspect", "estimate"),
    "split": ("split",),
    "optimize": ("optimize",),
    "decide": ("decide",),
    "estimate": ("estimate",),
}


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory) -> Path:
    kept = os.environ.get("EDGEFORGE_SCREENSHOTS")
    return Path(kept) if kept else tmp_path_factory.mktemp("screenshots")


@pytest.mark.parametrize("page", sorted(PAGES))
def test_report_renders_in_chromium(page, report_sections, shots_dir):
    sections = {name: report_sections[name] for name in PAGES[page]}
    html = write_report(sections, shots_dir / f"{page}.html", title=f"edgeforge {page}")
    png = screenshot(html, shots_dir / f"{page}.png", height=2400)
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert pixels.shape == (2400, 1280)
    assert pixels.std() > 10  # text, tables and plots, not a blank page
    assert (pixels < 128).mean() > 0.005  # some dark ink: text drawn, not only backgrounds
