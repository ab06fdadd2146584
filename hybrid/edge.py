"""The server's edge: bounds on what a client connection may cost before the app sees a request.

uvicorn's httptools protocol has no limit on header size (it also joins the request target with ``+=``, which
turns a 100 MiB header into seconds of copying), no deadline for a request head, and keeps a connection that
never finishes its head for ever. :class:`GuardedHttpToolsProtocol` adds, per connection:

- a cap on the bytes of a request head (request line + headers): over it, ``431`` and the connection closes;
- a deadline for a head, from its first byte (or the connection's opening) to its end: past it, ``408`` (checked
  once a second for all connections by one timer);
- a cap on open connections for the whole server: at the cap a new connection evicts the connection that has
  been waiting longest for the rest of its head, else it is answered ``503`` and closed.

These are the limits nginx and h11 place on heads (nginx: ``large_client_header_buffers``,
``client_header_timeout``; h11: ``max_incomplete_event_size``); put a proxy in front for more.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hybrid.heads import HeadMeter

log = logging.getLogger("hybrid.edge")

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class EdgeLimits:
    """The bounds, set once at start (:func:`configure`); read by every connection."""

    max_head_bytes = 32 * 1024
    head_timeout_s = 10.0
    max_connections = 1024


LIMITS = EdgeLimits()


def configure(max_head_bytes: int, head_timeout_s: float, max_connections: int) -> int:
    """Set the edge's bounds; raises the open-file limit to make room for ``max_connections`` and returns the
    connection cap that fits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + 256  # room for upstream sockets, the cache, the model files
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):  # pragma: no cover - not allowed here
            pass
    fits = max(16, soft - 256)
    if fits < max_connections:
        log.warning("open-file limit %d: serving at most %d connections (server.max_connections = %d)",
                    soft, fits, max_connections)
    LIMITS.max_head_bytes = max_head_bytes
    LIMITS.head_timeout_s = head_timeout_s
    LIMITS.max_connections = min(max_connections, fits)
    return LIMITS.max_connections


def _answer(status: int, message: str) -> bytes:
    body = (
        b'{"error":{"message":"' + message.encode() + b'","type":"invalid_request_error","param":null,"code":null}}'
    )
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % (status, _REASONS[status], len(body))
    ) + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds on request heads and on connections (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request head (a fresh connection is about to send one)
        self._waiting = True  # ...and the head's deadline runs (from the opening, or the head's first byte)
        self._head = HeadMeter(LIMITS.max_head_bytes)
        self._head_since = time.monotonic()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > LIMITS.max_connections and not self._evict():
            self._refuse(503, "The server has too many open connections; try again shortly.")
            return
        _Sweeper.watch(self.loop, self.connections)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if self._head.over(data):
                self._refuse(431, f"The request head is over {LIMITS.max_head_bytes} bytes.")
                return
            if not self._waiting:
                self._waiting = True
                self._head_since = time.monotonic()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = self._waiting = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # the next request on this connection starts a new head (its deadline from its first byte)
        self._in_head = True
        self._head.reset()

    # ---------------------------------------------------------------- helpers

    def _head_expired(self, now: float) -> bool:
        return self._waiting and now - self._head_since > LIMITS.head_timeout_s

    def _refuse(self, status: int, message: str) -> None:
        self._in_head = self._waiting = False
        if not self.transport.is_closing():
            self.transport.write(_answer(status, message))
            self.transport.close()
        self.connections.discard(self)

    def _evict(self) -> bool:
        """Close the connection that has waited longest in the middle of a head (a slow or stalled client);
        ``False`` when every connection is past its head (then the newcomer is refused)."""
        oldest: GuardedHttpToolsProtocol | None = None
        for conn in self.connections:
            if (
                conn is not self and isinstance(conn, GuardedHttpToolsProtocol) and conn._in_head
                and conn._head.seen > 0 and (oldest is None or conn._head_since < oldest._head_since)
            ):
                oldest = conn
        if oldest is None:
            for conn in self.connections:  # else one that is idle between requests, or has sent nothing yet
                if (
                    conn is not self and isinstance(conn, GuardedHttpToolsProtocol) and conn._in_head
                    and (conn.cycle is None or conn.cycle.response_complete)
                    and (oldest is None or conn._head_since < oldest._head_since)
                ):
                    oldest = conn
        if oldest is None:
            return False
        oldest._refuse(408, "The connection was closed to make room: its request head was not complete.")
        return True


class _Sweeper:
    """One timer for the whole server, not one per request: every second it closes the connections whose head
    is overdue (a timer armed and cancelled per request cost the pass-through path measurable time)."""

    _handle: asyncio.TimerHandle | None = None
    _connections: set[Any] | None = None

    @classmethod
    def watch(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        cls._connections = connections
        if cls._handle is None:
            cls._handle = loop.call_later(1.0, cls._sweep, loop)

    @classmethod
    def _sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
        cls._handle = None
        connections = cls._connections or set()
        now = time.monotonic()
        for conn in [c for c in connections if isinstance(c, GuardedHttpToolsProtocol) and c._head_expired(now)]:
            if not conn.transport.is_closing():
                conn._refuse(408, f"The request head did not arrive within {LIMITS.head_timeout_s:g}s.")
        if connections:
            cls._handle = loop.call_later(1.0, cls._sweep, loop)
