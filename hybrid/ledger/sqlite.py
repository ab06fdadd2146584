"""The ledger in SQLite (WAL): the embedded default, one file in the data folder, created readable by its owner
only (it holds tags and key ids)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from hybrid.ledger.rows import COLUMNS, LedgerRow
from hybrid.ledger.writer import Feedback

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
_INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_FEEDBACK = "INSERT OR REPLACE INTO feedback (request_id, key_id, ts, score, comment) VALUES (?, ?, ?, ?, ?)"


def connect(path: Path | str, timeout: float = 1.0) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=timeout)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class SqliteStore:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False

    def connect(self) -> sqlite3.Connection:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        conn = connect(self.path)
        if not self._ready:
            conn.executescript(SCHEMA)
            self._ready = True
        return conn

    def insert(self, conn: sqlite3.Connection, rows: list[LedgerRow]) -> None:
        try:
            conn.execute("BEGIN")
            conn.executemany(_INSERT, [row.values() for row in rows])
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def insert_feedback(self, conn: sqlite3.Connection, items: list[Feedback]) -> None:
        conn.executemany(_FEEDBACK, items)

    def close(self, conn: sqlite3.Connection) -> None:
        conn.close()
