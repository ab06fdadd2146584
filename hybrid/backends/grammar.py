"""Grammars for ``response_format`` on llama.cpp, within what its grammar engine survives.

llama-cpp-python turns a JSON schema into GBNF by unrolling every bounded repetition into nested groups:
``{"type": "string", "maxLength": 1500}`` becomes a rule 1,500 parentheses deep, and libllama's recursive GBNF
parser overflows the thread's stack on it and takes the whole process down (measured: 1,000 levels parse,
1,500 crash; ``pattern: "a{1,2000}"`` the same). So a schema is checked twice before it reaches native code:

- the schema itself: at most :data:`MAX_SCHEMA_BYTES`, and no count in it (``maxLength``, ``minItems``, ...,
  or a ``{n,m}`` in a ``pattern``) over :data:`MAX_REPEAT`, each refused with the field it names;
- the GBNF made from it: at most :data:`MAX_GRAMMAR_BYTES`, and no rule nested deeper than :data:`MAX_DEPTH`,
  whatever construct produced the nesting.

A request over a bound gets a 400 naming ``response_format``; a cloud tier (which has no such engine) can still
take it when the router chose the tier. Grammars are also built on worker threads with a large stack
(:data:`WORKER_STACK_BYTES`), which keeps a wide margin below the depth that crashes.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from hybrid.errors import InvalidRequestError

MAX_SCHEMA_BYTES = 32 * 1024
MAX_REPEAT = 500  # largest count a schema may give a repetition
MAX_GRAMMAR_BYTES = 256 * 1024
MAX_DEPTH = 600  # deepest nesting of groups in one GBNF rule (1,500 overflowed an 8 MiB stack)
WORKER_STACK_BYTES = 64 * 1024 * 1024

_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains",
           "maxContains")
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def _refuse(why: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"The JSON schema in 'response_format' is too large for the local grammar engine: {why}. "
        "Simplify it, or send the request to a cloud tier.",
        param="response_format",
    )


def check_schema(schema: Any) -> None:
    """Refuse a schema whose counts or size the grammar engine cannot take (see the module)."""
    if len(orjson.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise _refuse(f"it is over {MAX_SCHEMA_BYTES} bytes")
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for name in _COUNTS:
            value = node.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_REPEAT:
                raise _refuse(f"'{name}' is {value:g}, over {MAX_REPEAT}")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            for low, high in _QUANTIFIER.findall(pattern):
                if int(low) > MAX_REPEAT or (high and int(high) > MAX_REPEAT):
                    raise _refuse(f"a repetition in 'pattern' counts over {MAX_REPEAT}")
        stack.extend(v for v in node.values() if isinstance(v, (dict, list)))


def grammar_depth(gbnf: str) -> int:
    """The deepest nesting of groups in any rule of a GBNF text (brackets inside literals and classes skipped)."""
    depth = deepest = 0
    i, n = 0, len(gbnf)
    while i < n:
        c = gbnf[i]
        if c == '"' or c == "[":  # a literal or a character class: skip to its unescaped end
            end = '"' if c == '"' else "]"
            i += 1
            while i < n and gbnf[i] != end:
                i += 2 if gbnf[i] == "\\" else 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        elif c == "#":  # a comment runs to the end of the line
            while i < n and gbnf[i] != "\n":
                i += 1
        i += 1
    return deepest


def check_grammar(gbnf: str) -> None:
    if len(gbnf) > MAX_GRAMMAR_BYTES:
        raise _refuse(f"its grammar is over {MAX_GRAMMAR_BYTES} bytes")
    depth = grammar_depth(gbnf)
    if depth > MAX_DEPTH:
        raise _refuse(f"its grammar nests {depth} levels deep, over {MAX_DEPTH}")


def grammar_for(response_format: dict[str, Any] | None) -> Any:
    """The ``LlamaGrammar`` for a request's ``response_format``, or ``None`` for plain text."""
    if not response_format or response_format.get("type") == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if response_format["type"] == "json_object":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    schema = response_format["json_schema"].get("schema") or {}
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequestError("'response_format.json_schema.schema' must be an object.", param="response_format")
    check_schema(schema)
    try:
        gbnf = LlamaGrammar.from_json_schema(orjson.dumps(schema).decode(), verbose=False)
    except Exception as exc:  # the converter's own complaints: unsupported keywords, bad refs
        raise InvalidRequestError(f"Unsupported JSON schema: {exc}", param="response_format") from None
    check_grammar(gbnf._grammar)
    return gbnf
