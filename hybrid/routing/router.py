"""From a request to its route decision: the forced tier, the configured default, the auto policy, a tier alias
or a concrete model id, with the fallback tiers behind the chosen one."""

from __future__ import annotations

from typing import Any

from hybrid.backends.base import Backend
from hybrid.config import RoutingConfig
from hybrid.protocol import InferenceRequest
from hybrid.routing.decision import RouteDecision
from hybrid.routing.policy import AutoPolicy
from hybrid.routing.resolver import AUTO, ModelResolver
from hybrid.routing.scoring import load_scorer


class Router:
    def __init__(self, cfg: RoutingConfig, resolver: ModelResolver) -> None:
        self.cfg = cfg
        self.resolver = resolver
        self.policy = AutoPolicy(cfg, load_scorer(cfg.scorer), resolver.tiers)
        #: the tokenizer that counts prompts for the size rule: the first local model's (set at start)
        self.tokenizer: Backend | None = None

    async def count_prompt_tokens(self, req: InferenceRequest) -> int | None:
        if self.tokenizer is None:
            return None
        return await self.tokenizer.count_prompt_tokens(req)

    async def route(self, req: InferenceRequest, forced_tier: str | None = None, embedding: Any = None) -> RouteDecision:
        """``forced_tier``: the ``x-hybrid-tier`` header, which wins over everything else; ``embedding``: the
        request's sentence embedding when the cache computed one."""
        if forced_tier:
            return self.tier_decision(forced_tier, "header", overflow=False)
        name = req.model
        if name == AUTO and self.cfg.default != AUTO:
            return self.tier_decision(self.cfg.default, "default", overflow=True)
        if name == AUTO:
            simple = self.policy.simple
            ctx_len = min((b.context for b in self.resolver.by_tier.get(simple, []) if b.context), default=0)
            counter = self.tokenizer.count_text_tokens if self.tokenizer is not None else None
            choice = await self.policy.choose(req, ctx_len, self.count_prompt_tokens, counter, embedding)
            return self.tier_decision(choice.tier, choice.reason, overflow=True, auto=True,
                                      prompt_tokens=choice.prompt_tokens)
        if self.resolver.is_tier(name):
            return self.tier_decision(name, "explicit-tier", overflow=False)
        return RouteDecision.to(self.resolver.explicit(name), "explicit-model", can_overflow=False)

    def tier_decision(
        self, tier: str, reason: str, overflow: bool, auto: bool = False, prompt_tokens: int | None = None
    ) -> RouteDecision:
        """The tier's backends, then the other tiers in ``routing.fallbacks`` order.

        Only a tier the router chose may overflow to the next one when busy; a tier the client named waits its turn
        (it still falls back when its backends fail)."""
        primary = self.resolver.explicit(tier)
        targets = list(primary)
        for other in self.cfg.fallbacks:
            if other != tier and self.resolver.is_tier(other):
                targets.extend(self.resolver.tier_targets(other))
        return RouteDecision.to(targets, reason, primary=len(primary), can_overflow=overflow, auto=auto,
                                prompt_tokens=prompt_tokens)
