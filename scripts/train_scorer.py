#!/usr/bin/env python3
"""Train the learned routing scorer on the shipped training prompts and write hybrid/routing/data/scorer.json.

Reads only hybrid/routing/data/prompts_train.tsv (never the sealed split in tests/data/): the penalty is chosen
by 5-fold cross-validation on the training prompts, and the figures printed are those folds'. With the semantic
extra installed the embedding head is trained too (MiniLM, as the cache embeds a request).

    python scripts/train_scorer.py [--out hybrid/routing/data/scorer.json] [--no-embedding]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hybrid.routing.training import embed_prompts, fit_model, shipped_prompts  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "hybrid/routing/data/scorer.json"))
    parser.add_argument("--no-embedding", action="store_true", help="train the lexical head only")
    args = parser.parse_args()
    examples = shipped_prompts()
    print(f"{len(examples)} training prompts ({sum(e.label for e in examples)} hard)")
    vectors = None if args.no_embedding else embed_prompts([e.text for e in examples])
    if vectors is None and not args.no_embedding:
        print("the semantic extra is not installed: lexical head only")
    model = fit_model(examples, vectors, progress=print)
    Path(args.out).write_bytes(model.to_bytes() + b"\n")
    print(f"chosen: {model.meta}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
