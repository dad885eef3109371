"""Render report sections to one self-contained HTML page."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jinja2

from edgeforge._io import HTML_MARK, guard_output, write_json, write_text
from edgeforge.report import _plots

__all__ = ["check_report_path", "human_bytes", "human_count", "render_html", "write_report"]


def human_count(value: float | None, unit: str = "") -> str:
    """1234567 -> '1.23 M' (SI prefixes)."""
    if value is None:
        return "—"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.4g} {unit}".rstrip()


def human_bytes(value: float | None) -> str:
    """Bytes in binary-free SI units, as file managers show them: 1.5 MB."""
    return human_count(value, "B") if value and value >= 1000 else f"{value or 0:.0f} B"


def _number(value: Any, spec: str = "%.3g") -> str:
    """A figure formatted with `spec`; one the JSON holds as text ("inf", "nan") as it is."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return spec % value
    return "—" if value is None else str(value)


def _dims(shape: Any) -> str:
    """A shape as people write it: ['batch', 3, 224, 224] -> 'batch×3×224×224'; a scalar '()'."""
    if not isinstance(shape, (list, tuple)):
        return "—" if shape is None else str(shape)
    return "×".join("?" if d is None else str(d) for d in shape) or "scalar"


def _shape_flags(profile: dict[str, Any]) -> str:
    """The `--shape` flags that pin each input with a dynamic dim at the value it was given,
    e.g. '--shape image=1x1x8x8': a command a reader can copy and edit."""
    values = {(a["input"], a["axis"]): a["value"] for a in profile.get("assumed_dims", [])}
    flags = []
    for spec in profile.get("inputs", []):
        shape = [values.get((spec["name"], axis), dim) for axis, dim in enumerate(spec["shape"])]
        if any((spec["name"], axis) in values for axis in range(len(shape))):
            flags.append(f"--shape {spec['name']}={'x'.join(str(d) for d in shape)}")
    return " ".join(flags)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("edgeforge.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["count"] = human_count
    env.filters["bytes"] = human_bytes
    env.filters["num"] = _number
    env.filters["dims"] = _dims
    env.filters["shape_flags"] = _shape_flags
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=str)
    return env


def render_html(sections: dict[str, Any], title: str = "edgeforge report") -> str:
    plots: dict[str, str] = {}
    if "inspect" in sections:
        plots["work"] = _plots.work_by_op_type_svg(sections["inspect"])
        plots["memory"] = _plots.activation_timeline_svg(sections["inspect"])
    verifications = [sections["verify"]] if "verify" in sections else []
    verifications += [
        t["verification"]
        for t in sections.get("convert", {}).get("targets", [])
        if t.get("verification")
    ]
    plots["layers"] = {v["candidate"]: _plots.layer_error_svg(v) for v in verifications}
    if "decide" in sections:
        decisions = sections["decide"]
        decisions = decisions if isinstance(decisions, list) else [decisions]
        plots["decide"] = [
            (_plots.decide_cost_svg(d), _plots.decide_latency_svg(d)) for d in decisions
        ]
    if "split" in sections:
        plots["split"] = (
            _plots.split_times_svg(sections["split"]),
            _plots.split_cuts_svg(sections["split"]),
        )
    if "optimize" in sections:
        plots["pareto"] = _plots.optimize_pareto_svg(sections["optimize"])
    template = _environment().get_template("report.html.j2")
    return template.render(
        title=title,
        sections=sections,
        plots=plots,
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def check_report_path(
    path: Path, inputs: Iterable[Any] = (), force: bool = False
) -> tuple[Path, Path]:
    """(HTML path, JSON path) for a report at `path`, both checked by `guard_output`: a path
    ending in .json names the JSON file and the HTML goes beside it, so one never overwrites
    the other."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        html_path, json_path = path.with_suffix(".html"), path
    else:
        html_path, json_path = path, path.with_suffix(".json")
    inputs = list(inputs)
    for output in (html_path, json_path):
        guard_output(output, inputs, force=force)
    return html_path, json_path


def write_report(
    sections: dict[str, Any],
    path: Path,
    title: str = "edgeforge report",
    *,
    inputs: Iterable[Any] = (),
    force: bool = False,
) -> Path:
    """Write the HTML report at `path` and its JSON beside it; returns the HTML path.

    A `path` ending in .json names the JSON file (the HTML goes beside it as .html). Neither
    file may be one of `inputs`, nor an existing file edgeforge did not write unless `force`
    (see `edgeforge._io.guard_output`)."""
    html_path, json_path = check_report_path(path, inputs, force)
    html = render_html(sections, title)  # render first: a failure writes nothing
    write_json(json_path, sections)
    return write_text(html_path, html + HTML_MARK)
