"""A small OpenAI-compatible upstream of the tests' own that misbehaves on purpose.

What a healthy server never does: ``/{mode}/v1/chat/completions`` (and ``/completions``) answers per ``mode``:

- ``ok``: an instant, valid answer (SSE when asked to stream, usage only when ``include_usage``)
- ``500``: a llama.cpp-style 500; ``429``: rate limited with ``Retry-After: 1``
- ``slow``: waits 3 s before sending anything, then ``ok``
- ``disconnect``: streams two chunks, then drops the connection
- ``badjson``: a 200 whose body is not JSON; ``badevent``: an SSE event that is not JSON
- ``vllm400``: a 400 in vLLM's error shape
- ``json``: a whole JSON answer (with usage) even when asked to stream, as some OpenAI-compatible servers do
- ``ctl``: whatever ``POST /control {"mode": ...}`` last set

Hostile modes (what a compromised or broken upstream could send):

- ``auth401``: a 401 whose message echoes part of the router's key
- ``bigheaders``: a valid answer behind 4 MiB of header lines
- ``endlessline``: an SSE stream whose first line never ends
- ``gzipbomb``: a gzip body that inflates to 1 GiB
- ``bigerror``: a 500 with a 1 GiB body, its bytes sent counted
- ``badshape``: an SSE event whose ``choices`` is a string
- ``endless``: an SSE stream of valid events that never ends, as fast as the client reads it; ``GET /stats``
  counts the ones still running under ``endless-running``

``GET /stats`` counts requests per mode; ``POST /control {"reset": true}`` clears the counts.

    python -m tests.fault_upstream --port P [--certfile chain.pem --keyfile key.pem]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

STATE: dict[str, object] = {"mode": "500"}
COUNTS: Counter[str] = Counter()
_BOMB: list[bytes] = []


def _gzip_bomb() -> bytes:
    """1 GiB of zeros, gzipped (about 1 MB); made once."""
    if not _BOMB:
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = b"\0" * (1 << 20)
        _BOMB.append(b"".join([c.compress(zeros) for _ in range(1024)] + [c.flush()]))
    return _BOMB[0]


async def _endless(legacy: bool) -> AsyncIterator[bytes]:
    COUNTS["endless-running"] += 1
    try:
        i = 0
        while True:
            yield b"data: " + json.dumps(_chunk(i, "x", None, legacy)).encode() + b"\n\n"
            i += 1
            if i % 64 == 0:
                await asyncio.sleep(0)
    finally:
        COUNTS["endless-running"] -= 1


async def _big_error() -> AsyncIterator[bytes]:
    """1 GiB of error text, counted as it is sent (``bigerror-bytes`` in /stats)."""
    piece = b"x" * (1 << 20)
    for _ in range(1024):
        COUNTS["bigerror-bytes"] += len(piece)
        yield piece
        await asyncio.sleep(0)  # where the client's leaving is noticed


async def _endless_line() -> AsyncIterator[bytes]:
    yield b"data: {"
    while True:
        yield b"a" * 65536
        await asyncio.sleep(0)
WORDS = ["Hello", " from", " the", " fault", " upstream", "."]


def _chunk(i: int, text: str, finish: str | None, legacy: bool) -> dict[str, object]:
    base = {"id": "up-1", "created": int(time.time()), "model": "fault-model"}
    if legacy:
        return base | {"object": "text_completion", "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    delta = {"role": "assistant", "content": text} if i == 0 else {"content": text}
    return base | {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


async def _stream(legacy: bool, usage: bool, break_after: int | None = None, bad: bool = False) -> AsyncIterator[bytes]:
    for i, w in enumerate(WORDS):
        if break_after is not None and i == break_after:
            raise ConnectionResetError("fault: dropping the connection mid-stream")
        if bad and i == 0:
            yield b"data: {this is not json\n\n"
            return
        finish = "stop" if i == len(WORDS) - 1 else None
        yield b"data: " + json.dumps(_chunk(i, w, finish, legacy)).encode() + b"\n\n"
        await asyncio.sleep(0)
    if usage:
        yield b"data: " + json.dumps({"id": "up-1", "object": "chat.completion.chunk", "created": 0, "model": "fault-model",
                                      "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}}).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def _whole(legacy: bool) -> dict[str, object]:
    text = "".join(WORDS)
    usage = {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}
    base = {"id": "up-1", "created": int(time.time()), "model": "fault-model", "usage": usage}
    if legacy:
        return base | {"object": "text_completion", "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}]}
    return base | {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


async def complete(request: Request) -> Response:
    mode = request.path_params["mode"]
    if mode == "ctl":
        mode = str(STATE["mode"])
    COUNTS[mode] += 1
    body = await request.json()
    legacy = request.url.path.endswith("/v1/completions")
    stream = bool(body.get("stream"))
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    if mode == "500":
        return JSONResponse({"error": {"code": 500, "message": "llama_decode failed", "type": "server_error"}}, status_code=500)
    if mode == "429":
        return JSONResponse({"error": {"message": "Too many requests", "type": "rate_limit"}}, status_code=429, headers={"retry-after": "1"})
    if mode == "vllm400":
        return JSONResponse({"object": "error", "message": "This model's maximum context length is 10 tokens.",
                             "type": "BadRequestError", "param": None, "code": 400}, status_code=400)
    if mode == "badjson":
        return Response(b"{this is not json", media_type="application/json")
    if mode == "auth401":
        return JSONResponse({"error": {"message": "Incorrect API key provided: sk-live-****SECRETTAIL.",
                                       "type": "invalid_request_error", "code": "invalid_api_key"}}, status_code=401)
    if mode == "bigheaders":
        headers = {f"x-junk-{i}": "j" * 4000 for i in range(1024)}
        return JSONResponse(_whole(legacy), headers=headers)
    if mode == "endlessline":
        return StreamingResponse(_endless_line(), media_type="text/event-stream")
    if mode == "gzipbomb":
        return Response(_gzip_bomb(), media_type="application/json", headers={"content-encoding": "gzip"})
    if mode == "bigerror":
        return StreamingResponse(_big_error(), status_code=500, media_type="text/plain")
    if mode == "badshape":
        event = {"id": "up-1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": "abc"}
        return StreamingResponse(iter([b"data: " + json.dumps(event).encode() + b"\n\n", b"data: [DONE]\n\n"]),
                                 media_type="text/event-stream")
    if mode == "endless":
        return StreamingResponse(_endless(legacy), media_type="text/event-stream")
    if mode == "scripted":  # the answer set for the question by /control {"answers": {...}}, else one of its own
        messages = body.get("messages") or [{}]
        question = str(messages[-1].get("content", ""))
        answers = STATE.get("answers") or {}
        assert isinstance(answers, dict)
        answer = _whole(legacy)
        answer["choices"][0]["message"]["content"] = answers.get(question, f"the answer to: {question}")  # type: ignore[index]
        return JSONResponse(answer)
    if mode == "judge":  # a judge that always grades 4 of 5
        answer = _whole(legacy)
        answer["choices"][0]["message"]["content"] = "SCORE: 4"  # type: ignore[index]
        return JSONResponse(answer)
    if mode == "slow":
        await asyncio.sleep(3)
    if not stream or mode == "json":
        return JSONResponse(_whole(legacy))
    if mode == "disconnect":
        return StreamingResponse(_stream(legacy, usage, break_after=2), media_type="text/event-stream")
    if mode == "badevent":
        return StreamingResponse(_stream(legacy, usage, bad=True), media_type="text/event-stream")
    return StreamingResponse(_stream(legacy, usage), media_type="text/event-stream")


async def control(request: Request) -> Response:
    body = await request.json()
    if body.get("reset"):
        COUNTS.clear()
    if "mode" in body:
        STATE["mode"] = body["mode"]
    if "answers" in body:
        STATE["answers"] = body["answers"]
    return JSONResponse({"mode": STATE["mode"]})


async def stats(request: Request) -> Response:
    return JSONResponse(dict(COUNTS))


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


app = Starlette(
    routes=[
        Route("/{mode}/v1/chat/completions", complete, methods=["POST"]),
        Route("/{mode}/v1/completions", complete, methods=["POST"]),
        Route("/control", control, methods=["POST"]),
        Route("/stats", stats),
        Route("/health", health),
    ]
)

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--certfile", help="serve https with this certificate chain (PEM)...")
    ap.add_argument("--keyfile", help="...and this key")
    args = ap.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning",
                ssl_certfile=args.certfile, ssl_keyfile=args.keyfile)
