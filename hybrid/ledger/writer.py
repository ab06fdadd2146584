"""The ledger's writer: rows queued by the event loop, written in batches by one thread, into any store.

No row is lost: a batch that cannot be written (the database locked, restarting or unreachable, the disk full)
stays queued and is retried; rows that still cannot be written after ``retry_s`` are spilled to a JSON-lines
file in the spill folder, with a log line and ``hybrid_ledger_spilled_rows_total``, and written at the next
start. Closing (the server's shutdown, SIGTERM included) writes everything still queued. A store only knows how
to connect, create its tables and insert: :class:`~hybrid.ledger.sqlite.SqliteStore`,
:class:`~hybrid.ledger.postgres.PostgresStore`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter

from hybrid.ledger.rows import LedgerRow
from hybrid.metrics import REGISTRY

log = logging.getLogger("hybrid.ledger")

ROWS_WRITTEN = Counter("hybrid_ledger_rows", "Ledger rows written", registry=REGISTRY)
ROWS_SPILLED = Counter(
    "hybrid_ledger_spilled_rows", "Ledger rows the database could not take, kept in a spill file", registry=REGISTRY
)

Feedback = tuple[str, str, float, float, str]  # request id, key id, time, score, comment
MAX_QUEUED_FEEDBACK = 50_000


class LedgerStore(Protocol):
    name: str

    def connect(self) -> Any:
        """A connection for this thread; the tables exist once it is made."""

    def insert(self, conn: Any, rows: list[LedgerRow]) -> None:
        """Insert rows in one transaction (all or none)."""

    def insert_feedback(self, conn: Any, items: list[Feedback]) -> None: ...

    def close(self, conn: Any) -> None: ...


class Ledger:
    """A store and the thread that writes to it."""

    def __init__(self, store: LedgerStore, spill_dir: Path, flush_interval_s: float = 0.5, retry_s: float = 30.0,
                 batch: int = 1000) -> None:
        self.store = store
        self.name = store.name
        self.spill_dir = spill_dir
        self.flush_interval_s = flush_interval_s
        self.retry_s = retry_s
        self.batch = batch
        self._rows: deque[LedgerRow] = deque()
        # scores wait in memory only (no spill): at most this many, the oldest dropped first while the database is away
        self._feedback: deque[Feedback] = deque(maxlen=MAX_QUEUED_FEEDBACK)
        self._stopping = threading.Event()
        self._writer: threading.Thread | None = None

    @property
    def _spill_prefix(self) -> str:
        return f"ledger-{self.store.name}.spill-"

    def start(self) -> None:
        """Create the tables (failing loudly if the store cannot be reached at all), write any spilled rows."""
        self.spill_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = self.store.connect()
        try:
            for spill in sorted(self.spill_dir.glob(self._spill_prefix + "*.jsonl")):
                rows = [LedgerRow.from_json(line) for line in spill.read_bytes().splitlines() if line.strip()]
                self.store.insert(conn, rows)
                spill.unlink()
                log.info("ledger: %d spilled row(s) from %s written", len(rows), spill.name)
        finally:
            self.store.close(conn)
        self._writer = threading.Thread(target=self._write_loop, name="ledger-writer", daemon=True)
        self._writer.start()

    def record(self, row: LedgerRow) -> None:
        """Queue a row (a deque append: never blocks, never raises, no lock on the event loop's side)."""
        self._rows.append(row)

    def feedback(self, request_id: str, key_id: str, score: float, comment: str) -> None:
        """Queue a client's score for one of its requests (the last one given counts)."""
        self._feedback.append((request_id, key_id, time.time(), score, comment))

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop."""
        if self._writer is None:
            return
        self._stopping.set()
        self._writer.join(timeout)
        self._writer = None

    # ---------------------------------------------------------------- writer thread

    def _write_loop(self) -> None:
        conn: Any = None
        pending: list[LedgerRow] = []
        failing_since: float | None = None
        rows, feedback = self._rows, self._feedback
        while True:
            stopping = self._stopping.wait(self.flush_interval_s)
            while rows and len(pending) < self.batch * 10:
                pending.append(rows.popleft())
            scores = [feedback.popleft() for _ in range(len(feedback))]
            if pending or scores:
                try:
                    if conn is None:
                        conn = self.store.connect()
                    if scores:
                        self.store.insert_feedback(conn, scores)
                        scores = []
                    if pending:
                        self.store.insert(conn, pending)
                        ROWS_WRITTEN.inc(len(pending))
                    if failing_since is not None:
                        log.warning("ledger: writing again after %.1fs", time.monotonic() - failing_since)
                    pending, failing_since = [], None
                except Exception as exc:  # the store's errors: locked, gone, refusing; a new connection next time
                    feedback.extendleft(reversed(scores))
                    if conn is not None:
                        try:
                            self.store.close(conn)
                        except Exception:  # noqa: BLE001 - already broken
                            pass
                        conn = None
                    now = time.monotonic()
                    if failing_since is None:
                        failing_since = now
                        log.warning("ledger: cannot write %d row(s) (%s); retrying", len(pending), exc)
                    if pending and (stopping or now - failing_since > self.retry_s):
                        # past the retry window everything queued goes to disk at each round, until a write
                        # succeeds again: memory stays bounded however long the database is away
                        pending.extend(rows.popleft() for _ in range(len(rows)))
                        self._spill(pending, exc)
                        pending = []
            if stopping and not pending and not rows:
                if feedback:
                    log.error("ledger: %d feedback score(s) could not be written before shutdown", len(feedback))
                if conn is not None:
                    self.store.close(conn)
                return

    def _spill(self, rows: list[LedgerRow], exc: Exception) -> None:
        spill = self.spill_dir / f"{self._spill_prefix}{int(time.time() * 1000)}-{os.getpid()}.jsonl"
        fd = os.open(spill, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        with os.fdopen(fd, "wb") as f:
            for row in rows:
                f.write(row.to_json() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        ROWS_SPILLED.inc(len(rows))
        log.error("ledger: the database refused %d row(s) (%s); kept in %s, written at the next start",
                  len(rows), exc, spill)
