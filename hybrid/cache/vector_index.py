"""The in-process vector index of the embedded cache: one HNSW index (usearch) per partition.

A partition is (scope, params key): entries that may answer each other. Searching inside it is what keeps
one tenant's entries, or entries with other sampling parameters, from ever being candidates.
"""

from __future__ import annotations

import contextlib

import numpy as np

# onnxruntime (the cache's models, hybrid/cache/onnx_encoder.py) must be loaded before usearch: usearch loads its
# NumKong kernels with RTLD_GLOBAL, and onnxruntime's native module loaded after that crashes the process in its
# static initialisers (SIGSEGV; usearch 2.26, onnxruntime 1.32). Loaded first, both work.
with contextlib.suppress(ImportError):
    import onnxruntime  # noqa: F401

from usearch.index import Index


def _new_index(dim: int) -> Index:
    # int8 vectors: a third of the build time and half the search time of f32 at the same recall here;
    # candidates are re-scored with the exact float32 cosine from the store
    return Index(ndim=dim, metric="cos", dtype="i8", connectivity=16, expansion_add=32, expansion_search=32)


class PartitionedIndex:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._parts: dict[str, Index] = {}
        self._keys: dict[int, str] = {}  # label -> entry key
        self._labels: dict[str, tuple[str, int]] = {}  # entry key -> (partition, label)
        self._next = 1

    def __len__(self) -> int:
        return len(self._labels)

    def add(self, partition: str, key: str, vector: np.ndarray) -> None:
        if key in self._labels:
            self.remove(key)
        index = self._parts.get(partition)
        if index is None:
            index = self._parts[partition] = _new_index(self.dim)
        label = self._next
        self._next += 1
        index.add(label, np.asarray(vector, dtype=np.float32))
        self._keys[label] = key
        self._labels[key] = (partition, label)

    def add_many(self, partition: str, keys: list[str], vectors: np.ndarray) -> None:
        index = self._parts.get(partition)
        if index is None:
            index = self._parts[partition] = _new_index(self.dim)
        labels = np.arange(self._next, self._next + len(keys), dtype=np.uint64)
        self._next += len(keys)
        index.add(labels, np.asarray(vectors, dtype=np.float32), threads=0)  # 0: all cores
        for label, key in zip(labels.tolist(), keys):
            self._keys[label] = key
            self._labels[key] = (partition, label)

    def remove(self, key: str) -> None:
        found = self._labels.pop(key, None)
        if found is None:
            return
        partition, label = found
        self._keys.pop(label, None)
        index = self._parts.get(partition)
        if index is not None:
            index.remove(label)

    def search(self, partition: str, vector: np.ndarray, k: int = 4) -> list[tuple[str, float]]:
        """Up to ``k`` (entry key, cosine similarity), most similar first."""
        index = self._parts.get(partition)
        if index is None or len(index) == 0:
            return []
        matches = index.search(np.asarray(vector, dtype=np.float32), min(k, len(index)))
        out = []
        for label, distance in zip(matches.keys.tolist(), matches.distances.tolist()):
            key = self._keys.get(int(label))
            if key is not None:
                out.append((key, 1.0 - float(distance)))
        return out

    def clear(self) -> None:
        self._parts.clear()
        self._keys.clear()
        self._labels.clear()
