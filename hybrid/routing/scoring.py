"""Complexity scoring: a pluggable interface, the learned default and the old heuristic.

A scorer maps :class:`RequestFeatures` to a score in [0, 1]; ``routing.complexity_threshold`` splits the cheap
tier from the capable one. ``routing.scorer`` is ``"learned"`` (the default: hybrid/routing/learned.py, trained on
the shipped prompts), ``"learned:PATH"`` (a model from ``hybrid eval fit``), ``"heuristic"`` (hand-weighted cheap
features), or ``"package.module:Name"`` (a class taking no arguments, or an object, with a
``score(features) -> float`` method).
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

from hybrid.routing.features import RequestFeatures


@runtime_checkable
class ComplexityScorer(Protocol):
    def score(self, features: RequestFeatures) -> float: ...


class HeuristicScorer:
    """A weighted sum of cheap features, clipped to [0, 1].

    Weights: long prompts (saturating at ~2,000 tokens) 0.35, code 0.25, tools 0.4, reasoning cues 0.3 (two cues
    saturate), many turns 0.15, structured output 0.1, a long requested answer 0.15.
    """

    def score(self, f: RequestFeatures) -> float:
        s = 0.35 * min(1.0, f.est_tokens / 2000)
        if f.code_blocks or f.code_hints >= 3:
            s += 0.25
        if f.has_tools:
            s += 0.4
        s += 0.3 * min(1.0, f.reasoning_cues / 2)
        s += 0.15 * min(1.0, max(0, f.turns - 1) / 8)
        if f.structured_output:
            s += 0.1
        if f.max_tokens is not None and f.max_tokens >= 2000:
            s += 0.15
        return min(1.0, s)


def load_scorer(spec: str) -> ComplexityScorer:
    """``"learned"``, ``"learned:PATH"``, ``"heuristic"`` or ``"package.module:Name"``."""
    if spec == "heuristic":
        return HeuristicScorer()
    if spec in ("", "learned") or spec.startswith("learned:"):
        from hybrid.routing.learned import LearnedScorer

        return LearnedScorer(spec.partition(":")[2] or None)
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"scorer {spec!r}: expected 'learned', 'learned:PATH', 'heuristic' or 'package.module:Name'")
    obj = getattr(importlib.import_module(module_name), attr)
    scorer = obj() if isinstance(obj, type) else obj
    if not isinstance(scorer, ComplexityScorer):
        raise ValueError(f"scorer {spec!r} has no score(features) method")
    return scorer
