"""Routing end to end: a real local tier, llama-cpp-python's own server as the cloud, a faulty upstream.

Every request goes through a live router with the strict openai SDK (or raw httpx for the wire format).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import sdk
from tests.procs import (
    ManagedProcess,
    cloud_backend,
    cpu_backend,
    start_fault_upstream,
    start_proxy,
    start_router,
    toml_fields,
)




def _fault_backend(faults: ManagedProcess, mode: str, name: str = "", first_byte_timeout_s: float = 1.0, **extra: object) -> str:
    name = name or mode
    lines = toml_fields(extra)
    return f"""
[[backends]]
name = "f{name}"
kind = "openai"
tier = "t{name}"
base_url = "{faults.url}/{mode}/v1"
models = ["fault-{name}"]
first_byte_timeout_s = {first_byte_timeout_s}
{lines}"""


@pytest.fixture(scope="module")
def routed(cloud: ManagedProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    config = f"""{cpu_backend(context=512)}{cloud_backend(cloud)}
[routing]
overflow_wait_s = 0
"""
    proc = start_router(config, tmp_path_factory.mktemp("routed"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def faulty(cloud: ManagedProcess, faults: ManagedProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    modes = ["500", "429", "slow", "disconnect", "badjson", "badevent", "vllm400", "ctl", "json"]
    config = "".join(_fault_backend(faults, m) for m in modes)
    config += _fault_backend(faults, "slow", name="capped", first_byte_timeout_s=10.0, max_concurrency=1)
    config += f"""
[[backends]]
name = "refused"
kind = "openai"
tier = "trefused"
base_url = "http://127.0.0.1:9/v1"
models = ["nowhere"]
connect_timeout_s = 1.0
{cloud_backend(cloud)}
[routing]
fallbacks = ["cloud"]
failure_threshold = 2
cooldown_s = 1.0
overflow_wait_s = 0.5
"""
    proc = start_router(config, tmp_path_factory.mktemp("faulty"))
    yield proc
    proc.stop()


def _chat(base: ManagedProcess, model: str, content: str = "Hello", **kw: object):  # type: ignore[no-untyped-def]
    raw = sdk(base.url).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=kw.pop("max_tokens", 4), **kw  # type: ignore[arg-type]
    )
    return raw.headers, raw.parse()


# --------------------------------------------------------------------------------------------- explicit choice


def test_explicit_tier_model_and_header(routed: ManagedProcess) -> None:
    headers, r = _chat(routed, "cloud")
    assert (headers["x-hybrid-tier"], headers["x-hybrid-backend"], headers["x-hybrid-route-reason"]) == (
        "cloud", "cloud-llama", "explicit-tier")
    assert r.model == "gemma-cloud" and headers["x-hybrid-model"] == "gemma-cloud"
    headers, _ = _chat(routed, "gemma-cloud")
    assert headers["x-hybrid-route-reason"] == "explicit-model" and headers["x-hybrid-tier"] == "cloud"
    headers, _ = _chat(routed, "auto", extra_headers={"x-hybrid-tier": "cloud"})
    assert headers["x-hybrid-tier"] == "cloud" and headers["x-hybrid-route-reason"] == "header"
    headers, _ = _chat(routed, "local")
    assert headers["x-hybrid-backend"] == "cpu" and headers["x-hybrid-model"] == "gemma-3-270m"


def test_models_and_ready_list_every_tier(routed: ManagedProcess) -> None:
    ids = [m.id for m in sdk(routed.url).models.list()]
    assert ids[:3] == ["auto", "local", "cloud"] and {"gemma-3-270m", "gemma-cloud"} <= set(ids)
    backends = routed.get("/ready").json()["backends"]
    assert backends["cloud-llama"]["state"] == "up" and backends["cpu"]["state"] == "up"


def test_cloud_stream_gets_usage_from_the_router(routed: ManagedProcess) -> None:
    # llama_cpp.server sends no usage chunk when streaming: the router counts and adds one
    chunks = list(sdk(routed.url).chat.completions.create(
        model="cloud", messages=[{"role": "user", "content": "Say hi"}], max_tokens=5, stream=True,
        stream_options={"include_usage": True},
    ))
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 6


# --------------------------------------------------------------------------------------------- auto


def test_auto_simple_request_stays_local(routed: ManagedProcess) -> None:
    headers, _ = _chat(routed, "auto", "hi")
    assert headers["x-hybrid-tier"] == "local"
    assert headers["x-hybrid-route-reason"].startswith("auto:complexity=0.")


def test_auto_complex_request_goes_to_cloud(routed: ManagedProcess) -> None:
    prompt = ("Debug this step by step and analyze the trade-offs of the algorithm:\n"
              "```python\ndef f(xs):\n    return sorted(xs)[len(xs) // 2]\n```")
    headers, _ = _chat(routed, "auto", prompt)
    assert headers["x-hybrid-tier"] == "cloud"
    assert headers["x-hybrid-route-reason"].startswith("auto:complexity=")
    assert ">=" in headers["x-hybrid-route-reason"]


@pytest.mark.parametrize(("prompt", "tier"), [
    ("Prove that the square root of 3 is irrational.", "cloud"),
    ("Design a chat system like Slack for 10 million users: message storage, presence, fan-out and search.", "cloud"),
    ("How do I update my billing address?", "local"),
    ("Translate \"good night\" into French.", "local"),
])
def test_the_default_scorer_knows_short_hard_prompts(routed: ManagedProcess, prompt: str, tier: str) -> None:
    """Short prompts from the scorer's training split: the heuristic kept every one of them local."""
    headers, _ = _chat(routed, "auto", prompt)
    assert headers["x-hybrid-tier"] == tier, headers["x-hybrid-route-reason"]


def test_auto_prompt_longer_than_local_context_goes_to_cloud_and_succeeds(routed: ManagedProcess) -> None:
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 80  # ~800 tokens > 512 local context
    headers, r = _chat(routed, "auto", long_prompt)
    assert headers["x-hybrid-tier"] == "cloud"
    assert headers["x-hybrid-route-reason"].startswith("auto:size>512ctx")
    assert r.usage is not None and r.usage.prompt_tokens > 512
    with pytest.raises(openai.BadRequestError) as info:  # asked for explicitly, local cannot take it
        _chat(routed, "local", long_prompt)
    assert info.value.code == "context_length_exceeded"


def test_auto_tools_go_where_tools_work(routed: ManagedProcess) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    headers, _ = _chat(routed, "auto", "hi", tools=tools)
    assert headers["x-hybrid-tier"] == "cloud"


def test_overflow_when_local_is_busy(routed: ManagedProcess) -> None:
    # a base model keeps counting: local stays busy for hundreds of tokens
    body = {"model": "local", "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 400, "stream": True, "temperature": 0}
    with httpx.Client(timeout=60) as http, http.stream("POST", routed.url + "/v1/completions", json=body) as busy:
        lines = busy.iter_lines()  # keep a reference: a collected iterator closes the stream (a disconnect)
        next(lines)  # local is now generating
        assert routed.get("/ready").json()["backends"]["cpu"]["in_flight"] == 1
        headers, _ = _chat(routed, "auto", "hi")
        assert headers["x-hybrid-tier"] == "cloud"
        assert ";overflow:cpu(wait=" in headers["x-hybrid-route-reason"]
        headers, _ = _chat(routed, "local", "hi", max_tokens=2)  # explicit tier waits its turn instead
        assert headers["x-hybrid-tier"] == "local"


# --------------------------------------------------------------------------------------------- fallbacks


@pytest.mark.parametrize("mode", ["500", "429", "slow", "badjson", "badevent", "refused"])
@pytest.mark.parametrize("stream", [False, True])
def test_fallback_on_each_fault(faulty: ManagedProcess, mode: str, stream: bool) -> None:
    model = "trefused" if mode == "refused" else f"t{mode}"
    backend = "refused" if mode == "refused" else f"f{mode}"
    client = sdk(faulty.url)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=stream
    )
    assert raw.headers["x-hybrid-backend"] == "cloud-llama"
    assert f";fallback:{backend}(" in raw.headers["x-hybrid-route-reason"]
    parsed = raw.parse()
    if stream:
        assert [c for c in parsed]
    else:
        assert parsed.choices[0].message is not None
    time.sleep(1.1)  # let a 429's Retry-After cooldown lapse for the next parameter


def test_upstream_usage_is_kept_whatever_the_answer_shape(faulty: ManagedProcess) -> None:
    # the upstream answers with one JSON body (usage 7 + 6) even though the router asked for a stream
    _, r = _chat(faulty, "tjson")
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (7, 6)
    chunks = list(sdk(faulty.url).chat.completions.create(
        model="tjson", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}))
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)  # usage only in its own, last chunk
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 13
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fault upstream."


def test_upstream_4xx_is_normalised_not_retried(faulty: ManagedProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _chat(faulty, "tvllm400")
    assert "maximum context length is 10 tokens" in info.value.message
    assert info.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_mid_stream_failure_ends_with_error_event(faulty: ManagedProcess) -> None:
    body = {"model": "tdisconnect", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", faulty.url + "/v1/chat/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200 and resp.headers["x-hybrid-backend"] == "fdisconnect"
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "server_error" and "fdisconnect" in error["message"]
    assert any("content" in json.loads(e)["choices"][0]["delta"] for e in events[:-2])
    with pytest.raises(openai.APIError):
        list(sdk(faulty.url).chat.completions.create(model="tdisconnect", messages=[{"role": "user", "content": "hi"}], stream=True))


def _wait_not_cooling(router: ManagedProcess, backend: str) -> None:
    deadline = time.monotonic() + 10
    while router.get("/ready").json()["backends"][backend]["state"] == "cooling":
        assert time.monotonic() < deadline, f"{backend} cooled down for over 10 s"
        time.sleep(0.05)


def test_mid_answer_failure_falls_back_when_not_streaming(faulty: ManagedProcess) -> None:
    _wait_not_cooling(faulty, "fdisconnect")  # the stream tests above failed it twice
    headers, r = _chat(faulty, "tdisconnect")
    assert headers["x-hybrid-backend"] == "cloud-llama"
    assert "fdisconnect(502)" in headers["x-hybrid-route-reason"]
    assert r.choices[0].message is not None


def _while_busy(router: ManagedProcess, backend: str, model: str, then):  # type: ignore[no-untyped-def]
    """Run ``then()`` while a slow request holds ``backend``; returns both outcomes."""
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_chat, router, model)
        while router.get("/ready").json()["backends"][backend]["in_flight"] == 0:
            time.sleep(0.02)
        second = then()
        return first.result(), second


def test_concurrency_limit_sends_the_next_request_on(faulty: ManagedProcess) -> None:
    (h1, _), (h2, _) = _while_busy(faulty, "fcapped", "tcapped", lambda: _chat(faulty, "tcapped"))
    assert h1["x-hybrid-backend"] == "fcapped"
    assert h2["x-hybrid-backend"] == "cloud-llama" and "fcapped(busy)" in h2["x-hybrid-route-reason"]


def test_cooldown_and_recovery(faulty: ManagedProcess, faults: ManagedProcess) -> None:
    httpx.post(faults.url + "/control", json={"mode": "500", "reset": True})
    for _ in range(2):  # two consecutive failures open the breaker
        headers, _ = _chat(faulty, "tctl")
        assert headers["x-hybrid-backend"] == "cloud-llama"
    state = faulty.get("/ready").json()["backends"]["fctl"]
    assert state["state"] == "cooling" and state["consecutive_failures"] == 2
    headers, _ = _chat(faulty, "tctl")  # skipped while cooling: the upstream sees nothing
    assert "fctl(cooling)" in headers["x-hybrid-route-reason"]
    assert httpx.get(faults.url + "/stats").json() == {"500": 2}

    httpx.post(faults.url + "/control", json={"mode": "ok"})
    _wait_not_cooling(faulty, "fctl")
    headers, _ = _chat(faulty, "tctl")  # the probe succeeds and closes the breaker
    assert headers["x-hybrid-backend"] == "fctl"
    state = faulty.get("/ready").json()["backends"]["fctl"]
    assert state["state"] == "up" and state["consecutive_failures"] == 0
    assert httpx.get(faults.url + "/stats").json() == {"500": 2, "ok": 1}


def test_everything_down_is_a_clear_error(tmp_path_factory: pytest.TempPathFactory) -> None:
    config = """
[[backends]]
name = "gone"
kind = "openai"
tier = "cloud"
base_url = "http://127.0.0.1:9/v1"
models = ["m"]
connect_timeout_s = 1.0
"""
    proc = start_router(config, tmp_path_factory.mktemp("down"))
    try:
        with pytest.raises(openai.InternalServerError) as info:
            _chat(proc, "cloud")
        assert info.value.status_code == 502 and "gone" in info.value.message
    finally:
        proc.stop()


# --------------------------------------------------------------------------------------------- rate limits


def test_rate_limits_per_key(faults: ManagedProcess, tmp_path_factory: pytest.TempPathFactory) -> None:
    config = f"""
[server]
api_keys = ["key-a", "key-b"]

[limits]
requests_per_min = 3
tokens_per_min = 1000
{_fault_backend(faults, "ok")}
{_fault_backend(faults, "slow", name="capped", first_byte_timeout_s=10.0, max_concurrency=1)}
"""
    proc = start_router(config, tmp_path_factory.mktemp("limits"), key="key-b")
    try:
        a = sdk(proc.url, api_key="key-a")
        for _ in range(3):
            a.chat.completions.create(model="tok", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        with pytest.raises(openai.RateLimitError) as info:
            a.chat.completions.create(model="tok", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert info.value.code == "rate_limit_exceeded"
        assert int(info.value.response.headers["retry-after"]) >= 1
        b = sdk(proc.url, api_key="key-b")  # another key has its own budget
        b.chat.completions.create(model="tok", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        with pytest.raises(openai.RateLimitError) as info:  # 1,000 tokens/min cannot cover 2,000 requested
            b.chat.completions.create(model="tok", messages=[{"role": "user", "content": "hi"}], max_tokens=999)
            b.chat.completions.create(model="tok", messages=[{"role": "user", "content": "hi"}], max_tokens=999)
        assert "tokens per minute" in info.value.message

        c = sdk(proc.url, api_key="key-a")  # a backend at its concurrency limit with nowhere else to go: 429

        def second() -> Exception | None:
            try:
                c.chat.completions.create(model="tcapped", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
            except openai.RateLimitError as exc:
                return exc
            return None

        time.sleep(60 / 3 + 0.5)  # key-a's request budget refills (one request per 20 s)
        _, err = _while_busy_with_key(proc, "key-b", second)
        assert isinstance(err, openai.RateLimitError) and "concurrency limit of 1" in err.message
        assert int(err.response.headers["retry-after"]) >= 1
    finally:
        proc.stop()


def _while_busy_with_key(router: ManagedProcess, key: str, then):  # type: ignore[no-untyped-def]
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(lambda: sdk(router.url, api_key=key).chat.completions.create(
            model="tcapped", messages=[{"role": "user", "content": "hi"}], max_tokens=1))
        while router.get("/ready").json()["backends"]["fcapped"]["in_flight"] == 0:
            time.sleep(0.02)
        second = then()
        return first.result(), second


def test_local_only_default_names_what_to_configure(router: ManagedProcess) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        _chat(router, "cloud")
    assert "OPENAI_API_KEY" in info.value.message and info.value.code == "model_not_found"



def test_https_upstream_trusted_through_ca_file(tls_files: tuple[str, str, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    """An https upstream with a private CA: trusted by the backend that names the CA, refused by one that does not."""
    upstream = start_fault_upstream(tls=tls_files)
    config = f"""
[[backends]]
name = "tls"
kind = "openai"
tier = "cloud"
base_url = "{upstream.url}/ok/v1"
models = ["tls-model"]
ca_file = "{tls_files[2]}"

[[backends]]
name = "untrusted"
kind = "openai"
tier = "untrusted"
base_url = "{upstream.url}/ok/v1"
models = ["untrusted-model"]

[routing]
fallbacks = []
"""
    router = start_router(config, tmp_path_factory.mktemp("tls-router"))
    try:
        headers, answer = _chat(router, "tls-model")
        assert headers["x-hybrid-backend"] == "tls"
        assert answer.choices[0].message.content == "Hello from the fault upstream."
        stream = sdk(router.url).chat.completions.create(
            model="tls-model", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello from the fault upstream."
        with pytest.raises(openai.APIStatusError) as refused:
            _chat(router, "untrusted-model")
        assert "certificate" in refused.value.message.lower()
    finally:
        router.stop()
        upstream.stop()


def test_backends_reach_their_upstream_through_a_proxy(faults: ManagedProcess, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`proxy` on a backend: a real forward proxy in the path, which turns away wrong credentials."""
    proxy = start_proxy("router:pw")
    good, bad = (proxy.url.replace("http://", f"http://router:{pw}@") for pw in ("pw", "nope"))
    config = (_fault_backend(faults, "ok", name="proxied", proxy=good)
              + _fault_backend(faults, "ok", name="refused", proxy=bad) + "\n[routing]\nfallbacks = []\n")
    router = start_router(config, tmp_path_factory.mktemp("proxied"))
    try:
        headers, answer = _chat(router, "fault-proxied")
        assert headers["x-hybrid-backend"] == "fproxied"
        assert answer.choices[0].message.content == "Hello from the fault upstream."
        with pytest.raises(openai.APIStatusError) as refused:
            _chat(router, "fault-refused")
        assert "answered 407" in refused.value.message
    finally:
        router.stop()
        proxy.stop()
