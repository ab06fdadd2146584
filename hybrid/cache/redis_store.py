"""The shared cache: Redis (redis-py asyncio). Entries are hashes with native TTLs; the semantic layer is a
RediSearch vector index (HNSW, cosine) when the server has the search module, and off, with one log line, when
it has not. Several router processes pointed at one Redis share hits."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import orjson
from redis.typing import EncodableT, FieldT

from hybrid.cache.audit import Sample
from hybrid.cache.store import MAX_SHARED_SAMPLES, SAMPLES_PER_READ, CacheEntry, CacheStore, cosine

log = logging.getLogger("hybrid.cache.redis")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (``redis://:***@host:6379/0``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class RedisCacheStore(CacheStore):
    name = "redis"

    def __init__(self, url: str, prefix: str = "hybrid:cache:", dim: int = 384, semantic: bool = True) -> None:
        import redis.asyncio as redis

        self.url = redact_url(url)  # for logs and stats: never the password
        self.prefix = prefix
        self.dim = dim
        self.want_semantic = semantic
        self.index_name = prefix.rstrip(":").replace(":", "-") + "-idx"
        # RESP2 replies (lists), whatever the client's default: one reply shape to parse
        self.r = redis.Redis.from_url(url, protocol=2, socket_timeout=1.0, socket_connect_timeout=1.0)
        # the error budget's verdicts, a stream every replica reads: outside the entries' prefix (no index, no clear)
        self.samples_key = prefix.rstrip(":") + "-audits"
        self.shares_samples = True

    async def start(self) -> None:
        try:
            modules = await self.r.execute_command("MODULE", "LIST")
        except Exception as exc:
            log.warning("cache: Redis at %s not reachable at start (%s); every lookup misses until it is", self.url, exc)
            return
        names = {_text(_field(m, "name")) for m in modules}
        if not self.want_semantic:
            return
        if "search" not in names:
            log.warning("cache: Redis at %s has no search module: exact cache only (load RediSearch for the "
                        "semantic layer)", self.url)
            return
        try:
            await self.r.execute_command("FT.INFO", self.index_name)
        except Exception:
            await self.r.execute_command(
                "FT.CREATE", self.index_name, "ON", "HASH", "PREFIX", "1", self.prefix, "SCHEMA",
                "partition", "TAG", "namespace", "TAG",
                "embedding", "VECTOR", "HNSW", "6", "TYPE", "FLOAT32", "DIM", str(self.dim), "DISTANCE_METRIC", "COSINE",
            )
        self.semantic = True

    async def close(self) -> None:
        await self.r.aclose()

    async def publish_sample(self, origin: str, sample: Sample, ttl_s: float) -> None:
        """Append a verdict to the shared stream, capped near MAX_SHARED_SAMPLES (the oldest trimmed first) and
        forgotten ``ttl_s`` after the last one."""
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.xadd(self.samples_key, {"o": origin, "p": sample.partition, "k": sample.key,
                                         "s": repr(sample.similarity), "w": "1" if sample.wrong else "0"},
                      maxlen=MAX_SHARED_SAMPLES, approximate=True)
            pipe.expire(self.samples_key, max(1, int(ttl_s)))
            await pipe.execute()

    async def read_samples(self, after: str) -> tuple[list[tuple[str, Sample]], str]:
        reply: Any = await self.r.xread({self.samples_key: after}, count=SAMPLES_PER_READ)
        out: list[tuple[str, Sample]] = []
        for _, messages in reply or []:
            for msg_id, fields in messages:
                after = _text(msg_id)
                try:
                    f = {_text(k): _text(v) for k, v in fields.items()}
                    similarity = float(f["s"])
                    if not 0.0 <= similarity <= 1.0:
                        continue
                    out.append((f["o"], Sample(f["p"], f["k"], similarity, f["w"] == "1")))
                except (KeyError, ValueError, UnicodeDecodeError):
                    continue  # another version's or a stranger's message: skipped
        return out, after

    async def get(self, key: str) -> CacheEntry | None:
        data = await self.r.hgetall(self.prefix + key)
        return self._entry(key, data) if data else None

    def _entry(self, key: str, data: Mapping[Any, Any]) -> CacheEntry | None:
        try:
            answer = orjson.loads(data[b"answer"])
        except (KeyError, orjson.JSONDecodeError):
            return None
        emb = data.get(b"embedding")
        return CacheEntry(
            key=key, partition=_text(data.get(b"partition", b"")), namespace=_text(data.get(b"namespace", b"")),
            text=_text(data.get(b"text", b"")), answer=answer, created=float(data.get(b"created", 0)),
            expires=float(data.get(b"expires", 0)), embedding=np.frombuffer(emb, dtype=np.float32) if emb else None,
        )

    async def put(self, entry: CacheEntry) -> None:
        mapping: dict[FieldT, EncodableT] = {
            "partition": entry.partition, "namespace": entry.namespace, "text": entry.text,
            "answer": orjson.dumps(entry.answer), "created": entry.created, "expires": entry.expires,
        }
        if entry.embedding is not None:
            mapping["embedding"] = entry.embedding.astype(np.float32).tobytes()
        ttl = max(1, int(entry.expires - time.time()))
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self.prefix + entry.key, mapping=mapping)
            pipe.expire(self.prefix + entry.key, ttl)
            await pipe.execute()

    async def nearest(self, partition: str, vector: np.ndarray, k: int) -> list[tuple[CacheEntry, float]]:
        if not self.semantic:
            return []
        reply = await self.r.execute_command(
            "FT.SEARCH", self.index_name, f"(@partition:{{{partition}}})=>[KNN {k} @embedding $vec AS dist]",
            "PARAMS", "2", "vec", np.asarray(vector, dtype=np.float32).tobytes(), "SORTBY", "dist",
            "LIMIT", "0", str(k), "DIALECT", "2",
        )
        out = []
        # RESP2: [total, id1, [field, value, ...], id2, [...], ...]
        for i in range(1, len(reply), 2):
            doc_id = _text(reply[i])
            fields = reply[i + 1]
            data = {fields[j]: fields[j + 1] for j in range(0, len(fields), 2)}
            entry = self._entry(doc_id[len(self.prefix):], data)
            if entry is not None and entry.embedding is not None:
                out.append((entry, cosine(vector, entry.embedding)))
        out.sort(key=lambda pair: -pair[1])
        return out

    async def _keys(self) -> AsyncIterator[bytes]:
        async for key in self.r.scan_iter(match=self.prefix + "*", count=1000):
            yield key

    async def clear(self, namespace: str | None = None) -> int:
        removed = 0
        async for key in self._keys():
            if namespace is not None and _text(await self.r.hget(key, "namespace") or b"") != namespace:
                continue
            removed += await self.r.delete(key)
        return removed

    async def stats(self) -> dict[str, Any]:
        entries = 0
        namespaces: dict[str, int] = {}
        async for key in self._keys():
            entries += 1
            ns = _text(await self.r.hget(key, "namespace") or b"")
            namespaces[ns] = namespaces.get(ns, 0) + 1
        return {"backend": "redis", "url": self.url, "entries": entries, "namespaces": namespaces,
                "semantic": self.semantic}

    async def export(self) -> AsyncIterator[dict[str, Any]]:
        async for key in self._keys():
            data = await self.r.hgetall(key)
            entry = self._entry(_text(key)[len(self.prefix):], data) if data else None
            if entry is not None:
                yield {"key": entry.key, "namespace": entry.namespace, "text": entry.text, "answer": entry.answer,
                       "created": entry.created, "expires": entry.expires}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _field(module: Any, name: str) -> Any:
    """MODULE LIST entries are flat [k, v, ...] lists in RESP2."""
    if isinstance(module, dict):
        return module.get(name.encode(), module.get(name))
    for i in range(0, len(module) - 1, 2):
        if _text(module[i]) == name:
            return module[i + 1]
    return None
