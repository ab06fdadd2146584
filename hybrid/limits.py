"""Per-key rate limits: requests per minute and tokens per minute, as token buckets: in the process, or in Redis
when the cache is there, so that replicas enforce one limit per key."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from hybrid.errors import RateLimitError

log = logging.getLogger("hybrid.limits")


@dataclass
class _Bucket:
    level: float
    updated: float


class RateLimiter:
    """Admits a request against its key's buckets, or raises 429 ``rate_limit_exceeded`` with Retry-After.

    Tokens are charged up front (prompt estimate plus requested output) and settled against the real usage when
    the answer is complete, so a key cannot overrun its budget with many concurrent requests.
    """

    def __init__(self, requests_per_min: int, tokens_per_min: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rpm = requests_per_min
        self.tpm = tokens_per_min
        self.clock = clock
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rpm > 0 or self.tpm > 0

    MAX_KEYS = 10_000  # distinct keys (client addresses without auth) before idle buckets are dropped

    def _refill(self, buckets: dict[str, _Bucket], key: str, per_min: int) -> _Bucket:
        now = self.clock()
        if len(buckets) > self.MAX_KEYS:  # a bucket idle for a minute is full again: forgetting it changes nothing
            for k in [k for k, b in buckets.items() if now - b.updated > 60.0]:
                del buckets[k]
        b = buckets.get(key)
        if b is None:
            b = buckets[key] = _Bucket(level=float(per_min), updated=now)
        else:
            b.level = min(float(per_min), b.level + (now - b.updated) * per_min / 60.0)
            b.updated = now
        return b

    def admit(self, key: str, est_tokens: int) -> int:
        """Charge one request and ``est_tokens``; returns the tokens charged (to settle later)."""
        req_bucket = self._refill(self._requests, key, self.rpm) if self.rpm > 0 else None
        tok_bucket = self._refill(self._tokens, key, self.tpm) if self.tpm > 0 else None
        if req_bucket is not None and req_bucket.level < 1.0:
            wait = (1.0 - req_bucket.level) * 60.0 / self.rpm
            raise RateLimitError(
                f"Rate limit reached: {self.rpm} requests per minute for this key. Try again in {wait:.1f}s.",
                retry_after_s=wait,
            )
        charge = min(est_tokens, self.tpm) if tok_bucket is not None else 0
        if tok_bucket is not None and tok_bucket.level < charge:
            wait = (charge - tok_bucket.level) * 60.0 / self.tpm
            raise RateLimitError(
                f"Rate limit reached: {self.tpm} tokens per minute for this key. Try again in {wait:.1f}s.",
                retry_after_s=wait,
            )
        if req_bucket is not None:
            req_bucket.level -= 1.0
        if tok_bucket is not None:
            tok_bucket.level -= charge
        return charge

    async def acquire(self, key: str, est_tokens: int) -> int:
        """:meth:`admit`, as the gateway calls every limiter (the Redis one has to wait for its server)."""
        return self.admit(key, est_tokens)

    async def close(self) -> None:
        return None

    def settle(self, key: str, charged: int, used: int) -> None:
        """Correct the up-front charge with the tokens really used (may go below zero: paid back over time)."""
        if self.tpm > 0:
            b = self._refill(self._tokens, key, self.tpm)
            b.level = min(float(self.tpm), b.level + charged - used)


# Both buckets of one key, refilled and charged in one step on the Redis server (its clock, so replicas with
# skewed clocks agree). KEYS: requests bucket, tokens bucket. ARGV: rpm, tpm, tokens to charge.
# Returns {1, charged} when admitted, {0, seconds to wait, which} when not.
_ADMIT = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1e6
local function level(key, cap)
  local v = redis.call('HMGET', key, 'level', 'ts')
  local l = tonumber(v[1]) or cap
  local t = tonumber(v[2]) or now
  return math.min(cap, l + (now - t) * cap / 60.0)
end
local rpm, tpm, est = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local r, t = 0, 0
if rpm > 0 then
  r = level(KEYS[1], rpm)
  if r < 1 then return {0, tostring((1 - r) * 60.0 / rpm), 'requests'} end
end
local charge = 0
if tpm > 0 then
  t = level(KEYS[2], tpm)
  charge = math.min(est, tpm)
  if t < charge then return {0, tostring((charge - t) * 60.0 / tpm), 'tokens'} end
end
if rpm > 0 then
  redis.call('HSET', KEYS[1], 'level', tostring(r - 1), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[1], 120)
end
if tpm > 0 then
  redis.call('HSET', KEYS[2], 'level', tostring(t - charge), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[2], 120)
end
return {1, tostring(charge)}
"""


class RedisRateLimiter:
    """The same limits as :class:`RateLimiter`, kept in Redis, so that every replica enforces one limit per key.

    Admission is one script call (both buckets, atomically); settling the up-front token charge is one
    ``HINCRBYFLOAT`` off the answer's path. A Redis that cannot be reached lets requests through, with a log
    line: a limiter never takes the router down."""

    def __init__(self, url: str, requests_per_min: int, tokens_per_min: int, prefix: str = "hybrid:limit:") -> None:
        import redis.asyncio as redis

        self.rpm = requests_per_min
        self.tpm = tokens_per_min
        self.prefix = prefix
        self.r = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._admit = self.r.register_script(_ADMIT)
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self.rpm > 0 or self.tpm > 0

    async def acquire(self, key: str, est_tokens: int) -> int:
        try:
            result = await self._admit(keys=[self.prefix + key + ":req", self.prefix + key + ":tok"],
                                       args=[self.rpm, self.tpm, est_tokens])
        except Exception as exc:
            log.warning("limits: Redis unreachable (%s); letting the request through", exc)
            return 0
        if int(result[0]) == 1:
            return int(float(result[1]))
        wait = float(result[1])
        which = result[2].decode() if isinstance(result[2], bytes) else str(result[2])
        limit = f"{self.rpm} requests" if which == "requests" else f"{self.tpm} tokens"
        raise RateLimitError(
            f"Rate limit reached: {limit} per minute for this key. Try again in {wait:.1f}s.", retry_after_s=wait
        )

    def settle(self, key: str, charged: int, used: int) -> None:
        if self.tpm > 0 and charged != used:
            task = asyncio.ensure_future(self._settle(key, charged - used))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _settle(self, key: str, delta: int) -> None:
        try:
            await self.r.hincrbyfloat(self.prefix + key + ":tok", "level", delta)
        except Exception as exc:
            log.warning("limits: cannot settle tokens in Redis (%s)", exc)

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=5)
        await self.r.aclose()
