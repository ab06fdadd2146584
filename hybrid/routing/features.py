"""Cheap request features for routing: computed in microseconds from the parsed request."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hybrid.protocol import InferenceRequest

_REASONING = re.compile(
    r"\b(step[- ]by[- ]step|prove|proof|derive|derivation|theorem|analy[sz]e|analysis|explain why|reason(?:ing)?|"
    r"trade-?offs?|compare|contrast|optimi[sz]e|debug|refactor|architecture|algorithm|complexity|evaluate|"
    r"critique|design a|plan|strategy|calculate|solve)\b",
    re.IGNORECASE,
)
_CODE_HINT = re.compile(r"```|^\s{4,}\S|\bdef |\bclass |\bfunction\b|#include|=>|;\s*$", re.MULTILINE)


@dataclass(frozen=True)
class RequestFeatures:
    chars: int
    utf8_bytes: int  # an upper bound on the tokens of the text: every token covers at least one byte
    est_tokens: int  # chars / 4: a rough count; the size rule uses a real tokenizer where one is at hand
    code_blocks: int
    code_hints: int
    has_tools: bool
    reasoning_cues: int
    turns: int
    structured_output: bool
    max_tokens: int | None


def extract_features(req: InferenceRequest) -> RequestFeatures:
    text = req.text()
    # scan a bounded window: features of a huge prompt are no more informative past the first 20k characters
    window = text if len(text) <= 20_000 else text[:10_000] + text[-10_000:]
    turns = sum(1 for m in req.messages if m.get("role") in ("user", "assistant")) if req.kind == "chat" else 1
    return RequestFeatures(
        chars=len(text),
        utf8_bytes=len(text.encode("utf-8", "surrogatepass")),
        est_tokens=len(text) // 4,
        code_blocks=window.count("```") // 2,
        code_hints=len(_CODE_HINT.findall(window)),
        has_tools=bool(req.tools),
        reasoning_cues=len(_REASONING.findall(window)),
        turns=turns,
        structured_output=bool(req.response_format and req.response_format.get("type") == "json_schema"),
        max_tokens=req.max_tokens,
    )
