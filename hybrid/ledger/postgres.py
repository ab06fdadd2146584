"""The ledger in PostgreSQL, for replicas that share one ledger (psycopg 3). ``[ledger] backend = "postgres"``
with ``dsn`` (a libpq URI or ``env:NAME``). Tags are JSONB; a score replaces the caller's earlier one."""

from __future__ import annotations

from typing import Any

from hybrid.ledger.rows import COLUMNS, LedgerRow
from hybrid.ledger.writer import Feedback

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    ts DOUBLE PRECISION NOT NULL, request_id TEXT NOT NULL, key_id TEXT NOT NULL, requested_model TEXT NOT NULL,
    tier TEXT NOT NULL, backend TEXT NOT NULL, served_model TEXT NOT NULL, status TEXT NOT NULL,
    cache TEXT NOT NULL, prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL, cost DOUBLE PRECISION NOT NULL, counterfactual_cost DOUBLE PRECISION NOT NULL,
    latency_s DOUBLE PRECISION NOT NULL, ttft_s DOUBLE PRECISION, route_reason TEXT NOT NULL, tags JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL, key_id TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, score DOUBLE PRECISION NOT NULL,
    comment TEXT NOT NULL, PRIMARY KEY (request_id, key_id)
);
"""
_INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
_FEEDBACK = (
    "INSERT INTO feedback (request_id, key_id, ts, score, comment) VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT (request_id, key_id) DO UPDATE SET ts = EXCLUDED.ts, score = EXCLUDED.score, "
    "comment = EXCLUDED.comment"
)


def connect(dsn: str, timeout: float = 3.0) -> Any:
    import psycopg

    return psycopg.connect(dsn, connect_timeout=max(1, int(timeout)))


class PostgresStore:
    name = "postgres"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._ready = False

    def connect(self) -> Any:
        conn = connect(self.dsn)
        if not self._ready:
            with conn.transaction():
                conn.execute(SCHEMA)
            self._ready = True
        return conn

    def insert(self, conn: Any, rows: list[LedgerRow]) -> None:
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(_INSERT, [row.values() for row in rows])

    def insert_feedback(self, conn: Any, items: list[Feedback]) -> None:
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(_FEEDBACK, items)

    def close(self, conn: Any) -> None:
        conn.close()
