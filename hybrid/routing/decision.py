"""The outcome of routing, as the gateway and the response headers see it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hybrid.backends.base import Backend


@dataclass
class Target:
    """One backend and the concrete model id to ask it for."""

    backend: Backend
    model: str

    @property
    def tier(self) -> str:
        return self.backend.tier


@dataclass
class RouteDecision:
    """The ordered targets to try (the chosen tier's first, then fallbacks) and the reason for the choice."""

    targets: list[Target]
    reason: str
    primary: int = 0  # how many of the targets belong to the chosen tier (the rest are fallbacks)
    can_overflow: bool = True  # an explicit model id never overflows to another model
    auto: bool = False
    prompt_tokens: int | None = None
    charged_tokens: int = 0  # rate-limit tokens charged up front, settled when the answer is done
    failures: list[str] = field(default_factory=list)  # "backend(why)" for each target passed over
    lookup: Any = None  # the cache lookup (a CacheLookup) whose miss this answer may fill

    def __post_init__(self) -> None:
        if not self.primary:
            self.primary = len(self.targets)
