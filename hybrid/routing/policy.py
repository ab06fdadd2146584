"""The ``auto`` policy: size rules first, then the complexity score.

Decided per request in microseconds: prompts are only tokenized when a cheap byte bound cannot settle the size
rule (every token covers at least one byte, so a prompt whose bytes fit certainly fits).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hybrid.config import RoutingConfig
from hybrid.protocol import InferenceRequest
from hybrid.routing.features import RequestFeatures, extract_features
from hybrid.routing.scoring import ComplexityScorer

# template tokens per message, and BOS: a safe margin on top of the byte bound
_TEMPLATE_MARGIN_PER_MESSAGE = 8


@dataclass(frozen=True)
class TierChoice:
    tier: str
    reason: str
    score: float | None = None
    prompt_tokens: int | None = None


class AutoPolicy:
    def __init__(self, cfg: RoutingConfig, scorer: ComplexityScorer, tiers: list[str]) -> None:
        self.cfg = cfg
        self.scorer = scorer
        self.simple = cfg.simple_tier if cfg.simple_tier in tiers else tiers[0]
        self.complex = cfg.complex_tier if cfg.complex_tier in tiers else None

    async def choose(
        self,
        req: InferenceRequest,
        simple_context: int,
        count_tokens: Callable[[InferenceRequest], Awaitable[int | None]],
    ) -> TierChoice:
        if self.complex is None or self.complex == self.simple:
            return TierChoice(self.simple, "auto:single-tier")
        features = extract_features(req)
        prompt_tokens = await self._size(req, features, simple_context, count_tokens)
        if prompt_tokens is not None:
            if simple_context and prompt_tokens + (req.max_tokens or 1) > simple_context:
                return TierChoice(self.complex, f"auto:size>{simple_context}ctx", prompt_tokens=prompt_tokens)
            if self.cfg.long_prompt_tokens and prompt_tokens >= self.cfg.long_prompt_tokens:
                return TierChoice(
                    self.complex, f"auto:long>={self.cfg.long_prompt_tokens}tok", prompt_tokens=prompt_tokens
                )
        score = self.scorer.score(features)
        threshold = self.cfg.complexity_threshold
        if score >= threshold:
            return TierChoice(self.complex, f"auto:complexity={score:.2f}>={threshold:.2f}", score, prompt_tokens)
        return TierChoice(self.simple, f"auto:complexity={score:.2f}<{threshold:.2f}", score, prompt_tokens)

    async def _size(
        self,
        req: InferenceRequest,
        f: RequestFeatures,
        context: int,
        count_tokens: Callable[[InferenceRequest], Awaitable[int | None]],
    ) -> int | None:
        """Prompt tokens when the size rules need them; ``None`` when a cheap bound already settles them."""
        bounds = [b for b in (context - (req.max_tokens or 1) if context else 0, self.cfg.long_prompt_tokens) if b > 0]
        if not bounds:
            return None
        if f.utf8_bytes + _TEMPLATE_MARGIN_PER_MESSAGE * (len(req.messages) + 1) < min(bounds):
            return None
        counted = await count_tokens(req)
        return counted if counted is not None else f.est_tokens
