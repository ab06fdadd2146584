"""The pipeline, and the one place where the parts meet.

    cache lookup -> rate limits -> route decision -> dispatch with overflow and fallbacks -> stream back
    -> usage, limit settlement, cache store (after the answer, off its path)

``Gateway.handle`` returns an :class:`Answer` only once the first chunk has arrived from a backend, so every
failure before the first byte is still a fallback or an HTTP error, never a broken stream. Streaming and
non-streaming requests take the same path: the server encodes the answer's chunks as SSE or assembles them into
one JSON body (and :meth:`Gateway.complete` may still fall back when a non-streamed answer breaks off, since
nothing has reached the client yet).
"""

from __future__ import annotations

import logging
import time

from hybrid.answers import Answer, CachedAnswer, RequestContext
from hybrid.backends.base import Backend, BackendState
from hybrid.cache.cache import CacheLookup, ResponseCache
from hybrid.config import Config
from hybrid.errors import (
    HybridError,
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from hybrid.limits import RateLimiter
from hybrid.protocol import Chunk, InferenceRequest, assemble
from hybrid.routing.breaker import CircuitBreaker
from hybrid.routing.decision import RouteDecision
from hybrid.routing.policy import AutoPolicy
from hybrid.routing.resolver import AUTO, ModelResolver
from hybrid.routing.scoring import load_scorer

log = logging.getLogger("hybrid.gateway")

DEFAULT_OUTPUT_ESTIMATE = 256  # tokens charged up front when a request sets no max_tokens


class Gateway:
    def __init__(self, config: Config, backends: list[Backend], cache: ResponseCache | None = None) -> None:
        self.config = config
        self.backends = backends
        self.cache = cache
        self.resolver = ModelResolver(backends)
        rc = config.routing
        self.policy = AutoPolicy(rc, load_scorer(rc.scorer), self.resolver.tiers)
        self.breakers = {
            b.name: CircuitBreaker(failure_threshold=rc.failure_threshold, cooldown_s=rc.cooldown_s) for b in backends
        }
        self.limiter = RateLimiter(config.limits.requests_per_min, config.limits.tokens_per_min)
        # the tokenizer used for backends without one (e.g. a cloud API): the first local model's
        self._tokenizer: Backend | None = None

    async def start(self) -> None:
        for b in self.backends:
            b.on_models_changed = self.resolver.refresh_models
            try:
                await b.start()
            except Exception as exc:
                log.error("backend %s failed to start: %s", b.name, exc)
                raise
        self.resolver.refresh_models()
        self._tokenizer = next((b for b in self.backends if b.kind == "llamacpp"), None)
        if self.cache is not None:
            await self.cache.start()

    async def stop(self) -> None:
        if self.cache is not None:
            await self.cache.close()
        for b in self.backends:
            try:
                await b.stop()
            except Exception:  # pragma: no cover - best effort at shutdown
                log.exception("backend %s failed to stop", b.name)

    # ------------------------------------------------------------------------------------------ counting

    async def count_prompt_tokens(self, req: InferenceRequest) -> int | None:
        if self._tokenizer is None:
            return None
        return await self._tokenizer.count_prompt_tokens(req)

    async def _count_usage(self, backend: Backend, req: InferenceRequest, text: str) -> tuple[int, int]:
        counter = backend if backend.kind == "llamacpp" else self._tokenizer
        prompt = await counter.count_prompt_tokens(req) if counter is not None else None
        completion = counter.count_text_tokens(text) if counter is not None else None
        return (
            prompt if prompt is not None else max(1, len(req.text()) // 4),
            completion if completion is not None else (len(text) + 3) // 4,
        )

    # ------------------------------------------------------------------------------------------ routing

    async def route(self, req: InferenceRequest, ctx: RequestContext) -> RouteDecision:
        header_tier = ctx.headers.get("x-hybrid-tier")
        if header_tier:
            return self._tier_decision(header_tier, "header", overflow=False)
        name = req.model
        if name == AUTO and self.config.routing.default != AUTO:
            return self._tier_decision(self.config.routing.default, "default", overflow=True)
        if name == AUTO:
            simple = self.policy.simple
            ctx_len = min((b.context for b in self.resolver.by_tier.get(simple, []) if b.context), default=0)
            counter = self._tokenizer.count_text_tokens if self._tokenizer is not None else None
            choice = await self.policy.choose(req, ctx_len, self.count_prompt_tokens, counter)
            decision = self._tier_decision(choice.tier, choice.reason, overflow=True)
            decision.auto = True
            if choice.prompt_tokens is not None:
                decision.prompt_tokens = choice.prompt_tokens
            return decision
        if self.resolver.is_tier(name):
            return self._tier_decision(name, "explicit-tier", overflow=False)
        return RouteDecision(self.resolver.explicit(name), reason="explicit-model", can_overflow=False)

    def _tier_decision(self, tier: str, reason: str, overflow: bool) -> RouteDecision:
        """The tier's backends, then the other tiers in ``routing.fallbacks`` order.

        Only a tier the router chose may overflow to the next one when busy; a tier the client named waits its turn
        (it still falls back when its backends fail)."""
        primary = self.resolver.explicit(tier)
        targets = list(primary)
        for other in self.config.routing.fallbacks:
            if other != tier and self.resolver.is_tier(other):
                targets.extend(self.resolver.tier_targets(other))
        return RouteDecision(targets, reason=reason, primary=len(primary), can_overflow=overflow)

    # ------------------------------------------------------------------------------------------ dispatch

    async def handle(self, req: InferenceRequest, ctx: RequestContext) -> Answer | CachedAnswer:
        """Look up the cache; else admit, route and dispatch, returning with the first chunk in hand."""
        lookup: CacheLookup | None = None
        if self.cache is not None:
            lookup = await self.cache.lookup(req, ctx.tenant, ctx.cache_control, ctx.headers.get("x-hybrid-cache-namespace"),
                                             ctx.headers.get("x-hybrid-tier", ""))
            if lookup.hit:
                return CachedAnswer(req, ctx, lookup, self.cache.store.name)
        charged = 0
        if self.limiter.enabled:
            # every choice is generated: n of them cost n times the output
            est = len(req.text()) // 4 + (req.max_tokens or DEFAULT_OUTPUT_ESTIMATE) * req.n
            charged = self.limiter.admit(ctx.tenant, est)
        decision = await self.route(req, ctx)
        decision.charged_tokens = charged
        decision.lookup = lookup
        return await self._dispatch(req, ctx, decision, 0)

    async def complete(self, req: InferenceRequest, ctx: RequestContext) -> tuple[Answer | CachedAnswer, list[Chunk]]:
        """A whole (non-streamed) answer: a backend that breaks off mid-answer still falls back."""
        answer = await self.handle(req, ctx)
        if isinstance(answer, CachedAnswer):
            return answer, [c async for c in answer.chunks()]
        while True:
            try:
                return answer, [c async for c in answer.chunks()]
            except HybridError as err:
                nxt = answer.index + 1
                if not err.retryable or nxt >= len(answer.decision.targets):
                    raise
                answer.decision.failures.append(f"{answer.target.backend.name}({err.status_code})")
                answer = await self._dispatch(req, ctx, answer.decision, nxt)

    async def _dispatch(self, req: InferenceRequest, ctx: RequestContext, decision: RouteDecision, start: int) -> Answer:
        targets = decision.targets
        if not targets:
            raise ServiceUnavailableError("No backend is configured for this route.")
        overflow_wait = self.config.routing.overflow_wait_s
        last: HybridError | None = None
        overflowed: list[str] = []
        for i in range(start, len(targets)):
            target = targets[i]
            backend = target.backend
            breaker = self.breakers[backend.name]
            has_next = i + 1 < len(targets)
            if backend.state is not BackendState.UP:
                last = ServiceUnavailableError(f"Backend '{backend.name}' is {backend.state.value}.")
                decision.failures.append(f"{backend.name}({backend.state.value})")
                continue
            if breaker.cooling():
                last = ServiceUnavailableError(
                    f"Backend '{backend.name}' is cooling down after failures.",
                    headers={"retry-after": str(max(1, int(breaker.retry_after_s() + 0.999)))},
                )
                decision.failures.append(f"{backend.name}(cooling)")
                continue
            if decision.prompt_tokens and backend.context and decision.prompt_tokens + (req.max_tokens or 1) > backend.context and has_next:
                decision.failures.append(f"{backend.name}(context)")
                continue
            load = backend.load()
            if backend.hard_concurrency_limit and load.capacity and load.in_flight >= load.capacity:
                # at its configured concurrency: the next target takes it, or the client hears 429
                decision.failures.append(f"{backend.name}(busy)")
                last = RateLimitError(
                    f"Backend '{backend.name}' is at its concurrency limit of {load.capacity}.",
                    retry_after_s=max(1.0, load.service_time_s),
                )
                continue
            if decision.can_overflow and has_next:
                wait = load.estimated_wait_s()
                if wait > overflow_wait:
                    overflowed.append(f"{backend.name}(wait={wait:.1f}s)")
                    continue
            try:
                backend.check(req)
            except InvalidRequestError as err:
                if decision.auto and has_next:  # auto may pick a tier that can do it
                    decision.failures.append(f"{backend.name}(unsupported:{err.param})")
                    last = err
                    continue
                raise
            if not breaker.allow():
                decision.failures.append(f"{backend.name}(probing)")
                continue
            stream = backend.stream(req, target.model)
            try:
                first = await stream.__anext__()
            except StopAsyncIteration:
                breaker.record_failure()
                last = UpstreamError(f"Backend '{backend.name}' returned an empty answer.")
                decision.failures.append(f"{backend.name}(empty)")
                continue
            except HybridError as err:
                await stream.aclose()
                if not err.retryable:
                    breaker.record_success()  # it answered: the request was at fault
                    raise
                breaker.record_failure(err.retry_after_s if isinstance(err, RateLimitError) else None)
                log.warning("backend %s failed before the first byte: %s", backend.name, err.message)
                last = err
                decision.failures.append(f"{backend.name}({err.status_code})")
                continue
            except BaseException:
                breaker.release_probe()
                await stream.aclose()
                raise
            reason = decision.reason
            if overflowed:
                reason += ";overflow:" + ",".join(overflowed)
            if i >= decision.primary or decision.failures:
                reason += ";fallback:" + ",".join(decision.failures) if decision.failures else ";fallback"
            lookup = decision.lookup
            store = None
            if self.cache is not None and lookup is not None and lookup.policy.write:
                cache = self.cache
                store = lambda chunks: cache.store_answer(req, lookup, assemble(chunks, req.kind))  # noqa: E731
            return Answer(
                req, ctx, target, decision, i, reason, first, stream,
                count=lambda r, t, b=backend: self._count_usage(b, r, t),
                on_done=lambda ok, err, usage, b=breaker: self._done(ctx, decision, b, ok, err, usage),
                lookup=lookup, on_complete=store,
            )
        if overflowed and last is None:
            # every target was busy: wait on the last one rather than fail
            raise ServiceUnavailableError("Every backend for this route is busy.")
        if last is None:
            last = ServiceUnavailableError("No backend could take this request.")
        if isinstance(last, (UpstreamError, ServiceUnavailableError)) and decision.failures:
            last.message += f" Tried: {', '.join(decision.failures)}."
        raise last

    def _done(
        self,
        ctx: RequestContext,
        decision: RouteDecision,
        breaker: CircuitBreaker,
        ok: bool | None,
        err: HybridError | None,
        usage: dict[str, int] | None,
    ) -> None:
        if ok is None:  # abandoned by the client: says nothing about the backend
            breaker.release_probe()
        elif ok:
            breaker.record_success()
        elif err is None or err.retryable:
            breaker.record_failure()
        if self.limiter.enabled and decision.charged_tokens:
            used = usage["total_tokens"] if usage else decision.charged_tokens
            self.limiter.settle(ctx.tenant, decision.charged_tokens, used)
            decision.charged_tokens = 0

    # ------------------------------------------------------------------------------------------ listing

    def model_cards(self) -> list[dict[str, object]]:
        created = int(time.time())
        cards: list[dict[str, object]] = [{"id": AUTO, "object": "model", "created": created, "owned_by": "hybrid"}]
        for tier in self.resolver.tiers:
            cards.append({"id": tier, "object": "model", "created": created, "owned_by": "hybrid"})
        seen = {AUTO, *self.resolver.tiers}
        for b in self.backends:
            for m in b.models:
                if m not in seen:
                    seen.add(m)
                    cards.append({"id": m, "object": "model", "created": created, "owned_by": b.name})
        return cards

    def readiness(self) -> tuple[bool, dict[str, object]]:
        states: dict[str, object] = {}
        for b in self.backends:
            load = b.load()
            breaker = self.breakers[b.name]
            state = b.state.value
            if b.state is BackendState.UP and breaker.cooling():
                state = "cooling"
            entry: dict[str, object] = {
                "state": state, "tier": b.tier, "kind": b.kind, "models": b.models,
                "in_flight": load.in_flight, "waiting": load.waiting, "consecutive_failures": breaker.failures,
            }
            if state == "cooling":
                entry["retry_after_s"] = round(breaker.retry_after_s(), 1)
            if b.state_detail:
                entry["detail"] = b.state_detail
            states[b.name] = entry
        local = [b for b in self.backends if b.kind in ("llamacpp", "vllm")] or self.backends
        ready = all(b.state is BackendState.UP for b in local)
        body: dict[str, object] = {"status": "ready" if ready else "not-ready", "backends": states}
        if self.cache is not None:
            body["cache"] = self.cache.state()
        return ready, body

