"""The outcome of routing, as the gateway and the response headers see it."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """The ordered targets to try (first the chosen one, then fallbacks) and the reason for the choice."""

    targets: list[Target]
    reason: str
    details: dict[str, float | int | str] = field(default_factory=dict)
