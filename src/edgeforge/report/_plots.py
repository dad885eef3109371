"""Static plots as inline SVG (matplotlib, no display needed).

Text taken from a model (op types, node names) goes through `_plain`: matplotlib reads a pair
of `$` as mathtext, and a name like `a$\\frac$b` made the report fail (issue 13, class 6).
"""

from __future__ import annotations

import io
import math
from typing import Any

__all__ = [
    "activation_timeline_svg",
    "decide_cost_svg",
    "decide_latency_svg",
    "layer_error_svg",
    "optimize_pareto_svg",
    "pareto_figure",
    "split_cuts_svg",
    "split_times_svg",
    "work_by_op_type_svg",
]


def _figure(width: float = 7.5, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(width, height), dpi=100)
    return pyplot, figure, axes


def _svg(pyplot, figure) -> str:
    buffer = io.StringIO()
    figure.tight_layout()
    figure.savefig(buffer, format="svg")
    pyplot.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _plain(text: object) -> str:
    """`text` drawn as it is: a `$` never starts mathtext."""
    return str(text).replace("$", r"\$")


def _scale(largest: float) -> tuple[float, str]:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if largest >= factor:
            return factor, prefix
    return 1.0, ""


def work_by_op_type_svg(profile: dict[str, Any], top: int = 12) -> str:
    """Horizontal bars: GFLOPs per op type, largest first."""
    rows = [r for r in profile["by_op_type"] if r["flops"] > 0][:top]
    pyplot, figure, axes = _figure(height=0.9 + 0.28 * max(1, len(rows)))
    scale, prefix = _scale(max((r["flops"] for r in rows), default=1))
    names = [_plain(r["op_type"]) for r in rows][::-1]
    values = [r["flops"] / scale for r in rows][::-1]
    axes.barh(names, values, color="#3b6ea8")
    axes.set_xlabel(f"{prefix}FLOPs")
    axes.set_title("Work by op type")
    return _svg(pyplot, figure)


def activation_timeline_svg(profile: dict[str, Any]) -> str:
    """Live activation memory while each node runs, with the peak marked."""
    memory = profile["activation_memory"]
    scale, prefix = _scale(max(memory["timeline_bytes"], default=1))
    timeline = [b / scale for b in memory["timeline_bytes"]]
    pyplot, figure, axes = _figure()
    axes.plot(range(len(timeline)), timeline, color="#3b6ea8", linewidth=1.2)
    if timeline:
        peak = max(range(len(timeline)), key=timeline.__getitem__)
        axes.scatter([peak], [timeline[peak]], color="#c0392b", zorder=3)
        axes.annotate(
            f"peak {timeline[peak]:.3g} {prefix}B",
            (peak, timeline[peak]),
            textcoords="offset points",
            xytext=(6, -12),
            fontsize=8,
        )
    axes.set_xlabel("node (topological order)")
    axes.set_ylabel(f"live activations ({prefix}B)")
    axes.set_title("Activation memory over execution")
    return _svg(pyplot, figure)


def layer_error_svg(verification: dict[str, Any]) -> str:
    """Relative error of each intermediate tensor along the graph, first divergence marked."""
    divergence = verification.get("divergence") or {}
    layers = divergence.get("layers") or []
    if not layers:
        return ""
    pyplot, figure, axes = _figure()
    errors = [max(layer["relative_error"], 1e-12) for layer in layers]
    axes.semilogy(range(len(errors)), errors, marker=".", color="#3b6ea8", linewidth=1)
    if divergence.get("found"):
        index = next(i for i, layer in enumerate(layers) if layer["tensor"] == divergence["tensor"])
        axes.scatter([index], [errors[index]], color="#c0392b", zorder=3)
        axes.annotate(
            f"first divergence: {_plain(divergence['node'])}",
            (index, errors[index]),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=8,
        )
    axes.set_xlabel("layer (topological order)")
    axes.set_ylabel("relative error (max |diff| / max |ref|)")
    axes.set_title("Error per layer, candidate against reference")
    return _svg(pyplot, figure)


def decide_cost_svg(decision: dict[str, Any]) -> str:
    """`decide`: monthly cost of edge and cloud against users (log-log), cross-over marked."""
    curves = decision["curves"]
    points = curves["cost_vs_users"]
    if not points:
        return ""
    pyplot, figure, axes = _figure(width=5.6, height=3.4)
    users = [p["users"] for p in points]
    floor = 0.01  # log axes: a zero cost (users' own phones) is drawn at one cent
    axes.loglog(users, [max(p["edge_usd"], floor) for p in points], label="edge", color="#2e8b57")
    axes.loglog(users, [max(p["cloud_usd"], floor) for p in points], label="cloud", color="#3b6ea8")
    axes.axvline(curves["users"], color="#888", linestyle=":", linewidth=1, label="this workload")
    if curves.get("users_crossover"):
        axes.axvline(curves["users_crossover"], color="#c0392b", linewidth=1, label="cross-over")
    axes.set_xlabel("users (one device each)")
    axes.set_ylabel("USD per month")
    axes.set_title(f"Cost against users on {decision['device']['id']}")
    axes.legend(fontsize=8)
    return _svg(pyplot, figure)


def decide_latency_svg(decision: dict[str, Any]) -> str:
    """`decide`: cloud latency against uplink bandwidth, with the edge's and the target."""
    curves = decision["curves"]
    points = curves["latency_vs_uplink"]
    if not points:
        return ""
    pyplot, figure, axes = _figure(width=5.6, height=3.4)
    axes.loglog(
        [p["uplink_mbps"] for p in points],
        [p["cloud_ms"] for p in points],
        label="cloud",
        color="#3b6ea8",
    )
    axes.axhline(curves["edge_latency_ms"], color="#2e8b57", label="edge")
    axes.axhline(curves["max_latency_ms"], color="#c0392b", linestyle="--", label="target")
    if curves.get("uplink_mbps"):
        axes.axvline(
            curves["uplink_mbps"], color="#888", linestyle=":", linewidth=1, label="this network"
        )
    if curves.get("uplink_crossover"):
        axes.axvline(curves["uplink_crossover"], color="#c0392b", linewidth=1, label="cross-over")
    axes.set_xlabel("uplink Mbit/s")
    axes.set_ylabel("latency ms")
    axes.set_title("Latency against uplink bandwidth")
    axes.legend(fontsize=8)
    return _svg(pyplot, figure)


def _finite_number(value: Any) -> float | None:
    """A JSON figure as a float, None for "inf" or a missing one."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def split_times_svg(result: dict[str, Any]) -> str:
    """`split`: end-to-end time of all-edge, the best split and all-cloud as stacked bars
    (device, transfer, cloud), the chosen one marked; an option that cannot run (offline) is
    drawn empty and labelled."""
    options = [("all-edge", result["all_edge"]), ("split", result["split"])]
    options.append(("all-cloud", result["all_cloud"]))
    pyplot, figure, axes = _figure(width=7.0, height=2.6)
    names = [
        f"{label} (chosen)" if p is not None and result["chosen"]["kind"] == label else label
        for label, p in options
    ][::-1]
    lefts = [0.0] * len(options)
    parts = (("device_ms", "device", "#2e8b57"), ("transfer_ms", "transfer", "#e0a030"))
    parts += (("cloud_ms", "cloud", "#3b6ea8"),)
    rows = [p for _, p in options][::-1]
    for key, label, colour in parts:
        widths = [_finite_number(p[key]) or 0.0 for p in rows]
        axes.barh(names, widths, left=lefts, color=colour, label=label, height=0.55)
        lefts = [a + b for a, b in zip(lefts, widths, strict=True)]
    largest = max(lefts) or 1.0
    for index, p in enumerate(rows):
        total = _finite_number(p["total_ms"])
        text = f"{total:.3g} ms" if total is not None else "cannot run (offline)"
        axes.text(lefts[index] + largest * 0.01, index, text, va="center", fontsize=8)
    axes.set_xlim(0, largest * 1.25)
    axes.set_xlabel("end-to-end ms per request (estimated)")
    axes.set_title("Where the time goes")
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=3, frameon=False)
    return _svg(pyplot, figure)


def split_cuts_svg(result: dict[str, Any]) -> str:
    """`split`: total time of every cut considered, by its place in the graph, with all-edge and
    all-cloud as lines and the best split marked."""
    cuts = [(c["position"], _finite_number(c["total_ms"])) for c in result["candidates"]]
    cuts = [(position, ms) for position, ms in cuts if ms is not None]
    if len(cuts) < 2:
        return ""
    pyplot, figure, axes = _figure(width=7.0, height=3.0)
    axes.plot(
        [p for p, _ in cuts],
        [ms for _, ms in cuts],
        marker=".",
        color="#3b6ea8",
        linewidth=1,
        label="split at this node",
    )
    for key, label, colour in (
        ("all_edge", "all-edge", "#2e8b57"),
        ("all_cloud", "all-cloud", "#888"),
    ):
        total = _finite_number(result[key]["total_ms"])
        if total is not None:
            axes.axhline(total, color=colour, linestyle="--", linewidth=1, label=label)
    best = result["split"]
    best_ms = _finite_number(best["total_ms"])
    if best_ms is not None:
        axes.scatter([best["position"]], [best_ms], color="#c0392b", zorder=3, label="best split")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("cut after node (topological order)")
    axes.set_ylabel("end-to-end ms")
    axes.set_title("Every cut considered")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _svg(pyplot, figure)


def optimize_pareto_svg(result: dict[str, Any]) -> str:
    """`optimize`: the Pareto plot of `pareto_figure` as inline SVG ("" with nothing to plot)."""
    drawn = pareto_figure(result)
    return _svg(*drawn[:2]) if drawn else ""


def pareto_figure(result: dict[str, Any]):
    """`optimize`: size against latency on the device, coloured by accuracy drop, as
    (pyplot, figure, axes), or None when no candidate has both figures.

    Only the Pareto front and the chosen candidate carry labels (the rest are dots); the axes
    span the data (log when it spans more than tenfold); the colour scale spans the drops that
    occur, and there is no colour bar when every measured drop is the same; the legend sits
    below the axes so it never covers a point."""
    rows = [
        c
        for c in result["candidates"]
        if c.get("size_bytes") is not None and c.get("device_latency_ms") is not None
    ]
    if not rows:
        return None
    pyplot, figure, axes = _figure(width=8.0, height=4.4)
    xs = [c["size_bytes"] / 1e6 for c in rows]
    ys = [c["device_latency_ms"] for c in rows]
    measured = [c for c in rows if c.get("accuracy_drop") is not None]
    drops = [100 * c["accuracy_drop"] for c in measured]
    if measured:
        low, high = min(drops), max(drops)
        same = high - low < 1e-9
        points = axes.scatter(
            [c["size_bytes"] / 1e6 for c in measured],
            [c["device_latency_ms"] for c in measured],
            c="#3b6ea8" if same else drops,
            cmap=None if same else "viridis_r",
            vmin=None if same else low,
            vmax=None if same else high,
            s=[70 if c.get("on_front") else 30 for c in measured],
            # a thin dark rim keeps the palest colours visible on white
            edgecolors=["#c0392b" if c.get("on_front") else "#556" for c in measured],
            linewidths=[1.4 if c.get("on_front") else 0.5 for c in measured],
            zorder=3,
            label=f"accuracy drop {low:.2f}% (all)" if same else None,
        )
        if not same:
            figure.colorbar(points, ax=axes, label="accuracy drop (points, %)", pad=0.02)
    unmeasured = [c for c in rows if c.get("accuracy_drop") is None]
    if unmeasured:
        axes.scatter(
            [c["size_bytes"] / 1e6 for c in unmeasured],
            [c["device_latency_ms"] for c in unmeasured],
            facecolors="none",
            edgecolors="#888",
            s=40,
            label="accuracy not measured",
            zorder=2,
        )
    chosen = next((c for c in rows if c["id"] == result.get("chosen")), None)
    labelled = [c for c in rows if c.get("on_front") or c is chosen]
    labelled.sort(key=lambda c: (c["size_bytes"], c["device_latency_ms"]))
    for index, c in enumerate(labelled):
        # alternate above and below so that neighbours on the front do not overlap
        above = index % 2 == 0
        axes.annotate(
            c["id"] + (" (chosen)" if c is chosen else ""),
            (c["size_bytes"] / 1e6, c["device_latency_ms"]),
            fontsize=7,
            xytext=(5, 6 if above else -11),
            textcoords="offset points",
            color="#c0392b" if c is chosen else "#223",
            fontweight="bold" if c is chosen else "normal",
            zorder=5,
        )
    if chosen:
        axes.scatter(
            [chosen["size_bytes"] / 1e6],
            [chosen["device_latency_ms"]],
            marker="*",
            s=260,
            facecolors="none",
            edgecolors="#c0392b",
            linewidths=1.5,
            label="chosen",
            zorder=4,
        )
    front = sorted((c for c in rows if c.get("on_front")), key=lambda c: c["size_bytes"])
    if len(front) > 1:
        axes.plot(
            [c["size_bytes"] / 1e6 for c in front],
            [c["device_latency_ms"] for c in front],
            color="#c0392b",
            linewidth=0.8,
            alpha=0.5,
            zorder=1,
            label="Pareto front",
        )
    limits = result.get("limits", {})
    if limits.get("max_size_bytes"):
        axes.axvline(
            limits["max_size_bytes"] / 1e6,
            color="#c0392b",
            linestyle="--",
            linewidth=1,
            label="--max-size",
        )
        xs.append(limits["max_size_bytes"] / 1e6)
    if limits.get("max_latency_ms"):
        axes.axhline(
            limits["max_latency_ms"],
            color="#c0392b",
            linestyle=":",
            linewidth=1,
            label="--max-latency",
        )
        ys.append(limits["max_latency_ms"])
    _span(axes.set_xscale, axes.set_xlim, xs)
    _span(axes.set_yscale, axes.set_ylim, ys)
    axes.set_xlabel("size (MB)")
    axes.set_ylabel(f"latency on {result['device']} (ms, estimated)")
    axes.set_title("Candidates: size x latency x accuracy (red ring: Pareto front)")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(
            fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncols=4, frameon=False
        )
    return pyplot, figure, axes


def _span(set_scale, set_limits, values: list[float]) -> None:
    """Axis limits around `values` with a margin: log when they span over tenfold and are all
    above zero, linear otherwise."""
    low, high = min(values), max(values)
    if low > 0 and high / low > 10:
        set_scale("log")
        set_limits(low / 1.35, high * 1.35)
        return
    margin = (high - low) * 0.12 or abs(high) * 0.1 or 1.0
    set_limits(max(0.0, low - margin) if low >= 0 else low - margin, high + margin)
