#!/usr/bin/env python3
"""The response cache, measured: semantic precision/recall on the labelled pairs, exact-hit latency end to end,
and semantic lookup latency with 100,000 entries.

1. Quality: every pair of tests/data/cache_pairs.txt (true paraphrases, and hard negatives that differ by a
   number, a negation, an entity, a unit, a polarity word or the language) is embedded as the cache embeds a
   conversation; a pair "hits" when the cosine reaches the threshold and the guard lets it through. Targets at
   the default threshold: >= 80% of paraphrases hit, <= 1% of hard negatives hit.
2. Exact hits end to end: wrk against a router whose upstream is nginx answering instantly, in the same run:
   nginx direct, a pass-through miss (Cache-Control: no-store) and an exact hit. Target: hit p99 <= 2 ms at
   10 connections.
3. Semantic lookups (embedding included) with 100,000 entries in the SQLite store's index. Target p99 <= 15 ms;
   the embedding alone is measured in the same run as the baseline.

    python scripts/bench_cache.py [--skip-http] [--entries 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hybrid.cache.guard import disagreement  # noqa: E402
from hybrid.config import CacheConfig  # noqa: E402

PAIRS = ROOT / "tests" / "data" / "cache_pairs.txt"  # the tuning set: the guard was written against it
SEALED = ROOT / "tests" / "data" / "cache_pairs_sealed.txt"  # written apart, never tuned on: the headline


def load_pairs(path: Path = PAIRS) -> list[tuple[str, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            kind, a, b = (p.strip() for p in line.split("||"))
            out.append((kind, a, b))
    return out


def _scores(embedder, pairs: list[tuple[str, str, str]]) -> tuple[np.ndarray, list[str | None]]:  # type: ignore[no-untyped-def]
    texts = [f"user: {t}" for _, a, b in pairs for t in (a, b)]
    vecs = embedder.embed_sync(texts)
    sims = np.einsum("ij,ij->i", vecs[0::2], vecs[1::2])
    return sims, [disagreement(f"user: {a}", f"user: {b}") for _, a, b in pairs]


def headline(embedder, threshold: float) -> list[str]:  # type: ignore[no-untyped-def]
    """Tuning and sealed figures side by side at the default threshold: the sealed row is the one users meet."""
    out = [f"default threshold {threshold}; a pair hits when its cosine reaches it and the guard lets it through", "",
           "| set | pairs | paraphrases hit (target >= 80%) | near-misses hit (target <= 1%) |",
           "| --- | ---: | ---: | ---: |"]
    for label, path in (("tuning (cache_pairs.txt, in-sample)", PAIRS), ("sealed (cache_pairs_sealed.txt)", SEALED)):
        pairs = load_pairs(path)
        sims, guard = _scores(embedder, pairs)
        hits = [bool(s >= threshold and g is None) for s, g in zip(sims, guard)]
        para = [h for h, (k, _, _) in zip(hits, pairs) if k == "paraphrase"]
        neg = [h for h, (k, _, _) in zip(hits, pairs) if k != "paraphrase"]
        out.append(f"| {label} | {len(pairs)} | {sum(para)}/{len(para)} = {sum(para) / len(para):.1%} | "
                   f"{sum(neg)}/{len(neg)} = {sum(neg) / len(neg):.1%} |")
    return out


def quality(embedder, threshold: float, path: Path = PAIRS) -> list[str]:  # type: ignore[no-untyped-def]
    pairs = load_pairs(path)
    sims, guard = _scores(embedder, pairs)
    kinds = sorted({k for k, _, _ in pairs})
    out = [f"{path.name}: {len(pairs)} labelled pairs ({sum(k == 'paraphrase' for k, _, _ in pairs)} paraphrases); "
           f"default threshold {threshold}", ""]
    out += ["| threshold | paraphrases hit | hard negatives hit | negatives hit without the guard |",
            "| ---: | ---: | ---: | ---: |"]
    for t in sorted({0.80, 0.85, 0.88, 0.90, 0.92, 0.95, threshold}):
        para = [i for i, (k, _, _) in enumerate(pairs) if k == "paraphrase"]
        neg = [i for i, (k, _, _) in enumerate(pairs) if k != "paraphrase"]
        p_hit = sum(1 for i in para if sims[i] >= t and guard[i] is None)
        n_hit = sum(1 for i in neg if sims[i] >= t and guard[i] is None)
        n_raw = sum(1 for i in neg if sims[i] >= t)
        mark = " (default)" if t == threshold else ""
        out.append(f"| {t:.2f}{mark} | {p_hit}/{len(para)} = {p_hit / len(para):.1%} | "
                   f"{n_hit}/{len(neg)} = {n_hit / len(neg):.1%} | {n_raw / len(neg):.1%} |")
    out += ["", "By kind at the default threshold (share that hits):", "",
            "| kind | pairs | hit | median cosine |", "| --- | ---: | ---: | ---: |"]
    for kind in kinds:
        idx = [i for i, (k, _, _) in enumerate(pairs) if k == kind]
        hit = sum(1 for i in idx if sims[i] >= threshold and guard[i] is None)
        out.append(f"| {kind} | {len(idx)} | {hit / len(idx):.1%} | {float(np.median(sims[idx])):.3f} |")
    misses = [(pairs[i][1], pairs[i][2], float(sims[i]), guard[i]) for i, (k, _, _) in enumerate(pairs)
              if k != "paraphrase" and sims[i] >= threshold and guard[i] is None]
    for a, b, s, _ in misses:
        out.append(f"  negative that hit: {a!r} ~ {b!r} ({s:.3f})")
    return out


async def semantic_latency(embedder, entries: int) -> list[str]:  # type: ignore[no-untyped-def]
    from hybrid.cache.cache import ResponseCache
    from hybrid.cache.sqlite_store import SCHEMA, SqliteCacheStore
    from hybrid.protocol import parse_chat_request

    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    db = work / "cache.sqlite3"
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)
    cfg = CacheConfig()
    pairs = [p for p in load_pairs() if p[0] == "paraphrase"]
    stored = [f"user: {a}" for _, a, _ in pairs]
    real = embedder.embed_sync(stored)
    from hybrid.cache.keys import params_key
    from hybrid.cache.policy import decide

    probe = parse_chat_request({"model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": 0})
    policy = decide(probe, "bench", None, None, cfg.ttl_s, True, [])
    partition = policy.scope + params_key(probe)
    rng = np.random.default_rng(0)
    fill = rng.standard_normal((entries - len(stored), real.shape[1])).astype(np.float32)
    fill /= np.linalg.norm(fill, axis=1, keepdims=True)
    answer = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "cached"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
    now, far = time.time(), time.time() + 86400
    rows = [(f"real{i}", partition, "default", t, answer, v.tobytes(), now, far, now) for i, (t, v) in enumerate(zip(stored, real))]
    rows += [(f"fill{i}", partition, "default", f"filler {i}", answer, v.tobytes(), now, far, now) for i, v in enumerate(fill)]
    conn.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()

    store = SqliteCacheStore(db, max_entries=entries * 2, dim=real.shape[1])
    t0 = time.perf_counter()
    await store.start()
    await store.index_ready.wait()
    build_s = time.perf_counter() - t0
    cache = ResponseCache(cfg, store, embedder)
    embed_ms, lookup_ms, hits = [], [], 0
    queries = [b for _, _, b in pairs] * 4
    for q in queries[:20]:  # warm-up
        await embedder.embed([q])
    for q in queries:
        req = parse_chat_request({"model": "auto", "messages": [{"role": "user", "content": q}], "temperature": 0})
        t = time.perf_counter()
        await embedder.embed([f"user: {q}"])
        embed_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        found = await cache.lookup(req, "bench", None, None)
        lookup_ms.append((time.perf_counter() - t) * 1000)
        hits += found.status == "hit-semantic"
    await store.close()

    def pct(xs: list[float], p: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]

    return [
        f"{entries} entries in one partition ({len(stored)} real questions, the rest random unit vectors); "
        f"index rebuilt from SQLite at start in {build_s:.1f}s; {len(queries)} paraphrase queries, "
        f"{hits / len(queries):.0%} semantic hits",
        "",
        "| step | p50 (ms) | p99 (ms) |",
        "| --- | ---: | ---: |",
        f"| embedding only (MiniLM, CPU) | {pct(embed_ms, 0.5):.2f} | {pct(embed_ms, 0.99):.2f} |",
        f"| whole semantic lookup (embedding + exact miss + KNN + re-score + guard) | {pct(lookup_ms, 0.5):.2f} | "
        f"{pct(lookup_ms, 0.99):.2f} |",
    ]


def http_latency(duration: int, connections: int, rate: int) -> list[str]:
    from scripts.bench_overhead import REQUEST, start_nginx, start_static_router, wrk

    work = Path(tempfile.mkdtemp(prefix="bench-cache-http-"))
    nginx, upstream = start_nginx(work)
    req = dict(REQUEST, temperature=0)
    router = None
    try:
        router = start_static_router(upstream, work)
        import httpx

        httpx.post(router.url + "/v1/chat/completions", json=req)  # store it
        post = f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[{json.dumps(req)}]]\n'
        paced = f"function delay()\n  return math.random() * {2000 * connections / rate:.3f}\nend\n"
        scripts = {}
        for name, headers in (("hit", ""), ("miss", 'wrk.headers["Cache-Control"] = "no-store"\n')):
            for kind, extra in (("paced", paced), ("max", "")):
                p = work / f"{name}-{kind}.lua"
                p.write_text(post + headers + extra)
                scripts[(name, kind)] = p
        res: dict[str, dict[str, float]] = {}
        for name, url, key in (("nginx direct", upstream, "miss"), ("router, pass-through (no-store)", router.url, "miss"),
                               ("router, exact cache hit", router.url, "hit")):
            wrk(url, scripts[(key, "max")], 2, connections)
            lat = wrk(url, scripts[(key, "paced")], duration, connections)
            top = wrk(url, scripts[(key, "max")], duration, connections)
            res[name] = {"p50": lat["p50"], "p99": lat["p99"], "rps": top["rps"]}
        hit_check = httpx.post(router.url + "/v1/chat/completions", json=req).headers["x-hybrid-cache"]
    finally:
        if router is not None:
            router.stop()
        nginx.terminate()
        nginx.wait()
    out = [f"wrk 1 thread, {connections} connections, {duration}s per run; latency at {rate} requests/s offered, "
           f"throughput flat out (last response: x-hybrid-cache: {hit_check})", "",
           "| path | p50 (ms) | p99 (ms) | max requests/s |", "| --- | ---: | ---: | ---: |"]
    out += [f"| {n} | {r['p50']:.3f} | {r['p99']:.3f} | {r['rps']:.0f} |" for n, r in res.items()]
    return out


def budget_simulation(embedder, threshold: float, budget: float, rounds: int = 20) -> list[str]:  # type: ignore[no-untyped-def]
    """The online error budget (hybrid/cache/audit.py) on the sealed pairs as traffic: each pair is a cached
    question and a later one, in one partition, in a shuffled order, ``rounds`` times over; a hit is audited at
    the given rate, and an audit knows whether the pair was a paraphrase. Reported: the wrong hits served on the
    way, and where the threshold settles with what it then serves."""
    import random

    from hybrid.cache.audit import SemanticAudit

    pairs = load_pairs(SEALED)
    sims, guard = _scores(embedder, pairs)
    passes = [(float(s), k == "paraphrase") for s, g, (k, _, _) in zip(sims, guard, pairs) if g is None]
    n_para = sum(k == "paraphrase" for k, _, _ in pairs)
    n_neg = len(pairs) - n_para
    out = [f"sealed pairs as traffic, {rounds} rounds of {len(pairs)} requests in one partition, shuffled (seed 0); "
           f"budget {budget:.0%}; start threshold {threshold}", "",
           "| audit rate | wrong hits served (share of all hits) | audits | settled threshold | then: paraphrases hit | "
           "then: near-misses hit |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for rate in (0.05, 0.2, 1.0):
        rng = random.Random(0)
        audit = SemanticAudit(budget, rate, threshold, rng=random.Random(1))
        wrong = hits = 0
        for _ in range(rounds):
            order = list(passes)
            rng.shuffle(order)
            for s, right in order:
                if s < audit.threshold("p"):
                    continue
                hits += 1
                wrong += int(not right)
                if audit.should_audit():
                    audit.record("p", s, not right)
                    audit.done()
        t = audit.threshold("p")
        para = sum(1 for s, right in passes if right and s >= t)
        neg = sum(1 for s, right in passes if not right and s >= t)
        out.append(f"| {rate:.0%} | {wrong} ({wrong / max(1, hits):.1%}) | {audit.audited} | {t:.4f} | "
                   f"{para}/{n_para} = {para / n_para:.1%} | {neg}/{n_neg} = {neg / n_neg:.1%} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--skip-http", action="store_true", help="skip the wrk runs (no nginx/wrk here)")
    ap.add_argument("--quality-only", action="store_true", help="only the labelled pairs, no latency runs")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--rate", type=int, default=1000)
    args = ap.parse_args()
    from hybrid.cache.embeddings import LocalMiniLM

    embedder = LocalMiniLM()
    embedder.load()
    threshold = CacheConfig().similarity_threshold
    print("## Semantic quality\n")
    print("\n".join(headline(embedder, threshold)))
    print()
    print("\n".join(quality(embedder, threshold, SEALED)))
    print()
    print("\n".join(quality(embedder, threshold)))
    print("\n## The error budget on the sealed pairs\n")
    print("\n".join(budget_simulation(embedder, threshold, CacheConfig().semantic_error_budget)))
    if args.quality_only:
        return 0
    print("\n## Semantic lookup latency\n")
    print("\n".join(asyncio.run(semantic_latency(embedder, args.entries))))
    if not args.skip_http:
        print("\n## Exact hits end to end\n")
        print("\n".join(http_latency(args.duration, args.connections, args.rate)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
