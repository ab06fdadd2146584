"""Training the learned scorer (hybrid/routing/learned.py) from labelled prompts.

Logistic regression with an L2 penalty, classes weighted equally, fitted by full-batch Adam in numpy (a few
hundred prompts and a few thousand features: seconds). The penalty is chosen by stratified 5-fold cross-validation
on the training prompts alone; the figures it reports are those folds' (the sealed split is never read here).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from hybrid.routing.learned import EMBEDDING_MODEL, Head, ScorerModel, text_features

LABELS = {"local": 0, "cloud": 1}
L2_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # per-example penalty strengths tried by cross-validation
MIN_COUNT = 2  # a feature seen in fewer training prompts carries no weight


@dataclass(frozen=True)
class Example:
    label: int  # 1: needs the capable tier
    domain: str
    text: str
    weight: float = 1.0


def parse_prompts(lines: Iterable[str], source: str = "prompts") -> list[Example]:
    """``label<TAB>domain<TAB>prompt`` lines; ``#`` comments and blank lines skipped; ``\\n`` in a prompt is a
    newline."""
    out = []
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] not in LABELS:
            raise ValueError(f"{source}:{n}: expected 'local|cloud<TAB>domain<TAB>prompt'")
        out.append(Example(LABELS[parts[0]], parts[1], parts[2].replace("\\n", "\n")))
    return out


def load_prompts(path: str | Path) -> list[Example]:
    with open(path, encoding="utf-8") as fh:
        return parse_prompts(fh, str(path))


def shipped_prompts() -> list[Example]:
    text = resources.files("hybrid.routing").joinpath("data/prompts_train.tsv").read_text("utf-8")
    return parse_prompts(text.splitlines(), "prompts_train.tsv")


def _fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float, steps: int = 1500) -> tuple[float, np.ndarray]:
    """Weighted logistic regression: mean weighted log-loss + l2/n * |coef|^2, by Adam (convex: it converges)."""
    n, d = x.shape
    coef = np.zeros(d, dtype=np.float64)
    bias = 0.0
    m = np.zeros(d + 1)
    v = np.zeros(d + 1)
    lr, b1, b2 = 0.05, 0.9, 0.999
    wsum = w.sum()
    for t in range(1, steps + 1):
        z = x @ coef + bias
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        r = w * (p - y) / wsum
        g = np.empty(d + 1)
        g[:d] = x.T @ r + 2 * l2 / n * coef
        g[d] = r.sum()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step = lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + 1e-8)
        coef -= step[:d]
        bias -= float(step[d])
    return bias, coef


class _Design:
    """Feature matrix of a set of texts over a vocabulary (rows scaled by 1/sqrt(feature count), as at inference)."""

    def __init__(self, feats: Sequence[list[str]], min_count: int = MIN_COUNT) -> None:
        counts: dict[str, int] = {}
        for fs in feats:
            for f in fs:
                counts[f] = counts.get(f, 0) + 1
        self.vocab = sorted(f for f, c in counts.items() if c >= min_count)
        self.index = {f: i for i, f in enumerate(self.vocab)}

    def matrix(self, feats: Sequence[list[str]]) -> np.ndarray:
        x = np.zeros((len(feats), len(self.vocab)))
        for row, fs in enumerate(feats):
            scale = 1.0 / math.sqrt(max(1, len(fs)))
            for f in fs:
                j = self.index.get(f)
                if j is not None:
                    x[row, j] = scale
        return x


def _weights(examples: Sequence[Example]) -> np.ndarray:
    """Each class carries half the total weight; within a class, examples keep their relative weights."""
    w = np.array([e.weight for e in examples], dtype=np.float64)
    y = np.array([e.label for e in examples])
    for label in (0, 1):
        mask = y == label
        if mask.any():
            w[mask] *= 0.5 * len(examples) / w[mask].sum()
    return w


def _train(examples: Sequence[Example], vectors: np.ndarray | None, l2: float) -> tuple[Head, Head | None]:
    feats = [text_features(e.text) for e in examples]
    design = _Design(feats)
    x = design.matrix(feats)
    y = np.array([e.label for e in examples], dtype=np.float64)
    w = _weights(examples)
    bias, coef = _fit(x, y, w, l2)
    lexical = Head(float(bias), {f: float(c) for f, c in zip(design.vocab, coef) if abs(c) >= 1e-4})
    if vectors is None:
        return lexical, None
    xe = np.hstack([x, vectors])
    bias_e, coef_e = _fit(xe, y, w, l2)
    k = len(design.vocab)
    embedding = Head(float(bias_e), {f: float(c) for f, c in zip(design.vocab, coef_e[:k]) if abs(c) >= 1e-4},
                     coef_e[k:].astype(np.float32))
    return lexical, embedding


@dataclass
class Figures:
    """How often each class is routed right at a threshold: routine prompts kept local, hard ones sent up."""

    routine_local: float
    hard_cloud: float
    n_routine: int
    n_hard: int

    @property
    def balanced(self) -> float:
        return (self.routine_local + self.hard_cloud) / 2


def figures(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> Figures:
    routine = [s for lab, s in zip(labels, scores) if lab == 0]
    hard = [s for lab, s in zip(labels, scores) if lab == 1]
    return Figures(sum(s < threshold for s in routine) / max(1, len(routine)),
                   sum(s >= threshold for s in hard) / max(1, len(hard)), len(routine), len(hard))


def _folds(examples: Sequence[Example], k: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for label in (0, 1):
        idx = [i for i, e in enumerate(examples) if e.label == label]
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[j % k].append(i)
    return folds


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


def cross_validate(examples: Sequence[Example], vectors: np.ndarray | None, l2: float,
                   k: int = 5) -> tuple[Figures, Figures | None]:
    """Out-of-fold figures of both heads (the embedding head's only when vectors are given)."""
    lex_scores = [0.0] * len(examples)
    emb_scores = [0.0] * len(examples)
    for fold in _folds(examples, k):
        held = set(fold)
        train_idx = [i for i in range(len(examples)) if i not in held]
        lexical, embedding = _train([examples[i] for i in train_idx],
                                    None if vectors is None else vectors[train_idx], l2)
        for i in fold:
            feats = text_features(examples[i].text)
            lex_scores[i] = _sigmoid(lexical.logit(feats))
            if embedding is not None and vectors is not None:
                emb_scores[i] = _sigmoid(embedding.logit(feats, vectors[i]))
    labels = [e.label for e in examples]
    return figures(labels, lex_scores), (figures(labels, emb_scores) if vectors is not None else None)


def embed_texts(texts: Sequence[str]) -> np.ndarray | None:
    """MiniLM embeddings of texts already in the cache's form (``conversation_text``); None without the extra."""
    from hybrid.cache.embeddings import EmbedderUnavailable, LocalMiniLM

    try:
        embedder = LocalMiniLM(threads=2)
    except EmbedderUnavailable:
        return None
    embedder.load()
    rows = [embedder.embed_sync(list(texts[i : i + 64])) for i in range(0, len(texts), 64)]
    return np.vstack(rows).astype(np.float64) if rows else np.zeros((0, embedder.dim))


def embed_prompts(texts: Sequence[str]) -> np.ndarray | None:
    """Single-turn prompts embedded as the semantic cache embeds them."""
    from hybrid.cache.keys import normalise_text

    return embed_texts([f"user: {normalise_text(t)}" for t in texts])


def fit_model(examples: Sequence[Example], vectors: np.ndarray | None = None,
              progress: Callable[[str], None] = lambda _: None) -> ScorerModel:
    """Choose the penalty by cross-validation, then train both heads on everything."""
    best: tuple[float, float, Figures, Figures | None] | None = None
    for l2 in L2_GRID:
        lex, emb = cross_validate(examples, vectors, l2)
        score = lex.balanced + (emb.balanced if emb is not None else 0.0)
        progress(f"l2={l2}: lexical {lex.routine_local:.1%} routine local / {lex.hard_cloud:.1%} hard to cloud"
                 + ("" if emb is None else f"; with embedding {emb.routine_local:.1%} / {emb.hard_cloud:.1%}"))
        if best is None or score > best[0]:
            best = (score, l2, lex, emb)
    assert best is not None
    _, l2, lex, emb = best
    lexical, embedding = _train(examples, vectors, l2)
    meta: dict[str, object] = {
        "examples": len(examples),
        "hard": sum(e.label for e in examples),
        "l2": l2,
        "cv5_lexical": {"routine_local": round(lex.routine_local, 4), "hard_cloud": round(lex.hard_cloud, 4)},
    }
    if emb is not None:
        meta["cv5_embedding"] = {"routine_local": round(emb.routine_local, 4), "hard_cloud": round(emb.hard_cloud, 4),
                                 "model": EMBEDDING_MODEL}
    return ScorerModel(lexical, embedding, meta)
