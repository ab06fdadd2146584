"""What the ledger's readers (``hybrid report``, budgets at start) need to say the same query to SQLite and to
PostgreSQL: the parameter style, a tag's value, a latency in whole milliseconds, a count of true conditions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    name: str
    param: str  # the driver's placeholder

    def tag(self, key: str, table: str = "") -> str:
        """A tag's value (the key is checked by the caller: lower-case letters, digits, _ . -)."""
        col = f"{table}.tags" if table else "tags"
        if self.name == "postgres":
            return f"({col} ->> '{key}')"
        return f"json_extract({col}, '$.\"{key}\"')"

    def ms(self, col: str) -> str:
        """Whole milliseconds, truncated."""
        if self.name == "postgres":
            return f"CAST(FLOOR({col} * 1000) AS BIGINT)"
        return f"CAST({col} * 1000 AS INTEGER)"

    @staticmethod
    def count(condition: str) -> str:
        return f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"


SQLITE = Dialect("sqlite", "?")
POSTGRES = Dialect("postgres", "%s")
DIALECTS = {"sqlite": SQLITE, "postgres": POSTGRES}
