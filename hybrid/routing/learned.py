"""The learned scorer: "does this request need the capable tier?", as a probability.

Two logistic-regression heads, trained together on the labelled prompts the project ships
(``hybrid/routing/data/prompts_train.tsv``; scripts/train_scorer.py or ``hybrid eval fit`` for a team's own):

- **lexical**: word and word-pair features of the request's last user turn (lower-cased, crudely stemmed,
  numbers folded into one token) plus a few shape features (length, code fences, how many numbers). Pure
  Python and a dict lookup per feature: tens of microseconds, no extra dependency, so it is the default.
- **embedding**: the same features plus the MiniLM sentence embedding that the semantic cache already computed
  for the request. Used only when that embedding is at hand, so routing never embeds a second time.

A model is one JSON file (``scorer.json``); ``routing.scorer = "learned:/path/to/scorer.json"`` loads another.
How well each head does on prompts it never saw is in the README (scripts/bench_routing_quality.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from hybrid.routing.features import RequestFeatures

_WORD = re.compile(r"[a-z0-9]+")
_WINDOW = 2_000  # characters read at each end of a long turn: its start and end say what is asked
_SUFFIXES = ("ations", "ation", "ingly", "ings", "ing", "ies", "ied", "ed", "es", "ly", "s")
FORMAT = 1
EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def _stem(word: str) -> str:
    if word.isdigit():
        return "#"
    if len(word) > 4:
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                return word[: -len(suffix)]
    return word


def text_features(text: str) -> list[str]:
    """The lexical features of one text (deduplicated, order irrelevant)."""
    window = text if len(text) <= 2 * _WINDOW else text[:_WINDOW] + "\n" + text[-_WINDOW:]
    words = [_stem(w) for w in _WORD.findall(window.lower())]
    feats = {"w:" + w for w in words}
    feats.update("b:" + a + "_" + b for a, b in zip(words, words[1:]))
    n = len(text) // 5  # about a word per five characters, for the whole turn, not the window
    feats.add("n:" + ("1-5" if n <= 5 else "6-12" if n <= 12 else "13-25" if n <= 25 else "26-50" if n <= 50
                      else "51-150" if n <= 150 else "151+"))
    numbers = words.count("#")
    feats.add("d:" + ("0" if numbers == 0 else "1-2" if numbers <= 2 else "3-5" if numbers <= 5 else "6+"))
    if "```" in window:
        feats.add("x:fence")
    if window.count("\n") >= 3:
        feats.add("x:lines")
    return list(feats)


@dataclass
class Head:
    """One logistic regression: ``bias + sum(weights[f]) / sqrt(len(features)) [+ dense . vector]``."""

    bias: float
    weights: dict[str, float]
    dense: np.ndarray | None = None  # weights on the embedding, when the head reads one

    def logit(self, feats: list[str], vector: np.ndarray | None = None) -> float:
        get = self.weights.get
        z = sum(get(f, 0.0) for f in feats) / math.sqrt(max(1, len(feats)))
        if self.dense is not None and vector is not None:
            z += float(np.dot(self.dense, vector))
        return self.bias + z

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bias": self.bias, "weights": {k: round(v, 5) for k, v in sorted(self.weights.items())}}
        if self.dense is not None:
            out["dense"] = [round(float(v), 6) for v in self.dense]
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Head:
        dense = raw.get("dense")
        return cls(float(raw["bias"]), {str(k): float(v) for k, v in raw["weights"].items()},
                   None if dense is None else np.asarray(dense, dtype=np.float32))


@dataclass
class ScorerModel:
    lexical: Head
    embedding: Head | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # what it was trained on, and its own cross-validated figures

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = {"format": FORMAT, "meta": self.meta, "lexical": self.lexical.to_json()}
        if self.embedding is not None:
            body["embedding"] = {"model": EMBEDDING_MODEL, **self.embedding.to_json()}
        return orjson.dumps(body, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_bytes(cls, raw: bytes, source: str = "scorer") -> ScorerModel:
        try:
            body = orjson.loads(raw)
            if body.get("format") != FORMAT:
                raise ValueError(f"format {body.get('format')!r}, expected {FORMAT}")
            emb = body.get("embedding")
            return cls(Head.from_json(body["lexical"]), None if emb is None else Head.from_json(emb),
                       dict(body.get("meta") or {}))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{source}: not a scorer model ({exc})") from None


def default_model_bytes() -> bytes:
    return resources.files("hybrid.routing").joinpath("data/scorer.json").read_bytes()


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class LearnedScorer:
    """``routing.scorer = "learned"`` (the shipped model) or ``"learned:PATH"``."""

    def __init__(self, path: str | Path | None = None) -> None:
        if path:
            self.source = str(path)
            raw = Path(path).read_bytes()
        else:
            self.source = "hybrid/routing/data/scorer.json"
            raw = default_model_bytes()
        self.model = ScorerModel.from_bytes(raw, self.source)

    def score(self, f: RequestFeatures) -> float:
        feats = text_features(f.prompt)
        emb = self.model.embedding
        if emb is not None and f.embedding is not None and emb.dense is not None \
                and f.embedding.shape == emb.dense.shape:
            return _sigmoid(emb.logit(feats, f.embedding))
        return _sigmoid(self.model.lexical.logit(feats))

    def score_text(self, text: str, vector: np.ndarray | None = None) -> float:
        """The score of a single-turn prompt (for the eval harness and the benchmarks)."""
        emb = self.model.embedding
        if emb is not None and vector is not None:
            return _sigmoid(emb.logit(text_features(text), vector))
        return _sigmoid(self.model.lexical.logit(text_features(text)))
