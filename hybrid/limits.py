"""Per-key rate limits: requests per minute and tokens per minute, as token buckets."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from hybrid.errors import RateLimitError


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

    def settle(self, key: str, charged: int, used: int) -> None:
        """Correct the up-front charge with the tokens really used (may go below zero: paid back over time)."""
        if self.tpm > 0:
            b = self._refill(self._tokens, key, self.tpm)
            b.level = min(float(self.tpm), b.level + charged - used)
