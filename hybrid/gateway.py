"""The pipeline, and the one place where the parts meet.

    route decision -> dispatch with fallbacks -> stream back -> usage accounting

``Gateway.handle`` returns an :class:`Answer` only once the first chunk has arrived from a backend, so every
failure before the first byte is still an HTTP error (or a fallback), never a broken stream. Streaming and
non-streaming requests take the same path: the server either encodes the answer's chunks as SSE or assembles
them into one JSON body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from hybrid.backends.base import Backend, BackendState
from hybrid.config import Config
from hybrid.errors import HybridError, ServiceUnavailableError
from hybrid.protocol import Chunk, InferenceRequest, is_usage_chunk, make_usage, make_usage_chunk
from hybrid.routing.decision import RouteDecision, Target
from hybrid.routing.resolver import AUTO, ModelResolver

log = logging.getLogger("hybrid.gateway")


@dataclass
class RequestContext:
    request_id: str
    headers: dict[str, str] = field(default_factory=dict)
    api_key: str | None = None

    @property
    def completion_id(self) -> str:
        return "chatcmpl-" + self.request_id


class Answer:
    """A backend's answer, with its first chunk already in hand."""

    def __init__(
        self,
        req: InferenceRequest,
        ctx: RequestContext,
        target: Target,
        decision: RouteDecision,
        first: Chunk,
        rest: AsyncIterator[Chunk],
    ) -> None:
        self.req = req
        self.ctx = ctx
        self.target = target
        self.decision = decision
        self._first: Chunk | None = first
        self._rest = rest
        self.usage: dict[str, int] | None = None
        self.started = time.monotonic()

    @property
    def headers(self) -> dict[str, str]:
        return {
            "x-hybrid-tier": self.target.tier,
            "x-hybrid-backend": self.target.backend.name,
            "x-hybrid-route-reason": self.decision.reason,
        }

    async def chunks(self) -> AsyncIterator[Chunk]:
        """The answer's chunks with the router's id, always ending with a usage chunk."""
        cid = self.ctx.completion_id
        text_len = 0
        try:
            if self._first is not None:
                first, self._first = self._first, None
                chunk: Chunk | None = first
            else:
                chunk = None
            while True:
                if chunk is None:
                    try:
                        chunk = await self._rest.__anext__()
                    except StopAsyncIteration:
                        break
                chunk["id"] = cid
                if is_usage_chunk(chunk):
                    self.usage = chunk["usage"]
                else:
                    for ch in chunk.get("choices") or ():
                        text_len += len((ch.get("delta") or {}).get("content") or "")
                yield chunk
                chunk = None
        finally:
            await self._close_rest()
        if self.usage is None:
            # the upstream sent none: count ourselves so include_usage and the ledger always work
            prompt = await self.target.backend.count_prompt_tokens(self.req)
            if prompt is None:
                prompt = max(1, len(self.req.text()) // 4)
            self.usage = make_usage(prompt, (text_len + 3) // 4)
            yield make_usage_chunk(cid, self.target.model, self.usage)

    async def _close_rest(self) -> None:
        aclose = getattr(self._rest, "aclose", None)
        if aclose is not None:
            await aclose()


class Gateway:
    def __init__(self, config: Config, backends: list[Backend]) -> None:
        self.config = config
        self.backends = backends
        self.resolver = ModelResolver(backends)

    async def start(self) -> None:
        for b in self.backends:
            try:
                await b.start()
            except Exception:
                log.exception("backend %s failed to start", b.name)
                raise
        self.resolver.refresh_models()

    async def stop(self) -> None:
        for b in self.backends:
            try:
                await b.stop()
            except Exception:  # pragma: no cover - best effort at shutdown
                log.exception("backend %s failed to stop", b.name)

    # ------------------------------------------------------------------------------------------ routing

    def route(self, req: InferenceRequest, ctx: RequestContext) -> RouteDecision:
        header_tier = ctx.headers.get("x-hybrid-tier")
        if header_tier:
            return RouteDecision(self.resolver.explicit(header_tier), reason="header")
        name = req.model
        if name == AUTO or (name == self.config.routing.default and not self.resolver.is_tier(name)):
            return self._auto()
        if self.resolver.is_tier(name):
            return RouteDecision(self.resolver.explicit(name), reason="explicit-tier")
        return RouteDecision(self.resolver.explicit(name), reason="explicit-model")

    def _auto(self) -> RouteDecision:
        default = self.config.routing.default
        tier = default if self.resolver.is_tier(default) else ("local" if self.resolver.is_tier("local") else self.resolver.tiers[0])
        return RouteDecision(self.resolver.tier_targets(tier), reason="default")

    # ------------------------------------------------------------------------------------------ dispatch

    async def handle(self, req: InferenceRequest, ctx: RequestContext) -> Answer:
        decision = self.route(req, ctx)
        targets = ModelResolver.healthy_first(decision.targets)
        if not targets:
            raise ServiceUnavailableError("No backend is configured for this route.")
        last: HybridError | None = None
        for target in targets:
            if target.backend.state is not BackendState.UP:
                last = ServiceUnavailableError(
                    f"Backend '{target.backend.name}' is {target.backend.state.value}."
                )
                continue
            target.backend.check(req)
            stream = target.backend.stream(req, target.model)
            try:
                first = await stream.__anext__()
            except StopAsyncIteration:
                last = ServiceUnavailableError(f"Backend '{target.backend.name}' returned an empty answer.")
                continue
            except BaseException:
                await stream.aclose()
                raise
            return Answer(req, ctx, target, decision, first, stream)
        assert last is not None
        raise last

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
            entry: dict[str, object] = {
                "state": b.state.value, "tier": b.tier, "kind": b.kind, "models": b.models,
                "in_flight": load.in_flight, "waiting": load.waiting,
            }
            if b.state_detail:
                entry["detail"] = b.state_detail
            states[b.name] = entry
        local = [b for b in self.backends if b.kind in ("llamacpp", "vllm")] or self.backends
        ready = all(b.state is BackendState.UP for b in local)
        return ready, {"status": "ready" if ready else "not-ready", "backends": states}
