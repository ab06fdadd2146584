"""The embedded cache: SQLite (WAL) for entries and TTLs, an in-process vector index for the semantic layer.

Point reads by primary key run on the event loop (tens of microseconds: cheaper than a thread hop, and the hit
path is the one that must be fast); every write goes to one writer thread that batches it into transactions,
expires old entries and evicts the least recently used beyond ``max_entries``. The vector index is rebuilt from
SQLite at start, in the background: until it is ready the semantic layer misses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from hybrid.cache.audit import Sample
from hybrid.cache.store import MAX_SHARED_SAMPLES, SAMPLES_PER_READ, CacheEntry, CacheStore, cosine
from hybrid.metrics import CACHE_ERRORS, CACHE_EVICTIONS

log = logging.getLogger("hybrid.cache.sqlite")

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    partition TEXT NOT NULL,
    namespace TEXT NOT NULL,
    text TEXT NOT NULL,
    answer BLOB NOT NULL,
    embedding BLOB,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_last_used ON entries(last_used);
CREATE INDEX IF NOT EXISTS entries_expires ON entries(expires);
CREATE INDEX IF NOT EXISTS entries_namespace ON entries(namespace);
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    origin TEXT NOT NULL,
    partition TEXT NOT NULL,
    key TEXT NOT NULL,
    similarity REAL NOT NULL,
    wrong INTEGER NOT NULL,
    expires REAL NOT NULL
);
"""


def _private_file(path: Path) -> None:
    """Create the cache file (and its folder) readable by its owner only: it holds every tenant's prompts and
    answers. An existing file is narrowed too. SQLite gives its -wal and -shm files the database's mode."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists() and p.stat().st_mode & 0o077:
            os.chmod(p, 0o600)


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class SqliteCacheStore(CacheStore):
    name = "sqlite"
    # the error budget's verdicts are kept in the file: a restart (or another process on it) reads them back
    shares_samples = True

    def __init__(self, path: str | Path, max_entries: int = 100_000, dim: int = 384, semantic: bool = True) -> None:
        self.path = str(path)
        self.max_entries = max_entries
        self.semantic = semantic
        self.dim = dim
        self.index: Any = None
        self.index_ready = asyncio.Event()
        self._read: sqlite3.Connection | None = None
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rebuild: asyncio.Future[None] | None = None
        self._rows_bound = 0  # the writer thread's upper bound on the table's rows
        # written but not yet committed by the writer thread: read-your-writes for this process
        self._unflushed: dict[str, CacheEntry] = {}

    async def start(self) -> None:
        _private_file(Path(self.path))
        self._loop = asyncio.get_running_loop()
        setup = _connect(self.path)
        setup.executescript(SCHEMA)
        setup.close()
        self._read = _connect(self.path)
        self._writer = threading.Thread(target=self._write_loop, name="cache-writer", daemon=True)
        self._writer.start()
        if self.semantic:
            from hybrid.cache.vector_index import PartitionedIndex

            self.index = PartitionedIndex(self.dim)
            self._rebuild = self._loop.run_in_executor(None, self._rebuild_index)
            self._rebuild.add_done_callback(lambda _: self.index_ready.set())
        else:
            self.index_ready.set()

    def _rebuild_index(self) -> None:
        conn = _connect(self.path)
        started, count = time.monotonic(), 0
        try:
            rows = conn.execute(
                "SELECT partition, key, embedding FROM entries WHERE embedding IS NOT NULL AND expires > ? ORDER BY partition",
                (time.time(),),
            )
            batch: list[tuple[str, str, bytes]] = []
            for row in rows:
                if batch and row[0] != batch[0][0]:
                    count += self._add_batch(batch)
                    batch = []
                batch.append(row)
            if batch:
                count += self._add_batch(batch)
        except Exception:
            log.exception("cache: rebuilding the vector index failed; the semantic layer misses until new entries")
        finally:
            conn.close()
        log.info("cache: vector index rebuilt with %d entries in %.1fs", count, time.monotonic() - started)

    def _add_batch(self, batch: list[tuple[str, str, bytes]]) -> int:
        vectors = np.stack([np.frombuffer(b[2], dtype=np.float32) for b in batch])
        self.index.add_many(batch[0][0], [b[1] for b in batch], vectors)
        return len(batch)

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join, 30)
            self._writer = None
        if self._rebuild is not None and not self._rebuild.done():
            await asyncio.wait([self._rebuild], timeout=30)
        if self._read is not None:
            self._read.close()
            self._read = None

    # ------------------------------------------------------------------------------------------ reads

    def _row_to_entry(self, row: tuple[Any, ...]) -> CacheEntry | None:
        key, partition, namespace, text, answer, embedding, created, expires = row
        try:
            parsed = orjson.loads(answer)
        except orjson.JSONDecodeError:
            log.warning("cache: corrupt answer for entry %s; dropping it", key[:12])
            CACHE_ERRORS.labels("corrupt").inc()
            self._queue.put(("delete", key))
            return None
        vec = np.frombuffer(embedding, dtype=np.float32) if embedding else None
        return CacheEntry(key, partition, namespace, text, parsed, created, expires, vec)

    async def get(self, key: str) -> CacheEntry | None:
        assert self._read is not None
        pending = self._unflushed.get(key)
        if pending is not None:
            return pending if pending.expires > time.time() else None
        row = self._read.execute(
            "SELECT key, partition, namespace, text, answer, embedding, created, expires FROM entries "
            "WHERE key = ? AND expires > ?",
            (key, time.time()),
        ).fetchone()
        return self._row_to_entry(row) if row else None

    async def nearest(self, partition: str, vector: np.ndarray, k: int) -> list[tuple[CacheEntry, float]]:
        if self.index is None or not self.index_ready.is_set():
            return []
        keys = [key for key, _ in self.index.search(partition, vector, k)]
        if not keys:
            return []
        assert self._read is not None
        marks = ",".join("?" * len(keys))
        rows = self._read.execute(
            f"SELECT key, partition, namespace, text, answer, embedding, created, expires FROM entries "
            f"WHERE key IN ({marks}) AND expires > ?",
            (*keys, time.time()),
        ).fetchall()
        entries = [self._row_to_entry(row) for row in rows]
        found = {e.key for e in entries if e is not None}
        entries += [self._unflushed[k] for k in keys if k not in found and k in self._unflushed]
        out = []
        for entry in entries:
            if entry is not None and entry.embedding is not None and entry.partition == partition:
                out.append((entry, cosine(vector, entry.embedding)))
        out.sort(key=lambda pair: -pair[1])
        return out

    async def read_samples(self, after: str) -> tuple[list[tuple[str, Sample]], str]:
        assert self._read is not None
        rows = self._read.execute(
            "SELECT id, origin, partition, key, similarity, wrong FROM verdicts WHERE id > ? AND expires > ? "
            "ORDER BY id LIMIT ?", (int(after), time.time(), SAMPLES_PER_READ)).fetchall()
        out = [(origin, Sample(partition, key, float(similarity), bool(wrong)))
               for _, origin, partition, key, similarity, wrong in rows if 0.0 <= similarity <= 1.0]
        return out, str(rows[-1][0]) if rows else after

    # ------------------------------------------------------------------------------------------ writes

    async def publish_sample(self, origin: str, sample: Sample, ttl_s: float) -> None:
        self._queue.put(("verdict", origin, sample, time.time() + ttl_s))

    async def put(self, entry: CacheEntry) -> None:
        if self.index is not None and entry.embedding is not None:
            self.index.add(entry.partition, entry.key, entry.embedding)
        self._unflushed[entry.key] = entry
        self._queue.put(("put", entry))

    def _flushed(self, entries: list[CacheEntry]) -> None:
        """On the loop: the writer committed (or dropped) these; reads go to SQLite again."""
        for e in entries:
            if self._unflushed.get(e.key) is e:
                del self._unflushed[e.key]

    async def touch(self, key: str) -> None:
        self._queue.put(("touch", key, time.time()))

    async def clear(self, namespace: str | None = None) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put(("clear", namespace, fut))
        removed = await fut
        if namespace is None:
            self._unflushed.clear()
            if self.index is not None:
                self.index.clear()
        else:
            for k in [k for k, e in self._unflushed.items() if e.namespace == namespace]:
                del self._unflushed[k]
        return removed

    def _reply(self, fut: asyncio.Future[Any], value: Any) -> None:
        assert self._loop is not None
        def reply() -> None:
            if not fut.done():
                fut.set_result(value)

        self._loop.call_soon_threadsafe(reply)

    def _forget(self, keys: list[str]) -> None:
        if self.index is not None and keys and self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: [self.index.remove(k) for k in keys])

    def _write_loop(self) -> None:
        conn = _connect(self.path)
        # an upper bound on the rows (every put counts one, deletes are not subtracted): only past max_entries
        # is the table counted for real, so a cache below its bound never pays for COUNT(*) on a write
        (self._rows_bound,) = conn.execute("SELECT COUNT(*) FROM entries").fetchone()
        last_sweep = 0.0
        while True:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < 512:  # drain what is queued: one transaction for the lot
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            puts = [b[1] for b in batch if b[0] == "put"]
            try:
                self._apply(conn, batch)
                now = time.time()
                expire = now - last_sweep > 30
                if expire or any(b[0] == "put" for b in batch):
                    self._sweep(conn, now, expire)
                    if expire:
                        last_sweep = now
            except sqlite3.Error as exc:  # disk full, locked, corrupt: the requests already have their answers
                log.warning("cache: write failed (%s); %d operation(s) dropped", exc, len(batch))
                CACHE_ERRORS.labels("write").inc(len(batch))
                for b in batch:
                    if b[0] == "clear":
                        self._reply(b[2], 0)
            if puts and self._loop is not None:
                self._loop.call_soon_threadsafe(self._flushed, puts)
        conn.close()

    def _apply(self, conn: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
        conn.execute("BEGIN")
        try:
            for op in batch:
                if op[0] == "put":
                    self._rows_bound += 1
                    e: CacheEntry = op[1]
                    conn.execute(
                        "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (e.key, e.partition, e.namespace, e.text, orjson.dumps(e.answer),
                         e.embedding.astype(np.float32).tobytes() if e.embedding is not None else None,
                         e.created, e.expires, e.created),
                    )
                elif op[0] == "verdict":
                    v: Sample = op[2]
                    cur = conn.execute("INSERT INTO verdicts (origin, partition, key, similarity, wrong, expires) "
                                       "VALUES (?, ?, ?, ?, ?, ?)",
                                       (op[1], v.partition, v.key, v.similarity, int(v.wrong), op[3]))
                    if cur.lastrowid is not None and cur.lastrowid % 100 == 0:  # the newest MAX_SHARED_SAMPLES stay
                        conn.execute("DELETE FROM verdicts WHERE id <= ? OR expires <= ?",
                                     (cur.lastrowid - MAX_SHARED_SAMPLES, time.time()))
                elif op[0] == "touch":
                    conn.execute("UPDATE entries SET last_used = ? WHERE key = ?", (op[2], op[1]))
                elif op[0] == "delete":
                    conn.execute("DELETE FROM entries WHERE key = ?", (op[1],))
                    self._forget([op[1]])
                elif op[0] == "clear":
                    if op[1] is None:
                        n = conn.execute("DELETE FROM entries").rowcount
                    else:
                        keys = [r[0] for r in conn.execute("SELECT key FROM entries WHERE namespace = ?", (op[1],))]
                        n = conn.execute("DELETE FROM entries WHERE namespace = ?", (op[1],)).rowcount
                        self._forget(keys)
                    self._reply(op[2], n)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _sweep(self, conn: sqlite3.Connection, now: float, expire: bool) -> None:
        """Expire (every 30 s) and evict least recently used entries beyond the bound (after every put)."""
        gone: list[str] = []
        if expire:
            gone += [r[0] for r in conn.execute("SELECT key FROM entries WHERE expires <= ?", (now,))]
            conn.execute("DELETE FROM entries WHERE expires <= ?", (now,))
        if self._rows_bound > self.max_entries:
            (count,) = conn.execute("SELECT COUNT(*) FROM entries").fetchone()
            self._rows_bound = count
            if count > self.max_entries:
                victims = [r[0] for r in conn.execute(
                    "SELECT key FROM entries ORDER BY last_used LIMIT ?", (count - self.max_entries,))]
                conn.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in victims])
                CACHE_EVICTIONS.inc(len(victims))
                gone += victims
                self._rows_bound -= len(victims)
        self._forget(gone)

    # ------------------------------------------------------------------------------------------ admin

    async def stats(self) -> dict[str, Any]:
        assert self._read is not None
        (count,) = self._read.execute("SELECT COUNT(*) FROM entries WHERE expires > ?", (time.time(),)).fetchone()
        namespaces = dict(self._read.execute(
            "SELECT namespace, COUNT(*) FROM entries WHERE expires > ? GROUP BY namespace", (time.time(),)).fetchall())
        size = Path(self.path).stat().st_size if Path(self.path).exists() else 0
        return {"backend": "sqlite", "path": self.path, "entries": count, "namespaces": namespaces,
                "max_entries": self.max_entries, "file_bytes": size,
                "indexed": len(self.index) if self.index is not None else 0, "semantic": self.semantic}

    async def export(self) -> AsyncIterator[dict[str, Any]]:
        assert self._read is not None
        for key, namespace, text, answer, created, expires in self._read.execute(
            "SELECT key, namespace, text, answer, created, expires FROM entries WHERE expires > ?", (time.time(),)
        ):
            yield {"key": key, "namespace": namespace, "text": text, "answer": orjson.loads(answer),
                   "created": created, "expires": expires}
