"""The eval report as one self-contained HTML file: inline SVG charts and CSS, no script, nothing fetched."""

from __future__ import annotations

from html import escape
from typing import Any

WORST = 10  # worst items shown per target
EXCERPT = 400


def _f(v: float | None, digits: int = 3, unit: str = "") -> str:
    return "&ndash;" if v is None else f"{v:.{digits}f}{unit}"


def _line_chart(points: list[tuple[float, float]], chosen: tuple[float, float] | None, goal: float | None,
                x_label: str, y_label: str, x_fmt: str = "{:.0%}") -> str:
    """A small line chart; ``chosen`` is marked, ``goal`` drawn as a dashed horizontal line."""
    w, h, left, bottom, top, right = 470, 260, 56, 40, 14, 30
    if not points:
        return "<p>No points.</p>"
    xs = [p[0] for p in points]
    ys = [p[1] for p in points] + ([goal] if goal is not None else [])
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(1.0, max(ys))
    if x1 == x0:
        x1 = x0 + 1
    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)
    def sy(y: float) -> float:
        return h - bottom - (y - y0) / (y1 - y0) * (h - bottom - top)
    parts = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{escape(y_label)} against '
             f'{escape(x_label)}">',
             f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" class="axis"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" class="axis"/>']
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        xv = x0 + (x1 - x0) * i / 4
        parts.append(f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" class="tick" text-anchor="end">{yv:.2f}</text>')
        parts.append(f'<text x="{sx(xv):.1f}" y="{h - bottom + 16}" class="tick" text-anchor="middle">'
                     f'{escape(x_fmt.format(xv))}</text>')
    parts.append(f'<text x="{(left + w - right) / 2}" y="{h - 6}" class="label" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{(top + h - bottom) / 2}" class="label" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(top + h - bottom) / 2})">{escape(y_label)}</text>')
    if goal is not None:
        parts.append(f'<line x1="{left}" y1="{sy(goal):.1f}" x2="{w - right}" y2="{sy(goal):.1f}" class="goal"/>')
    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(sorted(points)))
    parts.append(f'<path d="{path}" class="curve"/>')
    if chosen is not None:
        parts.append(f'<circle cx="{sx(chosen[0]):.1f}" cy="{sy(chosen[1]):.1f}" r="5" class="chosen"/>')
    parts.append("</svg>")
    return "".join(parts)


def _target_table(doc: dict[str, Any]) -> str:
    rows = []
    for t in doc["targets"]:
        s = doc["summary"][t]["overall"]
        ci = s["ci95"]
        tiers = ", ".join(f"{escape(k)} {v}" for k, v in sorted(s["tiers"].items()))
        rows.append(
            f"<tr><th>{escape(t)}</th><td>{_f(s['quality'])}</td><td>{'[' + _f(ci[0]) + ', ' + _f(ci[1]) + ']' if ci else '&ndash;'}</td>"
            f"<td>{s['graded']}/{s['items']}</td><td>{s['errors']}</td><td>${s['cost']:.5f}</td><td>${s['counterfactual']:.5f}</td>"
            f"<td>{_f(s['latency_p50'], 2)}</td><td>{_f(s['latency_p95'], 2)}</td><td>{_f(s['latency_p99'], 2)}</td>"
            f"<td>{_f(s['ttft_p50'], 2)}</td><td>{_f(s['ttft_p95'], 2)}</td><td>{_f(s['ttft_p99'], 2)}</td><td>{tiers}</td></tr>")
    return ("<table><thead><tr><th>target</th><th>quality</th><th>95% CI</th><th>graded</th><th>errors</th>"
            "<th>cost</th><th>counterfactual</th><th>p50 s</th><th>p95 s</th><th>p99 s</th><th>TTFT p50</th>"
            "<th>TTFT p95</th><th>TTFT p99</th><th>answered by</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _tag_table(doc: dict[str, Any]) -> str:
    tags = sorted({tag for t in doc["targets"] for tag in doc["summary"][t]["tags"]})
    if not tags:
        return "<p>The workload has no tags.</p>"
    head = "".join(f"<th>{escape(t)}</th>" for t in doc["targets"])
    rows = []
    for tag in tags:
        cells = []
        for t in doc["targets"]:
            s = doc["summary"][t]["tags"].get(tag)
            if s is None or s["quality"] is None:
                cells.append("<td>&ndash;</td>")
            else:
                cells.append(f"<td>{_f(s['quality'])} <small>[{_f(s['ci95'][0], 2)}, {_f(s['ci95'][1], 2)}] "
                             f"n={s['graded']}{', ' + str(s['errors']) + ' err' if s['errors'] else ''}</small></td>")
        rows.append(f"<tr><th>{escape(tag)}</th>{''.join(cells)}</tr>")
    return f"<table><thead><tr><th>tag</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _worst(doc: dict[str, Any], prompts: dict[str, str], references: dict[str, str]) -> str:
    out = []
    for t in doc["targets"]:
        rows = [r for r in doc["items"] if r["target"] == t]
        rows.sort(key=lambda r: (r["score"] is not None, r["score"] if r["score"] is not None else 0.0))
        body = []
        for r in rows[:WORST]:
            if r["score"] is not None and r["score"] >= 1.0:
                break
            verdict = escape(r["error"] or "") if r["score"] is None else _f(r["score"], 2)
            body.append(f"<tr><td>{escape(r['item'])}</td><td>{verdict}</td>"
                        f"<td>{escape(prompts.get(r['item'], '')[:EXCERPT])}</td>"
                        f"<td>{escape(references.get(r['item'], '')[:EXCERPT])}</td>"
                        f"<td>{escape(r['answer'][:EXCERPT])}</td></tr>")
        if body:
            out.append(f"<h3>{escape(t)}</h3><table class='worst'><thead><tr><th>item</th><th>grade</th><th>prompt</th>"
                       f"<th>reference</th><th>answer</th></tr></thead><tbody>{''.join(body)}</tbody></table>")
    return "".join(out) or "<p>Every item got full marks.</p>"


CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1d2430;max-width:1200px}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}table{border-collapse:collapse;margin:.5rem 0;font-size:13px}
th,td{border-bottom:1px solid #dde2ea;padding:.3rem .55rem;text-align:right;vertical-align:top}
thead th{background:#f3f5f9}tbody th{text-align:left}table.worst td{text-align:left;max-width:320px;white-space:pre-wrap;
word-break:break-word}.charts{display:flex;gap:2rem;flex-wrap:wrap}.axis{stroke:#8893a4}.tick{font-size:10px;fill:#5b6473}
.label{font-size:11px;fill:#36404f}.curve{fill:none;stroke:#2d6cdf;stroke-width:2}.goal{stroke:#d0452f;stroke-dasharray:5 4}
.chosen{fill:#d0452f}.meta{color:#5b6473}small{color:#5b6473}"""


def render(doc: dict[str, Any], prompts: dict[str, str] | None = None, references: dict[str, str] | None = None) -> str:
    prompts = prompts or {}
    references = references or {}
    cal = doc.get("calibration")
    charts = "<p>Calibration needs a cheap and a capable target (the routing's simple and complex tiers).</p>"
    if cal and cal.get("points"):
        pts = cal["points"]
        chosen = cal.get("chosen")
        goal = cal["target"] * cal["capable_quality"]
        q_share = _line_chart([(p["share_capable"], p["quality"]) for p in pts],
                              (chosen["share_capable"], chosen["quality"]) if chosen else None, goal,
                              f"share sent to {cal['capable']}", "quality")
        q_cost = _line_chart([(p["cost"], p["quality"]) for p in pts],
                             (chosen["cost"], chosen["quality"]) if chosen else None, goal,
                             "cost of the workload ($)", "quality", "{:.4f}")
        verdict = (f"Threshold <b>{chosen['threshold']:.4f}</b> reaches quality {chosen['quality']:.3f} "
                   f"({cal['target']:.0%} of {escape(cal['capable'])}'s {cal['capable_quality']:.3f}) sending "
                   f"{chosen['share_capable']:.0%} of the workload to {escape(cal['capable'])}, at ${chosen['cost']:.5f} "
                   f"(all on {escape(cal['capable'])}: ${pts[-1]['cost']:.5f}; all on {escape(cal['cheap'])}: "
                   f"quality {cal['cheap_quality']:.3f})." if chosen else "No threshold reaches the target quality.")
        charts = f"<p>{verdict}</p><div class='charts'>{q_share}{q_cost}</div>"
    meta = (f"workload <code>{escape(doc['workload']['path'])}</code> ({doc['workload']['items']} items, sha256 "
            f"{escape(doc['workload']['sha256'][:12])}) &middot; router {escape(doc['router'])} &middot; revision "
            f"{escape(str(doc.get('git_revision') or '?'))} &middot; config {escape(doc['config']['path'])} "
            f"({escape(doc['config']['sha256'][:12])}) &middot; scorer {escape(doc.get('scorer', '?'))} &middot; "
            f"{escape(doc['created'])}")
    models = ", ".join(f"{escape(t)}: {escape(', '.join(m))}" for t, m in doc.get("model_ids", {}).items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hybrid eval: {escape(doc['workload']['path'])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><h1>hybrid eval</h1><p class="meta">{meta}</p><p class="meta">models: {models or '&ndash;'}</p>
<h2>Targets</h2>{_target_table(doc)}
<h2>Quality against cost</h2>{charts}
<h2>By tag</h2>{_tag_table(doc)}
<h2>Worst items</h2>{_worst(doc, prompts, references)}
</body></html>
"""
