"""The CLI's view of `estimate_devices`: one row per device (the unit and runtime it runs on, or
why it cannot), then the input shapes and each device's notes."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from edgeforge._progress import output_console
from edgeforge.estimator.roofline import Estimate, MemoryFit, Unavailable
from edgeforge.report.html import human_bytes

__all__ = ["print_estimates"]


def print_estimates(results: list[Estimate | Unavailable]) -> None:
    console = output_console()
    table = Table(title="estimate (calibrated roofline)")
    columns = ("device", "unit", "runtime", "precision", "latency ms", "band ms", "memory")
    for column in (*columns, "fits RAM", "fits size budget"):
        table.add_column(column)
    for r in results:
        if isinstance(r, Unavailable):
            table.add_row(r.device, "—", r.runtime or "—", r.precision, "[red]cannot run[/]")
            continue
        table.add_row(
            r.device,
            escape(f"{r.unit} ({r.unit_name})" if r.unit_name else r.unit),
            r.runtime or "—",
            r.precision,
            f"{r.latency_ms:.2f}",
            f"{r.latency_low_ms:.2f}–{r.latency_high_ms:.2f}",
            human_bytes(r.peak_memory_bytes),
            _fits(r.ram),
            _fits(r.size_budget),
        )
    console.print(table)
    estimates = [r for r in results if isinstance(r, Estimate)]
    if estimates and estimates[0].input_shapes:
        shapes = ", ".join(
            f"{name} {'x'.join(map(str, shape))}"
            for name, shape in estimates[0].input_shapes.items()
        )
        assumed = ", ".join(f"{d['name']}={d['value']}" for d in estimates[0].assumed_dims)
        hint = f" (dynamic axes assumed: {assumed}; pin them with --shape)" if assumed else ""
        console.print(f"at input shapes {escape(shapes)}{escape(hint)}")
    for r in results:
        for note in [r.reason] if isinstance(r, Unavailable) else r.notes:
            console.print(f"{r.device}: {escape(note)}")


def _fits(fit: MemoryFit) -> str:
    if fit.fits is None:
        return "unknown"
    return "yes" if fit.fits else f"[red]no[/], short by {human_bytes(fit.short_bytes)}"
