"""Rich tables for the results of `check`, `convert` and `verify` (the CLI's default view)."""

from __future__ import annotations

import sys

from rich.markup import escape
from rich.table import Table

from edgeforge._progress import output_console
from edgeforge.report.html import human_bytes

__all__ = ["print_bench", "print_check", "print_conversion", "print_verification"]

_STYLE = {
    "verified": "green",
    "built-not-run": "yellow",
    "parity-failed": "red",
    "unsupported": "red",
    "crashed": "red",
    "timed-out": "red",
    "failed": "red",
    "not-installed": "yellow",
}


def print_conversion(result) -> None:
    table = Table(title=f"convert {result.source} ({result.precision})")
    for column in ("runtime", "status", "size", "seconds", "detail"):
        table.add_column(column, overflow="fold")
    for target in result.targets:
        style = _STYLE.get(target.status, "")
        table.add_row(
            target.runtime,
            f"[{style}]{target.status}[/]" if style else target.status,
            human_bytes(target.size_bytes) if target.size_bytes else "—",
            f"{target.seconds:.1f}",
            escape(target.detail),
        )
    console = output_console()
    console.print(table)
    finished = [t.runtime for t in result.targets if t.status in ("verified", "built-not-run")]
    if finished:
        console.print(
            f"artifacts in {result.out}/<runtime>/ for {', '.join(finished)} (each with "
            "manifest.json, which records its verification)",
            markup=False,
        )
    unfinished = [t.runtime for t in result.targets if t.runtime not in finished]
    if unfinished:
        console.print(
            f"not verified: {', '.join(unfinished)} (any folder left says so in its manifest)",
            markup=False,
        )
    if getattr(result, "shapes", None):
        pins = ", ".join(f"{n}={'x'.join(map(str, s))}" for n, s in result.shapes.items())
        console.print(f"inputs pinned with --shape {pins}", markup=False)
    data = getattr(result, "data", None)
    if data:
        read = f"verified on {data['folder']}"
        if data.get("max_samples"):
            read += f" (at most {data['max_samples']} samples)"
        if data.get("preprocess"):
            from edgeforge.evaluate.data import Preprocess

            read += f"; images preprocessed: {Preprocess.from_dict(data['preprocess']).describe()}"
        console.print(read, markup=False)
    _print_verdict(result.verdict, result.exit_code)
    _print_logs({t.runtime: t.log for t in result.targets})


def _print_verdict(verdict: str, exit_code: int) -> None:
    """The one line that explains the exit code, last, where a CI log's reader looks."""
    style = "green" if exit_code == 0 else "red"
    head, sep, rest = verdict.partition(": ")
    output_console().print(
        f"[bold {style}]{escape(head)}[/]{sep}{escape(rest)}", highlight=False, soft_wrap=True
    )


def _print_logs(logs: dict[str, str]) -> None:
    """What failed children printed (kept only on failure), on stderr under a header each."""
    for runtime, log in logs.items():
        if log:
            print(f"edgeforge: {runtime} printed, before it failed:", file=sys.stderr)
            print("\n".join(f"  {line}" for line in log.splitlines()), file=sys.stderr)


def print_verification(result) -> None:
    console = output_console()
    verdict = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
    console.print(
        f"{verdict} {result.candidate} ({result.runtime}, judged as {result.precision}) against "
        f"{result.reference} on {result.samples} samples ({result.data})"
    )
    table = Table()
    for column in ("output", "max abs", "max rel", "cosine", "SNR dB", "top-1", "top-5", "why"):
        table.add_column(column, overflow="fold")
    for o in result.outputs:
        table.add_row(
            o.name,
            f"{o.max_abs:.3g}",
            f"{o.max_rel:.3g}",
            f"{o.cosine:.6f}",
            f"{o.snr_db:.1f}",
            "—" if o.top1 is None else f"{o.top1:.1%}",
            "—" if o.top5 is None else f"{o.top5:.1%}",
            escape(o.reason or "within tolerance"),
        )
    console.print(table)
    divergence = result.divergence
    if divergence is not None:
        if divergence.found:
            console.print(
                f"[red]first diverges at node {divergence.node}[/] ({divergence.op_type}, "
                f"tensor {divergence.tensor}, relative error {divergence.relative_error:.3g}; "
                f"{divergence.compared} layers compared)"
            )
        else:
            console.print(f"layer localisation: {escape(divergence.note)}")
    if result.task_metric:
        m = result.task_metric
        console.print(
            f"{m['metric']}: reference {m['reference']:.4g}, candidate {m['candidate']:.4g}"
        )
    _print_robustness(result.robustness)
    _print_verdict(result.verdict, result.exit_code)


def _print_robustness(robustness) -> None:
    """The edge-input section: apart from the verdict, each finding with its why."""
    if robustness is None:
        return
    console = output_console()
    colour = "yellow" if robustness.findings else "green"
    console.print(f"[{colour}]{escape(robustness.summary)}[/]")
    for case in robustness.findings:
        console.print(
            f"  {escape(case.input)} {escape(case.value)}: {escape(case.detail)}"
            + (f" [dim]({escape(case.why)})[/]" if case.why else "")
        )


def print_check(report) -> None:
    console = output_console()
    runtimes = Table(title=f"check {report.source}")
    for column in ("runtime", "status", "detail"):
        runtimes.add_column(column, overflow="fold")
    for name, outcome in report.runtimes.items():
        runtimes.add_row(name, outcome["status"], escape(outcome["detail"]))
    console.print(runtimes)
    if not report.findings:
        console.print("no findings: every checked runtime takes the model as it is")
    else:
        console.print(_findings_table(report.findings))
    _print_verdict(report.verdict, report.exit_code)
    _print_logs({name: outcome.get("log", "") for name, outcome in report.runtimes.items()})


def _findings_table(found: list[dict]) -> Table:
    findings = Table(title="findings")
    for column in ("runtime", "severity", "op", "what", "workaround", "evidence"):
        findings.add_column(column, overflow="fold")
    for f in found:
        findings.add_row(
            f["runtime"],
            f["severity"],
            f.get("op_type") or "—",
            f["message"],
            f["workaround"],
            f.get("evidence", ""),
        )
    return findings


def print_bench(result) -> None:
    console = output_console()
    latency = result.latency_ms
    summary = Table(title=f"bench {escape(result.model)} on {result.runtime}", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    if getattr(result, "device", None):  # measured on a fleet device (`bench --on`)
        summary.add_row("device", escape(str(result.device)))
    summary.add_row("artifact", f"{escape(result.artifact)} ({human_bytes(result.artifact_bytes)})")
    summary.add_row("load", f"{result.load_ms:.1f} ms")
    summary.add_row("first inference", f"{result.first_inference_ms:.2f} ms")
    summary.add_row(
        "latency",
        f"p50 {latency['p50']:.3f} ms, p90 {latency['p90']:.3f}, p99 {latency['p99']:.3f}, "
        f"mean {latency['mean']:.3f} ± {latency['std']:.3f}",
    )
    summary.add_row(
        "spread of medians", f"{result.median_spread:.1%} over {result.repeats} processes"
    )
    summary.add_row(
        "memory",
        f"{result.model_memory_mb:.1f} MB for the model (peak of the process "
        f"{result.peak_rss_mb:.0f} MB)",
    )
    summary.add_row("inputs", escape(result.inputs))
    for row in result.throughput:
        summary.add_row(
            f"batch {row['batch']}", f"{row['p50_ms']:.3f} ms, {row['items_per_s']:.1f} items/s"
        )
    console.print(summary)
    if result.top_layers:
        layers = Table(title=f"top layers ({result.runtime}'s own profiler)")
        for column in ("node", "op", "ms per run", "share"):
            layers.add_column(column)
        for layer in result.top_layers:
            layers.add_row(
                escape(layer["node"]),
                layer["op_type"],
                f"{layer['ms']:.4f}",
                f"{layer['share']:.1%}",
            )
        console.print(layers)
    for warning in result.warnings:
        console.print(f"[yellow]warning[/]: {escape(warning)}")
