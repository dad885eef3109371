"""Reports: JSON is the contract; HTML is rendered from the same data with Jinja2 and plots.

`write_report(sections, path)` writes `path` (HTML) and `path.with_suffix(".json")` (a `path`
ending in .json is the JSON file, the HTML goes beside it); neither may replace an input or a
file edgeforge did not write (`force` allows the latter). Each
section is the `to_dict()` of a verb's result under the verb's name ("inspect", "devices"...);
the template renders the sections it knows and shows the others as JSON.
"""

from __future__ import annotations

from edgeforge.report.html import check_report_path, render_html, write_report

__all__ = ["check_report_path", "render_html", "write_report"]
