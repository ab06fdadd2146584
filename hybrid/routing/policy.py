"""The ``auto`` policy: the complex tier for a prompt too big for the simple one or a complexity score at or
over the threshold; the simple tier otherwise.

Decided per request in microseconds for most requests (scripts/bench_routing.py). The size rule settles a prompt
as cheaply as it can:

1. by bytes: every token covers at least one byte, so a prompt whose bytes fit certainly fits;
2. by a sample: three 512-character windows (start, middle, end) are tokenized and the prompt's count is
   extrapolated from them; an estimate at least 1.5x over a bound sends the prompt to the complex tier without
   counting every token (a 60 KB prompt: about 1 ms instead of 45 ms with the bundled model's tokenizer);
3. by counting: the whole prompt, with the local model's tokenizer. Only prompts that may fit the local tier and
   that the complexity score would send there get here, and the local backend then generates from those same
   tokens (memoised on the request), so the count is work the local tier would have done anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hybrid.config import RoutingConfig
from hybrid.protocol import InferenceRequest
from hybrid.routing.features import RequestFeatures, extract_features
from hybrid.routing.scoring import ComplexityScorer

# template tokens per message, and BOS: a safe margin on top of the byte bound
_TEMPLATE_MARGIN_PER_MESSAGE = 8
_SAMPLE_WINDOW_CHARS = 512  # three windows are tokenized to estimate a long prompt's count...
_SURELY_OVER = 1.5  # ...and an estimate this far past a bound settles it

TextCounter = Callable[[str], "int | None"]


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
        count_text: TextCounter | None = None,
        embedding: Any = None,
    ) -> TierChoice:
        """``count_tokens`` counts a whole prompt as the local tier would see it; ``count_text`` counts a piece
        of plain text with the same tokenizer (for the sampled estimate). Either may answer ``None``."""
        if self.complex is None or self.complex == self.simple:
            return TierChoice(self.simple, "auto:single-tier")
        features = extract_features(req, embedding)
        over = self._surely_over(req, features, simple_context, count_text)
        if over is not None:
            return TierChoice(self.complex, over)
        score = self.scorer.score(features)
        threshold = self.cfg.complexity_threshold
        if score >= threshold:  # the complex tier either way: no need to count the prompt
            return TierChoice(self.complex, f"auto:complexity={score:.2f}>={threshold:.2f}", score)
        prompt_tokens = await self._size(req, features, simple_context, count_tokens)
        if prompt_tokens is not None:
            if simple_context and prompt_tokens + (req.max_tokens or 1) > simple_context:
                return TierChoice(self.complex, f"auto:size>{simple_context}ctx", score, prompt_tokens)
            if self.cfg.long_prompt_tokens and prompt_tokens >= self.cfg.long_prompt_tokens:
                return TierChoice(self.complex, f"auto:long>={self.cfg.long_prompt_tokens}tok", score, prompt_tokens)
        return TierChoice(self.simple, f"auto:complexity={score:.2f}<{threshold:.2f}", score, prompt_tokens)

    def _bounds(self, req: InferenceRequest, context: int) -> list[int]:
        return [b for b in (context - (req.max_tokens or 1) if context else 0, self.cfg.long_prompt_tokens) if b > 0]

    def _surely_over(
        self, req: InferenceRequest, f: RequestFeatures, context: int, count_text: TextCounter | None
    ) -> str | None:
        """The reason, when a sampled estimate puts the prompt well past a size bound; else ``None``."""
        bounds = self._bounds(req, context)
        if count_text is None or not bounds or f.utf8_bytes < _SURELY_OVER * min(bounds):
            return None  # too few bytes to be that far over, whatever the tokenizer
        text = req.text()
        if len(text) <= 4 * _SAMPLE_WINDOW_CHARS:
            return None  # short enough to count exactly
        w = _SAMPLE_WINDOW_CHARS
        mid = len(text) // 2
        sample = (text[:w], text[mid - w // 2 : mid + w // 2], text[-w:])
        counts = [count_text(piece) for piece in sample]
        if any(c is None for c in counts):
            return None
        sample_bytes = sum(len(piece.encode("utf-8", "surrogatepass")) for piece in sample)
        estimate = sum(c for c in counts if c is not None) * f.utf8_bytes / max(1, sample_bytes)
        if context and estimate >= _SURELY_OVER * (context - (req.max_tokens or 1)):
            return f"auto:size>{context}ctx(est~{estimate:.0f}tok)"
        long = self.cfg.long_prompt_tokens
        if long and estimate >= _SURELY_OVER * long:
            return f"auto:long>={long}tok(est~{estimate:.0f}tok)"
        return None

    async def _size(
        self,
        req: InferenceRequest,
        f: RequestFeatures,
        context: int,
        count_tokens: Callable[[InferenceRequest], Awaitable[int | None]],
    ) -> int | None:
        """Prompt tokens when the size rules need them; ``None`` when a cheap bound already settles them."""
        bounds = self._bounds(req, context)
        if not bounds:
            return None
        if f.utf8_bytes + _TEMPLATE_MARGIN_PER_MESSAGE * (len(req.messages) + 1) < min(bounds):
            return None
        counted = await count_tokens(req)
        return counted if counted is not None else f.est_tokens
