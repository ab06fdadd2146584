"""Slow, stalled and oversized clients against the live router's own server (hybrid/edge.py): heads are bounded
in bytes and time, connections in number, and a real client still gets its answer while the attack goes on."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.procs import ManagedProcess, start_router

KEY = "edge-key"
CONFIG = f"""
[server]
api_keys = ["{KEY}"]
header_timeout_s = 3.0
max_connections = 1024

[[backends]]
name = "cpu"
kind = "llamacpp"
model = "gemma-3-270m"
context = 512
threads = 1

[cache]
backend = "off"
"""


@pytest.fixture(scope="module")
def edge(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    proc = start_router(CONFIG, tmp_path_factory.mktemp("edge"), key=KEY)
    yield proc
    proc.stop()


def _addr(proc: ManagedProcess) -> tuple[str, int]:
    host, port = proc.url.split("//")[1].split(":")
    return host, int(port)


def _half_head(proc: ManagedProcess) -> socket.socket:
    s = socket.create_connection(_addr(proc), timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    return s


def _keyed_request(proc: ManagedProcess) -> httpx.Response:
    return httpx.get(proc.url + "/v1/models", headers={"authorization": f"Bearer {KEY}"}, timeout=10)


def test_stalled_heads_do_not_lock_out_a_real_client(edge: ManagedProcess) -> None:
    """1,100 connections each send half a head and stop; a keyed request still gets its answer."""
    stalled = [_half_head(edge) for _ in range(1100)]
    try:
        r = _keyed_request(edge)
        assert r.status_code == 200 and r.json()["data"]
        assert httpx.get(edge.url + "/health", timeout=5).status_code == 200
    finally:
        for s in stalled:
            s.close()


def test_a_head_that_never_ends_is_answered_408_and_closed(edge: ManagedProcess) -> None:
    s = _half_head(edge)
    try:
        started = time.monotonic()
        data = b""
        while chunk := s.recv(4096):  # the server answers, then closes
            data += chunk
        assert data.startswith(b"HTTP/1.1 408 "), data[:200]
        assert b'"error"' in data
        assert time.monotonic() - started < 10
    finally:
        s.close()


def test_an_oversized_head_is_431_without_stalling_the_loop(edge: ManagedProcess) -> None:
    """A 64 MiB header: refused at the cap, and /health keeps answering while it is sent."""
    reply: list[bytes] = []

    def attack() -> None:
        s = socket.create_connection(_addr(edge), timeout=30)
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
            piece = b"a" * (1 << 20)
            for _ in range(64):
                s.sendall(piece)
        except OSError:
            pass  # refused and closed mid-send: what should happen
        try:
            reply.append(s.recv(4096))
        except OSError:
            reply.append(b"")
        finally:
            s.close()

    t = threading.Thread(target=attack)
    t.start()
    slowest = 0.0
    while t.is_alive():
        t0 = time.monotonic()
        assert httpx.get(edge.url + "/health", timeout=5).status_code == 200
        slowest = max(slowest, time.monotonic() - t0)
        time.sleep(0.02)
    t.join()
    assert slowest < 1.0
    assert reply[0] == b"" or reply[0].startswith(b"HTTP/1.1 431 "), reply[0][:200]
    assert edge.proc is not None and edge.proc.poll() is None


def test_heads_and_bodies_within_the_bounds_still_work(edge: ManagedProcess) -> None:
    """A head near the cap and a body far over it (the head cap is not a body cap)."""
    headers = {"authorization": f"Bearer {KEY}", "x-filler": "f" * 30000}
    r = httpx.get(edge.url + "/v1/models", headers=headers, timeout=10)
    assert r.status_code == 200
    body = {"model": "local", "max_tokens": 1, "messages": [{"role": "user", "content": "hi " * 200}]}
    r = httpx.post(edge.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200, r.text
    big = {"model": "local", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "pad": "p" * 200_000}
    r = httpx.post(edge.url + "/v1/chat/completions", json=big, headers={"authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code in (200, 400), r.text  # past the head cap without a 431
