"""Rich tables for a `Profile` (the CLI's default view of `inspect`)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeforge._progress import output_console
from edgeforge.analysis.profile import Profile
from edgeforge.report.html import human_bytes, human_count

__all__ = ["print_profile"]


def print_profile(profile: Profile, top: int = 10, console: Console | None = None) -> None:
    console = console or output_console()
    weights = profile.weights
    summary = Table(title=f"inspect: {profile.model['provenance']['source']}", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("ONNX weight elements", f"{weights['onnx_elements']:,}")
    if weights["torch_parameters"] is not None:
        summary.add_row(
            "torch parameters",
            f"{weights['torch_parameters']:,} (+{weights['torch_buffers']:,} buffer elements)",
        )
    by_dtype = ", ".join(
        f"{name} {human_bytes(d['bytes'])}" for name, d in weights["by_dtype"].items()
    )
    summary.add_row("weight bytes", f"{human_bytes(weights['bytes'])} ({by_dtype})")
    summary.add_row("file size", human_bytes(weights["file_bytes"]))
    summary.add_row("MACs", human_count(profile.macs))
    summary.add_row("FLOPs", human_count(profile.flops))
    memory = profile.activation_memory
    summary.add_row("peak activations", f"{human_bytes(memory.peak_bytes)} at {memory.peak_node}")
    summary.add_row("opsets", ", ".join(f"{d} {v}" for d, v in profile.opsets.items()))
    for tensor in profile.inputs:
        summary.add_row(f"input {tensor['name']}", f"{tensor['dtype']} {tensor['shape']}")
    for tensor in profile.outputs:
        summary.add_row(f"output {tensor['name']}", f"{tensor['dtype']} {tensor['shape']}")
    for dim in profile.assumed_dims:
        summary.add_row(
            f"assumed {dim.input}[{dim.axis}]", f"{dim.name} = {dim.value} ({dim.reason})"
        )
    console.print(summary)

    ops = Table(title="work by op type")
    for column in ("op", "category", "count", "MACs", "FLOPs", "share"):
        ops.add_column(column, justify="left" if column in ("op", "category") else "right")
    for row in profile.by_op_type:
        share = row["flops"] / profile.flops if profile.flops else 0.0
        ops.add_row(
            row["op_type"],
            row["category"],
            str(row["count"]),
            human_count(row["macs"]),
            human_count(row["flops"]),
            f"{share:.1%}",
        )
    console.print(ops)

    heavy = sorted(profile.nodes, key=lambda n: -n.flops)[:top]
    nodes = Table(title=f"top {len(heavy)} nodes by FLOPs")
    for column in ("node", "op", "MACs", "FLOPs", "output shape"):
        nodes.add_column(column)
    for n in heavy:
        nodes.add_row(
            escape(n.name),
            n.op_type,
            human_count(n.macs),
            human_count(n.flops),
            str(n.output_shapes[0] if n.output_shapes else ""),
        )
    console.print(nodes)
    for item in profile.not_counted:
        console.print(
            f"[yellow]not counted[/]: {item['count']} x {item['op_type']} ({item['reason']})"
        )
