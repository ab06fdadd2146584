#!/usr/bin/env python3
"""Train the semantic-hit verifier and write hybrid/cache/data/verifier.npz.

Training pairs: hybrid/cache/data/verifier_pairs.txt and the tuning set tests/data/cache_pairs.txt, plus up to two
sibling questions per question (other questions on its topic, as near-misses). With --seen-sets, also the 229
reworded pairs of hybrid/cache/data/verifier_pairs_reworded.txt and the sealed sets v1-v7, v9-v11, v13 and v14,
whose figures have been seen (the mpnet pair model is trained so; the MiniLM one is not: for MiniLM, training on v1-v4 as
well lost on sealed v5, docs/design.md). v8 and v12 (the thresholds are chosen on them) and v15 (the headline) are
never read here: scripts/bench_cache.py measures them. With --restyle, every labelled pair written in one style is
trained once more with one side chat-typed (hybrid/cache/restyle.py), its label kept. With --init, training
continues a verifier file instead of starting from zero (the fourteenth session's candidate: the model of 79d08d7,
trained on v1-v7 and v9-v11, two epochs more at half the learning rate with v13 added; the sixteenth's: that,
two epochs more with v14 added).

    python scripts/train_verifier.py                      # train on every training pair, write the weights
    python scripts/train_verifier.py --cv 3 --cv-only     # 3-fold out-of-fold figures (the tuning figure)

    python scripts/train_verifier.py --base all-mpnet-base-v2 --seen-sets --sibling-cosine 0.45 --restyle \
        --out hybrid/cache/data/verifier_mpnet.npz   # the mpnet pair model of 79d08d7 (before v13 joined)
    python scripts/train_verifier.py --base all-mpnet-base-v2 --seen-sets --sibling-cosine 0.45 --restyle \
        --init hybrid/cache/data/verifier_mpnet.npz --epochs 2 --lr 2e-4 --out candidate.npz  # that, continued

A MiniLM training took about seven and a half minutes on what turned out to be one core (loading the embedder for
sibling questions set torch to one thread; training now keeps both); the mpnet one with --seen-sets and
--sibling-cosine 0.45 (4,425 pairs and 7,142 sibling pairs) takes about 67 minutes on two, and with --restyle (3,508
pairs more) about 114; two epochs continued with v13 (4,777 pairs, 7,789 sibling pairs) about 40. --cv trains k
more times on (k-1)/k of it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hybrid.cache.base_models import BASES  # noqa: E402
from hybrid.cache.verifier import TRAINING_PAIRS, WEIGHTS, as_cached, load_pairs  # noqa: E402
from hybrid.cache.verifier_training import OutOfFold, TrainSettings, out_of_fold, save, train  # noqa: E402

TUNING = ROOT / "tests" / "data" / "cache_pairs.txt"
REWORDED = TRAINING_PAIRS.with_name("verifier_pairs_reworded.txt")
# written to test earlier verifiers and seen since (in the order they were added); v8 and v12 (the thresholds) and
# v15 (the headline) are not here: a set trained on no longer measures anything
SEEN = [ROOT / "tests" / "data" / f"cache_pairs_sealed{v}.txt"
        for v in ("", "_v2", "_v3", "_v4", "_v5", "_v6", "_v7", "_v9", "_v10", "_v11", "_v13", "_v14")]


def training_pairs(seen_sets: bool = False) -> list[tuple[str, str, str]]:
    pairs = load_pairs(TUNING) + load_pairs(TRAINING_PAIRS)
    if seen_sets:
        pairs += load_pairs(REWORDED) + [p for path in SEEN for p in load_pairs(path)]
    return pairs


def cv_table(pairs: list[tuple[str, str, str]], oof: OutOfFold, sims: np.ndarray) -> list[str]:
    para = np.array([k == "paraphrase" for k, _, _ in pairs])
    out = [("| similarity threshold | verifier threshold | paraphrases hit | near-misses hit | sibling questions hit | "
            "retyped confirmed |"), "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for t in (0.65, 0.70, 0.75, 0.80, 0.85, 0.90):
        for v in (0.5, 0.9, 0.98):
            hit = (sims >= t) & (oof.scores >= v)
            sib = (oof.sibling_sims >= t) & (oof.sibling_scores >= v)
            out.append(f"| {t:.2f} | {v:.2f} | {hit[para].sum()}/{para.sum()} = {hit[para].mean():.1%} | "
                       f"{hit[~para].sum()}/{(~para).sum()} = {hit[~para].mean():.1%} | "
                       f"{sib.sum()}/{sib.size} = {sib.mean():.1%} | {(oof.again >= v).mean():.1%} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cv", type=int, default=0, help="k-fold out-of-fold figures before the final training")
    ap.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    ap.add_argument("--layers", type=int, default=TrainSettings.layers)
    ap.add_argument("--base", choices=sorted(BASES), default=TrainSettings.base, help="the pretrained encoder")
    ap.add_argument("--siblings", type=int, default=TrainSettings.siblings,
                    help="sibling questions per question as near-misses (0: none)")
    ap.add_argument("--sibling-cosine", type=float, default=TrainSettings.sibling_cosine,
                    help="the least MiniLM cosine at which another question counts as a sibling")
    ap.add_argument("--seen-sets", action="store_true",
                    help="also train on the reworded pairs and the seen sealed sets v1-v7 and v9-v11 (the mpnet pair "
                    "model)")
    ap.add_argument("--restyle", action="store_true",
                    help="also each pair written in one style with one side chat-typed (the mpnet pair model)")
    ap.add_argument("--init", type=Path, help="continue training this verifier file (same base, rank, layers)")
    ap.add_argument("--lr", type=float, default=TrainSettings.lr, help="the peak learning rate")
    ap.add_argument("--cv-only", action="store_true", help="the out-of-fold figures, no final training")
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--oof-out", type=Path, help="with --cv: also write the out-of-fold scores here (.npz)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    settings = TrainSettings(base=args.base, epochs=args.epochs, layers=args.layers, siblings=args.siblings,
                             sibling_cosine=args.sibling_cosine, restyle=args.restyle,
                             lr=args.lr, init=str(args.init) if args.init else None)
    pairs = training_pairs(args.seen_sets)
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"  [{time.perf_counter() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)

    print(f"{len(pairs)} training pairs ({sum(k == 'paraphrase' for k, _, _ in pairs)} paraphrases); {settings}")
    if args.cv:
        from hybrid.cache.embeddings import LocalMiniLM

        with tempfile.TemporaryDirectory(prefix="verifier-cv-") as work:
            oof = out_of_fold(pairs, args.cv, settings, Path(work), progress)
        embedder = LocalMiniLM()
        embedder.load()
        vecs = embedder.embed_sync([as_cached(t) for _, a, b in pairs for t in (a, b)])
        sims = np.einsum("ij,ij->i", vecs[0::2], vecs[1::2])
        print(f"\n{args.cv}-fold out-of-fold, training pairs (each scored by a verifier that did not see it):\n")
        print("\n".join(cv_table(pairs, oof, sims)))
        if args.oof_out:
            np.savez(args.oof_out, kinds=[k for k, _, _ in pairs], a=[x for _, x, _ in pairs],
                     b=[x for _, _, x in pairs], sims=sims, scores=oof.scores, again=oof.again,
                     sibling_sims=oof.sibling_sims, sibling_scores=oof.sibling_scores)
        if args.cv_only:
            return
    save(train(pairs, settings, progress), args.out)
    print(f"\nwrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
