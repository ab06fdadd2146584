"""Cache keys from a normalised request.

The exact key covers everything that changes the answer: the requested model or tier, the messages (roles,
content, tool calls), tools and ``tool_choice``, ``response_format`` and the sampling parameters, as canonical
JSON with Unicode (NFKC) and whitespace normalised. The *params key* is the same without the conversation text:
the semantic layer only compares entries that agree on it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

import orjson

from hybrid.protocol import InferenceRequest, content_text

_WS = re.compile(r"\s+")
SAMPLING = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "n", "logprobs",
            "top_logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "tool_choice", "tools",
            "response_format", "parallel_tool_calls", "suffix", "echo")


def normalise_text(text: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def _normalise(value: Any) -> Any:
    if isinstance(value, str):
        return normalise_text(value)
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def _digest(obj: Any) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


def params_of(req: InferenceRequest) -> dict[str, Any]:
    body = req.body
    params: dict[str, Any] = {"kind": req.kind, "model": req.model}
    for name in SAMPLING:
        if body.get(name) is not None:
            params[name] = _normalise(body[name])
    if "max_completion_tokens" in params:  # the same limit under either name
        params["max_tokens"] = params.pop("max_completion_tokens")
    return params


def conversation_of(req: InferenceRequest) -> list[Any]:
    if req.kind == "completion":
        return [normalise_text(req.prompt)]
    out = []
    for m in req.messages:
        entry: dict[str, Any] = {"role": m.get("role")}
        content = m.get("content")
        entry["content"] = _normalise(content) if not isinstance(content, str) else normalise_text(content)
        for extra in ("name", "tool_calls", "tool_call_id", "function_call"):
            if m.get(extra) is not None:
                entry[extra] = _normalise(m[extra])
        out.append(entry)
    return out


def keys_of(req: InferenceRequest) -> tuple[str, str]:
    """(exact key, params key), the parameters normalised once."""
    params = params_of(req)
    return _digest({"p": params, "c": conversation_of(req)}), _digest(params)[:32]


def exact_key(req: InferenceRequest) -> str:
    return keys_of(req)[0]


def params_key(req: InferenceRequest) -> str:
    return keys_of(req)[1]


def conversation_text(req: InferenceRequest) -> str:
    """The whole context that determines the answer, as one text for the embedding (not only the last turn)."""
    if req.kind == "completion":
        return normalise_text(req.prompt)
    return "\n".join(f"{m.get('role')}: {normalise_text(content_text(m.get('content')))}" for m in req.messages)
