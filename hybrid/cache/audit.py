"""The semantic cache's error budget, enforced online, per partition and per entry.

Evidence comes from two kinds of samples, drawn at one rate (``cache.semantic_audit_rate``):

- an *audit*: a semantic hit also answered live, off the client's path (the client already has the cached answer);
- a *shadow*: a miss whose best candidate the configured threshold would have served but a raised one refused. The
  client's live answer is compared with the candidate's cached one after the fact, at no cost but the comparison.

Both compare two answers: equal after folding case, space and trailing punctuation, or (for longer answers)
embeddings at least ``AGREEMENT`` alike. A disagreement is a wrong hit: the cache served (or would have served) the
answer of another question.

Drawn at one rate, the two kinds together are a uniform sample of what the *configured* threshold would serve in a
partition (the key's scope: tenant, model and parameters), so its threshold can be set from them in either
direction: it is the lowest value at which the wrong share of the sampled hits it would serve is within
``cache.semantic_error_budget``. A wrong hit at 0.93 lifts it past 0.93 unless enough right hits above keep the
rate in budget; later right samples (shadows included, from below the raised threshold) bring it back down.

Per entry (as in vCache, 2025): a wrong sample also lifts that one entry's own threshold past its similarity, for
good: the pairing that went wrong is never served again, whatever the partition's threshold does. A shadow whose
candidate an entry's threshold refuses is not drawn (no threshold of the partition would serve it). Samples are
counted in the partition's rate as they were drawn (a wrong one stays wrong after its entry is closed): the rate
falls only as new samples come, drawn under the closed entries, so closing an entry is never taken for evidence
by itself.

What it costs: one live answer per audit, booked in the ledger with the tag ``source=cache-audit``, and one
comparison per shadow; at most ``MAX_IN_FLIGHT`` of either at once (a sample beyond that is dropped, never queued).
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hybrid.text import fold

AGREEMENT = 0.90  # answers' embedding similarity at or above which two longer answers say the same
SHORT_ANSWER = 64  # characters: up to here, answers must match exactly (after folding)
MAX_SAMPLES = 2_000  # samples remembered per partition (the oldest forgotten first)
MAX_PARTITIONS = 10_000  # partitions tracked (least recently sampled forgotten first)
MAX_CLOSED_ENTRIES = 100_000  # entries with their own threshold (the least recently closed forgotten first)
MAX_IN_FLIGHT = 4  # audits and shadows being judged at once
PAST = 1e-6  # a threshold lifted past a similarity sits this far above it


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


@dataclass(frozen=True)
class Sample:
    """One judged pairing: the partition, the cached entry's key, their similarity, and whether it was wrong."""

    partition: str
    key: str
    similarity: float
    wrong: bool


@dataclass
class Verdict:
    before: float  # the partition's threshold before the sample
    after: float  # and after it
    closed: float | None = None  # the entry's own threshold, when this sample lifted it


@dataclass
class _Partition:
    threshold: float
    samples: deque[tuple[float, bool]] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    served_wrong: int = 0  # of the samples at or above the threshold: kept with them, so a scrape only sums
    served: int = 0


class SemanticAudit:
    def __init__(self, budget: float, rate: float, base_threshold: float, rng: random.Random | None = None) -> None:
        self.budget = budget
        self.rate = rate
        self.base = base_threshold
        self._rng = rng or random.Random()
        self._partitions: OrderedDict[str, _Partition] = OrderedDict()
        self._closed: OrderedDict[str, float] = OrderedDict()  # entry key -> the lowest similarity it still serves
        self.in_flight = 0
        self.audited = 0  # this process's audits with a verdict
        self.shadowed = 0  # this process's shadows with a verdict
        self.shared = 0  # samples taken from other replicas
        self.wrong = 0  # wrong verdicts of this process's audits and shadows
        self.skipped = 0  # sampled, but MAX_IN_FLIGHT were already being judged
        self.failed = 0  # the live answer failed: no verdict

    @property
    def enabled(self) -> bool:
        return self.budget > 0 and self.rate > 0

    def threshold(self, partition: str) -> float:
        p = self._partitions.get(partition)
        return self.base if p is None else p.threshold

    def entry_threshold(self, key: str) -> float:
        """The lowest similarity at which this entry is still served (0 when no wrong hit closed it)."""
        return self._closed.get(key, 0.0)

    def sampled(self) -> bool:
        """One draw at the audit rate."""
        return self.enabled and self._rng.random() < self.rate

    def acquire(self) -> bool:
        """A slot to judge one sample in; when it is given, the caller must call :meth:`done` once it is over."""
        if self.in_flight >= MAX_IN_FLIGHT:
            self.skipped += 1
            return False
        self.in_flight += 1
        return True

    def should_audit(self) -> bool:
        """Whether this hit is audited (drawn, and a slot free); when it is, the caller must call :meth:`done`."""
        return self.sampled() and self.acquire()

    def done(self) -> None:
        self.in_flight -= 1

    def record(self, sample: Sample, shadow: bool = False) -> Verdict:
        """One verdict of this process's: an audit's, or a shadow's."""
        if shadow:
            self.shadowed += 1
        else:
            self.audited += 1
        self.wrong += int(sample.wrong)
        p = self._partition(sample.partition)
        verdict = Verdict(p.threshold, p.threshold, self._add(p, sample))
        verdict.after = self._resettle(p)
        return verdict

    def absorb(self, samples: Iterable[Sample]) -> dict[str, tuple[float, float]]:
        """Verdicts other replicas reached (read from the shared store), as one batch: each partition touched is
        settled once, not once a sample (a replica that starts reads up to the store's whole bound). Returns the
        partitions whose threshold moved, with (before, after)."""
        touched: dict[str, tuple[_Partition, float]] = {}
        for sample in samples:
            self.shared += 1
            p = self._partition(sample.partition)
            touched.setdefault(sample.partition, (p, p.threshold))
            self._add(p, sample)
        moved = {}
        for name, (p, before) in touched.items():
            if self._resettle(p) != before:
                moved[name] = (before, p.threshold)
        return moved

    def _partition(self, name: str) -> _Partition:
        p = self._partitions.get(name)
        if p is None:
            p = self._partitions[name] = _Partition(self.base)
            while len(self._partitions) > MAX_PARTITIONS:
                self._partitions.popitem(last=False)
        else:
            self._partitions.move_to_end(name)
        return p

    def _add(self, p: _Partition, sample: Sample) -> float | None:
        """Keep the sample; a wrong one closes its entry past its similarity. Returns the entry's new threshold."""
        p.samples.append((sample.similarity, sample.wrong))
        if not sample.wrong:
            return None
        closed = min(1.0, max(self._closed.pop(sample.key, 0.0), sample.similarity + PAST))
        self._closed[sample.key] = closed
        while len(self._closed) > MAX_CLOSED_ENTRIES:
            self._closed.popitem(last=False)
        return closed

    def _resettle(self, p: _Partition) -> float:
        p.threshold = self._settle(p)
        served = [w for s, w in p.samples if s >= p.threshold]
        p.served, p.served_wrong = len(served), sum(served)
        return p.threshold

    def _settle(self, p: _Partition) -> float:
        """The lowest threshold, from the configured one up, whose sampled hits are wrong within the budget."""
        served = sorted(p.samples)
        total, wrong = len(served), sum(w for _, w in served)
        i = 0
        threshold = self.base
        while total and wrong / total > self.budget:
            # drop the lowest similarity still served (and its ties): the threshold moves just past it
            s = served[i][0]
            while i < len(served) and served[i][0] == s:
                total -= 1
                wrong -= int(served[i][1])
                i += 1
            threshold = min(1.0, s + PAST)
        return max(threshold, self.base)

    def observed(self) -> tuple[int, int]:
        """Samples that the current partition thresholds would serve: (wrong, all)."""
        parts = self._partitions.values()
        return sum(p.served_wrong for p in parts), sum(p.served for p in parts)

    def figures(self) -> dict[str, Any]:
        wrong, total = self.observed()
        thresholds = [p.threshold for p in self._partitions.values()]
        return {
            "budget": self.budget,
            "audit_rate": self.rate,
            "audited": self.audited,
            "shadowed": self.shadowed,
            "shared": self.shared,
            "wrong": self.wrong,
            "observed_wrong_rate": (wrong / total) if total else 0.0,
            "observed_samples": total,
            "threshold": {"base": self.base, "max": max(thresholds, default=self.base),
                          "tightened_partitions": sum(t > self.base for t in thresholds)},
            "partitions": len(thresholds),
            "closed_entries": len(self._closed),
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
