"""The HTML report as a reader reads it: no Python reprs, no placeholder shapes, every section
with its own table rather than a dump of JSON."""

from __future__ import annotations

import re

from edgeforge.report.html import render_html


def test_demo_facts_and_shapes_are_written_for_people(report_sections):
    # Before: the export check showed as {'logits': 1.4e-06} and the override hint as
    # `--shape NAME=DxD…`, which reads as `NAME=0x0` in the page's monospace font.
    html = render_html({k: report_sections[k] for k in ("demo", "inspect")})
    assert "{&#39;" not in html and "[&#39;" not in html  # no dict or list repr
    assert "DxD" not in html and "0x0" not in html
    assert re.search(r"logits: max abs error \d", html)
    assert "<code>--shape image=1x1x8x8</code>" in html  # the assumed batch of 1, ready to edit
    assert "<td>batch×1×8×8</td>" in html  # the signature's shape


def test_every_section_has_a_table_not_a_json_dump(report_sections):
    html = render_html(report_sections)
    assert "<pre>" not in html
    for title in ("Split:", "Decide:", "Optimize:", "Estimates on catalogue devices"):
        assert f"<h2>{title}" in html


def test_estimate_rows_name_the_runtime_and_the_device_that_cannot_run(report_sections):
    html = render_html({"estimate": report_sections["estimate"]})
    assert "<th>runtime</th>" in html
    row = r'<td>coral-usb-accelerator</td>.*<td colspan="5">cannot run fp32: .*int8 only'
    assert re.search(row, html)
