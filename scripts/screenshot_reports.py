"""Screenshot HTML reports in headless Chromium, to look at them as a reader would.

    python scripts/screenshot_reports.py OUT_DIR report.html [more.html ...] [--height 3000]

Writes OUT_DIR/<name>.png for each page (the parent folder's name is prefixed when two pages
share a file name). `tests/report/test_report_screenshots.py` builds one report of each kind
and screenshots it the same way (set EDGEFORGE_SCREENSHOTS=DIR to keep its PNGs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeforge.report._screenshot import screenshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("pages", type=Path, nargs="+")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()
    names = [page.stem for page in args.pages]
    for page in args.pages:
        name = page.stem if names.count(page.stem) == 1 else f"{page.parent.name}-{page.stem}"
        png = screenshot(page, args.out / f"{name}.png", width=args.width, height=args.height)
        print(png)


if __name__ == "__main__":
    main()
