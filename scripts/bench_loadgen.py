#!/usr/bin/env python3
"""Does `hybrid bench` measure the endpoint, or itself? Compared with wrk against the same endpoints, same run.

Two endpoints: nginx answering a fixed chat completion (from the distribution's packages, configured here on
loopback), and a single-worker router in front of that nginx (the router's own ceiling, what a team measures on
its box). On each: wrk (one thread, a POST script), then `hybrid bench` with one and with two generator
processes, closed loop at the same concurrency. Agreement means throughput and p50 within 20% of wrk's; where
the endpoint outruns the generator (nginx answers in microseconds) the table shows the generator's own ceiling.

    python scripts/bench_loadgen.py [--duration 5] [--concurrency 8]

Needs `nginx` and `wrk` (Debian: apt-get install nginx-light wrk).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_overhead import PIN_LOAD, REQUEST, start_nginx, start_static_router, wrk  # noqa: E402


def hybrid_bench(url: str, duration: int, concurrency: int, processes: int, work: Path) -> dict[str, float]:
    out = work / f"bench-{processes}.json"
    subprocess.run([*PIN_LOAD, sys.executable, "-m", "hybrid", "bench", "--url", url + "/v1", "--concurrency",
                    str(concurrency), "--duration", str(duration), "--warmup", "1", "--model", REQUEST["model"],
                    "--prompt", REQUEST["messages"][0]["content"], "--max-tokens", str(REQUEST["max_tokens"]),
                    "--processes", str(processes), "--json", str(out)], check=True, capture_output=True)
    s = json.loads(out.read_text())
    if s["errors"]:
        raise RuntimeError(f"hybrid bench saw errors: {s['error_kinds']}")
    return {"rps": s["throughput_rps"], "p50": s["latency_ms"]["p50"], "p99": s["latency_ms"]["p99"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            print(f"{tool} not found: apt-get install nginx-light wrk", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="bench-loadgen-"))
    script = work / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = [[{json.dumps(REQUEST)}]]\n")
    nginx, upstream = start_nginx(work)
    router = start_static_router(upstream, work)
    rows = []
    try:
        for name, url in (("router in front of nginx", router.url), ("nginx direct", upstream)):
            wrk(url, script, 1, args.concurrency)  # warm-up
            base = wrk(url, script, args.duration, args.concurrency)
            rows.append((name, "wrk -t1", base, base))
            for processes in (1, 2):
                res = hybrid_bench(url, args.duration, args.concurrency, processes, work)
                rows.append((name, f"hybrid bench, {processes} process{'es' if processes > 1 else ''}", res, base))
    finally:
        router.stop()
        nginx.terminate()
        nginx.wait()
    print(f"\nclosed loop, {args.concurrency} connections, {args.duration} s each; ratios against wrk in the same run\n")
    print("| endpoint | generator | req/s | vs wrk | p50 ms | vs wrk | p99 ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, gen, r, base in rows:
        print(f"| {name} | {gen} | {r['rps']:,.0f} | {r['rps'] / base['rps']:.2f}x | {r['p50']:.3f} | "
              f"{r['p50'] / base['p50']:.2f}x | {r['p99']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
