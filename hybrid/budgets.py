"""Budgets in money, per key or per tag, per day or per month (UTC).

Before a request is routed, every budget that applies to it is checked; once one is spent, its action applies:
``downgrade`` routes the request to a cheaper tier (``x-hybrid-route-reason: budget:NAME->local``), ``refuse``
answers 429 ``insufficient_quota``. A settled answer adds its cost to every budget that applies.

Spend lives in a :class:`BudgetStore`. With the cache in Redis, in Redis too (``INCRBYFLOAT`` on one key per
budget and period, expiring after the period), so every replica sees one spend. Otherwise in the process,
seeded at start from the ledger's rows of the current period, so a restart forgets nothing. A store that cannot
be reached fails open, with a log line and ``hybrid_budget_errors_total``: a budget never takes the router down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter

from hybrid.answers import RequestContext
from hybrid.config import BudgetConfig
from hybrid.identity import key_id
from hybrid.ledger import Ledger
from hybrid.ledger.query import DIALECTS
from hybrid.metrics import REGISTRY

log = logging.getLogger("hybrid.budgets")

BUDGET_ERRORS = Counter("hybrid_budget_errors", "Budget checks or updates that failed (the budget let it pass)",
                        registry=REGISTRY)


@dataclass(frozen=True)
class Budget:
    cfg: BudgetConfig
    key_id: str | None  # the keyed hash of its key, as requests carry it
    tag: tuple[str, str] | None

    def applies(self, ctx: RequestContext) -> bool:
        if self.key_id is not None:
            return ctx.key_id == self.key_id
        assert self.tag is not None
        return ctx.tags.get(self.tag[0]) == self.tag[1]

    def period(self, now: dt.datetime) -> tuple[str, dt.datetime, dt.datetime]:
        """(id, start, end) of the period ``now`` falls in."""
        if self.cfg.period == "day":
            start = now.replace(hour=0, minute=0, second=0, microsecond=0)
            return start.strftime("%Y-%m-%d"), start, start + dt.timedelta(days=1)
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + dt.timedelta(days=32)).replace(day=1)
        return start.strftime("%Y-%m"), start, end


class BudgetStore(Protocol):
    async def spent(self, keys: list[str]) -> list[float]: ...

    async def add(self, keys: list[tuple[str, float]], amount: float) -> None:
        """Add ``amount`` to each key; each key with the unix time after which it may be forgotten."""


class LocalBudgetStore:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    async def spent(self, keys: list[str]) -> list[float]:
        return [self.values.get(k, 0.0) for k in keys]

    async def add(self, keys: list[tuple[str, float]], amount: float) -> None:
        for k, _ in keys:
            self.values[k] = self.values.get(k, 0.0) + amount


class RedisBudgetStore:
    def __init__(self, url: str, prefix: str = "hybrid:budget:") -> None:
        import redis.asyncio as redis

        self.r = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.prefix = prefix

    async def spent(self, keys: list[str]) -> list[float]:
        values = await self.r.mget([self.prefix + k for k in keys])
        return [float(v) if v is not None else 0.0 for v in values]

    async def add(self, keys: list[tuple[str, float]], amount: float) -> None:
        async with self.r.pipeline(transaction=False) as pipe:
            for k, forget_at in keys:
                pipe.incrbyfloat(self.prefix + k, amount)
                pipe.expireat(self.prefix + k, int(forget_at))
            await pipe.execute()

    async def close(self) -> None:
        await self.r.aclose()


@dataclass(frozen=True)
class Verdict:
    budget: Budget
    spent: float


class Budgets:
    def __init__(self, configs: list[BudgetConfig], store: BudgetStore, tenant_secret: str = "") -> None:
        self.budgets = [
            Budget(c, key_id(c.key, tenant_secret) if c.key else None,
                   tuple(c.tag.split("=", 1)) if c.tag else None)  # type: ignore[arg-type]
            for c in configs
        ]
        self.store = store
        self.last_spent: dict[str, float] = {}  # budget name -> spend seen last (for /metrics)
        self._pending: set[asyncio.Task[None]] = set()

    def _keys(self, budgets: list[Budget], now: dt.datetime) -> list[tuple[str, float]]:
        out = []
        for b in budgets:
            pid, _, end = b.period(now)
            out.append((f"{b.cfg.name}:{pid}", (end + dt.timedelta(days=1)).timestamp()))
        return out

    async def check(self, ctx: RequestContext) -> Verdict | None:
        """The first spent budget that applies to the request, if any."""
        applying = [b for b in self.budgets if b.applies(ctx)]
        if not applying:
            return None
        try:
            spent = await self.store.spent([k for k, _ in self._keys(applying, _now())])
        except Exception as exc:
            BUDGET_ERRORS.inc()
            log.warning("budgets: cannot read spend (%s); letting the request through", exc)
            return None
        for b, s in zip(applying, spent):
            self.last_spent[b.cfg.name] = s
            if s >= b.cfg.limit_usd:
                return Verdict(b, s)
        return None

    def charge(self, ctx: RequestContext, cost: float) -> None:
        """Add a settled answer's cost to every budget that applies (off the answer's path)."""
        if cost <= 0:
            return
        applying = [b for b in self.budgets if b.applies(ctx)]
        if applying:
            task = asyncio.ensure_future(self._add(applying, cost))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _add(self, budgets: list[Budget], cost: float) -> None:
        try:
            await self.store.add(self._keys(budgets, _now()), cost)
            for b in budgets:
                self.last_spent[b.cfg.name] = self.last_spent.get(b.cfg.name, 0.0) + cost
        except Exception as exc:
            BUDGET_ERRORS.inc()
            log.warning("budgets: cannot add %.6f to %s (%s)", cost, ", ".join(b.cfg.name for b in budgets), exc)

    def seed_from_ledger(self, ledger: Ledger) -> None:
        """A local store starts from the ledger's spend in each budget's current period."""
        if not isinstance(self.store, LocalBudgetStore):
            return
        dialect = DIALECTS[ledger.store.name]
        now = _now()
        conn = ledger.store.connect()
        try:
            for b, (key, _) in zip(self.budgets, self._keys(self.budgets, now)):
                _, start, _ = b.period(now)
                if b.key_id is not None:
                    where, arg = f"key_id = {dialect.param}", b.key_id
                else:
                    assert b.tag is not None
                    where, arg = f"{dialect.tag(b.tag[0])} = {dialect.param}", b.tag[1]
                row = conn.execute(
                    f"SELECT COALESCE(SUM(cost), 0) FROM requests WHERE ts >= {dialect.param} AND {where}",
                    (start.timestamp(), arg),
                ).fetchone()
                self.store.values[key] = float(row[0])
                self.last_spent[b.cfg.name] = float(row[0])
        finally:
            ledger.store.close(conn)

    def gauges(self) -> list[tuple[dict[str, str], float]]:
        return [({"budget": b.cfg.name}, b.cfg.limit_usd - self.last_spent.get(b.cfg.name, 0.0))
                for b in self.budgets]

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=5)
        close: Any = getattr(self.store, "close", None)
        if close is not None:
            await close()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
