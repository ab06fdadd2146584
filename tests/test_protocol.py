"""Wire types: request validation, and one chunk stream assembled into every answer shape."""

from __future__ import annotations

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from hybrid.errors import InvalidRequestError
from hybrid.protocol import (
    assemble,
    completion_to_chunk,
    from_text_completion_chunk,
    make_chunk,
    make_usage,
    make_usage_chunk,
    parse_chat_request,
    parse_completion_request,
    to_text_completion_chunk,
)


def _chat(**extra: object) -> dict[str, object]:
    return {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_parse_chat_defaults_and_fields() -> None:
    req = parse_chat_request(_chat(stream=True, stream_options={"include_usage": True}, max_tokens=5, stop="x", seed=3))
    assert (req.stream, req.include_usage, req.max_tokens, req.stop, req.seed, req.n) == (True, True, 5, ["x"], 3, 1)
    assert parse_chat_request(_chat(max_tokens=9, max_completion_tokens=4)).max_tokens == 4


def test_assistant_with_tool_calls_may_have_null_content() -> None:
    msgs = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "1", "content": "sunny"},
    ]
    assert len(parse_chat_request({"model": "m", "messages": msgs}).messages) == 3


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_p": 1.5}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"seed": 1.5}, "seed"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"tools": "all"}, "tools"),
    ],
)
def test_parse_chat_rejects(extra: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request(_chat(**extra))
    assert info.value.param == param


def test_parse_completion_accepts_single_prompt_list() -> None:
    assert parse_completion_request({"model": "m", "prompt": ["abc"]}).prompt == "abc"
    with pytest.raises(InvalidRequestError):
        parse_completion_request({"model": "m", "prompt": ["a", "b"]})


def _stream() -> list[dict[str, object]]:
    return [
        make_chunk("c1", "m", role="assistant", content="Hel", created=1),
        make_chunk("c1", "m", content="lo", created=1),
        make_chunk("c1", "m", content="", finish_reason="stop", created=1),
        make_usage_chunk("c1", "m", make_usage(3, 2), created=1),
    ]


def test_assemble_chat_validates_against_the_sdk_types() -> None:
    answer = assemble(_stream())
    parsed = ChatCompletion.model_validate(answer, strict=False)
    assert parsed.choices[0].message.content == "Hello"
    assert parsed.choices[0].finish_reason == "stop"
    assert parsed.usage is not None and parsed.usage.total_tokens == 5
    for chunk in _stream():
        ChatCompletionChunk.model_validate(chunk)


def test_assemble_completion_shape() -> None:
    answer = assemble(_stream(), kind="completion")
    parsed = Completion.model_validate(answer)
    assert parsed.choices[0].text == "Hello" and parsed.object == "text_completion"


def test_tool_call_deltas_are_merged() -> None:
    chunks = [
        {"id": "c", "created": 1, "model": "m", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {
            "role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                 "function": {"name": "get_weather", "arguments": ""}}]}}]},
        {"id": "c", "created": 1, "model": "m", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {
            "tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}}]},
        {"id": "c", "created": 1, "model": "m", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {
            "tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}, "finish_reason": "tool_calls"}]},
    ]
    msg = ChatCompletion.model_validate(assemble(chunks)).choices[0].message
    assert msg.content is None
    assert msg.tool_calls is not None
    call = msg.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "get_weather", '{"city": "Paris"}')


def test_legacy_and_non_streaming_shapes_round_trip() -> None:
    chunk = make_chunk("c", "m", content="abc", finish_reason="length", created=1)
    legacy = to_text_completion_chunk(chunk)
    assert legacy["choices"][0]["text"] == "abc"
    back = from_text_completion_chunk(legacy)
    assert back["choices"][0]["delta"]["content"] == "abc" and back["choices"][0]["finish_reason"] == "length"
    whole = assemble(_stream())
    again = assemble([completion_to_chunk(whole)])
    assert again == whole
