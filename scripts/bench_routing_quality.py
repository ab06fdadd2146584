#!/usr/bin/env python3
"""How well each routing scorer splits routine from hard prompts it never saw (the sealed splits).

Two sealed splits, both written apart from the training prompts and never used to train or tune:
tests/data/routing_prompts_sealed_v2.tsv (the headline: written before the training prompts that answered v1's
misses were added) and tests/data/routing_prompts_sealed.tsv (v1: its misses have been looked at, so it is
reported as seen). Prints, per scorer and split, the share of routine prompts kept on the local tier and of
hard prompts sent to the cloud tier at the configured threshold (0.5), beside the training split's 5-fold
cross-validated figures. Each prompt goes through the same request parsing and feature extraction as a live
request.

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

DATA = Path(__file__).resolve().parent.parent / "tests/data"
SPLITS = [("sealed v2", DATA / "routing_prompts_sealed_v2.tsv"), ("sealed v1 (seen)", DATA / "routing_prompts_sealed.tsv")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--misses", action="store_true", help="list the sealed prompts each scorer routes wrong")
    args = parser.parse_args()
    learned = LearnedScorer()
    meta = learned.model.meta
    heuristic = HeuristicScorer()
    print(f"training split: {meta.get('examples')} prompts, figures from 5-fold cross-validation; threshold "
          f"{args.threshold}")
    print()
    print("| scorer | split | routine kept local | hard sent to cloud | training (CV): routine local | training (CV): hard to cloud |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    misses: list[str] = []
    for split, path in SPLITS:
        sealed = load_prompts(path)
        labels = [e.label for e in sealed]
        vectors = embed_prompts([e.text for e in sealed])
        requests = [parse_chat_request({"model": "auto", "messages": [{"role": "user", "content": e.text}]})
                    for e in sealed]
        feats = [extract_features(r) for r in requests]
        rows: list[tuple[str, list[float], dict[str, float] | None]] = [
            ("heuristic", [heuristic.score(f) for f in feats], None),
            ("learned, lexical (default)", [learned.score(f) for f in feats], meta.get("cv5_lexical")),
        ]
        if vectors is not None and learned.model.embedding is not None:
            with_vec = [extract_features(r, v.astype("float32")) for r, v in zip(requests, vectors)]
            rows.append(("learned, + cache's MiniLM embedding", [learned.score(f) for f in with_vec],
                         meta.get("cv5_embedding")))
        for name, scores, cv in rows:
            f = figures(labels, scores, args.threshold)
            cv_cells = ("-", "-") if cv is None else (f"{cv['routine_local']:.1%}", f"{cv['hard_cloud']:.1%}")
            print(f"| {name} | {split} ({len(sealed)}) | {f.routine_local:.1%} ({round(f.routine_local * f.n_routine)}"
                  f"/{f.n_routine}) | {f.hard_cloud:.1%} ({round(f.hard_cloud * f.n_hard)}/{f.n_hard}) | "
                  f"{cv_cells[0]} | {cv_cells[1]} |")
            if args.misses and name != "heuristic":
                misses.append(f"\n{name}, {split}: routed wrong")
                misses += [f"  {'hard' if e.label else 'routine'} {s:.2f} [{e.domain}] {e.text[:110]}"
                           for e, s in zip(sealed, scores) if (s >= args.threshold) != bool(e.label)]
    print("\n".join(misses))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
