"""The gateway's pipeline in milliseconds: fallback, overflow, the breaker, context skipping and settlement,
against scripted in-process backends (the role httpx's MockTransport plays). The live-server tests remain the
acceptance layer; these pin the decisions themselves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import pytest

from hybrid.answers import RequestContext
from hybrid.backends.base import Backend, BackendLoad
from hybrid.config import BackendConfig, Config, RoutingConfig
from hybrid.errors import HybridError, InvalidRequestError, UpstreamError
from hybrid.gateway import Gateway
from hybrid.protocol import Chunk, InferenceRequest, make_chunk, make_usage, make_usage_chunk, parse_chat_request

Behaviour = Callable[[InferenceRequest], AsyncGenerator[Chunk, None]]


async def answers(req: InferenceRequest, text: str = "hi", usage: bool = True) -> AsyncGenerator[Chunk, None]:
    yield make_chunk("", "m", content=text, role="assistant")
    yield make_chunk("", "m", finish_reason="stop")
    if usage:
        yield make_usage_chunk("", "m", make_usage(3, 1))


async def fails_before(req: InferenceRequest) -> AsyncGenerator[Chunk, None]:
    raise UpstreamError("scripted failure before the first byte")
    yield {}  # pragma: no cover  # an async generator, as real backends are


async def breaks_off(req: InferenceRequest) -> AsyncGenerator[Chunk, None]:
    yield make_chunk("", "m", content="half an ans", role="assistant")
    raise UpstreamError("scripted failure mid-answer")


async def refuses(req: InferenceRequest) -> AsyncGenerator[Chunk, None]:
    raise InvalidRequestError("scripted 400", param="messages")
    yield {}  # pragma: no cover


class ScriptedBackend(Backend):
    """A backend that answers by script: one behaviour per call, the last repeating."""

    def __init__(self, name: str, tier: str, *script: Behaviour, context: int = 0,
                 load: BackendLoad | None = None, hard_limit: bool = False) -> None:
        super().__init__(BackendConfig(name=name, kind="openai", tier=tier, models=[f"{name}-model"], context=context))
        self.script = list(script) or [answers]
        self.calls = 0
        self.closed = 0
        self._load = load or BackendLoad(in_flight=0, waiting=0, capacity=0, service_time_s=0.0)
        self.hard_concurrency_limit = hard_limit

    @property
    def models(self) -> list[str]:
        return self.cfg.models

    def load(self) -> BackendLoad:
        return self._load

    async def stream(self, req: InferenceRequest, model: str) -> AsyncGenerator[Chunk, None]:
        behaviour = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        try:
            async for chunk in behaviour(req):
                yield chunk
        finally:
            self.closed += 1


def gateway(*backends: ScriptedBackend, **routing: Any) -> Gateway:
    rc = RoutingConfig(**({"fallbacks": ["local", "cloud"]} | routing))
    gw = Gateway(Config(backends=[b.cfg for b in backends], routing=rc), list(backends))
    asyncio.run(gw.start())
    return gw


def ask(gw: Gateway, model: str = "local", **body: Any) -> Any:
    req = parse_chat_request({"model": model, "messages": [{"role": "user", "content": "hi"}]} | body)

    async def go() -> Any:
        answer, chunks = await gw.complete(req, RequestContext(request_id="r1"))
        return answer, chunks

    return asyncio.run(go())


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_a_failure_before_the_first_byte_falls_back_to_the_next_tier() -> None:
    local, cloud = ScriptedBackend("a", "local", fails_before), ScriptedBackend("b", "cloud")
    gw = gateway(local, cloud)
    answer, chunks = ask(gw)
    assert answer.target.backend is cloud
    assert answer.reason == "explicit-tier;fallback:a(502)"
    assert gw.breakers["a"].failures == 1 and local.closed == 1
    assert chunks[-1]["usage"]["total_tokens"] == 4


def test_the_breaker_cools_a_failing_backend_and_routing_passes_it_over() -> None:
    local, cloud = ScriptedBackend("a", "local", fails_before), ScriptedBackend("b", "cloud")
    gw = gateway(local, cloud, failure_threshold=2, cooldown_s=60)
    for _ in range(2):
        ask(gw)
    answer, _ = ask(gw)
    assert local.calls == 2  # not asked a third time
    assert "a(cooling)" in answer.reason


def test_a_whole_answer_that_breaks_off_falls_back_and_counts_as_failure() -> None:
    local, cloud = ScriptedBackend("a", "local", breaks_off), ScriptedBackend("b", "cloud")
    gw = gateway(local, cloud)
    answer, chunks = ask(gw)
    assert answer.target.backend is cloud
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "hi"
    assert gw.breakers["a"].failures == 1


def test_a_request_the_backend_refuses_is_not_retried_and_is_not_a_failure() -> None:
    local, cloud = ScriptedBackend("a", "local", refuses), ScriptedBackend("b", "cloud")
    gw = gateway(local, cloud)
    with pytest.raises(InvalidRequestError):
        ask(gw)
    assert cloud.calls == 0 and gw.breakers["a"].failures == 0


def test_a_busy_local_tier_overflows_only_for_a_tier_the_router_chose() -> None:
    busy = BackendLoad(in_flight=1, waiting=5, capacity=1, service_time_s=2.0)  # about 12 s to wait
    local, cloud = ScriptedBackend("a", "local", load=busy), ScriptedBackend("b", "cloud")
    gw = gateway(local, cloud, default="local")
    answer, _ = ask(gw, model="auto")
    assert answer.target.backend is cloud and "overflow:a(wait=12.0s)" in answer.reason
    answer, _ = ask(gw, model="local")  # the client named the tier: it waits its turn
    assert answer.target.backend is local


def test_a_backend_at_its_concurrency_limit_passes_the_turn_or_429s() -> None:
    full = BackendLoad(in_flight=2, waiting=0, capacity=2, service_time_s=1.0)
    capped, spare = ScriptedBackend("a", "cloud", load=full, hard_limit=True), ScriptedBackend("b", "cloud")
    answer, _ = ask(gateway(capped, spare, fallbacks=[]), model="cloud")
    assert answer.target.backend is spare and "a(busy)" in answer.reason
    with pytest.raises(HybridError) as info:
        ask(gateway(ScriptedBackend("c", "cloud", load=full, hard_limit=True), fallbacks=[]), model="cloud")
    assert info.value.status_code == 429 and info.value.headers["retry-after"] == "1"


def test_a_prompt_over_a_backends_context_skips_it() -> None:
    small, large = ScriptedBackend("a", "local", context=64), ScriptedBackend("b", "local", context=4096)
    gw = gateway(small, large)
    req = parse_chat_request({"model": "local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100})
    decision = run(gw.route(req, RequestContext(request_id="r")))
    flight_decision = type(decision)(decision.targets, decision.reason, decision.primary, prompt_tokens=10)

    async def go() -> Any:
        from hybrid.answers import Flight

        return await gw._dispatch(Flight(req, RequestContext(request_id="r"), flight_decision), 0)

    answer = run(go())
    assert answer.target.backend is large and "a(context)" in answer.reason


def test_every_target_failing_is_one_error_naming_them_all_and_refunds_the_tokens() -> None:
    gw = gateway(ScriptedBackend("a", "local", fails_before), ScriptedBackend("b", "cloud", fails_before))
    gw.limiter = type(gw.limiter)(0, 1000)
    with pytest.raises(UpstreamError) as info:
        ask(gw, max_tokens=100)
    assert "Tried: a(502), b(502)." in info.value.message
    bucket = gw.limiter._tokens[RequestContext(request_id="r").tenant]
    assert bucket.level == pytest.approx(1000, abs=1)  # nothing answered: the up-front charge came back


def test_usage_is_counted_when_the_upstream_sends_none_and_settles_the_limit() -> None:
    gw = gateway(ScriptedBackend("a", "local", lambda req: answers(req, "four", usage=False)))
    gw.limiter = type(gw.limiter)(0, 10_000)
    _, chunks = ask(gw, max_tokens=500)
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 1 and usage["prompt_tokens"] >= 1  # a rough count: no local tokenizer
    level = gw.limiter._tokens["anonymous"].level
    assert level == pytest.approx(10_000 - usage["total_tokens"], abs=1)  # settled to the real usage, not 500


def test_the_up_front_charge_counts_every_choice() -> None:
    """n choices are n answers: eight requests with n = 128 once passed a 1,000,000-token limit as eight small ones."""
    gw = gateway(ScriptedBackend("a", "cloud"), fallbacks=[])
    gw.limiter = type(gw.limiter)(0, 1_000_000)
    req = parse_chat_request({"model": "cloud", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100,
                              "n": 8})

    async def go() -> int:
        answer = await gw.handle(req, RequestContext(request_id="r"))
        charged = answer.flight.charged_tokens  # type: ignore[union-attr]
        async for _ in answer.chunks():
            pass
        return charged

    assert run(go()) == 800  # 8 x max_tokens (the two-character prompt rounds to nothing)
