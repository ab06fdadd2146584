"""What a cache backend stores, and the interface both backends implement."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybrid.cache.audit import Sample

MAX_SHARED_SAMPLES = 100_000  # error-budget verdicts a store keeps (every replica reads them all at start)
SAMPLES_PER_READ = 1_000


@dataclass
class CacheEntry:
    key: str  # exact key, scope included
    partition: str  # scope + params key: who may be answered by it, semantically
    namespace: str
    text: str  # the conversation, for the semantic guard
    answer: dict[str, Any]  # the complete, assembled answer (chat.completion or text_completion)
    created: float
    expires: float
    embedding: np.ndarray | None = None


class CacheStore(abc.ABC):
    name: str
    #: True when nearest() works (embedded index, or Redis with the search module)
    semantic: bool = False
    #: True when the error budget's verdicts are kept in this store, for the other replicas and the next start
    shares_samples: bool = False

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @abc.abstractmethod
    async def get(self, key: str) -> CacheEntry | None: ...

    @abc.abstractmethod
    async def put(self, entry: CacheEntry) -> None: ...

    async def touch(self, key: str) -> None:
        return None

    async def publish_sample(self, origin: str, sample: Sample, ttl_s: float) -> None:
        """Share one error-budget verdict with the other replicas (``origin``: this replica), kept for ``ttl_s``."""
        return None

    async def read_samples(self, after: str) -> tuple[list[tuple[str, Sample]], str]:
        """The verdicts shared since the position ``after`` ("0": all still kept), as (origin, sample), and the
        position to read on from."""
        return [], after

    @abc.abstractmethod
    async def nearest(self, partition: str, vector: np.ndarray, k: int) -> list[tuple[CacheEntry, float]]:
        """Entries of ``partition`` nearest to ``vector``, with their exact cosine similarity."""

    @abc.abstractmethod
    async def clear(self, namespace: str | None = None) -> int: ...

    @abc.abstractmethod
    async def stats(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def export(self) -> AsyncIterator[dict[str, Any]]: ...


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / ((np.linalg.norm(a) * np.linalg.norm(b)) or 1.0))
