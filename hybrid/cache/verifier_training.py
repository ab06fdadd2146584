"""Training the semantic-hit verifier (hybrid/cache/verifier.py): a low-rank update of MiniLM's linear layers and
a one-unit head, fitted on labelled pairs with both orders of each pair, by Adam on the binary cross-entropy.

Used by scripts/train_verifier.py (which writes hybrid/cache/data/verifier.npz) and by its cross-validation, the
figure the threshold is chosen on. Never given the sealed pairs."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.cache.verifier import TARGETS, PairVerifier, as_cached, encode_pairs, load_base, pooled_logit


@dataclass(frozen=True)
class TrainSettings:
    rank: int = 8
    layers: int = 6  # MiniLM's first N blocks: fewer is faster
    alpha: float = 16.0
    epochs: int = 6
    lr: float = 4e-4  # 1e-3 collapsed one fold of five to a constant
    batch: int = 16
    seed: int = 0


def examples(pairs: list[tuple[str, str, str]]) -> list[tuple[str, str, float]]:
    """Both orders of every pair: the cache's question may be either one."""
    out = []
    for kind, a, b in pairs:
        y = 1.0 if kind == "paraphrase" else 0.0
        out += [(as_cached(a), as_cached(b), y), (as_cached(b), as_cached(a), y)]
    return out


class _LowRank:
    """Wraps one nn.Linear: y = W x + b + scale * B (A x), with W and b frozen."""

    def __init__(self, torch: Any, linear: Any, rank: int, scale: float, gen: Any) -> None:
        out_f, in_f = linear.weight.shape
        self.A = torch.nn.Parameter(torch.randn(rank, in_f, generator=gen) / in_f**0.5)
        self.B = torch.nn.Parameter(torch.zeros(out_f, rank))
        self.scale = scale
        forward = linear.forward

        def patched(x: Any) -> Any:
            return forward(x) + self.scale * ((x @ self.A.T) @ self.B.T)

        linear.forward = patched


def attach(torch: Any, encoder: Any, rank: int, scale: float, gen: Any) -> dict[str, _LowRank]:
    """A low-rank update beside every targeted linear layer, named as verifier.npz names it."""
    return {f"{i}.{target}": _LowRank(torch, layer.get_submodule(target), rank, scale, gen)
            for i, layer in enumerate(encoder.encoder.layer) for target in TARGETS}


def train(pairs: list[tuple[str, str, str]], settings: TrainSettings = TrainSettings(),
          progress: Any = None) -> dict[str, Any]:
    """The update and head, as the arrays verifier.npz holds."""
    import torch

    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    tokenizer, encoder = load_base(settings.layers)
    for p in encoder.parameters():
        p.requires_grad_(False)
    scale = settings.alpha / settings.rank
    low = attach(torch, encoder, settings.rank, scale, gen)
    head_w = torch.nn.Parameter(torch.zeros(encoder.config.hidden_size))
    head_b = torch.nn.Parameter(torch.zeros(()))
    params = [p for lr in low.values() for p in (lr.A, lr.B)] + [head_w, head_b]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.01)
    data = examples(pairs)
    steps = settings.epochs * ((len(data) + settings.batch - 1) // settings.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(settings.seed)
    encoder.train()
    for epoch in range(settings.epochs):
        rng.shuffle(data)
        total = 0.0
        for start in range(0, len(data), settings.batch):
            batch = data[start : start + settings.batch]
            enc = encode_pairs(tokenizer, [(a, b) for a, b, _ in batch])
            logits = pooled_logit(encoder, head_w, head_b, enc)
            y = torch.tensor([t for _, _, t in batch])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
        if progress is not None:
            progress(f"epoch {epoch + 1}/{settings.epochs}: loss {total / len(data):.4f}")
    return pack(low, head_w, head_b, scale, settings.rank, settings.layers)


def pack(low: dict[str, _LowRank], head_w: Any, head_b: Any, scale: float, rank: int, layers: int) -> dict[str, Any]:
    """The arrays verifier.npz holds: the update in float16 (``{block}.{target}.A|B``) and the head."""
    out: dict[str, Any] = {
        "scale": np.float32(scale), "rank": np.int32(rank), "layers": np.int32(layers),
        "head_w": head_w.detach().numpy().astype(np.float32), "head_b": head_b.detach().numpy().astype(np.float32),
    }
    for name, lr_ in low.items():
        out[f"{name}.A"] = lr_.A.detach().numpy().astype(np.float16)
        out[f"{name}.B"] = lr_.B.detach().numpy().astype(np.float16)
    return out


def save(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.savez_compressed(fh, **state)


def out_of_fold(pairs: list[tuple[str, str, str]], folds: int, settings: TrainSettings, work: Path,
                progress: Any = None) -> np.ndarray:
    """Each pair scored by a verifier trained without it (k folds, stratified by kind)."""
    order = sorted(range(len(pairs)), key=lambda i: (pairs[i][0], random.Random(i).random()))
    fold_of = {i: n % folds for n, i in enumerate(order)}
    scores = np.zeros(len(pairs))
    for f in range(folds):
        train_idx = [i for i in range(len(pairs)) if fold_of[i] != f]
        test_idx = [i for i in range(len(pairs)) if fold_of[i] == f]
        state = train([pairs[i] for i in train_idx], settings)
        path = work / f"fold{f}.npz"
        save(state, path)
        v = PairVerifier(path, threads=2)
        v.load()
        scores[test_idx] = v.score_sync([(as_cached(pairs[i][1]), as_cached(pairs[i][2])) for i in test_idx])
        if progress is not None:
            progress(f"fold {f + 1}/{folds} done")
    return scores
