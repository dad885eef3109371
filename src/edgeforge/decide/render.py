"""The CLI's view of a `Decision`: the comparison table, the recommendation, the cross-overs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from edgeforge._progress import output_console

if TYPE_CHECKING:
    from edgeforge.decide import Decision

__all__ = ["decision_table", "print_decision"]

_STYLE = {"edge": "green", "cloud": "cyan", "hybrid": "yellow"}


def _data(decision: Decision | dict[str, Any]) -> dict[str, Any]:
    return decision if isinstance(decision, dict) else decision.to_dict()


def decision_table(decision: Decision | dict[str, Any]) -> Table:
    """A rich Table: one row per aspect, edge against cloud, recommendation in the caption."""
    d = _data(decision)
    w = d["workload"]
    title = (
        f"decide: {escape(d['model'])} on {d['device']['id']} vs {d['cloud']['instance']} over "
        f"{escape(d['network']['name'])} — {w['users']:,} users x "
        f"{w['requests_per_day_per_user']:,.0f} requests/day, target {w['max_latency_ms']:.4g} ms"
    )
    choice = d["recommendation"]
    style = _STYLE.get(choice, "")
    caption = f"recommendation: [bold {style}]{choice}[/]" + (
        "" if d["meets_all"] else " [red](no option meets every constraint)[/]"
    )
    table = Table(title=title, caption=caption, caption_justify="left", show_lines=True)
    table.add_column("aspect", no_wrap=True)
    table.add_column(f"edge ({d['device']['id']})", overflow="fold")
    table.add_column(f"cloud ({d['cloud']['instance']})", overflow="fold")
    for row in d["rows"]:
        table.add_row(row["aspect"], escape(row["edge"]), escape(row["cloud"]))
    return table


def print_decision(decision: Decision | dict[str, Any]) -> None:
    """The table, then the reasons and the cross-over points, on stdout."""
    d = _data(decision)
    console = output_console()
    console.print(decision_table(d))
    for reason in d["reasons"]:
        console.print(f"  - {escape(reason)}")
    console.print(f"cross-over (users): {escape(d['crossovers']['users_text'])}")
    console.print(f"cross-over (uplink): {escape(d['crossovers']['uplink_text'])}")
    for note in d["notes"]:
        console.print(f"note: {escape(note)}")
