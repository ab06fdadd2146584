"""The usage ledger: one row per request, what it cost and what it would have cost, written off the hot path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hybrid.ledger.rows import LedgerRow
from hybrid.ledger.writer import Ledger

if TYPE_CHECKING:
    from hybrid.config import Config

__all__ = ["Ledger", "LedgerRow", "build_ledger", "sqlite_path"]


def sqlite_path(config: Config) -> Path:
    from hybrid.paths import data_dir

    return Path(config.ledger.path).expanduser() if config.ledger.path else data_dir() / "ledger.sqlite3"


def build_ledger(config: Config) -> Ledger | None:
    """The configured ledger (None when off)."""
    from hybrid.paths import data_dir

    cfg = config.ledger
    if cfg.backend == "off":
        return None
    if cfg.backend == "postgres":
        from hybrid.ledger.postgres import PostgresStore

        return Ledger(PostgresStore(cfg.dsn), data_dir(), cfg.flush_interval_s, cfg.retry_s)
    from hybrid.ledger.sqlite import SqliteStore

    path = sqlite_path(config)
    return Ledger(SqliteStore(path), path.parent, cfg.flush_interval_s, cfg.retry_s)
