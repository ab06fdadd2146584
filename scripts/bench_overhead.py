#!/usr/bin/env python3
"""Added latency and throughput of the router as a pass-through, against the same upstream called directly.

An nginx from the distribution's packages, configured here on loopback, answers every POST instantly with a
fixed chat completion; wrk (one thread, a POST script) measures it directly and through a single-worker router
pointed at it, in the same run, and through a second router with the usage ledger off (rounds interleaved).
Targets on two cores: added p50 <= 0.5 ms, added p99 <= 2 ms at 10 connections, router >= 2,000 requests/s;
the ledger adds at most 0.05 ms p50. Prints a Markdown table.

    python scripts/bench_overhead.py [--duration 10] [--connections 10] [--rounds 2]

Needs `nginx` and `wrk` (Debian: apt-get install nginx-light wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.procs import ManagedProcess, free_port, start_router  # noqa: E402

ANSWER = {
    "id": "chatcmpl-static", "object": "chat.completion", "created": 1700000000, "model": "static",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
}
# the router gets core 0 to itself; nginx and wrk share the others (no-op on a single core)
PIN_LOAD = ["taskset", "-c", "1-1023"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
PIN_ROUTER = ["taskset", "-c", "0"] if PIN_LOAD else []
REQUEST = {"model": "static", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}


def start_nginx(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    body = json.dumps(ANSWER).replace("'", "\\'")
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir};
    proxy_temp_path {workdir};
    fastcgi_temp_path {workdir};
    uwsgi_temp_path {workdir};
    scgi_temp_path {workdir};
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
""")
    proc = subprocess.Popen([*PIN_LOAD, "nginx", "-c", str(conf), "-p", str(workdir), "-g", "daemon off;"])
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            import httpx

            if httpx.post(url + "/v1/chat/completions", json=REQUEST).status_code == 200:
                return proc, url
        except Exception:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not start: " + (workdir / "error.log").read_text())


def start_static_router(upstream: str, work: Path, ledger: bool = True) -> ManagedProcess:
    """A single-worker router whose one backend is the nginx upstream. Its cache is on, without the semantic
    layer (no embedding model to load): non-deterministic requests consult and bypass it. ``ledger``: write a
    usage row per request (the default) or not."""
    return start_router(f"""
[[backends]]
name = "static"
kind = "openai"
tier = "cloud"
base_url = "{upstream}/v1"
models = ["static"]

[cache]
semantic = false

[ledger]
backend = "{'sqlite' if ledger else 'off'}"
""", work, prefix=PIN_ROUTER)


def wrk(url: str, script: Path, duration: int, connections: int) -> dict[str, float]:
    """One wrk run; the script decides whether connections pace themselves (latency) or not (throughput)."""
    out = subprocess.run(
        [*PIN_LOAD, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url + "/v1/chat/completions"],
        capture_output=True, text=True, check=True,
    ).stdout
    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if not m:
            raise RuntimeError("could not parse wrk output:\n" + out)
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} failed requests:\n{out}")
    return {"p50": ms("50"), "p99": ms("99"), "rps": rps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=int, default=1000, help="offered requests/s for the latency runs (all connections)")
    args = ap.parse_args()
    script: Path
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install nginx-light wrk", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    post = ('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [[{json.dumps(REQUEST)}]]\n")
    flat_out = work / "post.lua"  # throughput: every connection sends as fast as answers come back
    flat_out.write_text(post)
    paced = work / "paced.lua"  # latency: each connection waits between requests, so the offered load is fixed
    # random think time (mean = connections / rate): arrivals spread out instead of all connections firing at once
    paced.write_text(post + f"function delay()\n  return math.random() * {2000 * args.connections / args.rate:.3f}\nend\n")
    nginx, upstream = start_nginx(work)
    router = bare = None
    try:
        router = start_static_router(upstream, work)
        bare = start_static_router(upstream, work, ledger=False)
        results: dict[str, list[dict[str, float]]] = {
            k: [] for k in ("direct", "router", "bare", "direct-max", "router-max", "bare-max")
        }
        wrk(upstream, flat_out, 2, args.connections)  # warm-up
        wrk(router.url, flat_out, 2, args.connections)
        wrk(bare.url, flat_out, 2, args.connections)
        for r in range(args.rounds):
            for name, url in (("direct", upstream), ("router", router.url), ("bare", bare.url)):
                for kind, script in (("", paced), ("-max", flat_out)):
                    res = wrk(url, script, args.duration, args.connections)
                    results[name + kind].append(res)
                    print(f"round {r + 1} {name + kind:10s}: p50 {res['p50']:.3f} ms  p99 {res['p99']:.3f} ms  "
                          f"{res['rps']:.0f} req/s", file=sys.stderr)
    finally:
        for proc in (router, bare):
            if proc is not None:
                proc.stop()
        nginx.terminate()
        nginx.wait()

    def median(name: str, key: str) -> float:
        vals = sorted(x[key] for x in results[name])
        return vals[len(vals) // 2] if len(vals) % 2 else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2

    d = {k: median("direct", k) for k in ("p50", "p99")}
    h = {k: median("router", k) for k in ("p50", "p99")}
    b = {k: median("bare", k) for k in ("p50", "p99")}
    d_max, h_max, b_max = median("direct-max", "rps"), median("router-max", "rps"), median("bare-max", "rps")
    print(f"\nwrk 1 thread, {args.connections} connections, {args.duration}s runs x {args.rounds} rounds (median); "
          f"latency at {args.rate} requests/s offered, throughput flat out; non-streaming chat completion, "
          "single uvicorn worker\n")
    print("| path | p50 (ms) | p99 (ms) | max requests/s |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| nginx direct | {d['p50']:.3f} | {d['p99']:.3f} | {d_max:.0f} |")
    print(f"| through hybrid | {h['p50']:.3f} | {h['p99']:.3f} | {h_max:.0f} |")
    print(f"| added by hybrid | {h['p50'] - d['p50']:+.3f} | {h['p99'] - d['p99']:+.3f} | |")
    print(f"| through hybrid, ledger off | {b['p50']:.3f} | {b['p99']:.3f} | {b_max:.0f} |")
    print(f"| added by the ledger | {h['p50'] - b['p50']:+.3f} | {h['p99'] - b['p99']:+.3f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
