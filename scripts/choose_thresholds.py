#!/usr/bin/env python3
"""Choose a pair model's thresholds on labelled sets it never trained on, by the grid and bounds every rule since
060b11c has used (README "How the default was chosen"), with the sibling count of ef80f53.

A setting is one band (cosine >= s and verifier >= p) or two (also cosine in [s0, s) with verifier >= p0 >= p):
s in {0.60 ... 0.85}, p in {0.50 ... 0.99}, s0 in {0.55 ... 0.70} below s, p0 in {0.90 ... 0.995}; no band starts
below ``--floor``. Among the settings whose near-misses served are at most 1% of the pooled near-misses and whose
sibling questions served (pairs of different lines at a cosine of 0.55 or more, the sets' own near-misses not among
them) are at most 2% of the pooled sibling pairs at a cosine of 0.65 or more, the one with the most paraphrases
wins; ties go to fewer near-misses, then fewer siblings, then higher thresholds. The sets are pooled: each is
scored on its own (its siblings are its own lines) and the counts are added.

    python scripts/choose_thresholds.py --weights hybrid/cache/data/verifier_mpnet.npz \
        tests/data/cache_pairs_sealed_v8.txt tests/data/cache_pairs_sealed_v12.txt

Never give it a set still sealed: what it reads, it tunes on.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hybrid.config import CacheConfig  # noqa: E402
from scripts.bench_cache import Scored, served  # noqa: E402

SIMS = (0.60, 0.65, 0.70, 0.75, 0.80, 0.85)
BARS = (0.50, 0.70, 0.80, 0.90, 0.95, 0.98, 0.99)
LOW_SIMS = (0.55, 0.60, 0.65, 0.70)
LOW_BARS = (0.90, 0.95, 0.98, 0.99, 0.995)
NEAR_MISS_BOUND = 0.01  # of the pooled near-misses
SIBLING_BOUND = 0.02  # of the pooled sibling pairs at a cosine of SIBLING_BASE or more
SIBLING_BASE = 0.65


@dataclass(frozen=True)
class Setting:
    config: CacheConfig
    paraphrases: int
    near_misses: int
    siblings: int

    def key(self) -> tuple[int, int, int, float, float, float, float]:
        c = self.config
        return (self.paraphrases, -self.near_misses, -self.siblings, c.similarity_threshold, c.verifier_threshold,
                c.close_similarity, c.close_verifier_threshold)

    def describe(self) -> str:
        c = self.config
        bands = f"{c.similarity_threshold:.2f} / {c.verifier_threshold}"
        if c.close_similarity > c.similarity_threshold:
            bands += f", {c.close_verifier_threshold} from {c.close_similarity:.2f}"
        return f"{bands}: {self.paraphrases} paraphrases, {self.near_misses} near-misses, {self.siblings} sibling pairs"


def settings(floor: float) -> list[CacheConfig]:
    """Every setting of the grid whose lowest band starts at ``floor`` or above."""
    out = [CacheConfig(similarity_threshold=s, verifier_threshold=p, close_similarity=s, close_verifier_threshold=p)
           for s, p in itertools.product(SIMS, BARS) if s >= floor]
    out += [CacheConfig(similarity_threshold=s0, verifier_threshold=p0, close_similarity=s, close_verifier_threshold=p)
            for s, p, s0, p0 in itertools.product(SIMS, BARS, LOW_SIMS, LOW_BARS) if floor <= s0 < s and p0 >= p]
    return out


def evaluate(sets: list[Scored], cfg: CacheConfig) -> Setting:
    para = near = sib = 0
    for sc in sets:
        hit = sc.hits(cfg.similarity_threshold, cfg)
        para += int(hit[sc.para].sum())
        near += int(hit[~sc.para].sum())
        sib += int(served(*sc.sib, cfg.similarity_threshold, cfg).sum())
    return Setting(cfg, para, near, sib)


def choose(sets: list[Scored], floor: float) -> tuple[Setting | None, list[Setting], tuple[int, int]]:
    """The winning setting (None when none meets the bounds), every setting that meets them (best first), and the
    bounds as counts (near-misses, sibling pairs)."""
    n_near = sum(int((~sc.para).sum()) for sc in sets)
    n_sib = sum(int((sc.sib[0] >= SIBLING_BASE).sum()) for sc in sets)
    max_near, max_sib = int(np.floor(NEAR_MISS_BOUND * n_near + 1e-9)), int(np.floor(SIBLING_BOUND * n_sib + 1e-9))
    ok = [s for s in (evaluate(sets, c) for c in settings(floor)) if s.near_misses <= max_near and s.siblings <= max_sib]
    ok.sort(key=Setting.key, reverse=True)
    return (ok[0] if ok else None), ok, (max_near, max_sib)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", type=Path, help="labelled pair files the pair model never trained on")
    ap.add_argument("--weights", type=Path, required=True, help="the pair model's .npz")
    ap.add_argument("--float32", action="store_true", help="the pair model in float32 (default: int8)")
    ap.add_argument("--embedder", choices=("int8", "float32"), default="int8")
    ap.add_argument("--floor", type=float, default=0.60, help="no band below this cosine (the latency bound's)")
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    from hybrid.cache.embeddings import LocalMiniLM
    from hybrid.cache.verifier import PairVerifier

    embedder = LocalMiniLM(int8=args.embedder == "int8")
    verifier = PairVerifier(args.weights, int8=not args.float32)
    embedder.load()
    verifier.load()
    sets = [Scored(embedder, verifier, path) for path in args.sets]
    best, ok, (max_near, max_sib) = choose(sets, args.floor)
    n_para = sum(int(sc.para.sum()) for sc in sets)
    print(f"{args.weights.name} ({'float32' if args.float32 else 'int8'}), {args.embedder} embedder, on "
          f"{', '.join(p.name for p in args.sets)}: {n_para} paraphrases; bounds: at most {max_near} near-misses and "
          f"{max_sib} sibling pairs; floor {args.floor}")
    if best is None:
        print("no setting meets the bounds")
        return 1
    print(f"chosen: {best.describe()} ({best.paraphrases / n_para:.1%} of paraphrases)")
    for s in ok[1:args.top]:
        print(f"  then: {s.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
