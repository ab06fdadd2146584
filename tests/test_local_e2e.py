"""End to end through a live router on the bundled model, with the official openai SDK (strict validation)."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.procs import ManagedProcess


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=4
    )
    completion = raw.parse()
    assert raw.headers["x-hybrid-tier"] == "local"
    assert raw.headers["x-hybrid-backend"] == "cpu"
    assert raw.headers["x-request-id"]
    assert completion.id == "chatcmpl-" + raw.headers["x-request-id"]
    assert completion.model == "gemma-3-270m"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 4
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_max_completion_tokens_is_honoured(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Count from one to one hundred in words."}],
        max_completion_tokens=3,
        temperature=0,
    )
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert completion.choices[0].finish_reason == "length"


def test_streaming_with_usage_matches_non_streaming(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
    chunks = list(
        client.chat.completions.create(
            model="gemma-3-270m", messages=messages, max_tokens=6, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    whole = client.chat.completions.create(model="gemma-3-270m", messages=messages, max_tokens=6, temperature=0)
    assert whole.choices[0].message.content == streamed
    assert whole.usage == chunks[-1].usage


def test_streaming_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True
        )
    )
    assert chunks and all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_sse_wire_format(router: ManagedProcess) -> None:
    body = {"model": "local", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert payloads[-1]["choices"] == [] and set(payloads[-1]["usage"]) >= {"prompt_tokens", "completion_tokens"}


def test_completions_endpoint_and_stop(client: openai.OpenAI, router: ManagedProcess) -> None:
    free = client.completions.create(model="local", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert free.object == "text_completion"
    text = free.choices[0].text
    words = text.split()
    assert len(words) >= 2, text
    stop = " " + words[1]
    cut = client.completions.create(
        model="local", prompt="The capital of France is", max_tokens=8, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    # OpenAI sends finish_reason null on legacy completion chunks, and so do we, but the SDK's Completion type
    # declares it non-null: strict validation cannot read any legacy stream, so this one client is lenient.
    lenient = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    streamed = list(
        lenient.completions.create(model="local", prompt="The capital of France is", max_tokens=8, temperature=0, stream=True)
    )
    assert [c.choices[0].finish_reason for c in streamed][-1] == "length"
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text


def test_generation_matches_llama_cpp_given_the_text(client: openai.OpenAI, model_path: str) -> None:
    """The router tokenizes a prompt once and generates from the tokens: the answer and the prompt count must be
    what llama-cpp-python itself gives for the text."""
    from llama_cpp import Llama

    prompt = "<start_of_turn>user\nList three fruits.<end_of_turn>\n<start_of_turn>model\n"
    llm = Llama(model_path=model_path, n_ctx=512, n_threads=1, verbose=False)
    direct = llm.create_completion(prompt, max_tokens=12, temperature=0)
    routed = client.completions.create(model="local", prompt=prompt, max_tokens=12, temperature=0)
    assert routed.choices[0].text == direct["choices"][0]["text"]  # type: ignore[index]
    assert routed.usage is not None
    assert routed.usage.prompt_tokens == direct["usage"]["prompt_tokens"]  # type: ignore[index]


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    def once(seed: int) -> str:
        r = client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=12,
            temperature=1.0, seed=seed,
        )
        return r.choices[0].message.content or ""

    assert once(7) == once(7)


def test_response_format_json_object_constrains_output(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Give me a user record."}], max_tokens=24,
        temperature=0, response_format={"type": "json_object"},
    )
    content = (r.choices[0].message.content or "").lstrip()
    assert content[:1] in ("{", "["), content
    if r.choices[0].finish_reason == "stop":
        json.loads(content)


def test_models_list(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[:2] == ["auto", "local"]
    assert "gemma-3-270m" in ids
    assert client.models.retrieve("local").id == "local"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_health_and_ready(router: ManagedProcess) -> None:
    assert httpx.get(router.url + "/health").json() == {"status": "ok"}
    ready = router.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["backends"]["cpu"]["state"] == "up"


def test_concurrent_requests_queue_on_one_context(client: openai.OpenAI) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def ask(i: int) -> int:
        r = client.chat.completions.create(model="local", messages=[{"role": "user", "content": f"Hi {i}"}], max_tokens=4)
        assert r.usage is not None
        return r.usage.completion_tokens

    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(ask, range(4)))
    assert all(0 < c <= 4 for c in counts)


def _backend_load(router: ManagedProcess) -> dict[str, int]:
    return router.get("/ready").json()["backends"]["cpu"]


def _wait_idle(router: ManagedProcess, limit_s: float = 8.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if _backend_load(router)["in_flight"] == 0:
            return True
        time.sleep(0.05)
    return False


def test_client_disconnect_mid_stream_frees_the_slot(router: ManagedProcess) -> None:
    # 1,000 tokens take well over a minute on this model; a disconnect must stop it long before that.
    body = {"model": "local", "messages": [{"role": "user", "content": "Write a long essay."}], "max_tokens": 1000,
            "stream": True, "temperature": 1.0}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", router.url + "/v1/chat/completions", json=body) as resp:
            lines = resp.iter_lines()
            got = [next(lines) for _ in range(3)]
            assert any(line.startswith("data: ") for line in got)
            assert _backend_load(router)["in_flight"] == 1
    assert _wait_idle(router), "generation went on after the client disconnected"


def test_client_disconnect_non_streaming_frees_the_slot(router: ManagedProcess) -> None:
    body = {"model": "local", "messages": [{"role": "user", "content": "Write a long essay."}], "max_tokens": 1000}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(router.url + "/v1/chat/completions", json=body, timeout=1.5)
    assert _wait_idle(router), "generation went on after the client disconnected"


# ------------------------------------------------------------------------------------------- bad input


def _post_raw(router: ManagedProcess, content: bytes, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(router.url + path, content=content, headers={"content-type": "application/json"}, timeout=30)


def _error(resp: httpx.Response) -> dict[str, object]:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def test_malformed_json_is_400(router: ManagedProcess) -> None:
    resp = _post_raw(router, b'{"model": "local", "messages": [')
    assert resp.status_code == 400
    assert _error(resp)["type"] == "invalid_request_error"
    resp = _post_raw(router, b'["not", "an", "object"]')
    assert resp.status_code == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "local"}, "messages"),
        ({"model": "local", "messages": []}, "messages"),
        ({"model": "local", "messages": "hi"}, "messages"),
        ({"model": "local", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"model": "local", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, "max_tokens"),
        ({"model": "local", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
        ({"model": "local", "messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ],
)
def test_invalid_requests_name_the_param(client: openai.OpenAI, body: dict[str, object], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        # NOT_GIVEN passes the SDK's own required-argument check and leaves the key out of the body
        client.chat.completions.create(**{"model": openai.NOT_GIVEN, "messages": openai.NOT_GIVEN, **body})  # type: ignore[call-overload]
    assert info.value.status_code == 400
    assert info.value.param == param


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found"


def test_body_over_limit_is_413(router: ManagedProcess) -> None:
    big = json.dumps({"model": "local", "messages": [{"role": "user", "content": "x" * 300_000}]}).encode()
    resp = _post_raw(router, big)
    assert resp.status_code == 413
    _error(resp)


def test_prompt_over_context_is_context_length_exceeded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "word " * 1200}], max_tokens=10
        )
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=5000)
    assert info.value.code == "context_length_exceeded"


def test_unknown_path_and_method_are_openai_errors(router: ManagedProcess) -> None:
    resp = httpx.get(router.url + "/v1/nope")
    assert resp.status_code == 404
    _error(resp)
    resp = httpx.get(router.url + "/v1/chat/completions")
    assert resp.status_code == 405
    _error(resp)


def test_server_keeps_serving_after_a_batch_of_bad_requests(router: ManagedProcess, client: openai.OpenAI) -> None:
    bad: list[bytes] = [
        b"{", b"null", b'{"model": 1}', b'{"model": "local", "messages": [{"role": "user"}]}',
        b'{"model": "local", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
        b'{"model": "local", "messages": [{"role": "user", "content": "hi"}], "stop": [1, 2]}',
        b'{"model": "local", "messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": true}}',
        b'{"model": "ghost", "messages": [{"role": "user", "content": "hi"}]}',
        b"\xff\xfe garbage",
    ]
    for content in bad:
        resp = _post_raw(router, content)
        assert 400 <= resp.status_code < 500, (content, resp.status_code, resp.text)
        _error(resp)
    assert _post_raw(router, b'{"prompt": 3, "model": "local"}', "/v1/completions").status_code == 400
    ok = client.chat.completions.create(model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert ok.choices[0].message is not None


def test_client_request_id_is_echoed(router: ManagedProcess) -> None:
    resp = httpx.get(router.url + "/health", headers={"x-request-id": "trace-123"})
    assert resp.headers["x-request-id"] == "trace-123"
    resp = httpx.get(router.url + "/health", headers={"x-request-id": "bad id with spaces"})
    assert resp.headers["x-request-id"] != "bad id with spaces"


def test_metrics_parse_with_prometheus_clients_own_parser(router: ManagedProcess, client: openai.OpenAI) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    client.chat.completions.create(model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    resp = router.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}

    def value(name: str, sample: str, **labels: str) -> float:
        return sum(s.value for s in families[name].samples
                   if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))

    assert families["hybrid_requests"].type == "counter"
    assert value("hybrid_requests", "hybrid_requests_total", tier="local", backend="cpu", status="ok") >= 1
    assert value("hybrid_tokens", "hybrid_tokens_total", tier="local", kind="completion") >= 1
    assert value("hybrid_request_duration_seconds", "hybrid_request_duration_seconds_count", tier="local") >= 1
    assert value("hybrid_time_to_first_token_seconds", "hybrid_time_to_first_token_seconds_count", tier="local") >= 1
    assert value("hybrid_router_overhead_seconds", "hybrid_router_overhead_seconds_count") >= 1
    assert families["hybrid_backend_queue_depth"].type == "gauge"
    assert value("hybrid_backend_queue_depth", "hybrid_backend_queue_depth", backend="cpu") == 0
    assert "hybrid_cache_hit_ratio" in families and "hybrid_cache_lookups" in families
