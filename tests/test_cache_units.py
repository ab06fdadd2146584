"""Cache parts on their own: keys, policy, the semantic guard, the vector index, replay."""

from __future__ import annotations

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


def test_keys_ignore_unicode_and_whitespace_noise() -> None:
    a = _req("What is   the capital\u00a0of France?", temperature=0)
    b = _req(" What is the capital of France? ", temperature=0)
    assert exact_key(a) == exact_key(b)
    assert exact_key(a) != exact_key(_req("What is the capital of Spain?", temperature=0))


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
