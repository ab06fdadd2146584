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

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from hybrid import metrics
from hybrid.answers import Answer, CachedAnswer, Flight, RequestContext
from hybrid.backends.base import Backend, BackendState
from hybrid.budgets import Budgets, BudgetStore, LocalBudgetStore, RedisBudgetStore
from hybrid.cache.cache import CacheLookup, ResponseCache
from hybrid.config import Config
from hybrid.costs import Costing
from hybrid.errors import (
    HybridError,
    InsufficientQuotaError,
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from hybrid.ledger import Ledger, LedgerRow
from hybrid.limits import RateLimiter, RedisRateLimiter
from hybrid.protocol import Chunk, InferenceRequest, assemble, make_usage
from hybrid.routing.breaker import CircuitBreaker
from hybrid.routing.decision import RouteDecision, Target
from hybrid.routing.resolver import AUTO, ModelResolver
from hybrid.routing.router import Router

log = logging.getLogger("hybrid.gateway")

DEFAULT_OUTPUT_ESTIMATE = 256  # tokens charged up front when a request sets no max_tokens


class Gateway:
    def __init__(
        self,
        config: Config,
        backends: list[Backend],
        cache: ResponseCache | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.config = config
        self.backends = backends
        self.cache = cache
        self.ledger = ledger
        self.costing = Costing(config.costs, config.backends)
        self.budgets: Budgets | None = None
        if config.budgets:
            store: BudgetStore = (RedisBudgetStore(config.cache.redis_url) if config.cache.backend == "redis"
                                  else LocalBudgetStore())
            self.budgets = Budgets(config.budgets, store, config.server.tenant_secret)
        self.resolver = ModelResolver(backends)
        rc = config.routing
        self.router = Router(rc, self.resolver)
        self.breakers = {
            b.name: CircuitBreaker(failure_threshold=rc.failure_threshold, cooldown_s=rc.cooldown_s) for b in backends
        }
        lim = config.limits
        self.limiter: RateLimiter | RedisRateLimiter = (
            RedisRateLimiter(config.cache.redis_url, lim.requests_per_min, lim.tokens_per_min)
            if config.cache.backend == "redis" and (lim.requests_per_min or lim.tokens_per_min)
            else RateLimiter(lim.requests_per_min, lim.tokens_per_min)
        )
        self._background: set[asyncio.Task[None]] = set()  # cache audits in flight

    async def start(self) -> None:
        for b in self.backends:
            b.on_models_changed = self.resolver.refresh_models
            try:
                await b.start()
            except Exception as exc:
                log.error("backend %s failed to start: %s", b.name, exc)
                raise
        self.resolver.refresh_models()
        # backends without a tokenizer of their own (a cloud API) are counted with the first local model's
        self.router.tokenizer = next((b for b in self.backends if b.kind == "llamacpp"), None)
        metrics.watch(self.live_gauges)
        if self.ledger is not None:
            await asyncio.to_thread(self.ledger.start)
            if self.budgets is not None:
                await asyncio.to_thread(self.budgets.seed_from_ledger, self.ledger)
        if self.cache is not None:
            await self.cache.start()

    async def stop(self) -> None:
        for task in list(self._background):  # audits in flight use the backends and the cache: they go first
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.cache is not None:
            await self.cache.close()
        await self.limiter.close()
        if self.budgets is not None:
            await self.budgets.close()
        if self.ledger is not None:  # after the answers in flight have settled: their rows are queued
            await asyncio.to_thread(self.ledger.close)
        for b in self.backends:
            try:
                await b.stop()
            except Exception:  # pragma: no cover - best effort at shutdown
                log.exception("backend %s failed to stop", b.name)

    async def route(self, req: InferenceRequest, ctx: RequestContext) -> RouteDecision:
        return await self.router.route(req, ctx.headers.get("x-hybrid-tier"))

    # ------------------------------------------------------------------------------------------ dispatch

    async def handle(self, req: InferenceRequest, ctx: RequestContext) -> Answer | CachedAnswer:
        """Look up the cache; else admit, route and dispatch, returning with the first chunk in hand."""
        started = time.perf_counter()
        try:
            return await self._handle(req, ctx, started)
        except HybridError as err:
            self._record_failure(req, ctx, started, err)
            raise

    async def _handle(self, req: InferenceRequest, ctx: RequestContext, started: float) -> Answer | CachedAnswer:
        lookup: CacheLookup | None = None
        if self.cache is not None:
            lookup = await self.cache.lookup(req, ctx.tenant, ctx.cache_control,
                                             ctx.headers.get("x-hybrid-cache-namespace"),
                                             ctx.headers.get("x-hybrid-tier", ""))
            if lookup.hit:
                hit = CachedAnswer(req, ctx, lookup, self.cache.store.name)
                self._count_hit(hit, started)
                if lookup.status == "hit-semantic" and self.cache.audit.should_audit():
                    self._spawn(self._audit(req, ctx, lookup))
                return hit
        if lookup is not None:
            ctx.cache_status = lookup.status  # for the row of a request turned away after the lookup
        spent = await self.budgets.check(ctx) if self.budgets is not None else None
        if spent is not None and spent.budget.cfg.action == "refuse":
            b = spent.budget.cfg
            raise InsufficientQuotaError(
                f"Budget '{b.name}' is spent: ${spent.spent:.4f} of ${b.limit_usd:.2f} this {b.period}."
            )
        charged = 0
        if self.limiter.enabled:
            # every choice is generated: n of them cost n times the output
            est = len(req.text()) // 4 + (req.max_tokens or DEFAULT_OUTPUT_ESTIMATE) * req.n
            charged = await self.limiter.acquire(ctx.tenant, est)
        try:
            if spent is not None:  # downgrade: the cheaper tier, whatever was asked
                b = spent.budget.cfg
                decision = self.router.tier_decision(b.downgrade_to, f"budget:{b.name}->{b.downgrade_to}",
                                                     overflow=False)
            else:
                vector = lookup.vector if lookup is not None else None
                decision = await self.router.route(req, ctx.headers.get("x-hybrid-tier"), vector)
            flight = Flight(req, ctx, decision, lookup, charged, started=started, arrived=time.time())
        except BaseException:
            self._refund(ctx, charged)
            raise
        try:
            return await self._dispatch(flight, 0)
        except BaseException:
            self._refund(ctx, flight.charged_tokens)
            flight.charged_tokens = 0
            raise

    async def complete(self, req: InferenceRequest, ctx: RequestContext) -> tuple[Answer | CachedAnswer, list[Chunk]]:
        """A whole (non-streamed) answer: a backend that breaks off mid-answer still falls back."""
        answer = await self.handle(req, ctx)
        if isinstance(answer, CachedAnswer):
            return answer, [c async for c in answer.chunks()]
        while True:
            try:
                return answer, [c async for c in answer.chunks()]
            except HybridError as err:
                flight, nxt = answer.flight, answer.index + 1
                if not err.retryable or nxt >= len(flight.decision.targets):
                    raise  # settled, with its ledger row, as the answer broke off
                flight.failures.append(f"{answer.target.backend.name}({err.status_code})")
                try:
                    answer = await self._dispatch(flight, nxt)
                except HybridError as final:
                    self._record_failure(req, ctx, flight.started, final)
                    raise

    async def _dispatch(self, flight: Flight, start: int) -> Answer:
        """The first target from ``start`` on that can take the request and sends a first chunk."""
        targets = flight.decision.targets
        if not targets:
            raise ServiceUnavailableError("No backend is configured for this route.")
        last: HybridError | None = None
        overflowed: list[str] = []
        for i in range(start, len(targets)):
            target = targets[i]
            has_next = i + 1 < len(targets)
            skip = self._pass_over(flight, target, has_next)
            if skip is not None:
                why, err = skip
                if why.startswith("wait="):  # busy, not failing: said apart in the route reason
                    overflowed.append(f"{target.backend.name}({why})")
                else:
                    flight.failures.append(f"{target.backend.name}({why})")
                last = err or last
                continue
            opened = await self._open(flight, target)
            if isinstance(opened, tuple):
                first, stream = opened
                flight.first_at = time.perf_counter()
                metrics.child(metrics.TTFT, target.tier).observe(flight.first_at - flight.started)
                return Answer(flight, target, i, self._reason(flight, i, overflowed), first, stream, self)
            last = opened
        if overflowed and last is None:
            raise ServiceUnavailableError("Every backend for this route is busy.")
        if last is None:
            last = ServiceUnavailableError("No backend could take this request.")
        if isinstance(last, (UpstreamError, ServiceUnavailableError)) and flight.failures:
            last.message += f" Tried: {', '.join(flight.failures)}."
        raise last

    def _pass_over(self, flight: Flight, target: Target, has_next: bool) -> tuple[str, HybridError | None] | None:
        """Why ``target`` is skipped without being asked (and the error to report if nothing else answers), or
        ``None`` when it may be asked."""
        req, backend = flight.req, target.backend
        breaker = self.breakers[backend.name]
        if backend.state is not BackendState.UP:
            return backend.state.value, ServiceUnavailableError(f"Backend '{backend.name}' is {backend.state.value}.")
        if breaker.cooling():
            return "cooling", ServiceUnavailableError(
                f"Backend '{backend.name}' is cooling down after failures.",
                headers={"retry-after": str(max(1, int(breaker.retry_after_s() + 0.999)))},
            )
        prompt = flight.decision.prompt_tokens
        if prompt and backend.context and prompt + (req.max_tokens or 1) > backend.context and has_next:
            return "context", None
        load = backend.load()
        if backend.hard_concurrency_limit and load.capacity and load.in_flight >= load.capacity:
            # at its configured concurrency: the next target takes it, or the client hears 429
            return "busy", RateLimitError(
                f"Backend '{backend.name}' is at its concurrency limit of {load.capacity}.",
                retry_after_s=max(1.0, load.service_time_s),
            )
        if flight.decision.can_overflow and has_next:
            wait = load.estimated_wait_s()
            if wait > self.config.routing.overflow_wait_s:
                return f"wait={wait:.1f}s", None
        try:
            backend.check(req)
        except InvalidRequestError as err:
            if flight.decision.auto and has_next:  # auto may pick a tier that can do it
                return f"unsupported:{err.param}", err
            raise
        if not breaker.allow():
            return "probing", None
        return None

    async def _open(self, flight: Flight, target: Target) -> tuple[Chunk, AsyncGenerator[Chunk, None]] | HybridError:
        """Ask ``target``: its first chunk and the rest, or the retryable error that passes the turn on."""
        backend = target.backend
        breaker = self.breakers[backend.name]
        if not flight.asked:
            flight.asked = True
            metrics.OVERHEAD.observe(time.perf_counter() - flight.started)
        stream = backend.stream(flight.req, target.model)
        try:
            return await stream.__anext__(), stream
        except StopAsyncIteration:
            breaker.record_failure()
            flight.failures.append(f"{backend.name}(empty)")
            return UpstreamError(f"Backend '{backend.name}' returned an empty answer.")
        except HybridError as err:
            await stream.aclose()
            if not err.retryable:
                breaker.record_success()  # it answered: the request was at fault
                raise
            breaker.record_failure(err.retry_after_s if isinstance(err, RateLimitError) else None)
            log.warning("backend %s failed before the first byte: %s", backend.name, err.message)
            flight.failures.append(f"{backend.name}({err.status_code})")
            return err
        except BaseException:
            breaker.release_probe()
            await stream.aclose()
            raise

    @staticmethod
    def _reason(flight: Flight, index: int, overflowed: list[str]) -> str:
        reason = flight.decision.reason
        if overflowed:
            reason += ";overflow:" + ",".join(overflowed)
        if index >= flight.decision.primary or flight.failures:
            reason += ";fallback:" + ",".join(flight.failures) if flight.failures else ";fallback"
        return reason

    # ------------------------------------------------------------------------------------------ settlement

    async def count_usage(self, answer: Answer, text: str) -> dict[str, int]:
        """Usage for an answer whose upstream sent none: the backend's own tokenizer, else the local model's,
        else a rough count."""
        counter = self._counter(answer)
        prompt = await counter.count_prompt_tokens(answer.req) if counter is not None else None
        return self._usage(answer, text, prompt, counter)

    def _counter(self, answer: Answer) -> Backend | None:
        """Whose tokenizer counts an answer: its backend's own, else the first local model's, else none."""
        backend = answer.target.backend
        return backend if backend.kind == "llamacpp" else self.router.tokenizer

    @staticmethod
    def _usage(answer: Answer, text: str, prompt: int | None, counter: Backend | None) -> dict[str, int]:
        """Usage from a prompt count and the answer's text, at four characters a token where nothing counts."""
        completion = counter.count_text_tokens(text) if counter is not None else None
        return make_usage(
            prompt if prompt is not None else max(1, len(answer.req.text()) // 4),
            completion if completion is not None else (len(text) + 3) // 4,
        )

    def settle(self, answer: Answer, outcome: bool | None, error: HybridError | None, chunks: list[Chunk] | None) -> None:
        """An answer is over: the breaker hears how the backend did, the rate limit its real usage, and the cache
        a complete answer."""
        flight = answer.flight
        breaker = self.breakers[answer.target.backend.name]
        if outcome is None:  # abandoned by the client: says nothing about the backend
            breaker.release_probe()
        elif outcome:
            breaker.record_success()
        elif error is None or error.retryable:
            breaker.record_failure()
        if flight.charged_tokens:
            used = answer.usage["total_tokens"] if answer.usage else flight.charged_tokens
            self.limiter.settle(flight.ctx.tenant, flight.charged_tokens, used)
            flight.charged_tokens = 0
        if chunks is not None and self.cache is not None and flight.lookup is not None:
            self.cache.store_answer(flight.req, flight.lookup, assemble(chunks, flight.req.kind))
        target = answer.target
        status = "ok" if outcome else ("abandoned" if outcome is None else str(error.status_code if error else 502))
        now = time.perf_counter()
        metrics.child(metrics.REQUESTS, target.tier, target.backend.name, target.model, flight.cache_status,
                      status).inc()
        metrics.child(metrics.LATENCY, target.tier, flight.cache_status).observe(now - flight.started)
        usage = answer.usage or (self._usage_so_far(answer) if answer.text else {})
        if usage:
            self._count_tokens(target.tier, target.backend.name, target.model, usage)
        # a whole answer that broke off is tried on the next target (complete()): that attempt writes the row
        retried = (outcome is False and not flight.req.stream and error is not None and error.retryable
                   and answer.index + 1 < len(flight.decision.targets))
        prompt, completion, cached = _tokens(usage)
        cost = self.costing.cost(target.backend.name, target.model, prompt, completion, cached, now - flight.first_at)
        counterfactual = self.costing.counterfactual(prompt, completion)
        metrics.child(metrics.COST, target.tier, target.backend.name, target.model).inc(cost)
        metrics.child(metrics.COUNTERFACTUAL, target.tier, target.backend.name, target.model).inc(counterfactual)
        if self.config.metrics.tag_labels and flight.ctx.tags:
            metrics.count_tags(flight.ctx.tags, self.config.metrics.tag_labels, cost)
        if self.budgets is not None:
            self.budgets.charge(flight.ctx, cost)
        if self.ledger is not None and not retried:
            self.ledger.record(LedgerRow(
                ts=flight.arrived, request_id=flight.ctx.request_id, key_id=flight.ctx.key_id,
                requested_model=flight.req.model, tier=target.tier, backend=target.backend.name,
                served_model=target.model, status=status, cache=flight.cache_status, prompt_tokens=prompt,
                completion_tokens=completion, cached_tokens=cached,
                cost=cost, counterfactual_cost=counterfactual, latency_s=now - flight.started,
                ttft_s=flight.first_at - flight.started, route_reason=answer.reason, tags=flight.ctx.tags,
            ))

    def _usage_so_far(self, answer: Answer) -> dict[str, int]:
        """An answer that ended early (the client left, the backend broke off) has no usage from upstream: the
        router counts what was said, synchronously (the local tokenizer, else four characters a token)."""
        counter = self._counter(answer)
        prompt = counter.count_text_tokens(answer.req.text()) if counter is not None else None
        return self._usage(answer, "".join(answer.text), prompt, counter)

    def _count_hit(self, hit: CachedAnswer, started: float) -> None:
        model = str(hit.lookup.entry.answer.get("model", "")) if hit.lookup.entry is not None else ""
        latency = time.perf_counter() - started
        metrics.child(metrics.REQUESTS, "cache", hit.store, model, hit.lookup.status, "ok").inc()
        metrics.child(metrics.LATENCY, "cache", hit.lookup.status).observe(latency)
        if hit.usage:
            self._count_tokens("cache", hit.store, model, hit.usage)
        prompt, completion, cached = _tokens(hit.usage or {})
        counterfactual = self.costing.counterfactual(prompt, completion)
        metrics.child(metrics.COUNTERFACTUAL, "cache", hit.store, model).inc(counterfactual)
        if self.config.metrics.tag_labels and hit.ctx.tags:
            metrics.count_tags(hit.ctx.tags, self.config.metrics.tag_labels, 0.0)
        if self.ledger is not None:
            self.ledger.record(LedgerRow(
                ts=time.time() - latency, request_id=hit.ctx.request_id, key_id=hit.ctx.key_id,
                requested_model=hit.req.model, tier="cache", backend=hit.store, served_model=model, status="ok",
                cache=hit.lookup.status, prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached,
                cost=0.0, counterfactual_cost=counterfactual, latency_s=latency,
                ttft_s=latency, route_reason=f"cache:{hit.lookup.status}", tags=hit.ctx.tags,
            ))

    def _record_failure(self, req: InferenceRequest, ctx: RequestContext, started: float, err: HybridError) -> None:
        """The metric and the row of a request that got no answer at all (every backend failed, a limit, a bad
        request)."""
        metrics.child(metrics.REQUESTS, "none", "none", "none", ctx.cache_status, str(err.status_code)).inc()
        if self.ledger is None:
            return
        latency = time.perf_counter() - started
        self.ledger.record(LedgerRow(
            ts=time.time() - latency, request_id=ctx.request_id, key_id=ctx.key_id, requested_model=req.model,
            tier="none", backend="none", served_model="", status=str(err.status_code),
            cache=ctx.cache_status, latency_s=latency, route_reason=err.message[:200],
            tags=ctx.tags,
        ))

    @staticmethod
    def _count_tokens(tier: str, backend: str, model: str, usage: dict[str, Any]) -> None:
        for kind in ("prompt", "completion"):
            n = usage.get(f"{kind}_tokens")
            if isinstance(n, int) and n > 0:
                metrics.child(metrics.TOKENS, tier, backend, model, kind).inc(n)

    async def _audit(self, req: InferenceRequest, ctx: RequestContext, lookup: CacheLookup) -> None:
        """Answer a semantic hit's request live as well, for the error budget to judge the cached answer by
        (hybrid/cache/audit.py). Off the client's path; booked as ``source=cache-audit``."""
        assert self.cache is not None
        try:
            forced = {k: v for k, v in ctx.headers.items() if k == "x-hybrid-tier"}
            actx = RequestContext(request_id=f"audit-{uuid.uuid4().hex[:20]}", headers=forced, tenant="cache-audit",
                                  cache_control="no-store", key_id="cache-audit", tags={"source": "cache-audit"})
            _, chunks = await self.complete(req, actx)
            await self.cache.judge(req, lookup, assemble(chunks, req.kind))
        except Exception as exc:  # the live answer failed: no verdict either way
            self.cache.audit.failed += 1
            metrics.child(metrics.CACHE_AUDITS, "audit", "failed").inc()
            log.info("cache: audit of a semantic hit failed (%s)", exc)
        finally:
            self.cache.audit.done()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def live_gauges(self) -> dict[tuple[str, str], list[tuple[dict[str, str], float]]]:
        """The gauges of the moment, read at scrape time (see :mod:`hybrid.metrics`)."""
        in_flight, waiting, wait, cooling = [], [], [], []
        for b in self.backends:
            load = b.load()
            labels = {"backend": b.name, "tier": b.tier}
            in_flight.append((labels, float(load.in_flight)))
            waiting.append((labels, float(load.waiting)))
            wait.append((labels, load.estimated_wait_s()))
            cooling.append((labels, 1.0 if self.breakers[b.name].cooling() else 0.0))
        out = {
            ("hybrid_backend_in_flight", "Requests a backend is answering now"): in_flight,
            ("hybrid_backend_queue_depth", "Requests waiting for a backend (a local engine's queue)"): waiting,
            ("hybrid_backend_estimated_wait_seconds", "Expected queueing delay for one more request"): wait,
            ("hybrid_backend_cooling", "1 while a backend's circuit breaker has it cooling down"): cooling,
        }
        hits = sum(metrics.counted(metrics.CACHE_LOOKUPS, result=r) for r in ("hit-exact", "hit-semantic"))
        looked = hits + metrics.counted(metrics.CACHE_LOOKUPS, result="miss")
        out[("hybrid_cache_hit_ratio", "Share of cache lookups answered from the cache since start")] = [
            ({}, hits / looked if looked else 0.0)
        ]
        if self.cache is not None and self.cache.semantic:
            fig = self.cache.audit.figures()
            out[("hybrid_cache_semantic_wrong_hit_rate",
                 "Wrong share of audited semantic hits that the current thresholds still serve")] = [
                ({}, fig["observed_wrong_rate"])]
            out[("hybrid_cache_semantic_audit_samples", "Audited semantic hits the current thresholds still serve")] = [
                ({}, float(fig["observed_samples"]))]
            out[("hybrid_cache_semantic_error_budget", "The wrong-hit rate allowed (cache.semantic_error_budget)")] = [
                ({}, fig["budget"])]
            out[("hybrid_cache_semantic_threshold", "Similarity threshold: configured, and the highest partition's")] = [
                ({"stat": "base"}, fig["threshold"]["base"]), ({"stat": "max"}, fig["threshold"]["max"])]
        if self.budgets is not None:
            out[("hybrid_budget_remaining_usd", "What is left of each budget this period (as last seen)")] = (
                self.budgets.gauges()
            )
        return out

    def _refund(self, ctx: RequestContext, charged: int) -> None:
        """No answer came: the tokens charged up front go back (the request itself still counts)."""
        if charged:
            self.limiter.settle(ctx.tenant, charged, 0)

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


def _tokens(usage: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached prompt) tokens of a usage object, whatever an upstream put in it."""
    def whole(v: Any) -> int:
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0

    details = usage.get("prompt_tokens_details")
    cached = whole(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return whole(usage.get("prompt_tokens")), whole(usage.get("completion_tokens")), cached
