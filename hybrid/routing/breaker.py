"""A circuit breaker per backend: a backend that keeps failing is cooled down, then probed again."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"  # cooling down: skipped by routing
    HALF_OPEN = "half-open"  # one probe request is let through


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures (or at once on a 429 with Retry-After).

    While open, ``allow()`` is false until the cooldown has passed; then exactly one request probes the backend.
    Success closes the breaker; failure opens it again with the cooldown doubled (up to ``max_cooldown_s``).
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        cooldown_s: float = 30.0,
        max_cooldown_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.open_until = 0.0
        self._cooldown_s = cooldown_s
        self._probing = False

    def allow(self) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self.clock() < self.open_until:
                return False
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def cooling(self) -> bool:
        return self.state is BreakerState.OPEN and self.clock() < self.open_until

    def retry_after_s(self) -> float:
        return max(0.0, self.open_until - self.clock())

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._probing = False
        self._cooldown_s = self.base_cooldown_s

    def record_failure(self, retry_after_s: float | None = None) -> None:
        self.failures += 1
        probe_failed = self.state is BreakerState.HALF_OPEN
        if probe_failed or retry_after_s is not None or self.failures >= self.failure_threshold:
            if probe_failed:
                self._cooldown_s = min(self.max_cooldown_s, self._cooldown_s * 2)
            cooldown = self._cooldown_s
            if retry_after_s is not None:  # the upstream said when: believe it (but a failed probe backs off)
                cooldown = max(cooldown, retry_after_s) if probe_failed else max(retry_after_s, 0.0)
            self.state = BreakerState.OPEN
            self.open_until = self.clock() + cooldown
            self._probing = False

    def release_probe(self) -> None:
        """A probe that never reached the backend (e.g. the client went away) frees the half-open slot."""
        self._probing = False
