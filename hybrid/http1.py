"""A lean HTTP/1.1 client over asyncio protocols and httptools: how the router calls every upstream.

Why not aiohttp: on the pass-through benchmark (scripts/bench_overhead.py, nginx upstream, 10 connections at
1,000 requests/s, two cores) a minimal Starlette proxy added 0.38-0.46 ms p50 with an aiohttp session and
0.18 ms with this shape of client. aiohttp spends a task on writing each request body and several futures and
stream objects on each response; here a request is one ``transport.write`` and one future, and httptools (the
parser uvicorn already uses) turns the bytes into a status, headers and body pieces in C.

What it does: one keep-alive pool per origin (most recently used first, idle expiry, a cap on idle sockets);
TLS with the system's CAs (``SSL_CERT_FILE`` is honoured); bodies by content-length, chunked, or up to the
close; gzip and deflate decoding should a server compress although asked not to; a connect timeout and a
whole-request deadline; read flow control while a body is streamed; and one retry on a fresh connection when a
reused one turns out to have been closed by the server before it read the request (the server's keep-alive
timeout racing our reuse: nothing of the answer had arrived, so the request was never handled).

Proxies: an ``http://`` proxy, named per pool or found in the environment (:func:`proxy_from_environment`:
HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY, as curl reads them; loopback is never proxied). https origins go
through a CONNECT tunnel, plain http ones as absolute-form requests; credentials in the proxy URL are sent as
Basic auth.

What it does not: redirects, cookies, HTTP/2. The upstreams are OpenAI-compatible APIs named in config.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import ssl
import time
import urllib.request
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from urllib.parse import unquote, urlsplit

import httptools

from hybrid.heads import HeadMeter
from hybrid.metrics import UPSTREAM_CONNECTIONS

USER_AGENT = "hybrid/0.1"
_PAUSE_AT = 1 << 20  # buffered body bytes at which reading stops while a body is streamed...
_RESUME_AT = 1 << 18  # ...and below which it starts again
MAX_HEAD_BYTES = 64 * 1024  # status line + headers of one answer (h11: 100 KiB; aiohttp: 8 KiB a line)
MAX_HEADERS = 128  # header lines in one answer (aiohttp: 128 by default)
MAX_DECODED_BYTES = 64 << 20  # a compressed body may inflate to at most this (a gzip bomb stops here)
MAX_BODY_BYTES = 32 << 20  # read() refuses a whole body larger than this (or its own limit)


class HTTPClientError(Exception):
    """The exchange failed below HTTP: no status to report."""


class ConnectError(HTTPClientError):
    """No connection could be made (refused, unreachable, DNS, TLS handshake, connect timeout)."""


class ConnectionClosed(HTTPClientError):
    """The server closed or reset the connection before the answer was complete."""


class ProtocolError(HTTPClientError):
    """The server's bytes are not a valid HTTP/1.1 answer."""


class RequestTimeout(HTTPClientError, TimeoutError):
    """The whole-request deadline passed."""


class ReadTimeout(RequestTimeout):
    """The server sent nothing for longer than the read timeout (between two pieces of its answer)."""


class Response:
    """One answer: ``status`` and ``headers`` (lower-case names) as soon as the head has arrived; the body by
    :meth:`read` or :meth:`iter_chunks`. Always :meth:`release` it (``async with`` does): a completed answer
    returns its connection to the pool, an abandoned one closes it."""

    __slots__ = (
        "status", "headers", "_conn", "_loop", "_chunks", "_buffered", "_head_done", "complete", "_error",
        "_waiter", "_received", "_decoder", "_streaming", "_paused", "_released", "_timer", "_keep_alive",
        "_decoded", "_last_data", "_read_timeout", "_deadline",
    )

    def __init__(self, conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._conn = conn
        self._loop = loop
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._head_done = False
        self.complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._received = False  # any byte of the answer at all
        self._decoder: zlib._Decompress | None = None
        self._streaming = False
        self._paused = False
        self._released = False
        self._timer: asyncio.TimerHandle | None = None
        self._keep_alive = False  # the server's word, read with the head (httptools forgets it by the end)
        self._decoded = 0  # bytes a compressed body has inflated to so far
        self._last_data = 0.0  # loop time of the last bytes received
        self._read_timeout: float | None = None  # longest silence allowed between pieces of the answer
        self._deadline: float | None = None  # loop time by which the whole exchange must be over

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    # ---------------------------------------------------------------- consumer side

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None and not self._chunks:
            raise self._error

    async def _wait_head(self) -> None:
        while not self._head_done:
            await self._wait()
        if self._error is not None:
            raise self._error

    async def read(self, limit: int = MAX_BODY_BYTES, truncate: bool = False) -> bytes:
        """The whole body; the connection goes back to the pool. A body over ``limit`` bytes raises
        :class:`ProtocolError`, or with ``truncate`` its first ``limit`` bytes are returned (an error answer's
        message is enough) and the connection is closed."""
        while not self.complete:
            if self._error is not None:
                raise self._error
            if self._buffered > limit:
                self.release()
                if truncate:
                    return b"".join(self._chunks)[:limit]
                raise ProtocolError(f"answer body over {limit} bytes")
            await self._wait()
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self.release()
        return body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body pieces as they arrive (reading pauses while over 1 MiB is waiting to be consumed)."""
        self._streaming = True
        chunks = self._chunks
        while True:
            while chunks:
                data = chunks.popleft()
                self._buffered -= len(data)
                if self._paused and self._buffered < _RESUME_AT:
                    self._paused = False
                    self._conn.resume()
                yield data
            if self.complete:
                self.release()
                return
            await self._wait()

    def release(self) -> None:
        """Back to the pool if the answer was read to its end and the server keeps the connection; else closed."""
        if self._released:
            return
        self._released = True
        self._stop_timers()
        self._conn.done(self, reusable=self.complete and self._error is None)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    # ---------------------------------------------------------------- connection side

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            left = MAX_DECODED_BYTES - self._decoded
            try:
                data = self._decoder.decompress(data, left + 1)  # never inflates past the cap in memory
            except zlib.error as exc:
                self._fail(ProtocolError(f"cannot decode the compressed body: {exc}"))
                return
            self._decoded += len(data)
            if len(data) > left:
                self._fail(ProtocolError(f"the compressed body inflates to over {MAX_DECODED_BYTES} bytes"))
                return
            if not data:
                return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._streaming and not self._paused and self._buffered > _PAUSE_AT:
            self._paused = True
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush(max(1, MAX_DECODED_BYTES - self._decoded + 1))
            self._decoded += len(tail)
            if self._decoded > MAX_DECODED_BYTES:
                self._fail(ProtocolError(f"the compressed body inflates to over {MAX_DECODED_BYTES} bytes"))
                return
            if tail:
                self._chunks.append(tail)
                self._buffered += len(tail)
        self.complete = True
        self._stop_timers()
        self._wake()

    def _stop_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, now: float) -> None:
        """One timer per answer, for both the deadline and the read timeout: it wakes at the earlier of the two
        and re-arms itself while neither has passed (data arriving only moves a timestamp)."""
        wake = self._deadline
        if self._read_timeout is not None:
            silent = (self._last_data if self._head_done else now) + self._read_timeout  # counts from the head
            if wake is None or silent < wake:
                wake = silent
        if wake is not None:
            self._timer = self._loop.call_at(wake, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.complete or self._error is not None or self._released:
            return
        now = self._loop.time()
        if self._deadline is not None and now >= self._deadline:
            self._fail(RequestTimeout("the request did not finish before its deadline"))
            return
        if self._read_timeout is not None and self._head_done:
            if self._paused:  # our consumer is slow, not the server: that silence does not count
                self._last_data = now
            elif now - self._last_data >= self._read_timeout:
                self._fail(ReadTimeout(f"the server sent nothing for {self._read_timeout:g}s"))
                return
        self._arm(now)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = exc
            self._conn.abort()
        self._wake()


class _Connection(asyncio.Protocol):
    """One socket to the origin; at most one request in flight (no pipelining)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.resp: Response | None = None
        self._head = HeadMeter(MAX_HEAD_BYTES)  # the current answer's head so far
        self._headers = 0

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None:  # bytes nobody asked for: the connection can no longer be trusted
            self.abort()
            return
        resp._received = True
        if resp._read_timeout is not None:
            resp._last_data = resp._loop.time()
        if not resp._head_done and self._head.over(data):
            resp._fail(ProtocolError(f"the answer's head is over {MAX_HEAD_BYTES} bytes"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            resp._fail(ProtocolError(f"malformed HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        resp = self.resp
        if resp is None or resp.complete:
            return
        if exc is None and resp._head_done and self._close_delimited(resp):
            resp._finish()  # a body that runs to the close
            return
        reason = f": {exc}" if exc else ""
        resp._fail(ConnectionClosed(f"the server closed the connection before the answer was complete{reason}"))

    def pause_writing(self) -> None:  # request bodies are small; nothing to hold back
        pass

    def resume_writing(self) -> None:
        pass

    # ---------------------------------------------------------------- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.resp is not None
        self._headers += 1
        if self._headers > MAX_HEADERS:
            self.resp._fail(ProtocolError(f"the answer has over {MAX_HEADERS} header lines"))
            return
        key = name.decode("latin-1").lower()
        headers = self.resp.headers
        text = value.decode("latin-1")
        headers[key] = headers[key] + ", " + text if key in headers else text

    def on_headers_complete(self) -> None:
        resp = self.resp
        assert resp is not None
        if resp._error is not None:  # refused while reading the head: nothing of it counts
            return
        status = self.parser.get_status_code()
        if status < 200:  # 1xx interim answers (we never send Expect): wait for the real one
            resp.headers = {}
            self._headers = 0
            return
        resp.status = status
        resp._keep_alive = self.parser.should_keep_alive()
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            resp._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            resp._decoder = zlib.decompressobj()
        elif encoding not in ("identity", ""):
            resp._fail(ProtocolError(f"unsupported content-encoding '{encoding}'"))
            return
        resp._head_done = True
        if resp._read_timeout is not None:
            resp._last_data = resp._loop.time()  # silence counts from here (the armed timer re-checks)
        resp._wake()

    def on_body(self, body: bytes) -> None:
        assert self.resp is not None
        self.resp._feed(body)

    def on_message_complete(self) -> None:
        resp = self.resp
        if resp is not None and resp._head_done and resp._error is None:
            resp._finish()

    # ---------------------------------------------------------------- pool side

    @staticmethod
    def _close_delimited(resp: Response) -> bool:
        h = resp.headers
        return "content-length" not in h and "chunked" not in h.get("transfer-encoding", "").lower()

    def send(self, data: bytes, deadline: float | None, read_timeout: float | None) -> Response:
        loop = self.pool.loop
        resp = self.resp = Response(self, loop)
        self._head.reset()
        self._headers = 0
        resp._deadline = deadline
        resp._read_timeout = read_timeout  # counts once the head is in: the first byte has its own timeout
        resp._arm(loop.time())
        assert self.transport is not None
        self.transport.write(data)
        return resp

    def done(self, resp: Response, reusable: bool) -> None:
        if self.resp is not resp:
            return
        self.resp = None
        if not reusable:  # abandoned or failed mid-answer: whatever is still on the wire is not ours to read
            self.abort()
        elif self.closed:
            pass
        elif resp._keep_alive:
            self.pool._put(self)
        else:
            self.closed = True
            assert self.transport is not None
            self.transport.close()

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Keep-alive connections to one origin, and the requests made over them.

    ``base_url`` may carry a path prefix (``https://api.openai.com/v1``); request paths are appended to it."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        connect_timeout_s: float = 10.0,
        keepalive_s: float = 15.0,
        max_idle: int = 64,
        ssl_context: ssl.SSLContext | None = None,
        name: str = "",
        proxy: str | None = None,
        max_connections: int = 256,
        read_timeout_s: float | None = None,
    ) -> None:
        """``name`` labels the pool's connection counter on /metrics (the backend's name); ``proxy`` is an
        ``http://[user:password@]host:port`` URL to go through, or ``None`` to connect directly;
        ``max_connections``: open connections at most (more requests wait for one); ``read_timeout_s``: the
        longest silence allowed between two pieces of an answer, once its head is in."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        default_port = (parts.scheme == "https" and self.port == 443) or (parts.scheme == "http" and self.port == 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if default_port else f"{host}:{self.port}"
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self._authority = authority
        fixed = {"host": authority, "user-agent": USER_AGENT, "accept-encoding": "identity"}
        fixed |= {k.lower(): v for k, v in (headers or {}).items()}
        self._target = self.prefix  # what precedes a request's path on its request line
        self._proxy: tuple[str, int] | None = None
        self._proxy_auth: str | None = None
        if proxy:
            pp = urlsplit(proxy)
            if pp.scheme != "http" or not pp.hostname:
                raise ValueError(f"a proxy must be an http:// URL with a host (got {proxy!r})")
            self._proxy = (pp.hostname, pp.port or 80)
            if pp.username is not None:
                user_pass = f"{unquote(pp.username)}:{unquote(pp.password or '')}".encode()
                self._proxy_auth = "Basic " + base64.b64encode(user_pass).decode()
            if self._ssl is None:  # plain http through a proxy: absolute-form targets, credentials on each request
                self._target = f"http://{authority}{self.prefix}"
                if self._proxy_auth:
                    fixed["proxy-authorization"] = self._proxy_auth
        self._fixed = _header_block(fixed.items())
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.max_idle = max_idle
        self.max_connections = max_connections
        self.read_timeout_s = read_timeout_s
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._opening = 0  # connections being made (they count against max_connections)
        self._idle: list[_Connection] = []
        self._live: set[_Connection] = set()
        self.name = name or base_url
        self.opened = 0  # connections made so far (a pool that keeps them alive makes few)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Response:
        """Send one request and return once the answer's head has arrived (its body is read from the answer).

        ``timeout_s`` bounds the whole exchange, body included; a passing deadline raises :class:`RequestTimeout`
        from whichever wait it interrupts."""
        head = f"{method} {self._target}{path} HTTP/1.1\r\n".encode("latin-1") + self._fixed
        if headers:
            head += _header_block(headers.items())
        if body or method in ("POST", "PUT", "PATCH"):
            head += b"Content-Length: %d\r\n" % len(body)
        data = head + b"\r\n" + body
        deadline = self.loop.time() + timeout_s if timeout_s is not None else None
        # Only an idempotent request is sent again when a reused connection turns out closed with no answer: the
        # server may have read and acted on the first copy (a POST would bill a completion twice). A connection
        # seen closed before the request was written is skipped for any method: that one provably never left.
        resend = method in ("GET", "HEAD", "OPTIONS")
        for attempt in (1, 2):
            conn = self._take_idle() if attempt == 1 else None
            if conn is None:
                conn = await self._connect_within_cap(deadline)
            resp = conn.send(data, deadline, self.read_timeout_s)
            try:
                await resp._wait_head()
                return resp
            except ConnectionClosed:
                resp.release()
                if resend and attempt == 1 and conn.idle_since and not resp._received:
                    continue  # a reused connection the server had already closed: it never answered
                raise
            except BaseException:
                resp.release()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, path: str, timeout_s: float | None = None) -> tuple[int, bytes]:
        """A whole GET: (status, body)."""
        resp = await self.request("GET", path, timeout_s=timeout_s)
        async with resp:
            return resp.status, await resp.read()

    async def post(self, path: str, body: bytes, timeout_s: float | None = None) -> tuple[int, bytes]:
        """A whole POST: (status, body)."""
        resp = await self.request("POST", path, body, timeout_s=timeout_s)
        async with resp:
            return resp.status, await resp.read()

    async def close(self) -> None:
        for conn in list(self._live):
            conn.abort()
        self._idle.clear()
        self._live.clear()

    # ---------------------------------------------------------------- connections

    async def _connect_within_cap(self, deadline: float | None) -> _Connection:
        """A new connection once the pool is under ``max_connections`` (waiting for one to close or come back
        idle, until the deadline)."""
        while len(self._live) + self._opening >= self.max_connections:
            idle = self._take_idle()
            if idle is not None:
                return idle
            waiter = self.loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                timeout = None if deadline is None else max(0.0, deadline - self.loop.time())
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                raise RequestTimeout(
                    f"no connection to {self.host}:{self.port} came free ({self.max_connections} in use)"
                ) from None
            finally:
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)
        self._opening += 1
        try:
            return await self._connect(deadline)
        finally:
            self._opening -= 1
            self._slot_freed()  # a failed connect frees its place; a made one is in _live now

    def _slot_freed(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, deadline: float | None) -> _Connection:
        loop = self.loop
        timeout = self.connect_timeout_s
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - loop.time()))
        via = self._proxy
        where = f"{self.host}:{self.port}" + (f" through the proxy {via[0]}:{via[1]}" if via else "")
        try:
            async with asyncio.timeout(timeout):
                if via is None:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self), self.host, self.port,
                        ssl=self._ssl, server_hostname=self.host if self._ssl is not None else None,
                    )
                elif self._ssl is None:
                    _, conn = await loop.create_connection(lambda: _Connection(self), *via)
                else:
                    conn = await self._tunnel(via)
        except TimeoutError:
            raise ConnectError(f"connecting to {where} timed out after {timeout:g}s") from None
        except ssl.SSLError as exc:
            raise ConnectError(f"TLS handshake with {where} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {where}: {exc.strerror or exc}") from None
        self._live.add(conn)
        self.opened += 1
        UPSTREAM_CONNECTIONS.labels(self.name).inc()
        return conn

    async def _tunnel(self, via: tuple[str, int]) -> _Connection:
        """A CONNECT tunnel through the proxy, then TLS with the origin inside it."""
        loop = self.loop
        transport, head = await loop.create_connection(_TunnelHead, *via)
        try:
            hostport = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
            lines = [f"CONNECT {hostport} HTTP/1.1", f"Host: {hostport}", f"User-Agent: {USER_AGENT}"]
            if self._proxy_auth:
                lines.append(f"Proxy-Authorization: {self._proxy_auth}")
            transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            status_line = await head.answer
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].startswith("2"):
                raise ConnectError(f"the proxy {via[0]}:{via[1]} refused a tunnel to {hostport}: {status_line}")
            conn = _Connection(self)
            assert self._ssl is not None
            tls = await loop.start_tls(transport, conn, self._ssl, server_hostname=self.host)
            conn.connection_made(tls)  # type: ignore[arg-type]  # start_tls leaves this to its caller
            return conn
        except BaseException:
            transport.abort()
            raise

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        oldest_ok = time.monotonic() - self.keepalive_s
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > oldest_ok and not conn.transport.is_closing():  # type: ignore[union-attr]
                return conn
            conn.abort()
        return None

    def _put(self, conn: _Connection) -> None:
        now = time.monotonic()
        conn.idle_since = now
        idle = self._idle
        idle.append(conn)
        while idle and (len(idle) > self.max_idle or idle[0].closed or idle[0].idle_since < now - self.keepalive_s):
            idle.pop(0).abort()
        self._slot_freed()

    def _forget(self, conn: _Connection) -> None:
        self._live.discard(conn)
        self._slot_freed()


class _TunnelHead(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT: its status line, once the head has arrived."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._buf = b""

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if b"\r\n\r\n" in self._buf and not self.answer.done():
            self.answer.set_result(self._buf.split(b"\r\n", 1)[0].decode("latin-1").strip())
        elif len(self._buf) > 65536 and not self.answer.done():
            self.answer.set_exception(ConnectError("the proxy's answer to CONNECT has no end"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectError(f"the proxy closed the connection during CONNECT{': ' + str(exc) if exc else ''}"))


async def iter_lines(resp: Response, limit: int) -> AsyncIterator[bytes]:
    """The body's lines (without their ends), however the pieces split them; a line over ``limit`` bytes raises
    :class:`~hybrid.ProtocolError`. Pieces of an unfinished line are kept apart and joined once, when its
    end arrives (no copying per piece)."""
    pending: list[bytes] = []
    pending_len = 0
    async for piece in resp.iter_chunks():
        if b"\n" not in piece:
            pending.append(piece)
            pending_len += len(piece)
            if pending_len > limit:
                raise ProtocolError(f"an event line is over {limit} bytes")
            continue
        if pending:
            pending.append(piece)
            piece = b"".join(pending)
            pending.clear()
            pending_len = 0
        *full, rest = piece.split(b"\n")
        for line in full:
            if len(line) > limit:
                raise ProtocolError(f"an event line is over {limit} bytes")
            yield line.rstrip(b"\r")
        if rest:
            pending.append(rest)
            pending_len = len(rest)
    if pending:
        yield b"".join(pending).rstrip(b"\r")


def proxy_from_environment(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy for ``url`` that the environment names (HTTPS_PROXY / HTTP_PROXY, else ALL_PROXY; either
    case), or ``None`` when there is none or NO_PROXY excludes the host. Loopback hosts are never proxied: a
    local vLLM or llama.cpp server must not go out through the office proxy."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    env = os.environ if environ is None else environ
    found = {k.lower(): v for k, v in env.items() if k.lower().endswith("_proxy") and v}
    proxy = found.get(f"{parts.scheme}_proxy") or found.get("all_proxy")
    if not proxy:
        return None
    no_proxy = found.get("no_proxy", "")
    if no_proxy and urllib.request.proxy_bypass_environment(host, {"no": no_proxy}):  # type: ignore[attr-defined]
        return None
    return proxy if "://" in proxy else "http://" + proxy


def _header_block(items: Iterable[tuple[str, str]]) -> bytes:
    """Header lines, names in their conventional case (Content-Type): names are case-insensitive, but some
    proxies add a header they think missing when it is only spelled in lower case."""
    lines = []
    for name, value in items:
        if any(c in name or c in value for c in "\r\n\0"):
            raise ValueError(f"header {name!r} has a line break in its name or value")
        lines.append(f"{'-'.join(w.capitalize() for w in name.split('-'))}: {value}\r\n")
    return "".join(lines).encode("latin-1")
