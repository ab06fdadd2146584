"""Cache keys from a request.

The exact key covers everything that can change the answer, byte for byte: every field of the body except the
few that cannot change it (:data:`NOT_IN_KEY`), the route the client forced (``x-hybrid-tier``), and the
conversation exactly as sent. Nothing is normalised: "2⁵" is not "25", and re-indented Python is other code.
New OpenAI parameters are in the key by default, so a field the router has never heard of cannot make two
different requests share an answer.

The *params key* is the same without the conversation text, plus the conversation's shape: roles, names, tool
calls and every non-text content part (images, audio, files). The semantic layer only compares entries that agree
on it, so two requests that differ only in an image or in a tool call's arguments never meet there.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

import orjson

from hybrid.protocol import InferenceRequest, content_text

_WS = re.compile(r"\s+")

#: body fields that cannot change the answer (delivery, accounting and labels); all others are in the key
NOT_IN_KEY = frozenset({
    "messages", "prompt", "model", "stream", "stream_options", "user", "metadata", "store", "safety_identifier",
    "prompt_cache_key", "max_tokens", "max_completion_tokens",
})
_MESSAGE_EXTRAS = ("name", "tool_calls", "tool_call_id", "function_call")


def normalise_text(text: str) -> str:
    """Unicode and whitespace folded: for the semantic layer's text only, never for a key."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def _digest(obj: Any) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


def params_of(req: InferenceRequest, route: str = "") -> dict[str, Any]:
    """Everything but the conversation that can change the answer (``route``: the tier a client forced)."""
    params: dict[str, Any] = {k: v for k, v in req.body.items() if k not in NOT_IN_KEY}
    params["@kind"] = req.kind
    params["@model"] = req.model
    params["@route"] = route
    params["@max_tokens"] = req.max_tokens  # the same limit under either name
    return params


def shape_of(req: InferenceRequest) -> list[Any]:
    """The conversation less its text: roles, names, tool calls and the non-text content parts, in order."""
    if req.kind == "completion":
        return []
    out: list[Any] = []
    for m in req.messages:
        content = m.get("content")
        parts = None
        if isinstance(content, list):
            parts = ["text" if isinstance(p, dict) and p.get("type") == "text" else p for p in content]
        out.append([m.get("role"), parts, {k: m[k] for k in _MESSAGE_EXTRAS if m.get(k) is not None}])
    return out


def keys_of(req: InferenceRequest, route: str = "") -> tuple[str, str]:
    """(exact key, params key)."""
    params = params_of(req, route)
    conversation: Any = req.prompt if req.kind == "completion" else req.messages
    return _digest({"p": params, "c": conversation}), _digest({"p": params, "s": shape_of(req)})[:32]


def exact_key(req: InferenceRequest, route: str = "") -> str:
    return keys_of(req, route)[0]


def params_key(req: InferenceRequest, route: str = "") -> str:
    return keys_of(req, route)[1]


def conversation_text(req: InferenceRequest) -> str:
    """The whole context that determines the answer, as one text for the embedding (not only the last turn)."""
    if req.kind == "completion":
        return normalise_text(req.prompt)
    return "\n".join(f"{m.get('role')}: {normalise_text(content_text(m.get('content')))}" for m in req.messages)
