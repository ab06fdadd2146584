"""Any OpenAI-compatible HTTP API: OpenAI, Groq, Together, OpenRouter, Mistral, a vLLM or llama.cpp server.

One keep-alive connection pool per backend (:mod:`hybrid.http1`, chosen by measurement: see its docstring).
Streams are passed through chunk by chunk; a non-streaming answer becomes one chunk.
Upstream errors, whatever their shape (OpenAI, vLLM's ``{"object": "error", ...}``, llama.cpp's, plain text), are
normalised to the router's exceptions, marked retryable where another backend may succeed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator

import orjson

from hybrid import http1
from hybrid.backends.base import Backend, BackendLoad, BackendState
from hybrid.config import BackendConfig
from hybrid.errors import (
    HybridError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
    error_for_status,
)
from hybrid.protocol import Chunk, InferenceRequest, chunk_problem, completion_to_chunk, from_text_completion_chunk
from hybrid.upstream import upstream_pool

log = logging.getLogger("hybrid.openai")


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


MAX_ERROR_BODY = 64 * 1024  # of an upstream's error answer, only this much is read
MAX_EVENT_LINE = 4 << 20  # one SSE line; an upstream line without end fails the answer past this


def normalise_error(status: int, body: bytes, retry_after: str | None, backend: str) -> HybridError:
    """Turn an upstream error answer into the router's exception (OpenAI's shape on the wire).

    401 and 403 mean the router's own credentials were refused: the client did nothing wrong, and the upstream's
    words (which may echo part of the key) are not passed on. They become a retryable 502, so another backend of
    the tier is tried and the breaker counts the failure."""
    if status in (401, 403):
        log.warning("%s: the upstream refused the router's credentials (HTTP %d)", backend, status)
        return UpstreamError(
            f"Upstream '{backend}' refused the router's credentials (HTTP {status}); its API key needs attention.",
            code="upstream_auth_failed",
        )
    message, param, code = "", None, None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("detail") or "")
            param = err.get("param") if isinstance(err.get("param"), str) else None
            code = err.get("code") if isinstance(err.get("code"), str) else None
        elif isinstance(err, str):
            message = err
        if not message and isinstance(data.get("detail"), (str, list)):
            message = str(data["detail"])
    if not message:
        message = body.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}"
    message = f"Upstream '{backend}' answered {status}: {message}"
    if status == 429:
        return RateLimitError(message, retry_after_s=parse_retry_after(retry_after))
    return error_for_status(status, message, param=param, code=code)


class OpenAIBackend(Backend):
    hard_concurrency_limit = True  # the gateway turns requests away at max_concurrency, it never queues them

    def __init__(self, cfg: BackendConfig) -> None:
        super().__init__(cfg)
        self.base_url = cfg.base_url.rstrip("/")
        self._pool: http1.Pool | None = None
        self._in_flight = 0
        self._service_s = 1.0

    @property
    def models(self) -> list[str]:
        return self.cfg.models

    async def start(self) -> None:
        self._pool = upstream_pool(self.cfg, self.base_url, self.name, {"accept": "text/event-stream, application/json"})
        self.state = BackendState.UP

    async def stop(self) -> None:
        self.state = BackendState.DOWN
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def load(self) -> BackendLoad:
        return BackendLoad(
            in_flight=self._in_flight, waiting=0, capacity=self.cfg.max_concurrency,
            service_time_s=self._service_s,
        )

    async def stream(self, req: InferenceRequest, model: str) -> AsyncGenerator[Chunk, None]:
        pool = self._pool
        if pool is None:
            raise ServiceUnavailableError(f"Backend '{self.name}' is not started.")
        body = dict(req.body)
        body["model"] = model
        # Always stream from the upstream, whatever the client asked: the first-byte timeout then means what it
        # says, failures before the first token can still fall back, and one parser serves both kinds of request.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        path = "/chat/completions" if req.kind == "chat" else "/completions"
        legacy = req.kind == "completion"

        self._in_flight += 1
        started = time.monotonic()
        resp: http1.Response | None = None
        try:
            whole: Chunk | None = None
            first: Chunk | None = None
            try:
                async with asyncio.timeout(self.cfg.first_byte_timeout_s):
                    resp = await pool.request("POST", path, orjson.dumps(body), timeout_s=self.cfg.total_timeout_s)
                    if resp.status >= 400:
                        raise normalise_error(
                            resp.status, await resp.read(MAX_ERROR_BODY, truncate=True),
                            resp.headers.get("retry-after"), self.name,
                        )
                    if resp.content_type != "text/event-stream":
                        whole = self._whole(await resp.read(self.cfg.max_answer_bytes), legacy)
                    else:
                        lines = http1.iter_lines(resp, MAX_EVENT_LINE)
                        first = await self._next_event(lines)
            except http1.RequestTimeout:
                raise
            except TimeoutError:
                raise UpstreamTimeoutError(
                    f"Upstream '{self.name}' sent nothing within {self.cfg.first_byte_timeout_s:g}s."
                ) from None
            if whole is not None:
                yield whole
                return
            if first is None:
                raise UpstreamError(f"Upstream '{self.name}' ended the stream without an answer.")
            while first is not None:
                yield from_text_completion_chunk(first) if legacy else first
                first = await self._next_event(lines)
        except http1.ReadTimeout:
            raise UpstreamTimeoutError(
                f"Upstream '{self.name}' sent nothing for {self.cfg.read_timeout_s:g}s in the middle of its answer."
            ) from None
        except http1.RequestTimeout:
            raise UpstreamTimeoutError(
                f"Upstream '{self.name}' did not finish within {self.cfg.total_timeout_s:g}s."
            ) from None
        except http1.ConnectError as exc:
            raise UpstreamError(f"Upstream '{self.name}' connection failed: {exc}") from None
        except http1.ConnectionClosed as exc:
            what = "broke off the answer" if resp is not None else "connection failed"
            raise UpstreamError(f"Upstream '{self.name}' {what}: {exc}") from None
        except http1.ProtocolError as exc:
            raise UpstreamError(f"Upstream '{self.name}' sent an invalid HTTP answer: {exc}") from None
        finally:
            if resp is not None:
                resp.release()
            self._in_flight -= 1
            self._service_s = 0.8 * self._service_s + 0.2 * (time.monotonic() - started)

    def _whole(self, raw: bytes, legacy: bool) -> Chunk:
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"Upstream '{self.name}' sent a body that is not JSON.") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise UpstreamError(f"Upstream '{self.name}' sent an answer without 'choices'.")
        problem = chunk_problem(answer)
        if problem is not None:
            raise UpstreamError(f"Upstream '{self.name}' sent an answer the router cannot read: {problem}.")
        return from_text_completion_chunk(answer) if legacy else completion_to_chunk(answer)

    async def _next_event(self, lines: AsyncIterator[bytes]) -> Chunk | None:
        """The next JSON event of an SSE stream, or ``None`` at ``[DONE]`` / end of stream."""
        async for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, event names
            data = line[5:].strip()
            if data == b"[DONE]":
                return None
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise UpstreamError(f"Upstream '{self.name}' sent an event that is not JSON.") from None
            if not isinstance(event, dict):
                raise UpstreamError(f"Upstream '{self.name}' sent an event that is not an object.")
            if "error" in event:
                err = event["error"]
                msg = err.get("message") if isinstance(err, dict) else str(err)
                raise UpstreamError(f"Upstream '{self.name}' failed mid-stream: {str(msg)[:500]}")
            problem = chunk_problem(event)
            if problem is not None:
                raise UpstreamError(f"Upstream '{self.name}' sent an event the router cannot read: {problem}.")
            return event
        return None
