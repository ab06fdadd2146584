"""Cheap request features for routing: computed in microseconds from the parsed request."""

from __future__ import annotations

import re
from dataclasses import dataclass

from typing import Any

from hybrid.protocol import InferenceRequest, content_text

# Matched against lower-cased text: Python's re is several times slower with IGNORECASE.
_REASONING = re.compile(
    r"\b(step[- ]by[- ]step|prove|proof|derive|derivation|theorem|analy[sz]e|analysis|explain why|reason(?:ing)?|"
    r"trade-?offs?|compare|contrast|optimi[sz]e|debug|refactor|architecture|algorithm|complexity|evaluate|"
    r"critique|design a|plan|strategy|calculate|solve)\b"
)
# Code hints: fences, indented lines, line-ending semicolons, and keywords. Each pattern starts with a literal
# (or is one), which re and str.count scan for at C speed; one alternation of them all costs 20x more.
_INDENTED = re.compile(r"(?:^|\n)[ \t]{4,}\S")
_SEMICOLON_EOL = re.compile(r";[ \t]*(?:\n|$)")
_CODE_WORDS = ("```", "def ", "class ", "function", "#include", "=>")
_WINDOW = 4_000  # characters scanned at each end of a long prompt


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
    prompt: str = ""  # what is asked now: the last user turn (the whole prompt for a legacy completion)
    embedding: Any = None  # the request's sentence embedding when the semantic cache computed one (numpy, 1-d)


def last_user_text(req: InferenceRequest) -> str:
    if req.kind != "chat":
        return req.prompt
    for m in reversed(req.messages):
        if m.get("role") == "user":
            return content_text(m.get("content"))
    return ""


def extract_features(req: InferenceRequest, embedding: Any = None) -> RequestFeatures:
    text = req.text()
    # scan a bounded window: the start and end of a huge prompt say what it is; its middle adds cost, not signal
    window = text if len(text) <= 2 * _WINDOW else text[:_WINDOW] + "\n" + text[-_WINDOW:]
    turns = sum(1 for m in req.messages if m.get("role") in ("user", "assistant")) if req.kind == "chat" else 1
    return RequestFeatures(
        chars=len(text),
        utf8_bytes=len(text.encode("utf-8", "surrogatepass")),
        est_tokens=len(text) // 4,
        code_blocks=window.count("```") // 2,
        code_hints=len(_INDENTED.findall(window)) + len(_SEMICOLON_EOL.findall(window))
        + sum(window.count(w) for w in _CODE_WORDS),
        has_tools=bool(req.tools),
        reasoning_cues=len(_REASONING.findall(window.lower())),
        turns=turns,
        structured_output=bool(req.response_format and req.response_format.get("type") == "json_schema"),
        max_tokens=req.max_tokens,
        prompt=last_user_text(req),
        embedding=embedding,
    )
