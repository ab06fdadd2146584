#!/usr/bin/env python3
"""Tokens/s of the local tier through the router versus llama-cpp-python called directly.

Same model, threads, prompts and sampling (temperature 0, so both paths generate the same tokens), in one run,
rounds interleaved (direct, router, direct, router, ...) so machine noise hits both alike. Prints a Markdown
table; the target is router >= 0.95x direct.

    python scripts/bench_local.py [--rounds 3] [--max-tokens 128] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hybrid.backends.chat_templates import format_gemma  # noqa: E402
from hybrid.backends.gguf import bundled_model_path  # noqa: E402
from hybrid.backends.llamacpp import physical_cores  # noqa: E402
from tests.procs import start_router  # noqa: E402

PROMPTS = [
    "Explain what a hash table is.",
    "Write a short story about a lighthouse keeper.",
    "List some uses of copper.",
    "Describe the water cycle.",
]


def direct_round(llm, max_tokens: int) -> tuple[int, float]:
    tokens = 0
    start = time.perf_counter()
    for p in PROMPTS:
        fp = format_gemma([{"role": "user", "content": p}])
        out = llm.create_completion(fp.prompt, max_tokens=max_tokens, temperature=0.0, top_p=1.0, stop=fp.stop)
        tokens += out["usage"]["completion_tokens"]
    return tokens, time.perf_counter() - start


def router_round(url: str, max_tokens: int) -> tuple[int, float]:
    tokens = 0
    start = time.perf_counter()
    with httpx.Client(timeout=600) as http:
        for p in PROMPTS:
            body = {"model": "local", "messages": [{"role": "user", "content": p}], "max_tokens": max_tokens,
                    "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
            with http.stream("POST", url + "/v1/chat/completions", json=body) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            tokens += chunk["usage"]["completion_tokens"]
    return tokens, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--context", type=int, default=2048)
    args = ap.parse_args()

    from llama_cpp import Llama

    model = bundled_model_path()
    llm = Llama(model_path=str(model), n_ctx=args.context, n_threads=args.threads, n_threads_batch=args.threads,
                n_batch=512, verbose=False)
    config = f"""
[[backends]]
name = "cpu"
kind = "llamacpp"
model = "{model}"
context = {args.context}
threads = {args.threads}
chat_format = "gemma"

[cache]
backend = "off"  # the rounds repeat their prompts: measure generation, not cache hits
"""
    router = start_router(config, Path(tempfile.mkdtemp(prefix="bench-local-")))
    totals = {"direct": [0, 0.0], "router": [0, 0.0]}
    try:
        direct_round(llm, 8)  # warm both paths
        router_round(router.url, 8)
        for r in range(args.rounds):
            for name, fn in (("direct", lambda: direct_round(llm, args.max_tokens)), ("router", lambda: router_round(router.url, args.max_tokens))):
                toks, secs = fn()
                totals[name][0] += toks
                totals[name][1] += secs
                print(f"round {r + 1} {name:6s}: {toks} tokens in {secs:.2f}s = {toks / secs:.1f} tok/s", file=sys.stderr)
    finally:
        router.stop()
    d_rate = totals["direct"][0] / totals["direct"][1]
    r_rate = totals["router"][0] / totals["router"][1]
    print(f"\nbundled Gemma 3 270M Q4_K_M, {args.threads} thread(s), {len(PROMPTS)} prompts x {args.rounds} rounds, "
          f"max_tokens {args.max_tokens}, temperature 0\n")
    print("| path | completion tokens | seconds | tokens/s | vs direct |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| llama-cpp-python direct | {totals['direct'][0]} | {totals['direct'][1]:.2f} | {d_rate:.1f} | 1.00x |")
    print(f"| through hybrid (SSE, HTTP) | {totals['router'][0]} | {totals['router'][1]:.2f} | {r_rate:.1f} | {r_rate / d_rate:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
