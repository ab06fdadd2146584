#!/usr/bin/env python3
"""How fast ``hybrid report`` answers on a large ledger. Target: 1,000,000 rows, ``--since 30d``, under 2 s.

Fills a SQLite ledger with synthetic rows (spread over 60 days, a few tiers, models, features and teams), then
times the report by tier and by a tag, against one plain SQLite pass over the same rows in the same run
(``SELECT COUNT(*), SUM(cost)``) as the baseline. Prints a Markdown table.

    python scripts/bench_report.py [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hybrid.ledger.report import build_report  # noqa: E402
from hybrid.ledger.rows import COLUMNS, LedgerRow  # noqa: E402
from hybrid.ledger.sqlite import SCHEMA, connect  # noqa: E402


def fill(path: Path, rows: int) -> None:
    rng = random.Random(7)
    now = time.time()
    conn = connect(path)
    conn.executescript(SCHEMA)
    insert = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    tiers = [("local", "cpu", "gemma-3-270m"), ("cloud", "openai", "gpt-4o-mini"), ("cache", "sqlite", "gpt-4o-mini")]
    features, teams = ["search", "chat", "summarise", "extract", "triage"], ["support", "sales", "eng"]
    batch = []
    for i in range(rows):
        tier, backend, model = rng.choice(tiers)
        prompt, completion = rng.randint(20, 2000), rng.randint(1, 500)
        row = LedgerRow(
            ts=now - rng.random() * 60 * 86400, request_id=f"r{i}", key_id=f"key:{rng.randint(1, 40):020x}",
            requested_model="auto", tier=tier, backend=backend, served_model=model,
            status="ok" if rng.random() > 0.01 else "502", cache="hit-exact" if tier == "cache" else "miss",
            prompt_tokens=prompt, completion_tokens=completion, cost=0.0 if tier != "cloud" else prompt * 1.5e-7,
            counterfactual_cost=prompt * 2.5e-6 + completion * 1e-5, latency_s=rng.lognormvariate(-1, 1),
            ttft_s=0.1, route_reason="auto", tags={"feature": rng.choice(features), "team": rng.choice(teams)},
        )
        batch.append(row.values())
        if len(batch) == 50_000:
            conn.executemany(insert, batch)
            batch.clear()
    if batch:
        conn.executemany(insert, batch)
    conn.close()


def timed(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    path = Path(tempfile.mkdtemp(prefix="bench-report-")) / "ledger.sqlite3"
    t0 = time.perf_counter()
    fill(path, args.rows)
    print(f"{args.rows} rows over 60 days written in {time.perf_counter() - t0:.1f}s; best of {args.repeat}\n")

    def baseline() -> None:
        conn = connect(path)
        conn.execute("SELECT COUNT(*), SUM(cost) FROM requests WHERE ts >= ?", (time.time() - 30 * 86400,)).fetchall()
        conn.close()

    runs = [("one SQLite pass (baseline)", baseline)]
    for by in ("tier", "feature", "key"):
        runs.append((f"hybrid report --since 30d --by {by}", lambda by=by: build_report(path, 30 * 86400, by)))
    print("| query | seconds | vs baseline |")
    print("| --- | ---: | ---: |")
    base = 0.0
    for label, fn in runs:
        s = timed(fn, args.repeat)
        base = base or s
        print(f"| {label} | {s:.2f} | {s / base:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
