"""``hybrid report``: what requests cost and saved, per group, from the ledger.

    hybrid report [-c hybrid.toml] [--since 7d] [--by feature|team|tier|model|key|TAG] [--json | --csv]

SQLite makes one pass over the period, summing per group and per millisecond of latency; the percentiles are
read from that histogram, so no row leaves SQLite (scripts/bench_report.py times a 1,000,000-row ledger).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from hybrid.ledger.query import POSTGRES, SQLITE, Dialect
from hybrid.ledger.sqlite import connect

COLUMN_GROUPS = {"tier": "tier", "model": "served_model", "key": "key_id", "backend": "backend", "status": "status"}
_TAG = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass
class GroupReport:
    group: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    counterfactual_cost: float
    savings_pct: float
    cache_hit_rate: float
    p50_s: float
    p95_s: float
    p99_s: float
    feedback: int = 0  # requests a client scored (POST /v1/feedback)
    mean_score: float | None = None  # their mean score, 0 (bad) to 1 (good)


def parse_since(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``90s``, ``2w`` -> seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"--since: a number and one of s, m, h, d, w (got {text!r})")
    return float(m.group(1)) * _UNITS[m.group(2)]


def group_expression(by: str, dialect: Dialect = SQLITE) -> str:
    if by in COLUMN_GROUPS:
        return "r." + COLUMN_GROUPS[by]
    if not _TAG.match(by):
        raise ValueError(f"--by: tier, model, key, backend, status or a tag name (got {by!r})")
    return f"COALESCE({dialect.tag(by, 'r')}, '(none)')"


def build_report(source: Path | Any, since_s: float, by: str, now: float | None = None,
                 dialect: Dialect = SQLITE) -> list[GroupReport]:
    """One pass of the database over the period: sums per group and a latency histogram in 1 ms buckets, from
    which the percentiles are read (exact to the millisecond; no row leaves the database). ``source``: a SQLite
    file, or an open connection in ``dialect``."""
    expr = group_expression(by, dialect)
    start = (now or time.time()) - since_s
    conn = connect(source) if isinstance(source, Path) else source
    p = dialect.param
    try:
        percent = "%%" if p == "%s" else "%"  # a literal % next to psycopg's placeholders
        errors_sql = dialect.count("r.status NOT IN ('ok', 'abandoned')")
        hits_sql = dialect.count(f"r.cache LIKE 'hit-{percent}'")
        cells = conn.execute(
            f"SELECT {expr} AS g, {dialect.ms('r.latency_s')} AS ms, COUNT(*), {errors_sql}, "
            f"SUM(r.prompt_tokens), SUM(r.completion_tokens), SUM(r.cost), SUM(r.counterfactual_cost), {hits_sql}, "
            "COUNT(f.score), "
            "SUM(f.score) FROM requests r LEFT JOIN feedback f ON f.request_id = r.request_id "
            f"AND f.key_id = r.key_id WHERE r.ts >= {p} GROUP BY 1, 2",
            (start,),
        ).fetchall()
    finally:
        if isinstance(source, Path):
            conn.close()
    groups: dict[str, list[tuple[int, ...]]] = {}
    for g, *rest in cells:
        groups.setdefault(str(g), []).append(tuple(rest))
    out = []
    for g, buckets in groups.items():
        buckets.sort()
        n = sum(b[1] for b in buckets)
        totals = [sum(b[i] or 0 for b in buckets) for i in range(2, 10)]
        errors, prompt, completion, cost, counterfactual, hits, scored, score_sum = totals
        p50, p95, p99 = (_percentile(buckets, n, q) for q in (0.50, 0.95, 0.99))
        out.append(GroupReport(
            g, n, int(errors), int(prompt), int(completion), float(cost), float(counterfactual),
            100.0 * (counterfactual - cost) / counterfactual if counterfactual else 0.0, hits / n if n else 0.0,
            p50, p95, p99, int(scored), score_sum / scored if scored else None,
        ))
    out.sort(key=lambda r: (-r.cost, r.group))
    return out


def _percentile(buckets: list[tuple[int, ...]], n: int, q: float) -> float:
    """The latency at quantile ``q`` from (ms, count, ...) buckets sorted by ms: the bucket's middle, in seconds."""
    rank = q * n
    seen = 0
    for ms, count, *_ in buckets:
        seen += count
        if seen >= rank:
            return (ms + 0.5) / 1000.0
    return (buckets[-1][0] + 0.5) / 1000.0 if buckets else 0.0


def render_table(rows: list[GroupReport], by: str, since: str) -> str:
    total_cost = sum(r.cost for r in rows)
    total_cf = sum(r.counterfactual_cost for r in rows)
    lines = [
        f"last {since}, by {by}: {sum(r.requests for r in rows)} requests, cost ${total_cost:.6f}, "
        f"on the reference model ${total_cf:.6f}, saved "
        f"{100 * (total_cf - total_cost) / total_cf if total_cf else 0:.1f}%",
        "",
        "| group | requests | errors | prompt tok | completion tok | cost $ | reference $ | saved | cache hits "
        "| p50 s | p95 s | p99 s | scored | score |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.group} | {r.requests} | {r.errors} | {r.prompt_tokens} | {r.completion_tokens} | {r.cost:.6f} | "
            f"{r.counterfactual_cost:.6f} | {r.savings_pct:.1f}% | {r.cache_hit_rate:.1%} | {r.p50_s:.3f} | "
            f"{r.p95_s:.3f} | {r.p99_s:.3f} | {r.feedback} | "
            f"{'-' if r.mean_score is None else f'{r.mean_score:.2f}'} |"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="TOML config file (its [ledger] path); default: the embedded default")
    p.add_argument("--since", default="7d", help="how far back: 90s, 30m, 12h, 7d, 2w (default 7d)")
    p.add_argument("--by", default="tier", help="tier, model, key, backend, status, or a tag: feature, team, ...")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON instead of a table")
    fmt.add_argument("--csv", action="store_true", help="CSV instead of a table")


def run(args: argparse.Namespace) -> int:
    from hybrid.config import ConfigError, load_config
    from hybrid.ledger import sqlite_path

    cfg = load_config(args.config)
    try:
        since_s = parse_since(args.since)
        if cfg.ledger.backend == "postgres":
            from hybrid.ledger.postgres import connect as pg_connect

            with pg_connect(cfg.ledger.dsn) as conn:
                rows = build_report(conn, since_s, args.by, dialect=POSTGRES)
        else:
            path = sqlite_path(cfg)
            if cfg.ledger.backend == "off" or not path.exists():
                raise ConfigError(f"no ledger at {path} (ledger.backend = {cfg.ledger.backend!r})")
            rows = build_report(path, since_s, args.by)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"hybrid report: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(orjson.dumps([asdict(r) for r in rows], option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.csv:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(list(GroupReport.__dataclass_fields__))
        for r in rows:
            writer.writerow(list(asdict(r).values()))
        sys.stdout.write(buf.getvalue())
    else:
        print(render_table(rows, args.by, args.since))
    return 0
