#!/usr/bin/env python3
"""What a routing decision costs, per kind of request, against parsing the same request in the same run.

The gateway of the embedded default's shape (the bundled model as the local tier with a 2,048-token context, a
cloud tier that is never called) decides ``model: "auto"`` for each request kind many times over; every decision
gets a freshly parsed request, so nothing is remembered between them. Parsing the JSON body into a validated
request, which every request pays anyway, is the baseline. Target: well under a millisecond per decision.

    python scripts/bench_routing.py [--iterations 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hybrid.backends import create_backend  # noqa: E402
from hybrid.config import BackendConfig, Config, RoutingConfig  # noqa: E402
from hybrid.gateway import Gateway  # noqa: E402
from hybrid.protocol import parse_chat_request, parse_json_body  # noqa: E402

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CODE = "Why does this fail?\n```python\ndef f(xs):\n    return sorted(xs, key=lambda x: x.name)\n```\n"
TURNS = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn {i}: tell me more about that."}
         for i in range(12)]
LONG = "Summarise the following meeting notes for the team. " + "We agreed to ship the release on Friday. " * 150

KINDS: list[tuple[str, dict[str, Any]]] = [
    ("short chat", {"messages": [{"role": "user", "content": "What is the capital of France?"}]}),
    ("code question", {"messages": [{"role": "user", "content": CODE}]}),
    ("tools", {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [TOOL]}),
    ("12 turns", {"messages": TURNS}),
    ("6 KB prompt (counted, reused)", {"messages": [{"role": "user", "content": LONG}]}),
    ("60 KB prompt (sampled)", {"messages": [{"role": "user", "content": LONG * 10}]}),
]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


SCORERS = [("learned", False), ("learned + cache embedding", True), ("heuristic", False)]


async def measure(iterations: int) -> list[tuple[str, str, float, float, float, float, str]]:
    local = BackendConfig(name="cpu", kind="llamacpp", tier="local", model="gemma-3-270m", context=2048, threads=1)
    cloud = BackendConfig(name="cloud", kind="openai", tier="cloud", base_url="http://127.0.0.1:9/v1", models=["big"])
    rows = []
    # a stand-in for the vector the semantic cache computed: the scorer's cost does not depend on its values
    vector = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    vector /= np.linalg.norm(vector)
    for scorer, with_vector in SCORERS:
        config = Config(backends=[local, cloud], routing=RoutingConfig(scorer=scorer.split(" ")[0]))
        gateway = Gateway(config, [create_backend(local), create_backend(cloud)])
        await gateway.start()
        try:
            for name, fields in KINDS:
                body = orjson.dumps({"model": "auto", "max_tokens": 64, **fields})
                parse_us, route_us = [], []
                reason = ""
                for _ in range(iterations):
                    t0 = time.perf_counter()
                    req = parse_chat_request(parse_json_body(body))
                    t1 = time.perf_counter()
                    decision = await gateway.router.route(req, None, vector if with_vector else None)
                    t2 = time.perf_counter()
                    parse_us.append((t1 - t0) * 1e6)
                    route_us.append((t2 - t1) * 1e6)
                    reason = decision.reason
                rows.append((scorer, name, percentile(parse_us, 0.5), percentile(route_us, 0.5),
                             percentile(route_us, 0.99), percentile(route_us, 0.5) / percentile(parse_us, 0.5), reason))
        finally:
            await gateway.stop()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=2000)
    args = ap.parse_args()
    rows = asyncio.run(measure(args.iterations))
    print(f"\n{args.iterations} decisions per kind, one core; the local tier's context is 2,048 tokens\n")
    print("| scorer | request | parse p50 (us) | route p50 (us) | route p99 (us) | route / parse | decision |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for scorer, name, parse50, route50, route99, ratio, reason in rows:
        print(f"| {scorer} | {name} | {parse50:.1f} | {route50:.1f} | {route99:.1f} | {ratio:.1f}x | `{reason}` |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
