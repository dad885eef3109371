"""The report's plots as a reader sees them: what is labelled, what the scales span, and what
the legend covers."""

from __future__ import annotations

import pytest
from report_data import CHOSEN, FRONT, optimize_result

from edgeforge.report import _plots


@pytest.fixture
def drawn():
    figures = []

    def draw(result):
        pyplot, figure, axes = _plots.pareto_figure(result)
        figures.append((pyplot, figure))
        figure.canvas.draw()
        return figure, axes

    yield draw
    for pyplot, figure in figures:
        pyplot.close(figure)


def test_pareto_labels_only_the_front_and_the_chosen(drawn):
    # Before: every candidate was labelled, and the int8 variants' labels sat on one another.
    _, axes = drawn(optimize_result())
    labels = sorted(text.get_text() for text in axes.texts)
    assert labels == sorted(f"{c} (chosen)" if c == CHOSEN else c for c in FRONT)


def test_pareto_has_no_colour_bar_when_nothing_drops(drawn):
    # Before: a colour bar from -0.1 to 0.1 when every drop was 0.
    figure, axes = drawn(optimize_result())
    assert len(figure.axes) == 1
    assert "accuracy drop 0.00% (all)" in [t.get_text() for t in axes.get_legend().get_texts()]


def test_pareto_colour_scale_spans_the_drops_that_occur(drawn):
    drops = [0.002, 0.004, 0.005, 0.006, 0.008, 0.01, 0.012, 0.015]
    figure, _ = drawn(optimize_result(drops))
    colour_bar = figure.axes[1]
    assert colour_bar.get_ylim() == pytest.approx((0.2, 1.5))  # percent


def test_pareto_axes_follow_the_data(drawn):
    result = optimize_result()
    _, axes = drawn(result)
    sizes = [c["size_bytes"] / 1e6 for c in result["candidates"]]
    latencies = [c["device_latency_ms"] for c in result["candidates"]]
    low, high = axes.get_xlim()
    assert low <= min(sizes) and high >= max(sizes) and high - low < 2 * (max(sizes) - min(sizes))
    low, high = axes.get_ylim()
    assert low <= min(latencies) and high >= max(latencies) and low > 0.3


def test_pareto_legend_covers_no_point(drawn):
    # Before: the legend sat in a corner of the axes, over the chosen candidate.
    _, axes = drawn(optimize_result())
    legend = axes.get_legend().get_window_extent()
    for c in optimize_result()["candidates"]:
        x, y = axes.transData.transform((c["size_bytes"] / 1e6, c["device_latency_ms"]))
        assert not legend.contains(x, y), c["id"]
