"""The usage ledger: one row per request, what it cost and what it would have cost, written off the hot path."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hybrid.ledger.rows import LedgerRow
from hybrid.ledger.sqlite import SqliteLedger

if TYPE_CHECKING:
    from hybrid.config import Config

__all__ = ["LedgerRow", "SqliteLedger", "build_ledger"]


def build_ledger(config: Config) -> SqliteLedger | None:
    """The configured ledger (None when off)."""
    from pathlib import Path

    from hybrid.paths import data_dir

    cfg = config.ledger
    if cfg.backend == "off":
        return None
    path = Path(cfg.path).expanduser() if cfg.path else data_dir() / "ledger.sqlite3"
    return SqliteLedger(path, flush_interval_s=cfg.flush_interval_s, retry_s=cfg.retry_s)
