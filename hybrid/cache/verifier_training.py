"""Training the semantic-hit verifier (hybrid/cache/verifier.py): a low-rank update of MiniLM's linear layers and
a one-unit head, fitted on labelled pairs with both orders of each pair, by Adam on the binary cross-entropy.

Used by scripts/train_verifier.py (which writes hybrid/cache/data/verifier.npz) and by its cross-validation, the
figure the threshold is chosen on. Never given the sealed pairs."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.cache.base_models import BASES, MINILM, BaseModel
from hybrid.cache.restyle import chat_typed, is_formal
from hybrid.cache.verifier import PairVerifier, as_cached, encode_pairs, load_base, plain, pooled_logit


@dataclass(frozen=True)
class TrainSettings:
    base: str = MINILM.name  # the pretrained encoder (hybrid.cache.base_models.BASES)
    rank: int = 8
    layers: int = 6  # the base's first N blocks: fewer is faster
    alpha: float = 16.0
    epochs: int = 6
    lr: float = 4e-4  # 1e-3 collapsed one fold of five to a constant
    batch: int = 16
    seed: int = 0
    siblings: int = 2  # per question, up to this many other questions on its topic, as near-misses (:func:`siblings`)
    sibling_cosine: float = 0.55  # "on its topic": at least this MiniLM cosine (below any threshold worth using)
    restyle: bool = False  # also each pair written in one style with one side chat-typed (:func:`restyled_examples`)
    init: str | None = None  # a verifier .npz to start from (its base, rank and layers): training continues it


# what changes when someone types the same question again: case, the closing mark, a greeting or thanks around it
# (measured, out of fold and in scripts/bench_cache.py; not trained on)
_OPENERS = ("hi, ", "Hello! ", "Quick question: ", "hey ", "Please tell me: ", "Good morning. ", "Question: ")
_CLOSERS = (" Thanks!", " thanks", " Thank you.", " :)", " please", "??", "")


def retype(text: str, rng: random.Random) -> str:
    """The same question as it might be typed another day: one answer still serves both."""
    out = text.rstrip("?.! ") if rng.random() < 0.4 else text
    if rng.random() < 0.3:
        out = out.lower()
    if rng.random() < 0.5:
        out = rng.choice(_OPENERS) + (out[0].lower() + out[1:] if out[:2] != "I " else out)
    if rng.random() < 0.5 or out == text:
        out += rng.choice(_CLOSERS)
    return out


def groups(pairs: list[tuple[str, str, str]], every_pair: bool = False) -> dict[str, int]:
    """One group per question: the two sides of a paraphrase ask it, and so do texts that differ only in case,
    white space and the closing mark (:func:`~hybrid.cache.verifier.plain`). Keyed by the texts as written.
    ``every_pair``: join the two sides of every pair, whatever its kind (what cross-validation must not split)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for kind, a, b in pairs:
        ra, rb = find(plain(a)), find(plain(b))
        if every_pair or kind == "paraphrase":
            parent[ra] = rb
    roots: dict[str, int] = {}
    return {t: roots.setdefault(find(plain(t)), len(roots)) for _, a, b in pairs for t in (a, b)}


def siblings(pairs: list[tuple[str, str, str]], embed: Callable[[list[str]], np.ndarray], cosine: float,
             per_text: int | None = None) -> list[tuple[str, str, float]]:
    """Different questions on one topic: texts of different :func:`groups` whose embeddings (as the cache embeds
    them) reach ``cosine``, most similar first, at most ``per_text`` per text. The labelled pairs say what these
    are for free, and they are what a semantic lookup meets most: "How long is a soccer match?" next to "How long
    is half-time in rugby?" (cosine 0.68), which a verifier trained on one-word edits alone confirmed at 0.997.
    A labelled near-miss is not a sibling: it is a pair of the file already (training has both its orders; the
    bench counts it as a near-miss).

    Each pair comes in the texts' sorted order, which is not neutral: "How ..." sorts before "how ...", so a formal
    question comes first and its chat-typed sibling second, never the other way round (training shuffles them)."""
    group = groups(pairs)
    labelled = {frozenset((a, b)) for _, a, b in pairs}
    texts = sorted(group)
    vecs = embed([as_cached(t) for t in texts])
    sims = vecs @ vecs.T
    ii, jj = np.nonzero(np.triu(sims >= cosine, k=1))
    found = sorted(((float(sims[i, j]), int(i), int(j)) for i, j in zip(ii, jj)
                    if group[texts[i]] != group[texts[j]] and frozenset((texts[i], texts[j])) not in labelled),
                   reverse=True)
    used: dict[int, int] = {}
    out = []
    for sim, i, j in found:
        if per_text is not None and (used.get(i, 0) >= per_text or used.get(j, 0) >= per_text):
            continue
        used[i], used[j] = used.get(i, 0) + 1, used.get(j, 0) + 1
        out.append((texts[i], texts[j], sim))
    return out


def examples(pairs: list[tuple[str, str, str]]) -> list[tuple[str, str, float]]:
    """Both orders of every pair: the cache's question may be either one. (Also pairing every question with its
    :func:`retype` as a paraphrase let 4.8% of the near-misses through out of fold instead of 1.1%.)"""
    out = []
    for kind, a, b in pairs:
        y = 1.0 if kind == "paraphrase" else 0.0
        out += [(as_cached(a), as_cached(b), y), (as_cached(b), as_cached(a), y)]
    return out


def restyled_examples(pairs: list[tuple[str, str, str]], rng: random.Random) -> list[tuple[str, str, float]]:
    """Each pair whose two sides are both formal, once more with one side (drawn at random) chat-typed
    (:func:`hybrid.cache.restyle.chat_typed`), its label kept, in one order drawn at random: near-misses and
    paraphrases alike, so that a difference of style is no sign of either."""
    out = []
    for kind, a, b in pairs:
        if not (is_formal(a) and is_formal(b)):
            continue
        if rng.random() < 0.5:
            a, b = b, a
        pair = (as_cached(a), as_cached(chat_typed(b, a, rng)))
        y = 1.0 if kind == "paraphrase" else 0.0
        out.append((*pair, y) if rng.random() < 0.5 else (pair[1], pair[0], y))
    return out


def sibling_examples(near: list[tuple[str, str, float]], rng: random.Random) -> list[tuple[str, str, float]]:
    """Each pair of :func:`siblings` as a near-miss, in one order drawn at random (both orders would cost half as
    much training again). In the sorted order :func:`siblings` gives, a formal question always came first and a
    chat-typed sibling second, and a model trained so learnt that order as a difference: on sealed v11, 93% of
    paraphrases (formal first) scored higher the other way round (docs/design.md)."""
    return [(as_cached(a), as_cached(b), 0.0) if rng.random() < 0.5 else (as_cached(b), as_cached(a), 0.0)
            for a, b, _ in near]


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


def attach(torch: Any, encoder: Any, rank: int, scale: float, gen: Any, base: BaseModel = MINILM
           ) -> dict[str, _LowRank]:
    """A low-rank update beside every targeted linear layer, named as verifier.npz names it."""
    return {f"{i}.{target}": _LowRank(torch, layer.get_submodule(target), rank, scale, gen)
            for i, layer in enumerate(encoder.encoder.layer) for target in base.targets}


def _minilm() -> Callable[[list[str]], np.ndarray]:
    import torch

    from hybrid.cache.embeddings import LocalMiniLM

    threads = torch.get_num_threads()
    embedder = LocalMiniLM()
    embedder.load()
    # loading sets torch to the embedder's one thread (it exports in torch); training keeps the threads it was given:
    # without this the whole training ran on one core of two
    torch.set_num_threads(threads)
    return embedder.embed_sync


def train(pairs: list[tuple[str, str, str]], settings: TrainSettings = TrainSettings(),
          progress: Any = None, embed: Callable[[list[str]], np.ndarray] | None = None) -> dict[str, Any]:
    """The update and head, as the arrays verifier.npz holds. ``embed``: the cache's embedding, to find sibling
    questions (loaded here when not given)."""
    import torch

    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    base = BASES[settings.base]
    tokenizer, encoder = load_base(settings.layers, base)
    for p in encoder.parameters():
        p.requires_grad_(False)
    scale = settings.alpha / settings.rank
    low = attach(torch, encoder, settings.rank, scale, gen, base)
    head_w = torch.nn.Parameter(torch.zeros(encoder.config.hidden_size))
    head_b = torch.nn.Parameter(torch.zeros(()))
    if settings.init is not None:
        resume(torch, Path(settings.init), low, head_w, head_b, settings, scale)
    params = [p for lr in low.values() for p in (lr.A, lr.B)] + [head_w, head_b]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.01)
    data = examples(pairs)
    rng = random.Random(settings.seed)
    if settings.restyle:
        restyled = restyled_examples(pairs, random.Random(settings.seed + 1))
        data += restyled
        if progress is not None:
            progress(f"{len(restyled)} pairs written in one style, once more with one side chat-typed")
    if settings.siblings:
        embed = embed or _minilm()
        near = siblings(pairs, embed, settings.sibling_cosine, settings.siblings)
        data += sibling_examples(near, rng)
        if progress is not None:
            progress(f"{len(near)} pairs of sibling questions as near-misses")
    steps = settings.epochs * ((len(data) + settings.batch - 1) // settings.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=steps, pct_start=0.1)
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
    return pack(low, head_w, head_b, scale, settings.rank, settings.layers, base)


def resume(torch: Any, path: Path, low: dict[str, _LowRank], head_w: Any, head_b: Any, settings: TrainSettings,
           scale: float) -> None:
    """Set the update and head to those of a verifier file, which must have been trained with the same base, rank,
    layers and scale: training then continues from it instead of from zero."""
    with np.load(path) as state:
        found = (str(state["base"]), int(state["rank"]), int(state["layers"]), float(state["scale"]))
        wanted = (settings.base, settings.rank, settings.layers, scale)
        if found != wanted:
            raise ValueError(f"{path}: base, rank, layers, scale {found}; this training has {wanted}")
        with torch.no_grad():
            for name, lr_ in low.items():
                lr_.A.copy_(torch.from_numpy(state[f"{name}.A"].astype(np.float32)))
                lr_.B.copy_(torch.from_numpy(state[f"{name}.B"].astype(np.float32)))
            head_w.copy_(torch.from_numpy(state["head_w"].astype(np.float32)))
            head_b.copy_(torch.from_numpy(np.asarray(state["head_b"], dtype=np.float32)))


def pack(low: dict[str, _LowRank], head_w: Any, head_b: Any, scale: float, rank: int, layers: int,
         base: BaseModel = MINILM) -> dict[str, Any]:
    """The arrays verifier.npz holds: the base model's name, the update in float16 (``{block}.{target}.A|B``) and
    the head."""
    out: dict[str, Any] = {
        "base": np.str_(base.name), "scale": np.float32(scale), "rank": np.int32(rank), "layers": np.int32(layers),
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


def folds_by_question(pairs: list[tuple[str, str, str]], folds: int) -> list[int]:
    """A fold for each pair such that no text is on both sides of a split: pairs that share a text (as
    :func:`~hybrid.cache.verifier.plain` writes it), or that are linked through such pairs, share a fold. The same
    common question recurs across the labelled files ("How do I convert a Word document to PDF?" is in three), and
    a verifier that has seen a text in one pair scores another pair holding it better than an unseen one.
    Components go, largest first, to the fold with the fewest pairs, so the folds stay about equal."""
    component = groups(pairs, every_pair=True)
    members: dict[int, list[int]] = {}
    for i, (_, a, _) in enumerate(pairs):
        members.setdefault(component[a], []).append(i)
    comps = sorted(members.values(), key=lambda c: (-len(c), random.Random(c[0]).random()))
    size = [0] * folds
    out = [0] * len(pairs)
    for comp in comps:
        f = min(range(folds), key=lambda k: (size[k], k))
        size[f] += len(comp)
        for i in comp:
            out[i] = f
    return out


@dataclass
class OutOfFold:
    """What verifiers trained without them say about held-out pairs (see :func:`out_of_fold`)."""

    scores: np.ndarray  # each labelled pair
    again: np.ndarray  # each pair's first question against itself retyped: all should be confirmed
    sibling_sims: np.ndarray  # different questions of a held-out fold at cosine >= 0.65 (the lowest threshold
    # scripts/train_verifier.py tabulates): none should be confirmed
    sibling_scores: np.ndarray


def out_of_fold(pairs: list[tuple[str, str, str]], folds: int, settings: TrainSettings, work: Path,
                progress: Any = None) -> OutOfFold:
    """Each pair scored by a verifier trained without it (k folds of :func:`folds_by_question`); each pair's first
    question against itself retyped (:func:`retype`); and the sibling questions (:func:`siblings`) within each
    held-out fold that the cache would make candidates."""
    fold_of = folds_by_question(pairs, folds)
    scores = np.zeros(len(pairs))
    again = np.zeros(len(pairs))
    sib_sims: list[float] = []
    sib_scores: list[float] = []
    embed = _minilm()
    for f in range(folds):
        train_idx = [i for i in range(len(pairs)) if fold_of[i] != f]
        held = [pairs[i] for i in range(len(pairs)) if fold_of[i] == f]
        test_idx = [i for i in range(len(pairs)) if fold_of[i] == f]
        state = train([pairs[i] for i in train_idx], settings, embed=embed)
        path = work / f"fold{f}.npz"
        save(state, path)
        v = PairVerifier(path, threads=2)
        v.load()
        scores[test_idx] = v.score_sync([(as_cached(a), as_cached(b)) for _, a, b in held])
        rng = random.Random(1000 + f)
        again[test_idx] = v.score_sync([(as_cached(a), as_cached(retype(a, rng))) for _, a, _ in held])
        near = siblings(held, embed, 0.65)
        sib_sims += [sim for _, _, sim in near]
        sib_scores += v.score_sync([(as_cached(a), as_cached(b)) for a, b, _ in near]).tolist()
        if progress is not None:
            progress(f"fold {f + 1}/{folds} done")
    return OutOfFold(scores, again, np.array(sib_sims), np.array(sib_scores))
