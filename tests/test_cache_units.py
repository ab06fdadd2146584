"""Cache parts on their own: keys, policy, the semantic guard, the vector index, replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from openai.types.chat import ChatCompletionChunk

from hybrid.cache.cache import replay_chunks
from hybrid.cache.guard import disagreement
from hybrid.cache.keys import conversation_text, exact_key, params_key
from hybrid.cache.policy import decide, parse_cache_control
from hybrid.cache.store import CacheEntry
from hybrid.cache.vector_index import PartitionedIndex
from hybrid.protocol import assemble, parse_chat_request


def _req(content: str = "What is the capital of France?", **extra: object):  # type: ignore[no-untyped-def]
    return parse_chat_request({"model": "auto", "messages": [{"role": "user", "content": content}], **extra})


@pytest.mark.parametrize("a, b", [
    ("What is 2⁵?", "What is 25?"),  # NFKC would fold the superscript
    ("def f():\n    return 1", "def f():\n  return 1"),  # re-indented code is other code
    ("a  b", "a b"), (" hi", "hi"), ("café", "café"),
])
def test_exact_keys_are_byte_exact(a: str, b: str) -> None:
    assert exact_key(_req(a, temperature=0)) != exact_key(_req(b, temperature=0))
    assert exact_key(_req(a, temperature=0)) == exact_key(_req(a, temperature=0))


@pytest.mark.parametrize("change", [
    {"reasoning_effort": "high"}, {"guided_choice": ["a", "b"]}, {"functions": [{"name": "f"}]},
    {"stop": ["x\n"]}, {"stop": ["x", "y"]}, {"a_parameter_from_next_year": 1}, {"service_tier": "flex"},
    {"logit_bias": {"50256": -100}}, {"top_logprobs": 2}, {"modalities": ["text"]},
])
def test_every_field_that_can_change_the_answer_is_in_the_key(change: dict[str, object]) -> None:
    base = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "stop": ["x"]}
    a, b = parse_chat_request(base), parse_chat_request(base | change)
    assert exact_key(a) != exact_key(b) and params_key(a) != params_key(b)


@pytest.mark.parametrize("change", [{"user": "u1"}, {"metadata": {"feature": "x"}}, {"stream": True},
                                    {"stream": True, "stream_options": {"include_usage": True}}, {"store": True}])
def test_fields_that_cannot_change_the_answer_share_the_key(change: dict[str, object]) -> None:
    base = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    assert exact_key(parse_chat_request(base)) == exact_key(parse_chat_request(base | change))


def test_a_forced_tier_is_another_key() -> None:
    req = _req(temperature=0)
    assert exact_key(req, "cloud") != exact_key(req, "") and params_key(req, "cloud") != params_key(req, "")


def _parts(url: str) -> list[dict[str, object]]:
    return [{"type": "text", "text": "What is in this picture?"}, {"type": "image_url", "image_url": {"url": url}}]


@pytest.mark.parametrize("a, b", [
    ([{"role": "user", "content": _parts("https://x/cat.png")}], [{"role": "user", "content": _parts("https://x/dog.png")}]),
    ([{"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"city": "Paris"}'}}]}],
     [{"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"city": "Rome"}'}}]}]),
    ([{"role": "user", "content": "hi", "name": "alice"}], [{"role": "user", "content": "hi", "name": "bob"}]),
])
def test_non_text_parts_partition_the_semantic_layer(a: list[dict[str, object]], b: list[dict[str, object]]) -> None:
    """Requests whose texts are the same but whose images or tool calls differ never meet in the semantic layer."""
    head = [{"role": "user", "content": "Weather please"}]
    ra = parse_chat_request({"model": "auto", "messages": head + a + head, "temperature": 0})
    rb = parse_chat_request({"model": "auto", "messages": head + b + head, "temperature": 0})
    assert conversation_text(ra) == conversation_text(rb)  # the embedding alone could not tell them apart
    assert params_key(ra) != params_key(rb)


@pytest.mark.parametrize("change", [{"temperature": 0.5}, {"max_tokens": 9}, {"stop": ["x"]}, {"seed": 4},
                                   {"response_format": {"type": "json_object"}}, {"model": "local"}])
def test_params_that_change_the_answer_change_both_keys(change: dict[str, object]) -> None:
    base = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 5}
    a, b = parse_chat_request(base), parse_chat_request(base | change)
    assert exact_key(a) != exact_key(b) and params_key(a) != params_key(b)


def test_max_completion_tokens_and_max_tokens_are_one_parameter() -> None:
    a = _req(max_tokens=7, temperature=0)
    b = _req(max_completion_tokens=7, temperature=0)
    assert exact_key(a) == exact_key(b)


def test_conversation_text_covers_every_turn() -> None:
    req = parse_chat_request({"model": "auto", "messages": [
        {"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}]})
    assert conversation_text(req) == "system: Answer in French.\nuser: Hello"


def test_policy() -> None:
    assert parse_cache_control('no-cache, max-age="30"') == {"no-cache": None, "max-age": "30"}
    det = _req(temperature=0)
    p = decide(det, "key1", None, None, 100, True, [])
    assert (p.read, p.write, p.ttl_s) == (True, True, 100)
    assert decide(_req(), "key1", None, None, 100, True, []).reason == "not-deterministic"
    assert decide(_req(seed=3), "key1", None, None, 100, True, []).read
    assert (lambda q: (q.read, q.write))(decide(det, "k", "no-cache", None, 100, True, [])) == (False, True)
    assert (lambda q: (q.read, q.write))(decide(det, "k", "no-store", None, 100, True, [])) == (False, False)
    assert decide(det, "k", "max-age=5", None, 100, True, []).ttl_s == 5
    assert decide(det, "a", None, None, 1, True, []).scope != decide(det, "b", None, None, 1, True, []).scope
    assert decide(det, "a", None, "n1", 1, True, []).scope != decide(det, "a", None, "n2", 1, True, []).scope
    assert decide(det, "a", None, None, 1, True, ["auto"]).scope == decide(det, "b", None, None, 1, True, ["auto"]).scope


@pytest.mark.parametrize(("a", "b", "why"), [
    ("How do I enable 2FA?", "How do I disable 2FA?", "polarity"),
    ("What is 15% of 200?", "What is 25% of 200?", "numbers"),
    ("Convert 10 km to miles", "Convert 10 miles to km", "units"),
    ("What is the capital of France?", "What is the capital of Germany?", "entities"),
    ("Why does my build fail?", "Why does my build not fail?", "negation"),
    ("How do I make pasta?", "¿Cómo hago pasta?", "language"),
    ("How do I sort a list in Python?", "What is the way to sort a Python list?", None),
    ("What is the capital of France?", "Which city is the capital of France?", None),
])
def test_guard(a: str, b: str, why: str | None) -> None:
    assert disagreement(a, b) == why


def test_partitioned_index_keeps_partitions_apart() -> None:
    ix = PartitionedIndex(4)
    v = np.array([1, 0, 0, 0], dtype=np.float32)
    ix.add("tenant-a", "k1", v)
    assert [k for k, _ in ix.search("tenant-a", v)] == ["k1"]
    assert ix.search("tenant-b", v) == []
    ix.remove("k1")
    assert ix.search("tenant-a", v) == []


def test_replay_is_a_valid_stream_that_reassembles_to_the_answer() -> None:
    answer = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
    chunks = replay_chunks(CacheEntry("k", "p", "default", "t", answer, 0, 0), "chat")
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    again = assemble(chunks)
    assert again["choices"][0]["message"]["content"] == "Paris."
    assert again["choices"][0]["finish_reason"] == "stop" and again["usage"] == answer["usage"]


def test_a_redis_password_never_shows_in_logs_or_stats() -> None:
    from hybrid.cache.redis_store import RedisCacheStore, redact_url

    store = RedisCacheStore("redis://:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in store.url and store.url == "redis://:***@127.0.0.1:1/0"
    assert redact_url("redis://app:pw@cache.internal:6380/2") == "redis://app:***@cache.internal:6380/2"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_the_sqlite_cache_file_is_private(tmp_path: Path) -> None:
    import asyncio
    import os

    from hybrid.cache.sqlite_store import SqliteCacheStore

    path = tmp_path / "state" / "cache.sqlite3"
    path.parent.mkdir()
    path.touch(mode=0o644)  # an old file, made before the cache was private
    os.chmod(path, 0o644)

    async def go() -> None:
        store = SqliteCacheStore(path, 10, semantic=False)
        await store.start()
        await store.close()

    asyncio.run(go())
    for p in path.parent.iterdir():
        assert p.stat().st_mode & 0o077 == 0, (p, oct(p.stat().st_mode))
