"""``hybrid bench``: a load generator for any OpenAI-compatible endpoint.

Closed loop (``--concurrency N``: N requests always in flight) or open loop (``--rps R``: requests started on a
fixed schedule, at most N in flight; a request's latency counts from when it was due, so a stalled server is not
hidden by the generator waiting for it). Reports throughput, latency and time-to-first-token percentiles,
completion tokens per second, and errors by kind. ``--processes P`` spreads the work over P processes (each
its own event loop and connections) when one core cannot keep up with the endpoint: compare with wrk
(scripts/bench_loadgen.py) to know.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from hybrid import http1
from hybrid.evals.stats import percentile

MAX_LINE = 4 << 20
MAX_SAMPLES = 1_000_000  # latencies kept per process: past it, a uniform reservoir (memory stays bounded)


@dataclass
class Shard:
    url: str
    body: bytes
    headers: dict[str, str]
    stream: bool
    concurrency: int
    duration_s: float
    rps: float  # this shard's share; 0: closed loop
    warmup_s: float
    timeout_s: float
    path: str


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    completion_tokens: int = 0
    started: int = 0
    window_s: float = 0.0
    late: int = 0  # open loop: requests that could not start on time (all N in flight)

    seen: int = 0  # latencies observed (the reservoir holds at most MAX_SAMPLES of them)
    ttft_seen: int = 0

    def observe(self, latency: float, ttft: float | None) -> None:
        self.seen += 1
        _reservoir(self.latencies, latency, self.seen)
        if ttft is not None:
            self.ttft_seen += 1
            _reservoir(self.ttfts, ttft, self.ttft_seen)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def merge(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.ttfts += other.ttfts
        self.seen += other.seen
        self.ttft_seen += other.ttft_seen
        for k, v in other.errors.items():
            self.errors[k] = self.errors.get(k, 0) + v
        self.completion_tokens += other.completion_tokens
        self.started += other.started
        self.window_s = max(self.window_s, other.window_s)
        self.late += other.late


async def _one(pool: http1.Pool, shard: Shard, due: float, tally: Tally, record: bool) -> None:
    """One request. Not :func:`hybrid.evals.client.chat`, which parses every event to keep the answer's text: the
    load generator only needs the first content and the usage, found by a byte search, so its own cost per
    request stays far below the endpoints it measures (scripts/bench_loadgen.py)."""
    try:
        resp = await pool.request("POST", shard.path, shard.body, timeout_s=shard.timeout_s)
        async with resp:
            if resp.status >= 400:
                await resp.read(limit=64 << 10, truncate=True)
                if record:
                    tally.error(f"http {resp.status}")
                return
            first: float | None = None
            tokens = 0
            if shard.stream:
                async for line in http1.iter_lines(resp, MAX_LINE):
                    if not line.startswith(b"data:"):
                        continue
                    if first is None and b'"content"' in line and b'"content":""' not in line:
                        first = time.perf_counter()
                    if b'"usage"' in line and b'"completion_tokens"' in line:
                        try:
                            usage = orjson.loads(line[5:]).get("usage") or {}
                            tokens = int(usage.get("completion_tokens", 0) or 0)
                        except (orjson.JSONDecodeError, AttributeError, ValueError, TypeError):
                            pass
            else:
                raw = await resp.read()
                first = time.perf_counter()
                if b'"usage"' in raw:
                    try:
                        tokens = int((orjson.loads(raw).get("usage") or {}).get("completion_tokens", 0) or 0)
                    except (orjson.JSONDecodeError, AttributeError, ValueError, TypeError):
                        pass
        done = time.perf_counter()
        if record:
            tally.observe(done - due, None if first is None else first - due)
            tally.completion_tokens += tokens
    except http1.HTTPClientError as exc:
        if record:
            tally.error(type(exc).__name__)
    except OSError as exc:
        if record:
            tally.error(type(exc).__name__)


async def _run_shard(shard: Shard) -> Tally:
    pool = http1.Pool(shard.url, headers=shard.headers, max_connections=shard.concurrency, max_idle=shard.concurrency,
                      keepalive_s=60.0)
    tally = Tally()
    t0 = time.perf_counter()
    measure_from = t0 + shard.warmup_s
    end = measure_from + shard.duration_s
    try:
        if shard.rps <= 0:
            async def worker() -> None:
                while True:
                    now = time.perf_counter()
                    if now >= end:
                        return
                    record = now >= measure_from
                    tally.started += int(record)
                    await _one(pool, shard, now, tally, record)

            await asyncio.gather(*(worker() for _ in range(shard.concurrency)))
        else:
            slots = asyncio.Semaphore(shard.concurrency)
            interval = 1.0 / shard.rps
            tasks: set[asyncio.Task[None]] = set()

            async def fire(due: float, record: bool) -> None:
                try:
                    await _one(pool, shard, due, tally, record)
                finally:
                    slots.release()

            for i in range(int(round((shard.warmup_s + shard.duration_s) * shard.rps))):
                due = t0 + i * interval
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                record = due >= measure_from
                if slots.locked():
                    tally.late += int(record)
                await slots.acquire()
                tally.started += int(record)
                task = asyncio.ensure_future(fire(due, record))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        tally.window_s = max(shard.duration_s, time.perf_counter() - measure_from) if shard.rps <= 0 else shard.duration_s
    finally:
        await pool.close()
    return tally


def _reservoir(samples: list[float], value: float, seen: int) -> None:
    if len(samples) < MAX_SAMPLES:
        samples.append(value)
    else:
        j = random.randrange(seen)
        if j < MAX_SAMPLES:
            samples[j] = value


def _shard_main(shard: Shard, conn: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    tally = asyncio.run(_run_shard(shard))
    conn.send(tally)
    conn.close()


def run_bench(shard: Shard, processes: int = 1) -> Tally:
    """The whole run: one shard in this process, or ``processes`` shards (concurrency and rate split between)."""
    if processes <= 1:
        return asyncio.run(_run_shard(shard))
    shards = []
    for p in range(processes):
        c = shard.concurrency // processes + (1 if p < shard.concurrency % processes else 0)
        if c:
            shards.append(Shard(**{**shard.__dict__, "concurrency": c, "rps": shard.rps * c / shard.concurrency}))
    ctx = mp.get_context("fork")
    pipes, procs = [], []
    for s in shards:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_shard_main, args=(s, child), daemon=True)
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    total = Tally()
    for parent, proc in zip(pipes, procs):
        total.merge(parent.recv())
        proc.join()
    return total


def summary(t: Tally) -> dict[str, Any]:
    done = t.seen
    window = t.window_s or 1.0
    ms = [v * 1000 for v in t.latencies]
    tt = [v * 1000 for v in t.ttfts]
    return {
        "requests": done, "errors": sum(t.errors.values()), "error_kinds": t.errors, "late_starts": t.late,
        "throughput_rps": done / window, "completion_tokens_per_s": t.completion_tokens / window,
        "latency_ms": {q: percentile(ms, p) for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "ttft_ms": {q: percentile(tt, p) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))} if tt else None,
        "window_s": window,
    }


def render(s: dict[str, Any], shard: Shard) -> str:
    mode = f"open loop at {shard.rps:g} req/s" if shard.rps else "closed loop"
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"
    lat = s["latency_ms"]
    lines = [f"{shard.url}{shard.path}: {mode}, concurrency {shard.concurrency}, {s['window_s']:.1f} s measured"
             + (", streamed" if shard.stream else ""),
             f"  requests   {s['requests']} ok, {s['errors']} errors" + (f" {s['error_kinds']}" if s["errors"] else "")
             + (f", {s['late_starts']} started late (all slots busy)" if s["late_starts"] else ""),
             f"  throughput {s['throughput_rps']:.1f} req/s, {s['completion_tokens_per_s']:.1f} completion tokens/s",
             f"  latency ms p50 {ms(lat['p50'])}  p90 {ms(lat['p90'])}  p99 {ms(lat['p99'])}  max {ms(lat['max'])}"]
    if s["ttft_ms"]:
        t = s["ttft_ms"]
        lines.append(f"  TTFT ms    p50 {ms(t['p50'])}  p90 {ms(t['p90'])}  p99 {ms(t['p99'])}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="the endpoint's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--concurrency", "-c", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--duration", "-d", type=float, default=10.0, help="seconds measured (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds run before measuring (default 1)")
    p.add_argument("--rps", type=float, default=0.0, help="open loop: requests started per second (default: closed loop)")
    p.add_argument("--stream", action="store_true", help="stream the answers (measures time to first token)")
    p.add_argument("--model", default="auto")
    p.add_argument("--prompt", default="Say hello.")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--api-key", default=os.environ.get("HYBRID_API_KEY", ""))
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="an extra request header")
    p.add_argument("--path", default="/chat/completions", help="appended to --url (default /chat/completions)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    p.add_argument("--processes", type=int, default=1, help="generator processes (default 1)")
    p.add_argument("--json", help="also write the figures as JSON here")


def run(args: argparse.Namespace) -> int:
    if args.concurrency < 1 or args.duration <= 0 or args.processes < 1 or args.rps < 0:
        print("hybrid bench: --concurrency and --processes must be >= 1, --duration > 0, --rps >= 0", file=sys.stderr)
        return 2
    headers = {"content-type": "application/json", "cache-control": "no-store"}
    if args.api_key:
        headers["authorization"] = f"Bearer {args.api_key}"
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            print(f"hybrid bench: --header {h!r}: expected NAME:VALUE", file=sys.stderr)
            return 2
        headers[name.strip().lower()] = value.strip()
    body: dict[str, Any] = {"model": args.model, "messages": [{"role": "user", "content": args.prompt}],
                            "max_tokens": args.max_tokens, "stream": args.stream}
    if args.stream:
        body["stream_options"] = {"include_usage": True}
    try:
        http1.Pool(args.url)
    except ValueError as exc:
        print(f"hybrid bench: --url: {exc}", file=sys.stderr)
        return 2
    shard = Shard(args.url, orjson.dumps(body), headers, args.stream, args.concurrency, args.duration, args.rps,
                  args.warmup, args.timeout, args.path)
    print(f"hybrid bench: {args.warmup:g} s warm-up, then {args.duration:g} s ...", file=sys.stderr)
    s = summary(run_bench(shard, args.processes))
    print(render(s, shard))
    if args.json:
        with open(args.json, "wb") as fh:
            fh.write(orjson.dumps(s, option=orjson.OPT_INDENT_2))
    return 0 if s["requests"] else 1
