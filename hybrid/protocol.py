"""OpenAI wire types: parse and validate requests; build chunks, responses and SSE frames.

One internal shape for answers: every backend yields OpenAI ``chat.completion.chunk`` dicts (a final chunk
with ``choices: []`` carries ``usage``). :func:`assemble` turns a chunk list into the non-streaming answer,
and :func:`to_text_completion_chunk` maps the same chunks onto the legacy ``/v1/completions`` shape, so no
feature needs a streaming and a non-streaming twin.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from hybrid.errors import InvalidRequestError

Chunk = dict[str, Any]
RequestKind = Literal["chat", "completion"]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


@dataclass
class InferenceRequest:
    """A validated request, for chat or legacy completions.

    ``body`` keeps the client's JSON so that OpenAI-compatible upstreams receive fields the router does not
    interpret (tools, logit_bias, user, ...).
    """

    kind: RequestKind
    model: str
    body: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str = ""
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    logprobs: bool = False
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    #: what is worked out from the request once and read by several parts (the tokenized prompt: counted by the
    #: size rule, then generated from), keyed by what worked it out
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def text(self) -> str:
        """All prompt text, for cheap features (length, cues) and rough counting; joined once per request."""
        if self.kind == "completion":
            return self.prompt
        text = self.memo.get("text")
        if text is None:
            text = self.memo["text"] = "\n".join(content_text(m.get("content")) for m in self.messages)
        return text


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a content array."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


# --------------------------------------------------------------------------------------------- parsing


MAX_JSON_DEPTH = 64  # nesting a request may have: orjson writes at most 254 levels, and nothing real needs 10


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:  # only then can it be that deep: walk it
        for name, value in body.items():
            if _too_deep(value, MAX_JSON_DEPTH - 1):
                raise InvalidRequestError(
                    f"'{name}' is nested more than {MAX_JSON_DEPTH} levels deep.", param=str(name)
                )
    return body


def _too_deep(value: Any, budget: int) -> bool:
    """Whether ``value`` nests containers deeper than ``budget`` levels (iteratively: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, budget)]
    while stack:
        item, left = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if left <= 0:
            return True
        stack.extend((c, left - 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_chat_request(body: dict[str, Any]) -> InferenceRequest:
    req = InferenceRequest(kind="chat", model=_model(body), body=body)
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequestError("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list):
        raise InvalidRequestError("'messages' must be an array of message objects.", param="messages")
    if not messages:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages")
    for i, msg in enumerate(messages):
        _check_message(msg, i)
    req.messages = messages
    _common(body, req)
    mct = _opt_int(body, "max_completion_tokens", minimum=1)
    if mct is not None:
        req.max_tokens = mct
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise InvalidRequestError("'tools' must be an array of tool objects.", param="tools")
        req.tools = tools or None
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") not in RESPONSE_FORMATS:
            raise InvalidRequestError(
                "'response_format.type' must be one of 'text', 'json_object', 'json_schema'.",
                param="response_format",
            )
        if rf["type"] == "json_schema" and not isinstance(rf.get("json_schema"), dict):
            raise InvalidRequestError(
                "'response_format.json_schema' must be an object with a 'schema'.", param="response_format"
            )
        req.response_format = rf
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise InvalidRequestError("'logprobs' must be a boolean.", param="logprobs")
    req.logprobs = bool(logprobs)
    return req


def parse_completion_request(body: dict[str, Any]) -> InferenceRequest:
    req = InferenceRequest(kind="completion", model=_model(body), body=body)
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequestError("Missing required parameter: 'prompt'.", param="prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequestError("'prompt' must be a string (or an array holding one string).", param="prompt")
    req.prompt = prompt
    _common(body, req)
    logprobs = body.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)):
        raise InvalidRequestError("'logprobs' must be an integer.", param="logprobs")
    req.logprobs = bool(logprobs)
    return req


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequestError("Missing required parameter: 'model'.", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' must be a non-empty string.", param="model")
    return model


def _check_message(msg: Any, i: int) -> None:
    param = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise InvalidRequestError(f"'{param}' must be an object.", param=param)
    role = msg.get("role")
    if role is None:
        raise InvalidRequestError(f"Missing required parameter: '{param}.role'.", param=f"{param}.role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequestError(
            f"Invalid value for '{param}.role': {role!r}. Supported values are: "
            "'system', 'developer', 'user', 'assistant', 'tool' and 'function'.",
            param=f"{param}.role",
        )
    content = msg.get("content")
    if content is None:
        if role == "assistant" and (msg.get("tool_calls") or msg.get("function_call")):
            return
        if role in ("assistant", "tool", "function") and "content" in msg:
            return
        raise InvalidRequestError(f"Missing required parameter: '{param}.content'.", param=f"{param}.content")
    if isinstance(content, str):
        return
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequestError(
                    f"'{param}.content[{j}]' must be an object with a 'type'.", param=f"{param}.content[{j}]"
                )
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise InvalidRequestError(
                    f"'{param}.content[{j}].text' must be a string.", param=f"{param}.content[{j}].text"
                )
        return
    raise InvalidRequestError(
        f"'{param}.content' must be a string or an array of content parts.", param=f"{param}.content"
    )


def _common(body: dict[str, Any], req: InferenceRequest) -> None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError("'stream' must be a boolean.", param="stream")
    req.stream = bool(stream)
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise InvalidRequestError("'stream_options' must be an object.", param="stream_options")
        if not req.stream:
            raise InvalidRequestError(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
            )
        iu = so.get("include_usage")
        if iu is not None and not isinstance(iu, bool):
            raise InvalidRequestError(
                "'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage"
            )
        req.include_usage = bool(iu)
    req.max_tokens = _opt_int(body, "max_tokens", minimum=1)
    req.temperature = _opt_number(body, "temperature", 0.0, 2.0)
    req.top_p = _opt_number(body, "top_p", 0.0, 1.0)
    req.presence_penalty = _opt_number(body, "presence_penalty", -2.0, 2.0)
    req.frequency_penalty = _opt_number(body, "frequency_penalty", -2.0, 2.0)
    req.seed = _opt_int(body, "seed")
    n = _opt_int(body, "n", minimum=1, maximum=128)
    req.n = 1 if n is None else n
    stop = body.get("stop")
    if stop is None:
        req.stop = []
    elif isinstance(stop, str):
        req.stop = [stop] if stop else []
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if len(stop) > 4:
            raise InvalidRequestError("'stop' may hold at most 4 sequences.", param="stop")
        req.stop = [s for s in stop if s]
    else:
        raise InvalidRequestError("'stop' must be a string or an array of strings.", param="stop")


def _opt_int(body: dict[str, Any], name: str, minimum: int | None = None, maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"'{name}' must be an integer.", param=name)
    if minimum is not None and value < minimum:
        raise InvalidRequestError(f"'{name}' must be at least {minimum} (got {value}).", param=name)
    if maximum is not None and value > maximum:
        raise InvalidRequestError(f"'{name}' must be at most {maximum} (got {value}).", param=name)
    return value


def _opt_number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"'{name}' must be a number.", param=name)
    if not low <= value <= high:
        raise InvalidRequestError(f"'{name}' must be between {low:g} and {high:g} (got {value}).", param=name)
    return float(value)


# --------------------------------------------------------------------------------------------- chunks


def make_chunk(
    request_id: str,
    model: str,
    *,
    content: str | None = None,
    role: str | None = None,
    finish_reason: str | None = None,
    created: int | None = None,
) -> Chunk:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def make_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def make_usage_chunk(request_id: str, model: str, usage: dict[str, Any], created: int | None = None) -> Chunk:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage,
    }


def chunk_problem(chunk: Any) -> str | None:
    """What is wrong with an upstream's chunk (or whole answer), in words; ``None`` when the router can read it.

    Only what the router reads is checked: ``choices`` a list of objects with an integer ``index``, a ``delta``
    or ``message`` object whose ``content`` is a string or null, a string or null ``finish_reason``, ``text`` for
    legacy completions, and a ``usage`` object of integers. On every chunk of every answer, so exact types are
    compared (JSON gives nothing else) rather than isinstance."""
    if type(chunk) is not dict:
        return "not an object"
    choices = chunk.get("choices")
    if choices is not None:
        if type(choices) is not list:
            return "'choices' is not an array"
        for ch in choices:
            if type(ch) is not dict:
                return "a choice is not an object"
            if type(ch.get("index", 0)) is not int:
                return "a choice's 'index' is not an integer"
            finish = ch.get("finish_reason")
            if finish is not None and type(finish) is not str:
                return "a choice's 'finish_reason' is not a string"
            text = ch.get("text")
            if text is not None and type(text) is not str:
                return "a choice's 'text' is not a string"
            inner = ch.get("delta")
            if inner is None:
                inner = ch.get("message")
                if inner is None:
                    continue
            if type(inner) is not dict:
                return "a choice's 'delta' or 'message' is not an object"
            content = inner.get("content")
            if content is not None and type(content) is not str:
                return "a choice's content is not a string"
            calls = inner.get("tool_calls")
            if calls is not None and (
                type(calls) is not list or any(type(c) is not dict or type(c.get("function", {})) is not dict for c in calls)
            ):
                return "a choice's 'tool_calls' is not an array of objects"
    usage = chunk.get("usage")
    if usage is not None and (
        type(usage) is not dict
        or any(type(usage.get(k, 0)) is not int for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    ):
        return "'usage' is not an object of token counts"
    return None


def is_usage_chunk(chunk: Chunk) -> bool:
    return not chunk.get("choices") and chunk.get("usage") is not None


def assemble(chunks: list[Chunk], kind: RequestKind = "chat") -> dict[str, Any]:
    """The non-streaming answer, built from the chunk stream."""
    first = chunks[0] if chunks else {}
    choices: dict[int, dict[str, Any]] = {}
    usage: dict[str, Any] | None = None
    for chunk in chunks:
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        for ch in chunk.get("choices") or ():
            idx = ch.get("index", 0)
            acc = choices.setdefault(idx, {"content": [], "tool_calls": {}, "finish_reason": None, "role": "assistant"})
            delta = ch.get("delta") or {}
            if delta.get("content"):
                acc["content"].append(delta["content"])
            for tc in delta.get("tool_calls") or ():
                _merge_tool_call(acc["tool_calls"], tc)
            if ch.get("finish_reason"):
                acc["finish_reason"] = ch["finish_reason"]
    out_choices = []
    for idx in sorted(choices):
        acc = choices[idx]
        finish = acc["finish_reason"] or "stop"
        text = "".join(acc["content"])
        if kind == "completion":
            out_choices.append({"index": idx, "text": text, "logprobs": None, "finish_reason": finish})
            continue
        message: dict[str, Any] = {"role": "assistant", "content": text if (text or not acc["tool_calls"]) else None}
        if acc["tool_calls"]:
            message["tool_calls"] = [acc["tool_calls"][k] for k in sorted(acc["tool_calls"])]
        out_choices.append({"index": idx, "message": message, "logprobs": None, "finish_reason": finish})
    return {
        "id": first.get("id", ""),
        "object": "text_completion" if kind == "completion" else "chat.completion",
        "created": first.get("created", int(time.time())),
        "model": first.get("model", ""),
        "choices": out_choices,
        "usage": usage or make_usage(0, 0),
    }


def _merge_tool_call(acc: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    idx = delta.get("index", 0)
    cur = acc.get(idx)
    fn = delta.get("function") or {}
    if cur is None:
        acc[idx] = {
            "id": delta.get("id", ""),
            "type": delta.get("type", "function"),
            "function": {"name": fn.get("name", ""), "arguments": fn.get("arguments", "")},
        }
        return
    if delta.get("id"):
        cur["id"] = delta["id"]
    if fn.get("name"):
        cur["function"]["name"] += fn["name"]
    if fn.get("arguments"):
        cur["function"]["arguments"] += fn["arguments"]


def to_text_completion_chunk(chunk: Chunk) -> Chunk:
    """Map an internal chat chunk onto the legacy ``text_completion`` stream shape."""
    out: Chunk = {
        "id": chunk["id"],
        "object": "text_completion",
        "created": chunk["created"],
        "model": chunk["model"],
        "choices": [
            {
                "index": ch.get("index", 0),
                "text": (ch.get("delta") or {}).get("content") or "",
                "logprobs": None,
                "finish_reason": ch.get("finish_reason"),
            }
            for ch in chunk.get("choices") or ()
        ],
    }
    if chunk.get("usage") is not None:
        out["usage"] = chunk["usage"]
    return out


def from_text_completion_chunk(chunk: Chunk) -> Chunk:
    """Map an upstream ``text_completion`` chunk or answer onto the internal chat chunk shape."""
    out: Chunk = {
        "id": chunk.get("id", ""),
        "object": "chat.completion.chunk",
        "created": chunk.get("created", int(time.time())),
        "model": chunk.get("model", ""),
        "choices": [
            {
                "index": ch.get("index", 0),
                "delta": {"content": ch.get("text") or ""},
                "finish_reason": ch.get("finish_reason"),
                "logprobs": None,
            }
            for ch in chunk.get("choices") or ()
        ],
    }
    if chunk.get("usage") is not None:
        out["usage"] = chunk["usage"]
    return out


def completion_to_chunk(answer: dict[str, Any]) -> Chunk:
    """Map a non-streaming ``chat.completion`` answer onto one chunk (usage included)."""
    choices = []
    for ch in answer.get("choices") or ():
        msg = ch.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant"}
        if msg.get("content") is not None:
            delta["content"] = msg["content"]
        if msg.get("tool_calls"):
            delta["tool_calls"] = [dict(tc, index=i) for i, tc in enumerate(msg["tool_calls"])]
        choices.append(
            {"index": ch.get("index", 0), "delta": delta, "finish_reason": ch.get("finish_reason"), "logprobs": None}
        )
    out: Chunk = {
        "id": answer.get("id", ""),
        "object": "chat.completion.chunk",
        "created": answer.get("created", int(time.time())),
        "model": answer.get("model", ""),
        "choices": choices,
    }
    if answer.get("usage") is not None:
        out["usage"] = answer["usage"]
    return out


# --------------------------------------------------------------------------------------------- SSE

SSE_DONE = b"data: [DONE]\n\n"


def sse_event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"
