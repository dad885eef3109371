"""What `optimize` writes outside the candidate cache: `out/chosen/`, `out/optimize.json` and
`out/report.html`.

What a caller can rely on:
- every file is written atomically: a reader sees the old file or the new one, never half;
- `out/chosen/` is the chosen candidate's artifact plus its `candidate.json`, copied into a
  staging folder first and renamed into place (the older choice removed just before), so it
  never holds a half-copied artifact; when nothing is chosen, an older `out/chosen/` is
  removed, so that it never holds a choice this run did not make;
- `optimize.json` holds `OptimizeResult.to_dict()`, and the report renders the same object.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from edgeforge._io import write_json, write_text
from edgeforge.optimize._plan import Candidate

if TYPE_CHECKING:
    from edgeforge.optimize.search import OptimizeResult

__all__ = ["write_chosen", "write_outputs"]


def write_chosen(out: Path, plans: list[Candidate], chosen: str | None) -> str | None:
    """Copy the chosen artifact to out/chosen/ (replacing an older choice) atomically."""
    target = out / "chosen"
    if chosen is None:
        if target.exists():
            shutil.rmtree(target)
        return None
    candidate = next(c for c in plans if c.id == chosen)
    staging = Path(tempfile.mkdtemp(prefix=".chosen-", dir=out))
    try:
        shutil.copytree(candidate.artifact, staging / "artifact")
        write_json(staging / "artifact" / "candidate.json", candidate.to_dict())
        if target.exists():
            shutil.rmtree(target)
        (staging / "artifact").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    from edgeforge.runtimes import Artifact

    return str(Artifact.load(target).path)


def write_outputs(result: OptimizeResult) -> None:
    from edgeforge.report.html import render_html

    data = result.to_dict()
    html = render_html({"optimize": data}, title=f"edgeforge optimize: {result.device}")
    write_json(Path(result.json_path), data)
    write_text(Path(result.report_path), html)
