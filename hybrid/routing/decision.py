"""The outcome of routing, as the gateway and the response headers see it: immutable once made."""

from __future__ import annotations

from dataclasses import dataclass

from hybrid.backends.base import Backend


@dataclass(frozen=True)
class Target:
    """One backend and the concrete model id to ask it for."""

    backend: Backend
    model: str

    @property
    def tier(self) -> str:
        return self.backend.tier


@dataclass(frozen=True)
class RouteDecision:
    """The ordered targets to try (the chosen tier's first, then fallbacks) and the reason for the choice."""

    targets: tuple[Target, ...]
    reason: str
    primary: int  # how many of the targets belong to the chosen tier (the rest are fallbacks)
    can_overflow: bool = True  # only a tier the router chose may overflow; an explicit model id never does
    auto: bool = False  # chosen by the auto policy: a target that cannot do the request is passed over
    prompt_tokens: int | None = None  # counted while routing, with the local tokenizer

    @classmethod
    def to(cls, targets: list[Target], reason: str, **kwargs: object) -> RouteDecision:
        """All ``targets`` primary unless ``primary`` says otherwise."""
        kwargs.setdefault("primary", len(targets))
        return cls(tuple(targets), reason, **kwargs)  # type: ignore[arg-type]
