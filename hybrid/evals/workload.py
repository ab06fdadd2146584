"""Workloads: JSONL files of graded items.

One item per line::

    {"id": "arith-7", "messages": [{"role": "user", "content": "What is 17 * 23?"}],   # or "prompt": "..."
     "reference": "391", "grader": "numeric",               # or {"type": "numeric", "tolerance": 0.5}
     "tags": ["arithmetic"], "weight": 1, "max_tokens": 64}

Graders: ``exact``, ``contains``, ``regex`` (``pattern``), ``json_schema`` (``schema``; a reference object, when
given, must be contained in the answer), ``numeric`` (``tolerance``, absolute, or ``relative``), ``judge`` (a
configured model scores the answer against the reference with a fixed rubric). Every item is checked when the
file is read, so a typo fails at once with its line number, not halfway through a paid run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

GRADERS = ("exact", "contains", "regex", "json_schema", "numeric", "judge")
MAX_ITEMS = 100_000
MAX_LINE_BYTES = 1 << 20


class WorkloadError(ValueError):
    pass


@dataclass(frozen=True)
class Grader:
    kind: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Item:
    id: str
    messages: list[dict[str, Any]]
    grader: Grader
    reference: Any = None
    tags: tuple[str, ...] = ()
    weight: float = 1.0
    max_tokens: int | None = None

    @property
    def prompt_text(self) -> str:
        """The last user turn: what a routing scorer reads."""
        for m in reversed(self.messages):
            if m.get("role") == "user" and isinstance(m.get("content"), str):
                return str(m["content"])
        return ""


@dataclass
class Workload:
    path: str
    items: list[Item]
    sha256: str

    @property
    def tags(self) -> list[str]:
        return sorted({t for item in self.items for t in item.tags})


def _grader(raw: Any, where: str, reference: Any) -> Grader:
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict) or raw.get("type") not in GRADERS:
        raise WorkloadError(f"{where}: grader must be one of {', '.join(GRADERS)} (or an object with that 'type')")
    kind = raw["type"]
    options = {k: v for k, v in raw.items() if k != "type"}
    if kind == "regex":
        pattern = options.get("pattern", reference)
        if not isinstance(pattern, str):
            raise WorkloadError(f"{where}: a regex grader needs 'pattern' (or a string reference)")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise WorkloadError(f"{where}: bad regex {pattern!r}: {exc}") from None
    elif kind == "json_schema":
        schema = options.get("schema")
        if not isinstance(schema, dict):
            raise WorkloadError(f"{where}: a json_schema grader needs 'schema' (an object)")
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise WorkloadError(f"{where}: bad schema: {exc.message}") from None
    elif kind == "numeric":
        try:
            float(str(reference).replace(",", ""))
        except ValueError:
            raise WorkloadError(f"{where}: a numeric grader needs a numeric reference, not {reference!r}") from None
        tol = options.get("tolerance", 0)
        if not isinstance(tol, (int, float)) or tol < 0:
            raise WorkloadError(f"{where}: tolerance must be a number >= 0")
    elif kind in ("exact", "contains"):
        refs = reference if isinstance(reference, list) else [reference]
        if not refs or not all(isinstance(r, str) and r for r in refs):
            raise WorkloadError(f"{where}: an {kind} grader needs a reference string (or a list of them)")
    elif kind == "judge" and reference is not None and not isinstance(reference, str):
        raise WorkloadError(f"{where}: a judge's reference is text")
    return Grader(kind, options)


def parse_item(raw: Any, where: str) -> Item:
    if not isinstance(raw, dict):
        raise WorkloadError(f"{where}: an item is a JSON object")
    item_id = raw.get("id")
    if not isinstance(item_id, (str, int)) or not str(item_id):
        raise WorkloadError(f"{where}: 'id' is required (a string)")
    if "messages" in raw:
        messages = raw["messages"]
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
        ):
            raise WorkloadError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    elif isinstance(raw.get("prompt"), str) and raw["prompt"]:
        messages = [{"role": "user", "content": raw["prompt"]}]
    else:
        raise WorkloadError(f"{where}: 'messages' or 'prompt' is required")
    reference = raw.get("reference")
    grader = _grader(raw.get("grader", "exact"), where, reference)
    tags = raw.get("tags", [])
    if isinstance(tags, dict):
        tags = [f"{k}={v}" for k, v in tags.items()]
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise WorkloadError(f"{where}: 'tags' must be a list of strings (or an object)")
    weight = raw.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
        raise WorkloadError(f"{where}: 'weight' must be a number > 0")
    max_tokens = raw.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise WorkloadError(f"{where}: 'max_tokens' must be an integer >= 1")
    return Item(str(item_id), messages, grader, reference, tuple(tags), float(weight), max_tokens)


def load_workload(path: str | Path) -> Workload:
    raw = Path(path).read_bytes()
    items: list[Item] = []
    seen: set[str] = set()
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(b"#"):
            continue
        where = f"{path}:{n}"
        if len(line) > MAX_LINE_BYTES:
            raise WorkloadError(f"{where}: a line over {MAX_LINE_BYTES} bytes")
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise WorkloadError(f"{where}: not JSON ({exc})") from None
        item = parse_item(obj, where)
        if item.id in seen:
            raise WorkloadError(f"{where}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
        if len(items) > MAX_ITEMS:
            raise WorkloadError(f"{path}: more than {MAX_ITEMS} items")
    if not items:
        raise WorkloadError(f"{path}: no items")
    return Workload(str(path), items, hashlib.sha256(raw).hexdigest())
