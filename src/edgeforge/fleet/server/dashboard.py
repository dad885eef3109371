"""The fleet dashboard at `/dashboard`: server-rendered HTML (Jinja2) with inline SVG charts.

Views: `/dashboard` (fleet overview), `/dashboard/rollouts`, `/dashboard/monitor[?model=NAME]`
(latency and confidence against the release reference, drift over time), `/dashboard/alerts`.

Invariants:

- Every view needs the admin token: a `Authorization: Bearer` header, or the cookie that
  `/dashboard/login` sets (HttpOnly, SameSite=Strict, path /dashboard). The login answers with
  a redirect to a URL without the token, so it never stays in a page's address or history.
- A page loads nothing from anywhere: no script, no font, no stylesheet beyond its own
  `<style>`; charts are inline SVG. The content security policy says so to the browser.
- Telemetry is shown only for aggregates of at least `min_reporters` devices (figures, charts
  and drift points alike), as on the API.
"""

from __future__ import annotations

import hmac
import math
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select

from edgeforge.fleet.monitor import DriftReport, LogHistogram, drift, monitor_summary
from edgeforge.fleet.server import monitoring, rollouts
from edgeforge.fleet.server.models import Device

__all__ = ["COOKIE", "add_dashboard", "distribution_svg", "line_svg"]

COOKIE = "edgeforge_admin"
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'"
_TEMPLATES = Path(__file__).parent / "templates"
D = Device.__table__
_NEXT = re.compile(r"^/dashboard(/[a-z]+)?(\?model=[A-Za-z0-9._-]{1,128})?$")
_env: Any = None


def _render(name: str, **context: Any) -> str:
    global _env
    if _env is None:
        import jinja2

        _env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_TEMPLATES),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        _env.filters["when"] = _when
        _env.filters["num"] = lambda v, fmt="{:.3g}": "–" if v is None else fmt.format(v)
        _env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    return _env.get_template(name).render(**context)


def _when(t: float | None) -> str:
    if not t:
        return "never"
    ago = time.time() - t
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))
    if ago < 120:
        return f"{stamp} ({int(max(ago, 0))} s ago)"
    if ago < 7200:
        return f"{stamp} ({int(ago // 60)} min ago)"
    return f"{stamp} UTC"


# ------------------------------------------------------------------ charts


def _scale(lo: float, hi: float, a: float, b: float) -> Any:
    span = hi - lo or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def distribution_svg(
    current: LogHistogram,
    reference: LogHistogram | None,
    *,
    title: str,
    unit: str = "",
    width: int = 460,
    height: int = 200,
    bins: int = 40,
) -> str:
    """Two densities on shared bins (the fleet's as bars, the reference's as a line), as SVG."""
    hists = [h for h in (current, reference) if h is not None and h.n]
    if not hists:
        return ""
    lo = min(h.quantile(0.005) for h in hists)
    hi = max(h.quantile(0.995) for h in hists)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    edges[0], edges[-1] = -math.inf, math.inf

    def density(h: LogHistogram) -> np.ndarray:
        c = h.cdf(edges[1:]) - np.concatenate([[0.0], h.cdf(edges[1:-1])])
        return np.clip(c, 0, 1)

    cur = density(current)
    ref = density(reference) if reference is not None and reference.n else None
    top = max(cur.max(), ref.max() if ref is not None else 0) or 1.0
    left, right, y0, y1 = 40, width - 10, height - 28, 24
    sx = _scale(0, bins, left, right)
    sy = _scale(0, top, y0, y1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{title}">',
        f'<text x="{left}" y="15" class="t">{title}</text>',
        f'<line x1="{left}" y1="{y0}" x2="{right}" y2="{y0}" stroke="#99a"/>',
    ]
    bar = (right - left) / bins
    for i, v in enumerate(cur):
        y = sy(v)
        parts.append(
            f'<rect x="{sx(i) + 0.5:.1f}" y="{y:.1f}" width="{bar - 1:.1f}" '
            f'height="{y0 - y:.1f}" fill="#4c78a8" opacity="0.8"/>'
        )
    if ref is not None:
        pts = " ".join(f"{sx(i + 0.5):.1f},{sy(v):.1f}" for i, v in enumerate(ref))
        parts.append(
            f'<polyline points="{pts}" fill="none" stroke="#e45756" stroke-width="2" '
            'class="reference"/>'
        )
    for frac in (0.0, 0.5, 1.0):
        value = lo + frac * (hi - lo)
        parts.append(
            f'<text x="{sx(frac * bins):.1f}" y="{height - 10}" text-anchor="middle" '
            f'class="a">{value:.3g}{unit}</text>'
        )
    legend = '<tspan fill="#4c78a8">■ fleet</tspan>'
    if ref is not None:
        legend += ' <tspan fill="#e45756">— release reference</tspan>'
    parts.append(f'<text x="{right}" y="15" text-anchor="end" class="a">{legend}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line_svg(
    points: list[tuple[str, float]],
    *,
    title: str,
    threshold: float | None = None,
    width: int = 460,
    height: int = 200,
) -> str:
    """A labelled line (x: labels in order, y: values) with an optional threshold, as SVG."""
    if not points:
        return ""
    values = [v for _, v in points]
    top = max(values + ([threshold * 1.25] if threshold else [])) or 1.0
    left, right, y0, y1 = 40, width - 10, height - 28, 24
    n = max(len(points) - 1, 1)
    sx = _scale(0, n, left + 10, right - 10)
    sy = _scale(0, top, y0, y1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{title}">',
        f'<text x="{left}" y="15" class="t">{title}</text>',
        f'<line x1="{left}" y1="{y0}" x2="{right}" y2="{y0}" stroke="#99a"/>',
    ]
    if threshold is not None:
        y = sy(threshold)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#e45756" '
            f'stroke-dasharray="4 3"/><text x="{right}" y="{y - 4:.1f}" text-anchor="end" '
            f'class="a">threshold {threshold:g}</text>'
        )
    pts = " ".join(f"{sx(i):.1f},{sy(v):.1f}" for i, (_, v) in enumerate(points))
    parts.append(f'<polyline points="{pts}" fill="none" stroke="#4c78a8" stroke-width="2"/>')
    for i, (label, v) in enumerate(points):
        color = "#e45756" if threshold is not None and v > threshold else "#4c78a8"
        parts.append(
            f'<circle cx="{sx(i):.1f}" cy="{sy(v):.1f}" r="3.5" fill="{color}" class="point">'
            f"<title>{label}: {v:.3f}</title></circle>"
        )
        if len(points) <= 8 or i in (0, len(points) - 1):
            parts.append(
                f'<text x="{sx(i):.1f}" y="{height - 10}" text-anchor="middle" class="a">'
                f"{label[5:] if len(label) == 10 else label}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


# ------------------------------------------------------------------ data


def overview(server: Any) -> dict[str, Any]:
    with server.engine.connect() as conn:
        rows = conn.execute(
            select(
                D.c.device_class,
                D.c.active_name,
                D.c.active_version,
                func.count(),
                func.max(D.c.last_seen),
            ).group_by(D.c.device_class, D.c.active_name, D.c.active_version)
        ).all()
        states = conn.execute(select(D.c.state, func.count()).group_by(D.c.state)).all()
    groups = [
        {
            "device_class": r[0],
            "release": "none" if r[1] is None else f"{r[1]}@{r[2]}",
            "devices": r[3],
            "last_seen": r[4],
        }
        for r in sorted(rows, key=lambda r: (r[0], r[1] or "", r[2] or 0))
    ]
    per_class: Counter[str] = Counter()
    for g in groups:
        per_class[g["device_class"]] += g["devices"]
    return {
        "groups": groups,
        "classes": dict(sorted(per_class.items())),
        "devices": sum(per_class.values()),
        "states": {s or "unknown": c for s, c in states},
    }


def rollout_views(server: Any) -> list[dict[str, Any]]:
    out = []
    for r in rollouts.list_rollouts(server.engine)[:50]:
        status = server.rollout_status(r["id"])
        status["verdicts"] = [h for h in status["history"] if "verdict" in h or "event" in h]
        out.append(status)
    return out


def monitor_view(server: Any, model: str | None) -> dict[str, Any]:
    minimum = server.config.min_reporters
    with server.engine.connect() as conn:
        aggs = monitoring.load_aggregates(conn, name=model)
    refs = server.references.references(model)
    summary = monitor_summary(aggs, refs, model=model, min_reporters=minimum)
    merged: dict[tuple[str, int, str], Any] = {}
    days: dict[tuple[str, int, str], list[Any]] = defaultdict(list)
    for agg in sorted(aggs, key=lambda a: a.key):
        k = agg.key[:3]
        merged[k] = agg if k not in merged else merged[k].merge(agg)
        days[k].append(agg)
    versions = []
    for row in summary["versions"]:
        k = (row["name"], row["version"], row["device_class"])
        agg, ref = merged[k], refs.get(k)
        charts: list[str] = []
        if row["enough_reporters"]:
            charts.append(
                distribution_svg(
                    agg.slots["latency_ms"],
                    ref.slots["latency_ms"] if ref is not None else None,
                    title="latency per inference (ms)",
                    unit="",
                )
            )
            if agg.slots["confidence"].n:
                charts.append(
                    distribution_svg(
                        agg.slots["confidence"],
                        ref.slots["confidence"] if ref is not None else None,
                        title=f"confidence ({row['confidence_kind']})",
                    )
                )
            reports: list[DriftReport] = [drift(a, ref, min_reporters=minimum) for a in days[k]]
            series = [(r.day, r.drift_psi) for r in reports if r.drift_psi is not None]
            if series:
                charts.append(
                    line_svg(series, title="drift over time (largest PSI per day)", threshold=0.2)
                )  # type: ignore[arg-type]
        versions.append(
            {**row, "charts": [c for c in charts if c], "has_reference": ref is not None}
        )
    models = sorted({a.name for a in aggs}) if model is None else [model]
    return {"summary": summary, "versions": versions, "models": models}


# ------------------------------------------------------------------ routes


def add_dashboard(app: FastAPI, server: Any) -> None:
    """Mount the dashboard's routes on the fleet server's application."""
    token = server.config.admin_token.encode()

    def allowed(request: Request) -> bool:
        given = request.cookies.get(COOKIE, "")
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = bearer.strip()
        return bool(given) and hmac.compare_digest(given.encode(), token)

    def page(name: str, view: str, **context: Any) -> HTMLResponse:
        html = _render(name, view=view, min_reporters=server.config.min_reporters, **context)
        return HTMLResponse(
            html,
            headers={
                "Content-Security-Policy": CSP,
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
                "X-Frame-Options": "DENY",
            },
        )

    def login_page(message: str = "", status: int = 401) -> HTMLResponse:
        response = page("login.html.j2", "login", message=message)
        response.status_code = status
        return response

    @app.get("/dashboard/login")
    async def login_get(
        request: Request, token: str | None = None, next: str = "/dashboard"
    ) -> Response:
        if token is None:
            return login_page(status=200)
        return _login(token, next)

    @app.post("/dashboard/login")
    async def login_post(request: Request) -> Response:
        from urllib.parse import parse_qs

        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        return _login((form.get("token") or [""])[0], (form.get("next") or ["/dashboard"])[0])

    def _login(given: str, then: str) -> Response:
        if not given or not hmac.compare_digest(given.strip().encode(), token):
            return login_page("That token is not the server's admin token.")
        # only a page of the dashboard, and never a URL that would carry the token on
        if not _NEXT.match(then):
            then = "/dashboard"
        response = RedirectResponse(then, status_code=303)
        response.set_cookie(
            COOKIE, given.strip(), httponly=True, samesite="strict", path="/dashboard"
        )
        return response

    @app.get("/dashboard/logout")
    async def logout() -> Response:
        response = RedirectResponse("/dashboard/login", status_code=303)
        response.delete_cookie(COOKIE, path="/dashboard")
        return response

    @app.get("/dashboard")
    async def dashboard_overview(request: Request) -> Response:
        if not allowed(request):
            return login_page()
        data = await run_in_threadpool(overview, server)
        running = await run_in_threadpool(rollouts.list_rollouts, server.engine)
        alerts = (await run_in_threadpool(server.alerts))[:5]
        return page("overview.html.j2", "overview", fleet=data, rollouts=running[:5], alerts=alerts)

    @app.get("/dashboard/rollouts")
    async def dashboard_rollouts(request: Request) -> Response:
        if not allowed(request):
            return login_page()
        return page(
            "rollouts.html.j2", "rollouts", rollouts=await run_in_threadpool(rollout_views, server)
        )

    @app.get("/dashboard/monitor")
    async def dashboard_monitor(request: Request, model: str | None = None) -> Response:
        if not allowed(request):
            return login_page()
        data = await run_in_threadpool(monitor_view, server, model or None)
        return page("monitor.html.j2", "monitor", model=model, **data)

    @app.get("/dashboard/alerts")
    async def dashboard_alerts(request: Request) -> Response:
        if not allowed(request):
            return login_page()
        return page("alerts.html.j2", "alerts", alerts=await run_in_threadpool(server.alerts))
