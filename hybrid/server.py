"""The Starlette app: routes, the request-id/auth middleware, body limits and error mapping.

Each endpoint is a thin handler over the gateway. Errors of every kind leave through one mapping into OpenAI's
error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hybrid.answers import Answer, CachedAnswer, RequestContext
from hybrid.backends import create_backend
from hybrid.config import Config
from hybrid.errors import (
    AuthenticationError,
    HybridError,
    InvalidRequestError,
    MethodNotAllowedError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    RequestTooLargeError,
    ServerError,
    ServiceUnavailableError,
)
from hybrid.gateway import Gateway
from hybrid.identity import key_id
from hybrid.protocol import (
    SSE_DONE,
    InferenceRequest,
    assemble,
    is_usage_chunk,
    parse_chat_request,
    parse_completion_request,
    parse_json_body,
    sse_event,
    to_text_completion_chunk,
)
from hybrid.tags import HEADER as TAGS_HEADER
from hybrid.tags import request_tags

log = logging.getLogger("hybrid.server")

T = TypeVar("T")
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_STATUS_PATHS = frozenset({"/ready", "/metrics"})  # keyed unless server.status_access = "public"


class JSONResponse:
    """A JSON answer as two ASGI messages: orjson, and none of a general Response's header machinery."""

    __slots__ = ("body", "status_code", "headers")

    def __init__(self, content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> None:
        self.body = orjson.dumps(content)
        self.status_code = status_code
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
        if self.headers:
            raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status_code, "headers": raw})
        await send({"type": "http.response.body", "body": self.body})


def error_response(err: HybridError) -> JSONResponse:
    return JSONResponse(err.to_dict(), status_code=err.status_code, headers=err.headers)


AnyResponse = Response | JSONResponse
Handler = Callable[[Request], Awaitable[AnyResponse]]


class RequestMiddleware:
    """Pure ASGI: a request id on every response, bearer-token auth for the API paths, and a direct path to the
    inference handlers (the hot path skips Starlette's router and its two exception middlewares, mapping errors
    itself); everything else goes through the Starlette app."""

    def __init__(
        self,
        app: ASGIApp,
        api_keys: list[str],
        hot: dict[tuple[str, str], Handler],
        teams: dict[str, list[str]],
        tenant_secret: str = "",
        status_public: bool = False,
        key_tags: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.app = app
        self.public = frozenset({"/health"} | (_STATUS_PATHS if status_public else set()))
        self.api_keys = [k.encode() for k in api_keys]
        self.hot = hot
        # the tenant of each key (1-based, as _authorized answers): its team, else a keyed hash of the key itself,
        # so that adding, removing or reordering keys never hands one tenant's cache entries to another
        team_of = {k: team for team, keys in teams.items() for k in keys}
        self.tenants = [""] + [f"team:{team_of[k]}" if k in team_of else key_id(k, tenant_secret) for k in api_keys]
        self.key_ids = [""] + [key_id(k, tenant_secret) for k in api_keys]
        tags = key_tags or {}
        self.key_tags: list[dict[str, str]] = [{}] + [{"team": team_of[k]} | tags.get(k, {}) if k in team_of
                                                      else tags.get(k, {}) for k in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        auth = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID_OK.match(candidate):
                    rid = candidate
            elif name == b"authorization":
                auth = value
        if rid is None:
            rid = os.urandom(16).hex()
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        key_index = self._authorized(auth) if self.api_keys else 0
        if self.api_keys and scope["path"] not in self.public and not key_index:
            err = AuthenticationError(
                "Incorrect API key provided." if auth else "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'."
            )
            await error_response(err)(scope, receive, send_with_id)
            return
        # whom limits and cache entries are scoped to: the key's team or position (never the key itself), else
        # the client's address
        if self.api_keys:
            state["tenant"] = self.tenants[key_index]
            state["key_id"] = self.key_ids[key_index]
            state["key_tags"] = self.key_tags[key_index]
        else:
            client = scope.get("client")
            state["tenant"] = state["key_id"] = f"addr:{client[0]}" if client else "anonymous"
        handler = self.hot.get((scope["method"], scope["path"]))
        if handler is None:
            await self.app(scope, receive, send_with_id)
            return
        try:
            response = await handler(Request(scope, receive))
        except HybridError as err:
            response = error_response(err)
        except ClientDisconnect:  # the client left before its answer: nobody to answer, nothing to log
            log.debug("request %s: the client disconnected", rid)
            return
        except Exception as exc:
            response = await _on_crash(Request(scope, receive), exc)
        await response(scope, receive, send_with_id)

    def _authorized(self, auth: bytes) -> int:
        """1-based index of the matching key, 0 for none."""
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return 0
        found = 0
        token = token.strip()
        for i, key in enumerate(self.api_keys, 1):  # compare with every key, in constant time, whatever matches
            if hmac.compare_digest(token, key):
                found = i
        return found


class HybridApp:
    """Owns the gateway and the request handlers."""

    def __init__(self, config: Config, gateway: Gateway | None = None) -> None:
        self.config = config
        if gateway is None:
            from hybrid.cache import build_cache
            from hybrid.ledger import build_ledger

            backends = [create_backend(b) for b in config.backends]
            gateway = Gateway(config, backends, build_cache(config), build_ledger(config))
        self.gateway = gateway
        self.max_body = config.server.max_body_bytes
        secret = config.server.tenant_secret
        self.admin_ids = frozenset(key_id(k, secret) for k in config.server.admin_keys)

    # ------------------------------------------------------------------------------------------ helpers

    async def _read_body(self, request: Request) -> bytes:
        for name, value in request.scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                raise RequestTooLargeError(
                    f"Request body of {int(value)} bytes is over the limit of {self.max_body} bytes."
                )
        parts: list[bytes] = []
        size = 0
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            part = message.get("body", b"")
            size += len(part)
            if size > self.max_body:
                raise RequestTooLargeError(f"Request body is over the limit of {self.max_body} bytes.")
            parts.append(part)
            if not message.get("more_body", False):
                return b"".join(parts)

    def _context(self, request: Request) -> RequestContext:
        state = request.scope["state"]
        routing: dict[str, str] = {}
        cache_control = None
        for name, value in request.scope["headers"]:  # raw ASGI headers: lower-case bytes
            if name.startswith(b"x-hybrid-"):
                routing[name.decode("latin-1")] = value.decode("latin-1")
            elif name == b"cache-control":
                cache_control = value.decode("latin-1")
        return RequestContext(
            request_id=state["request_id"], headers=routing, tenant=state.get("tenant", "anonymous"),
            cache_control=cache_control, key_id=state.get("key_id", ""),
        )

    # ------------------------------------------------------------------------------------------ endpoints

    async def chat_completions(self, request: Request) -> AnyResponse:
        req = parse_chat_request(parse_json_body(await self._read_body(request)))
        return await self._respond(request, req)

    async def completions(self, request: Request) -> AnyResponse:
        req = parse_completion_request(parse_json_body(await self._read_body(request)))
        return await self._respond(request, req)

    async def _respond(self, request: Request, req: InferenceRequest) -> AnyResponse:
        ctx = self._context(request)
        ctx.tags = request_tags(request.scope["state"].get("key_tags", {}), req.body, ctx.headers.get(TAGS_HEADER))
        if req.stream:
            # a client that leaves while its request waits (in a local queue, for a slow first token) frees its
            # place at once, not when the first token arrives
            answer = await _unless_disconnected(self.gateway.handle(req, ctx), request)
            return StreamingResponse(
                _sse(answer), media_type="text/event-stream", headers=answer.headers | {"cache-control": "no-cache"}
            )
        answer, chunks = await _unless_disconnected(self.gateway.complete(req, ctx), request)
        return JSONResponse(assemble(chunks, req.kind), headers=answer.headers)

    async def models(self, request: Request) -> AnyResponse:
        return JSONResponse({"object": "list", "data": self.gateway.model_cards()})

    async def model(self, request: Request) -> AnyResponse:
        model_id = request.path_params["model"]
        for card in self.gateway.model_cards():
            if card["id"] == model_id:
                return JSONResponse(card)
        raise ModelNotFoundError(f"The model '{model_id}' does not exist.", param="model")

    async def embeddings(self, request: Request) -> AnyResponse:
        from hybrid.embeddings_endpoint import embeddings_response

        cache = self.gateway.cache
        embedder = cache.embedder if cache is not None else None
        return JSONResponse(await embeddings_response(parse_json_body(await self._read_body(request)), embedder))

    async def feedback(self, request: Request) -> AnyResponse:
        """``POST /v1/feedback {request_id, score, comment}``: a client's score for one of its own requests, kept
        with its ledger row so that quality shows next to cost in ``hybrid report``."""
        body = parse_json_body(await self._read_body(request))
        rid = body.get("request_id")
        if not isinstance(rid, str) or not _REQUEST_ID_OK.match(rid):
            raise InvalidRequestError("'request_id' must be the x-request-id of one of your requests.",
                                      param="request_id")
        score = body.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
            raise InvalidRequestError("'score' must be a number from 0 (bad) to 1 (good).", param="score")
        comment = body.get("comment", "")
        if not isinstance(comment, str) or len(comment) > 2000:
            raise InvalidRequestError("'comment' must be a string of at most 2000 characters.", param="comment")
        ledger = self.gateway.ledger
        if ledger is None:
            raise ServiceUnavailableError("The usage ledger is off (ledger.backend = \"off\"): feedback has no place.")
        # scoped to the caller: a score counts only against a request the same key made (see hybrid report)
        ledger.feedback(rid, request.scope["state"].get("key_id", ""), float(score), comment)
        return JSONResponse({"object": "feedback", "request_id": rid, "status": "recorded"})

    async def dashboard(self, request: Request) -> AnyResponse:
        """The costs-and-savings page (hybrid/dashboard.py), for admin keys (``server.admin_keys``) or, without
        any, for every key."""
        from hybrid import dashboard
        from hybrid.ledger.query import DIALECTS
        from hybrid.ledger.report import parse_since

        admins = self.admin_ids
        if admins and request.scope["state"].get("key_id") not in admins:
            raise PermissionDeniedError("The dashboard is for the keys in server.admin_keys.")
        ledger = self.gateway.ledger
        if ledger is None:
            raise ServiceUnavailableError("The usage ledger is off (ledger.backend = \"off\"): nothing to show.")
        since = request.query_params.get("since", "7d")
        try:
            since_s = parse_since(since)
        except Exception as exc:  # argparse's own error type, from the CLI's parser
            raise InvalidRequestError(str(exc).replace("--since", "'since'"), param="since") from None
        budgets = self.gateway.budgets
        rows = [(b.cfg.name, budgets.last_spent.get(b.cfg.name, 0.0), b.cfg.limit_usd)
                for b in budgets.budgets] if budgets is not None else []

        def gather() -> str:
            conn = ledger.store.connect()
            try:
                return dashboard.render(dashboard.collect(conn, DIALECTS[ledger.store.name], since_s, since, rows))
            finally:
                ledger.store.close(conn)

        page = await asyncio.to_thread(gather)
        return Response(page, media_type="text/html; charset=utf-8",
                        headers={"content-security-policy": "default-src 'none'; style-src 'unsafe-inline'"})

    async def metrics(self, request: Request) -> AnyResponse:
        from hybrid import metrics

        return Response(metrics.render(), headers={"content-type": metrics.CONTENT_TYPE})

    async def health(self, request: Request) -> AnyResponse:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> AnyResponse:
        ok, body = self.gateway.readiness()
        return JSONResponse(body, status_code=200 if ok else 503)

    # ------------------------------------------------------------------------------------------ app

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.gateway.start()
        # Start-up objects live for the process: keep them out of the cyclic GC's way, and collect the young
        # generation less often (request objects are short-lived and acyclic): both shorten the p99 tail.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        try:
            yield
        finally:
            await self.gateway.stop()

    def build(self) -> ASGIApp:
        routes = [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/feedback", self.feedback, methods=["POST"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/dashboard", self.dashboard, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/ready", self.ready, methods=["GET"]),
        ]
        # our handlers answer with JSONResponse, an ASGI app of its own rather than a Starlette Response
        handlers: dict[Any, Any] = {HybridError: _on_hybrid_error, HTTPException: _on_http_error, Exception: _on_crash}
        app = Starlette(routes=routes, lifespan=self.lifespan, exception_handlers=handlers)
        hot: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self.chat_completions, ("POST", "/v1/completions"): self.completions,
        }
        server = self.config.server
        return RequestMiddleware(app, server.api_keys, hot, server.teams, server.tenant_secret,
                                 status_public=server.status_access == "public", key_tags=server.key_tags)


_WATCH_AFTER_S = 0.02


async def _unless_disconnected(work: Coroutine[Any, Any, T], request: Request) -> T:
    """Run a non-streaming answer; if the client goes away first, cancel it (generation stops, the slot is freed).

    The watcher task starts only once the answer has taken 20 ms: the quick answers of the pass-through path (a
    cloud API, a cache hit) never pay for a task, and a slow generation is still stopped within 20 ms of a
    disconnect."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(_WATCH_AFTER_S, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if watcher is not None and watcher.done() and not watcher.cancelled():
            task.uncancel()  # our own cancel, for a client that left: not the server shutting down
            raise ClientDisconnect() from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def _sse(answer: Answer | CachedAnswer) -> AsyncIterator[bytes]:
    """SSE frames for an answer; a failure after the first byte ends the stream with an error event."""
    req = answer.req
    legacy = req.kind == "completion"
    try:
        async for chunk in answer.chunks():
            if is_usage_chunk(chunk) and not req.include_usage:
                continue
            yield sse_event(to_text_completion_chunk(chunk) if legacy else chunk)
    except HybridError as err:
        log.warning("stream %s ended by error: %s", answer.ctx.request_id, err.message)
        yield sse_event(err.to_dict())
    except Exception:
        log.exception("stream %s failed", answer.ctx.request_id)
        yield sse_event(ServerError("The backend failed while streaming the answer.").to_dict())
    yield SSE_DONE


async def _on_hybrid_error(request: Request, exc: Exception) -> AnyResponse:
    assert isinstance(exc, HybridError)
    return error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> AnyResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFoundError(f"Unknown path: {request.method} {request.url.path}", code="not_found"))
    if exc.status_code == 405:
        return error_response(MethodNotAllowedError(f"Method {request.method} is not allowed on {request.url.path}."))
    err = InvalidRequestError(str(exc.detail))
    err.status_code = exc.status_code
    return error_response(err)


async def _on_crash(request: Request, exc: Exception) -> AnyResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(ServerError("The server had an error while processing your request."))


def create_app(config: Config) -> ASGIApp:
    return HybridApp(config).build()
