#!/usr/bin/env python3
"""How well each routing scorer splits routine from hard prompts it never saw (the sealed split).

Reads tests/data/routing_prompts_sealed.tsv, written apart from the training prompts and never used to train or
tune; prints, per scorer, the share of routine prompts kept on the local tier and of hard prompts sent to the
cloud tier at the configured threshold (0.5), beside the training split's 5-fold cross-validated figures. Each
prompt goes through the same request parsing and feature extraction as a live request.

    python scripts/bench_routing_quality.py [--threshold 0.5] [--misses]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hybrid.protocol import parse_chat_request  # noqa: E402
from hybrid.routing.features import extract_features  # noqa: E402
from hybrid.routing.learned import LearnedScorer  # noqa: E402
from hybrid.routing.scoring import HeuristicScorer  # noqa: E402
from hybrid.routing.training import embed_prompts, figures, load_prompts  # noqa: E402

SEALED = Path(__file__).resolve().parent.parent / "tests/data/routing_prompts_sealed.tsv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--misses", action="store_true", help="list the sealed prompts each scorer routes wrong")
    args = parser.parse_args()
    sealed = load_prompts(SEALED)
    labels = [e.label for e in sealed]
    vectors = embed_prompts([e.text for e in sealed])
    learned = LearnedScorer()
    meta = learned.model.meta
    heuristic = HeuristicScorer()
    rows: list[tuple[str, list[float], dict[str, float] | None]] = []
    feats = [extract_features(parse_chat_request({"model": "auto", "messages": [{"role": "user", "content": e.text}]}))
             for e in sealed]
    rows.append(("heuristic", [heuristic.score(f) for f in feats], None))
    rows.append(("learned, lexical (default)", [learned.score(f) for f in feats], meta.get("cv5_lexical")))
    if vectors is not None and learned.model.embedding is not None:
        with_vec = [extract_features(parse_chat_request({"model": "auto", "messages": [{"role": "user", "content": e.text}]}),
                                     v.astype("float32")) for e, v in zip(sealed, vectors)]
        rows.append(("learned, + cache's MiniLM embedding", [learned.score(f) for f in with_vec],
                     meta.get("cv5_embedding")))
    n_routine, n_hard = labels.count(0), labels.count(1)
    print(f"sealed split: {len(sealed)} prompts ({n_routine} routine, {n_hard} hard); training split: "
          f"{meta.get('examples')} prompts, figures from 5-fold cross-validation; threshold {args.threshold}")
    print()
    print("| scorer | sealed: routine kept local | sealed: hard sent to cloud | training (CV): routine local | training (CV): hard to cloud |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, scores, cv in rows:
        f = figures(labels, scores, args.threshold)
        cv_cells = ("-", "-") if cv is None else (f"{cv['routine_local']:.1%}", f"{cv['hard_cloud']:.1%}")
        print(f"| {name} | {f.routine_local:.1%} ({round(f.routine_local * f.n_routine)}/{f.n_routine}) | "
              f"{f.hard_cloud:.1%} ({round(f.hard_cloud * f.n_hard)}/{f.n_hard}) | {cv_cells[0]} | {cv_cells[1]} |")
    if args.misses:
        for name, scores, _ in rows[1:]:
            print(f"\n{name}: routed wrong")
            for e, s in zip(sealed, scores):
                if (s >= args.threshold) != bool(e.label):
                    print(f"  {'hard' if e.label else 'routine'} {s:.2f} [{e.domain}] {e.text[:110]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
