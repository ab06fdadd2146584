"""``GET /dashboard``: one server-rendered page a manager can read, from the ledger. No build step, no CDN, no
script: charts are inline SVG. Spend and savings per day, cost by feature, the tier mix, cache hit rate, latency
percentiles per tier, and what is left of each budget. ``?since=7d`` picks the period (default 7 days).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Any

from hybrid.ledger.query import Dialect
from hybrid.ledger.report import GroupReport, build_report

_DAY = 86400.0


@dataclass
class DashboardData:
    since: str
    days: list[tuple[str, float, float, int]]  # (day, cost, counterfactual, requests)
    by_feature: list[GroupReport]
    by_tier: list[GroupReport]
    budgets: list[tuple[str, float, float]]  # (name, spent, limit)


def collect(conn: Any, dialect: Dialect, since_s: float, since: str,
            budgets: list[tuple[str, float, float]]) -> DashboardData:
    """Everything the page shows, in three passes of the database (a thread's work, not the event loop's)."""
    start = time.time() - since_s
    day = "CAST(ts / 86400 AS INTEGER)" if dialect.name == "sqlite" else "CAST(FLOOR(ts / 86400) AS BIGINT)"
    rows = conn.execute(
        f"SELECT {day} AS d, SUM(cost), SUM(counterfactual_cost), COUNT(*) FROM requests WHERE ts >= {dialect.param} "
        "GROUP BY 1 ORDER BY 1", (start,),
    ).fetchall()
    days = [(time.strftime("%m-%d", time.gmtime(int(d) * _DAY)), float(c or 0), float(cf or 0), int(n))
            for d, c, cf, n in rows]
    return DashboardData(since, days, build_report(conn, since_s, "feature", dialect=dialect),
                         build_report(conn, since_s, "tier", dialect=dialect), budgets)


def _money(x: float) -> str:
    if abs(x) < 0.01:
        return f"${x:.6f}"
    return f"${x:,.2f}" if abs(x) < 10_000 else f"${x:,.0f}"


def _bars(items: list[tuple[str, float]], fmt: Any, width: int = 520, color: str = "#3b6ea5") -> str:
    """Horizontal bars, one per item, labelled with its name and value."""
    if not items:
        return '<p class="empty">No requests in this period.</p>'
    top = max(v for _, v in items) or 1.0
    h = 26 * len(items) + 6
    parts = [f'<svg role="img" width="{width}" height="{h}" viewBox="0 0 {width} {h}">']
    for i, (name, value) in enumerate(items):
        y = 4 + 26 * i
        w = max(1.0, (width - 250) * value / top)
        parts.append(f'<text x="0" y="{y + 15}" class="label">{html.escape(name)}</text>'
                     f'<rect x="130" y="{y}" width="{w:.1f}" height="20" fill="{color}" rx="3"/>'
                     f'<text x="{134 + w:.1f}" y="{y + 15}" class="value">{html.escape(fmt(value))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _spend_chart(days: list[tuple[str, float, float, int]], width: int = 640, height: int = 220) -> str:
    """Cost and what the reference model would have cost, per day, as two series of columns."""
    if not days:
        return '<p class="empty">No requests in this period.</p>'
    top = max(max(c, cf) for _, c, cf, _ in days) or 1.0
    slot = (width - 40) / len(days)
    bar = max(2.0, slot / 2 - 2)
    parts = [f'<svg role="img" width="{width}" height="{height + 30}" viewBox="0 0 {width} {height + 30}">',
             f'<line x1="30" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/>']
    for i, (label, cost, cf, _) in enumerate(days):
        x = 34 + slot * i
        for j, (value, color, what) in enumerate(((cf, "#c9d6e3", "reference"), (cost, "#3b6ea5", "cost"))):
            h = (height - 10) * value / top
            parts.append(f'<rect x="{x + j * (bar + 1):.1f}" y="{height - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                         f'fill="{color}"><title>{label} {what} {_money(value)}</title></rect>')
        parts.append(f'<text x="{x:.1f}" y="{height + 16}" class="tick">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render(data: DashboardData) -> str:
    tiers = data.by_tier
    total = sum(g.requests for g in tiers)
    cost = sum(g.cost for g in tiers)
    cf = sum(g.counterfactual_cost for g in tiers)
    hits = sum(g.cache_hit_rate * g.requests for g in tiers)
    saved = 100 * (cf - cost) / cf if cf else 0.0
    latency_rows = "".join(
        f"<tr><td>{html.escape(g.group)}</td><td>{g.requests}</td><td>{g.p50_s:.3f}</td><td>{g.p95_s:.3f}</td>"
        f"<td>{g.p99_s:.3f}</td><td>{g.errors}</td></tr>" for g in tiers
    )
    budget_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{_money(spent)}</td><td>{_money(limit)}</td>"
        f"<td>{_money(max(0.0, limit - spent))}</td></tr>" for name, spent, limit in data.budgets
    ) or '<tr><td colspan="4" class="empty">No budgets configured.</td></tr>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hybrid: costs and savings</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2733; max-width: 1100px; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; margin-top: 28px; }}
.cards {{ display: flex; gap: 16px; flex-wrap: wrap; }}
.card {{ border: 1px solid #d5dde6; border-radius: 6px; padding: 10px 16px; min-width: 150px; }}
.card b {{ display: block; font-size: 22px; }}
table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #e3e8ee; padding: 4px 12px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.label, .value, .tick {{ font-size: 12px; fill: #1d2733; }} .empty {{ color: #778; }}
.legend span {{ display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; }}
</style></head><body>
<h1>hybrid: costs and savings, last {html.escape(data.since)}</h1>
<div class="cards">
<div class="card" id="requests">Requests<b>{total:,}</b></div>
<div class="card" id="cost">Cost<b>{_money(cost)}</b></div>
<div class="card" id="reference">On the reference model<b>{_money(cf)}</b></div>
<div class="card" id="saved">Saved<b>{saved:.1f}%</b></div>
<div class="card" id="hit-rate">Cache hit rate<b>{(hits / total if total else 0):.1%}</b></div>
</div>
<h2>Spend per day</h2>
<div class="legend"><span style="background:#3b6ea5"></span>cost<span style="background:#c9d6e3"></span>the same
tokens on the reference model</div>
{_spend_chart(data.days)}
<h2>Cost by feature</h2>
{_bars([(g.group, g.cost) for g in data.by_feature], _money)}
<h2>Tier mix (requests)</h2>
{_bars([(g.group, float(g.requests)) for g in tiers], lambda v: f"{int(v):,}", color="#5a9a6e")}
<h2>Latency by tier (seconds)</h2>
<table><tr><th>tier</th><th>requests</th><th>p50</th><th>p95</th><th>p99</th><th>errors</th></tr>{latency_rows}</table>
<h2>Budgets</h2>
<table><tr><th>budget</th><th>spent</th><th>limit</th><th>left</th></tr>{budget_rows}</table>
</body></html>
"""
