"""One chat completion against any OpenAI-compatible endpoint, timed: what the eval harness and the load
generator both send. Streams by default, to see the first token arrive."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from hybrid import http1

MAX_LINE = 4 << 20  # one SSE line
MAX_ANSWER_CHARS = 1 << 20  # an answer is cut here: a workload never needs more, a runaway target is bounded


@dataclass
class Outcome:
    status: int = 0
    text: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    model: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    latency_s: float = 0.0
    ttft_s: float | None = None  # the first content; None when nothing came
    error: str | None = None  # why it failed: the endpoint's OpenAI error message, or the transport's

    @property
    def ok(self) -> bool:
        return self.error is None


def _error_message(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
    except orjson.JSONDecodeError:
        pass
    return raw[:200].decode("utf-8", "replace")


async def chat(pool: http1.Pool, body: dict[str, Any], headers: dict[str, str] | None = None,
               timeout_s: float = 300.0) -> Outcome:
    """POST ``/chat/completions`` (the pool's base URL ends in ``/v1``) and read the whole answer."""
    stream = bool(body.get("stream"))
    if stream:
        body = {**body, "stream_options": {"include_usage": True}}
    out = Outcome()
    started = time.perf_counter()
    try:
        resp = await pool.request("POST", "/chat/completions", orjson.dumps(body),
                                  {"content-type": "application/json", **(headers or {})}, timeout_s=timeout_s)
        async with resp:
            out.status = resp.status
            out.headers = dict(resp.headers)
            if resp.status >= 400:
                out.error = f"{resp.status}: {_error_message(await resp.read(limit=64 << 10, truncate=True))}"
            elif stream:
                await _read_stream(resp, out, started)
            else:
                _read_whole(await resp.read(), out)
                out.ttft_s = time.perf_counter() - started
    except http1.HTTPClientError as exc:
        out.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except (OSError, ValueError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    out.latency_s = time.perf_counter() - started
    return out


def _read_whole(raw: bytes, out: Outcome) -> None:
    try:
        answer = orjson.loads(raw)
        out.text = str(answer["choices"][0]["message"].get("content") or "")[:MAX_ANSWER_CHARS]
        out.model = str(answer.get("model", ""))
        out.usage = dict(answer.get("usage") or {})
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        out.error = "the answer is not a chat completion"


async def _read_stream(resp: http1.Response, out: Outcome, started: float) -> None:
    parts: list[str] = []
    size = 0
    async for line in http1.iter_lines(resp, MAX_LINE):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            out.error = "an event that is not JSON"
            return
        if not isinstance(event, dict):
            continue
        if "error" in event:
            err = event["error"]
            out.error = "mid-stream: " + str(err.get("message") if isinstance(err, dict) else err)[:500]
            return
        out.model = out.model or str(event.get("model", ""))
        if event.get("usage"):
            out.usage = dict(event["usage"])
        for choice in event.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
            if piece:
                if out.ttft_s is None:
                    out.ttft_s = time.perf_counter() - started
                if size < MAX_ANSWER_CHARS:
                    parts.append(piece)
                    size += len(piece)
    out.text = "".join(parts)[:MAX_ANSWER_CHARS]
