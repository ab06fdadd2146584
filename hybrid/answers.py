"""What the gateway hands back: a live backend's answer, or a cache hit replayed, and the request's context.

Both expose ``headers`` and ``chunks()``: the server encodes the chunks as SSE or assembles them, whichever the
client asked for.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from hybrid.cache.cache import CacheLookup, replay_chunks
from hybrid.errors import HybridError, UpstreamError
from hybrid.protocol import Chunk, InferenceRequest, make_usage_chunk
from hybrid.routing.decision import RouteDecision, Target

log = logging.getLogger("hybrid.answers")

# One answer may hold at most this much: a 128k-token answer is about 130,000 chunks and 600,000 characters, and
# an upstream that streams without end is cut here instead of growing the router's memory.
MAX_ANSWER_CHUNKS = 262_144
MAX_ANSWER_CHARS = 16 * 1024 * 1024


@dataclass
class RequestContext:
    request_id: str
    headers: dict[str, str] = field(default_factory=dict)
    tenant: str = "anonymous"  # whom rate limits and cache entries are scoped to
    cache_control: str | None = None
    key_id: str = ""  # the ledger's name for the caller: a keyed hash of its key, or its address
    cache_status: str = "off"  # the cache lookup's result, once it is known
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def completion_id(self) -> str:
        return "chatcmpl-" + self.request_id


@dataclass
class Flight:
    """One request while the gateway answers it: the one place its per-request state lives."""

    req: InferenceRequest
    ctx: RequestContext
    decision: RouteDecision
    lookup: CacheLookup | None = None  # the cache lookup whose miss this answer may fill
    charged_tokens: int = 0  # rate-limit tokens charged up front, settled when the answer is done
    failures: list[str] = field(default_factory=list)  # "backend(why)" for each target passed over
    started: float = 0.0  # perf_counter when the gateway got the request
    asked: bool = False  # a backend has been asked (the router's own part of the latency is over)
    first_at: float = 0.0  # perf_counter when the first chunk was in hand
    arrived: float = 0.0  # unix time, for the ledger

    @property
    def cache_status(self) -> str:
        return self.lookup.status if self.lookup is not None else "off"

    @property
    def keeps_chunks(self) -> bool:
        """Whether a complete answer is to be stored in the cache (so its chunks are kept as they pass)."""
        return self.lookup is not None and self.lookup.policy.write


class Settlement(Protocol):
    """What an answer reports to when its usage is unknown and when it is over (the gateway)."""

    async def count_usage(self, answer: Answer, text: str) -> dict[str, int]:
        """Usage counted by the router, for an upstream that sent none."""

    def settle(self, answer: Answer, outcome: bool | None, error: HybridError | None, chunks: list[Chunk] | None) -> None:
        """The answer is over: ``outcome`` True (complete: ``chunks`` when kept), False (failed: ``error``) or
        None (the consumer went away: says nothing about the backend)."""


class Answer:
    """A backend's answer, with its first chunk already in hand."""

    def __init__(
        self,
        flight: Flight,
        target: Target,
        index: int,
        reason: str,
        first: Chunk,
        rest: AsyncGenerator[Chunk, None],
        settlement: Settlement,
    ) -> None:
        self.flight = flight
        self.req = flight.req
        self.ctx = flight.ctx
        self.target = target
        self.index = index  # position of target in the decision's targets: where a retry continues
        self.reason = reason
        self._first: Chunk | None = first
        self._rest = rest
        self._settlement = settlement
        self.usage: dict[str, int] | None = None
        self.text: list[str] = []  # what it has said so far: counted when it ends without the upstream's usage

    @property
    def headers(self) -> dict[str, str]:
        h = {
            "x-hybrid-tier": self.target.tier,
            "x-hybrid-backend": self.target.backend.name,
            "x-hybrid-model": self.target.model,
            "x-hybrid-route-reason": self.reason,
        }
        lookup = self.flight.lookup
        if lookup is not None:
            h.update(lookup.headers)
        else:  # the cache is off
            h["x-hybrid-cache"] = "bypass"
        return h

    async def chunks(self) -> AsyncIterator[Chunk]:
        """The answer's chunks under the router's id, always ending with a usage chunk."""
        cid = self.ctx.completion_id
        text = self.text
        kept: list[Chunk] | None = [] if self.flight.keeps_chunks else None
        outcome: bool | None = None
        error: HybridError | None = None
        usage_sent = False
        received = size = 0
        try:
            chunk = self._first
            self._first = None
            while True:
                if chunk is None:
                    try:
                        chunk = await self._rest.__anext__()
                    except StopAsyncIteration:
                        break
                chunk["id"] = cid
                usage = chunk.get("usage")
                if usage is not None:
                    self.usage = usage
                    if chunk.get("choices"):  # a whole answer as one chunk: its usage goes in a chunk of its own
                        del chunk["usage"]
                    else:
                        usage_sent = True
                received += 1
                for ch in chunk.get("choices") or ():
                    piece = (ch.get("delta") or {}).get("content")
                    if piece:
                        text.append(piece)
                        size += len(piece)
                if received > MAX_ANSWER_CHUNKS or size > MAX_ANSWER_CHARS:
                    raise UpstreamError(
                        f"Backend '{self.target.backend.name}' sent an answer over the router's bounds "
                        f"({MAX_ANSWER_CHUNKS} chunks, {MAX_ANSWER_CHARS} characters)."
                    )
                if kept is not None:
                    kept.append(chunk)
                yield chunk
                chunk = None
            if not usage_sent:
                if self.usage is None:
                    # the upstream sent none: count ourselves so include_usage and the ledger always work
                    self.usage = await self._settlement.count_usage(self, "".join(text))
                usage_chunk = make_usage_chunk(cid, self.target.model, self.usage)
                if kept is not None:
                    kept.append(usage_chunk)
                yield usage_chunk
            outcome = True
        except HybridError as err:
            outcome, error = False, err
            raise
        except Exception as exc:
            failure = UpstreamError(f"Backend '{self.target.backend.name}' failed: {type(exc).__name__}")
            log.exception("backend %s failed mid-answer", self.target.backend.name)
            outcome, error = False, failure
            raise failure from exc
        finally:
            await self._rest.aclose()
            self._settlement.settle(self, outcome, error, kept if outcome else None)


class CachedAnswer:
    """A cache hit, replayed as the chunk stream a backend would have sent."""

    def __init__(self, req: InferenceRequest, ctx: RequestContext, lookup: CacheLookup, store: str) -> None:
        self.req = req
        self.ctx = ctx
        self.lookup = lookup
        self.store = store
        assert lookup.entry is not None
        self.usage = lookup.entry.answer.get("usage")

    @property
    def headers(self) -> dict[str, str]:
        return {"x-hybrid-tier": "cache", "x-hybrid-backend": self.store,
                "x-hybrid-route-reason": f"cache:{self.lookup.status}"} | self.lookup.headers

    async def chunks(self) -> AsyncIterator[Chunk]:
        assert self.lookup.entry is not None
        cid = self.ctx.completion_id
        for chunk in replay_chunks(self.lookup.entry, self.req.kind):
            chunk["id"] = cid
            yield chunk
