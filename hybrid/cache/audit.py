"""The semantic cache's error budget, enforced online.

A sampled share (``cache.semantic_audit_rate``) of semantic hits is also answered live, off the client's path
(the client already has the cached answer). The two answers are compared: equal after folding case, space and
trailing punctuation, or (for longer answers) embeddings at least ``AGREEMENT`` alike. A disagreement is a wrong
hit: the cache served the answer of another question.

Each partition (the key's scope: tenant, model and parameters) keeps its audited hits as (similarity, wrong)
pairs and its own threshold, starting at ``cache.similarity_threshold``. After each audit the threshold is the
lowest one, at or above the current, at which the wrong share of the audited hits it would still serve is within
``cache.semantic_error_budget``: a wrong hit at similarity 0.93 lifts the threshold past 0.93 unless enough right
hits above it keep the rate in budget. Thresholds only rise (a restart starts again from the configured one).

What it costs: one live answer per audited hit, booked in the ledger with the tag ``source=cache-audit``; at most
``MAX_IN_FLIGHT`` at once (a sampled hit beyond that is not audited, never queued).
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from hybrid.text import fold

AGREEMENT = 0.90  # answers' embedding similarity at or above which two longer answers say the same
SHORT_ANSWER = 64  # characters: up to here, answers must match exactly (after folding)
MAX_SAMPLES = 2_000  # audited hits remembered per partition
MAX_PARTITIONS = 10_000  # partitions tracked (least recently audited forgotten first)
MAX_IN_FLIGHT = 4  # live answers for audits at once


def answer_text(answer: dict[str, Any]) -> str:
    """The first choice's text of a stored (chat or legacy) answer."""
    choices = answer.get("choices") or []
    if not choices:
        return ""
    first = choices[0]
    message = first.get("message")
    if isinstance(message, dict):
        return str(message.get("content") or "")
    return str(first.get("text") or "")


@dataclass
class _Partition:
    threshold: float
    samples: deque[tuple[float, bool]] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    served_wrong: int = 0  # of the samples at or above the threshold: kept with them, so a scrape only sums
    served: int = 0

    def recount(self) -> None:
        served = [w for s, w in self.samples if s >= self.threshold]
        self.served, self.served_wrong = len(served), sum(served)


class SemanticAudit:
    def __init__(self, budget: float, rate: float, base_threshold: float, rng: random.Random | None = None) -> None:
        self.budget = budget
        self.rate = rate
        self.base = base_threshold
        self._rng = rng or random.Random()
        self._partitions: OrderedDict[str, _Partition] = OrderedDict()
        self.in_flight = 0
        self.audited = 0
        self.wrong = 0
        self.skipped = 0  # sampled, but MAX_IN_FLIGHT audits were already running
        self.failed = 0  # the live answer failed: no verdict

    @property
    def enabled(self) -> bool:
        return self.budget > 0 and self.rate > 0

    def threshold(self, partition: str) -> float:
        p = self._partitions.get(partition)
        return self.base if p is None else p.threshold

    def should_audit(self) -> bool:
        """Whether this hit is audited; when it is, the caller must call :meth:`done` when the audit is over."""
        if not self.enabled or self._rng.random() >= self.rate:
            return False
        if self.in_flight >= MAX_IN_FLIGHT:
            self.skipped += 1
            return False
        self.in_flight += 1
        return True

    def done(self) -> None:
        self.in_flight -= 1

    def raise_to(self, partition: str, threshold: float) -> None:
        """Take a threshold another replica's audits reached (thresholds only rise)."""
        p = self._partitions.get(partition)
        if p is None:
            if threshold <= self.base:
                return
            p = self._partitions[partition] = _Partition(self.base)
            while len(self._partitions) > MAX_PARTITIONS:
                self._partitions.popitem(last=False)
        p.threshold = max(p.threshold, min(1.0, threshold))
        p.recount()

    def record(self, partition: str, similarity: float, wrong: bool) -> float:
        """One audited hit; returns the partition's threshold after it."""
        p = self._partitions.get(partition)
        if p is None:
            p = self._partitions[partition] = _Partition(self.base)
            while len(self._partitions) > MAX_PARTITIONS:
                self._partitions.popitem(last=False)
        else:
            self._partitions.move_to_end(partition)
        p.samples.append((similarity, wrong))
        self.audited += 1
        self.wrong += int(wrong)
        p.threshold = self._tightened(p)
        p.recount()
        return p.threshold

    def _tightened(self, p: _Partition) -> float:
        """The lowest threshold >= the current one whose served audited hits are wrong within the budget."""
        served = sorted((s, w) for s, w in p.samples if s >= p.threshold)
        total, wrong = len(served), sum(w for _, w in served)
        i = 0
        threshold = p.threshold
        while total and wrong / total > self.budget:
            # drop the lowest similarity still served (and its ties): the threshold moves just past it
            s = served[i][0]
            while i < len(served) and served[i][0] == s:
                total -= 1
                wrong -= int(served[i][1])
                i += 1
            threshold = min(1.0, s + 1e-6)
        return max(threshold, p.threshold)

    def observed(self) -> tuple[int, int]:
        """Audited hits that the current thresholds would still serve: (wrong, all)."""
        parts = self._partitions.values()
        return sum(p.served_wrong for p in parts), sum(p.served for p in parts)

    def figures(self) -> dict[str, Any]:
        wrong, total = self.observed()
        thresholds = [p.threshold for p in self._partitions.values()]
        return {
            "budget": self.budget,
            "audit_rate": self.rate,
            "audited": self.audited,
            "wrong": self.wrong,
            "observed_wrong_rate": (wrong / total) if total else 0.0,
            "observed_samples": total,
            "threshold": {"base": self.base, "max": max(thresholds, default=self.base),
                          "tightened_partitions": sum(t > self.base for t in thresholds)},
            "partitions": len(thresholds),
            "skipped": self.skipped,
            "failed": self.failed,
        }


async def agree(cached: str, live: str, embed: Any = None) -> bool:
    """Whether two answers to (what the cache took for) the same question say the same thing. ``embed``: an async
    function from texts to unit vectors, for answers longer than :data:`SHORT_ANSWER`."""
    a, b = fold(cached), fold(live)
    if a == b:
        return True
    if embed is None or len(a) <= SHORT_ANSWER or len(b) <= SHORT_ANSWER:
        return False
    vectors = await embed([a, b])
    return float(vectors[0] @ vectors[1]) >= AGREEMENT
