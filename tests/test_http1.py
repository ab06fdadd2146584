"""The upstream HTTP/1.1 client against real servers (the tests' uvicorn faults, plain and over TLS), and
against scripted sockets for what a healthy server never does (a keep-alive race, a body cut off, bytes that are
not HTTP, a stall)."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
from collections.abc import Awaitable, Callable, Iterator

import pytest

from hybrid import http1
from hybrid import metrics
from tests.procs import ManagedProcess, free_port, start_fault_upstream, start_proxy

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
JSON = {"content-type": "application/json"}



@pytest.fixture(scope="module")
def tls_upstream(tls_files: tuple[str, str, str]) -> Iterator[ManagedProcess]:
    proc = start_fault_upstream(tls=tls_files)
    yield proc
    proc.stop()


def run(coro: Awaitable[object]) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def sse_payloads(body: bytes) -> list[str]:
    return [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]


# ------------------------------------------------------------------------------------------ real servers


def test_keep_alive_reuses_one_connection(faults: ManagedProcess) -> None:
    async def go() -> tuple[list[int], int]:
        pool = http1.Pool(faults.url + "/ok/v1", headers=JSON, name="keepalive-test")
        statuses = []
        for _ in range(5):
            status, body = await pool.post("/chat/completions", CHAT)
            assert json.loads(body)["choices"][0]["message"]["content"] == "Hello from the fault upstream."
            statuses.append(status)
        await pool.close()
        return statuses, pool.opened

    statuses, opened = run(go())  # type: ignore[misc]
    assert statuses == [200] * 5
    assert opened == 1
    assert metrics.sample("hybrid_upstream_connections_total", upstream="keepalive-test") == 1


def test_streamed_chunked_body_arrives_whole_and_keeps_the_connection(faults: ManagedProcess) -> None:
    async def go() -> tuple[str, list[str], int]:
        pool = http1.Pool(faults.url + "/ok/v1", headers=JSON)
        resp = await pool.request("POST", "/chat/completions", STREAM)
        async with resp:
            pieces = [p async for p in resp.iter_chunks()]
        status, _ = await pool.post("/chat/completions", CHAT)
        assert status == 200
        await pool.close()
        return resp.headers.get("transfer-encoding", ""), sse_payloads(b"".join(pieces)), pool.opened

    encoding, events, opened = run(go())  # type: ignore[misc]
    assert encoding == "chunked"
    assert events[-1] == "[DONE]"
    words = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert "".join(words) == "Hello from the fault upstream."
    assert opened == 1


def test_a_cut_off_stream_raises_after_what_arrived(faults: ManagedProcess) -> None:
    async def go() -> tuple[bytes, BaseException | None, int]:
        pool = http1.Pool(faults.url, headers=JSON)
        got: list[bytes] = []
        error = None
        resp = await pool.request("POST", "/disconnect/v1/chat/completions", STREAM)
        try:
            async for piece in resp.iter_chunks():
                got.append(piece)
        except http1.HTTPClientError as exc:
            error = exc
        finally:
            resp.release()
        assert (await pool.get("/health"))[0] == 200  # on a new connection: a broken one is never reused
        await pool.close()
        return b"".join(got), error, pool.opened

    body, error, opened = run(go())  # type: ignore[misc]
    assert isinstance(error, http1.ConnectionClosed)
    assert len(sse_payloads(body)) == 2  # the two events sent before the drop
    assert opened == 2


def test_https_with_a_private_ca(tls_upstream: ManagedProcess, tls_files: tuple[str, str, str]) -> None:
    async def go() -> tuple[int, BaseException | None]:
        context = ssl.create_default_context(cafile=tls_files[2])
        pool = http1.Pool(tls_upstream.url + "/ok/v1", headers=JSON, ssl_context=context)
        status, _ = await pool.post("/chat/completions", CHAT)
        await pool.close()
        untrusting = http1.Pool(tls_upstream.url + "/ok/v1", headers=JSON)  # system CAs only
        try:
            await untrusting.post("/chat/completions", CHAT)
        except http1.ConnectError as exc:
            return status, exc
        return status, None

    status, error = run(go())  # type: ignore[misc]
    assert status == 200
    assert error is not None and "certificate" in str(error).lower()


@pytest.fixture(scope="module")
def proxy() -> Iterator[ManagedProcess]:
    proc = start_proxy("hybrid:s3cret")
    yield proc
    proc.stop()


def _through(proxy: ManagedProcess, credentials: str) -> str:
    return proxy.url.replace("http://", f"http://{credentials}@")


def test_plain_http_through_a_proxy(faults: ManagedProcess, proxy: ManagedProcess) -> None:
    async def go() -> tuple[int, int]:
        good = http1.Pool(faults.url + "/ok/v1", headers=JSON, proxy=_through(proxy, "hybrid:s3cret"))
        bad = http1.Pool(faults.url + "/ok/v1", headers=JSON, proxy=_through(proxy, "hybrid:wrong"))
        return (await good.post("/chat/completions", CHAT))[0], (await bad.post("/chat/completions", CHAT))[0]

    assert run(go()) == (200, 407)  # the proxy is in the path: it turns away wrong credentials


def test_https_through_a_proxy_tunnel(tls_upstream: ManagedProcess, proxy: ManagedProcess,
                                      tls_files: tuple[str, str, str]) -> None:
    async def go() -> tuple[int, int, BaseException | None]:
        context = ssl.create_default_context(cafile=tls_files[2])
        good = http1.Pool(tls_upstream.url + "/ok/v1", headers=JSON, ssl_context=context,
                          proxy=_through(proxy, "hybrid:s3cret"))
        statuses = [(await good.post("/chat/completions", CHAT))[0] for _ in range(3)]
        bad = http1.Pool(tls_upstream.url + "/ok/v1", headers=JSON, ssl_context=context,
                         proxy=_through(proxy, "hybrid:wrong"))
        try:
            await bad.post("/chat/completions", CHAT)
        except http1.ConnectError as exc:
            return statuses[-1], good.opened, exc
        return statuses[-1], good.opened, None

    status, opened, refused = run(go())  # type: ignore[misc]
    assert status == 200 and opened == 1  # one tunnel, kept alive
    assert refused is not None and "407" in str(refused)


def test_proxy_from_the_environment() -> None:
    env = {"HTTPS_PROXY": "proxy.corp:3128", "http_proxy": "http://web.corp:8080", "NO_PROXY": "internal.corp,.lan"}
    assert http1.proxy_from_environment("https://api.openai.com/v1", env) == "http://proxy.corp:3128"
    assert http1.proxy_from_environment("http://models.example/v1", env) == "http://web.corp:8080"
    assert http1.proxy_from_environment("https://internal.corp/v1", env) is None
    assert http1.proxy_from_environment("http://gpu.lan:8000/v1", env) is None
    assert http1.proxy_from_environment("http://127.0.0.1:8000/v1", env) is None  # loopback: never
    assert http1.proxy_from_environment("http://localhost:8000/v1", env) is None
    assert http1.proxy_from_environment("https://api.openai.com/v1", {"ALL_PROXY": "http://all:1"}) == "http://all:1"
    assert http1.proxy_from_environment("https://api.openai.com/v1", {}) is None


def test_nothing_listening_is_a_connect_error() -> None:
    async def go() -> None:
        await http1.Pool(f"http://127.0.0.1:{free_port()}").get("/")

    with pytest.raises(http1.ConnectError, match="cannot connect to 127.0.0.1"):
        run(go())


def test_a_header_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        http1.Pool("http://127.0.0.1:1", headers={"authorization": "Bearer x\r\nx-evil: 1"})


# ------------------------------------------------------------------------------------------ scripted sockets

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


async def serve(script: Script, client: Callable[[str], Awaitable[object]]) -> tuple[object, int]:
    """Run ``client(url)`` against a socket server that runs ``script`` per connection; also answer how many
    connections the server saw."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await script(reader, writer, connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await client(f"http://127.0.0.1:{port}")
    finally:
        server.close()
    return result, connections


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_a_body_that_runs_to_the_close() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello ")
        await writer.drain()
        writer.write(b"world")

    (status, body), _ = run(serve(script, lambda url: http1.Pool(url).get("/")))  # type: ignore[misc]
    assert (status, body) == (200, b"hello world")


def _drops_the_second_request(requests: list[int]):  # type: ignore[no-untyped-def]
    """A server whose keep-alive timeout races our reuse: it reads the second request and closes unanswered."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        requests.append(n)
        writer.write(ok(b"first" if n == 1 else b"second"))
        await writer.drain()
        await read_request(reader)  # the reused connection's request: read, then dropped unanswered
        requests.append(n)
        if n == 2:
            writer.write(ok(b"third"))
            await writer.drain()

    return script


def test_a_get_the_server_dropped_on_a_reused_connection_is_sent_again() -> None:
    requests: list[int] = []

    async def client(url: str) -> list[bytes]:
        pool = http1.Pool(url)
        return [(await pool.get("/"))[1] for _ in range(2)]

    bodies, connections = run(serve(_drops_the_second_request(requests), client))  # type: ignore[misc]
    assert bodies == [b"first", b"second"]
    assert connections == 2


def test_a_post_the_server_may_have_read_is_never_sent_twice() -> None:
    """The server read the POST before it closed: it may have acted on it (billed a completion), so the client
    hears an error instead of a silent second copy."""
    requests: list[int] = []

    async def client(url: str) -> list[object]:
        pool = http1.Pool(url)
        out: list[object] = [(await pool.post("/", b"x"))[1]]
        try:
            out.append((await pool.post("/", b"x"))[1])
        except http1.ConnectionClosed as exc:
            out.append(exc)
        return out

    results, connections = run(serve(_drops_the_second_request(requests), client))  # type: ignore[misc]
    assert results[0] == b"first" and isinstance(results[1], http1.ConnectionClosed)
    assert connections == 1 and requests == [1, 1]  # the server saw each request once


def test_a_post_on_a_connection_seen_closed_goes_on_a_fresh_one() -> None:
    """A connection the server closed while it sat idle is never written to: the POST provably did not leave."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(ok(b"first" if n == 1 else b"second"))
        await writer.drain()
        writer.close()

    async def client(url: str) -> list[bytes]:
        pool = http1.Pool(url)
        first = (await pool.post("/", b"x"))[1]
        await asyncio.sleep(0.2)  # the server's close arrives while the connection is idle
        return [first, (await pool.post("/", b"x"))[1]]

    bodies, connections = run(serve(script, client))  # type: ignore[misc]
    assert bodies == [b"first", b"second"]
    assert connections == 2


def test_a_fresh_connection_dropped_before_the_answer_is_an_error_not_a_retry() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)

    async def client(url: str) -> BaseException | None:
        try:
            await http1.Pool(url).post("/", b"x")
        except http1.ConnectionClosed as exc:
            return exc
        return None

    error, connections = run(serve(script, client))  # type: ignore[misc]
    assert isinstance(error, http1.ConnectionClosed)
    assert connections == 1


def test_a_gzipped_body_is_decoded() -> None:
    payload = json.dumps({"text": "x" * 5000}).encode()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(ok(gzip.compress(payload), b"content-encoding: gzip\r\n"))

    (status, body), _ = run(serve(script, lambda url: http1.Pool(url).get("/")))  # type: ignore[misc]
    assert status == 200 and body == payload


def test_bytes_that_are_not_http_are_a_protocol_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

    with pytest.raises(http1.ProtocolError, match="malformed HTTP answer"):
        run(serve(script, lambda url: http1.Pool(url).get("/")))


def test_the_deadline_interrupts_a_stalled_body_and_the_connection_is_dropped() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
            await writer.drain()
            await asyncio.sleep(5)
        else:
            writer.write(ok(b"fine"))
            await writer.drain()
            await asyncio.sleep(0.5)

    async def client(url: str) -> tuple[BaseException | None, bytes]:
        pool = http1.Pool(url)
        resp = await pool.request("GET", "/", timeout_s=0.3)
        error = None
        try:
            await resp.read()
        except http1.RequestTimeout as exc:
            error = exc
        return error, (await pool.get("/"))[1]

    (error, second), connections = run(serve(script, client))  # type: ignore[misc]
    assert isinstance(error, TimeoutError)
    assert second == b"fine"
    assert connections == 2


def test_an_answer_released_unread_closes_its_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234")  # half of it, for now
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"56789")
            await writer.drain()

    async def client(url: str) -> bytes:
        pool = http1.Pool(url)
        resp = await pool.request("GET", "/")
        resp.release()  # the caller lost interest (a client disconnect, a timeout upstream of us)
        return (await pool.get("/"))[1]

    body, connections = run(serve(script, client))  # type: ignore[misc]
    assert body == b"0123456789"
    assert connections == 2


def test_a_large_streamed_body_survives_flow_control() -> None:
    piece = bytes(range(256)) * 256  # 64 KiB

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(64):  # 4 MiB, faster than the reader takes it
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def client(url: str) -> tuple[int, int]:
        resp = await http1.Pool(url).request("GET", "/")
        total, most_held = 0, 0
        async for data in resp.iter_chunks():
            total += len(data)
            most_held = max(most_held, resp._buffered)
            if total % (1 << 20) < len(data):
                await asyncio.sleep(0.05)  # a slow consumer
        return total, most_held

    (total, most_held), _ = run(serve(script, client))  # type: ignore[misc]
    assert total == 64 * len(piece)
    assert most_held < 2 << 20  # reading stopped while the consumer lagged: memory held stays bounded


# ------------------------------------------------------------------------------------------ bounds


async def get_or_refusal(url: str) -> object:
    """A GET's (status, body), or the ProtocolError the client refused the answer with."""
    try:
        return await http1.Pool(url).get("/")
    except http1.ProtocolError as exc:
        return exc


@pytest.mark.parametrize("head", [
    b"X-Junk: " + b"j" * (http1.MAX_HEAD_BYTES + 10) + b"\r\n",  # one enormous line
    b"".join(b"X-J%d: j\r\n" % i for i in range(http1.MAX_HEADERS + 1)),  # too many lines
    b"X-Junk: j\r\n" * 400_000,  # megabytes of lines
])
def test_an_answer_head_over_the_bounds_is_refused(head: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"content-length: 2\r\n\r\nok")
        await writer.drain()

    result, _ = run(serve(script, get_or_refusal))  # type: ignore[misc]
    assert isinstance(result, http1.ProtocolError), result


def test_silence_in_the_middle_of_a_body_is_a_read_timeout() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    async def client(url: str) -> tuple[list[bytes], object, float]:
        pool = http1.Pool(url, read_timeout_s=0.3)
        resp = await pool.request("GET", "/")
        got: list[bytes] = []
        started = asyncio.get_running_loop().time()
        try:
            async for piece in resp.iter_chunks():
                got.append(piece)
        except http1.ReadTimeout as exc:
            return got, exc, asyncio.get_running_loop().time() - started
        return got, None, 0.0

    (got, error, waited), _ = run(serve(script, client))  # type: ignore[misc]
    assert got == [b"hello"] and isinstance(error, http1.ReadTimeout)
    assert waited < 5


def test_connections_per_pool_are_capped_and_requests_wait_for_one() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(ok(b"done"))
            await writer.drain()

    async def client(url: str) -> list[bytes]:
        pool = http1.Pool(url, max_connections=2)
        answers = await asyncio.gather(*(pool.get("/") for _ in range(8)))
        return [body for _, body in answers]

    bodies, connections = run(serve(script, client))  # type: ignore[misc]
    assert bodies == [b"done"] * 8
    assert connections == 2


def test_a_gzip_bomb_stops_at_the_decoded_cap() -> None:
    zeros = b"\0" * (1 << 20)
    c = gzip.compress(b"".join([zeros] * (http1.MAX_DECODED_BYTES // len(zeros) + 8)), compresslevel=9)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(ok(c, b"content-encoding: gzip\r\n"))
        await writer.drain()

    result, _ = run(serve(script, get_or_refusal))  # type: ignore[misc]
    assert isinstance(result, http1.ProtocolError) and "inflates" in str(result)
