"""The usage ledger in SQLite (WAL): rows queued by the event loop, written in batches by one thread.

No row is lost: a batch that cannot be written (the database locked, the disk full) stays queued and is retried
with backoff; rows that still cannot be written after ``retry_s`` are spilled to a JSON-lines file next to the
database, with a log line and ``hybrid_ledger_spilled_rows_total``, and read back in at the next start. Closing
(the server's shutdown, SIGTERM included) writes everything still queued.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path

from prometheus_client import Counter

from hybrid.ledger.rows import COLUMNS, LedgerRow
from hybrid.metrics import REGISTRY

log = logging.getLogger("hybrid.ledger")

ROWS_WRITTEN = Counter("hybrid_ledger_rows", "Ledger rows written", registry=REGISTRY)
ROWS_SPILLED = Counter(
    "hybrid_ledger_spilled_rows", "Ledger rows the database could not take, kept in a spill file", registry=REGISTRY
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    ts REAL NOT NULL, request_id TEXT NOT NULL, key_id TEXT NOT NULL, requested_model TEXT NOT NULL,
    tier TEXT NOT NULL, backend TEXT NOT NULL, served_model TEXT NOT NULL, status TEXT NOT NULL,
    cache TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL, cost REAL NOT NULL, counterfactual_cost REAL NOT NULL,
    latency_s REAL NOT NULL, ttft_s REAL, route_reason TEXT NOT NULL, tags TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL, key_id TEXT NOT NULL, ts REAL NOT NULL, score REAL NOT NULL, comment TEXT NOT NULL,
    PRIMARY KEY (request_id, key_id)
);
"""
_FEEDBACK = "INSERT OR REPLACE INTO feedback (request_id, key_id, ts, score, comment) VALUES (?, ?, ?, ?, ?)"
_INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def connect(path: Path | str, timeout: float = 1.0) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=timeout)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class SqliteLedger:
    name = "sqlite"

    def __init__(self, path: Path, flush_interval_s: float = 0.5, retry_s: float = 30.0, batch: int = 1000) -> None:
        self.path = path
        self.flush_interval_s = flush_interval_s
        self.retry_s = retry_s
        self.batch = batch
        self._rows: deque[LedgerRow] = deque()
        self._feedback: deque[tuple[str, str, float, float, str]] = deque()
        self._stopping = threading.Event()
        self._writer: threading.Thread | None = None

    @property
    def spill_glob(self) -> str:
        return self.path.name + ".spill-*.jsonl"

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # tags and key ids: the owner's eyes only
        conn = connect(self.path, timeout=10.0)
        try:
            conn.executescript(SCHEMA)
            self._recover(conn)
        finally:
            conn.close()
        self._writer = threading.Thread(target=self._write_loop, name="ledger-writer", daemon=True)
        self._writer.start()

    def feedback(self, request_id: str, key_id: str, score: float, comment: str) -> None:
        """Queue a client's score for one of its requests (the last one given counts)."""
        self._feedback.append((request_id, key_id, time.time(), score, comment))

    def record(self, row: LedgerRow) -> None:
        """Queue a row (a deque append: never blocks, never raises, no lock on the event loop's side)."""
        self._rows.append(row)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop."""
        if self._writer is None:
            return
        self._stopping.set()
        self._writer.join(timeout)
        self._writer = None

    # ---------------------------------------------------------------- writer thread

    def _write_loop(self) -> None:
        conn = connect(self.path)
        pending: list[LedgerRow] = []
        failing_since: float | None = None
        rows = self._rows
        while True:
            stopping = self._stopping.wait(self.flush_interval_s)
            while rows and len(pending) < self.batch * 10:
                pending.append(rows.popleft())
            feedback = self._feedback
            if feedback:
                scores = [feedback.popleft() for _ in range(len(feedback))]
                try:
                    conn.executemany(_FEEDBACK, scores)
                except sqlite3.Error as exc:
                    feedback.extendleft(reversed(scores))  # kept for the next round
                    log.warning("ledger: cannot write %d feedback score(s) (%s); retrying", len(scores), exc)
            if pending:
                try:
                    conn.execute("BEGIN")
                    conn.executemany(_INSERT, [row.values() for row in pending])
                    conn.execute("COMMIT")
                    ROWS_WRITTEN.inc(len(pending))
                    if failing_since is not None:
                        log.warning("ledger: writing again after %.1fs", time.monotonic() - failing_since)
                    pending, failing_since = [], None
                except sqlite3.Error as exc:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                    now = time.monotonic()
                    if failing_since is None:
                        failing_since = now
                        log.warning("ledger: cannot write %d row(s) (%s); retrying", len(pending), exc)
                    if stopping or now - failing_since > self.retry_s:
                        self._spill(pending, exc)
                        pending, failing_since = [], None
            if stopping and not pending and not rows:
                if self._feedback:
                    log.error("ledger: %d feedback score(s) could not be written before shutdown", len(self._feedback))
                conn.close()
                return

    def _spill(self, rows: list[LedgerRow], exc: Exception) -> None:
        spill = self.path.with_name(f"{self.path.name}.spill-{int(time.time() * 1000)}-{os.getpid()}.jsonl")
        fd = os.open(spill, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        with os.fdopen(fd, "wb") as f:
            for row in rows:
                f.write(row.to_json() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        ROWS_SPILLED.inc(len(rows))
        log.error("ledger: the database refused %d row(s) (%s); kept in %s, read back in at the next start",
                  len(rows), exc, spill)

    def _recover(self, conn: sqlite3.Connection) -> None:
        for spill in sorted(self.path.parent.glob(self.spill_glob)):
            rows = [LedgerRow.from_json(line) for line in spill.read_bytes().splitlines() if line.strip()]
            conn.execute("BEGIN")
            conn.executemany(_INSERT, [row.values() for row in rows])
            conn.execute("COMMIT")
            spill.unlink()
            log.info("ledger: %d spilled row(s) from %s written", len(rows), spill.name)
