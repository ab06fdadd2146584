"""Counting an HTTP/1.1 head's bytes before a parser sees them: what both ends of the router bound (the server's
request heads in :mod:`hybrid.edge`, upstream answer heads in :mod:`hybrid.http1`)."""

from __future__ import annotations


class HeadMeter:
    """The bytes of one head so far. A read that also carries the start of the body is not held against the head:
    if the head's end (CRLFCRLF, which may span two reads) comes within the limit, the rest is body."""

    __slots__ = ("limit", "seen", "tail")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0
        self.tail = b""

    def reset(self) -> None:
        self.seen = 0
        self.tail = b""

    def over(self, data: bytes) -> bool:
        """Count ``data``; ``True`` when the head is past the limit."""
        total = self.seen + len(data)
        if total > self.limit:
            end = (self.tail + data).find(b"\r\n\r\n")
            if end < 0 or self.seen - len(self.tail) + end + 4 > self.limit:
                return True
        self.seen = total
        self.tail = data[-3:]
        return False
