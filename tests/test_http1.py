"""The HTTP/1.1 connection pool against real servers on 127.0.0.1: a recording uvicorn app,
and small raw TCP servers (``RawServer``) that answer exactly the bytes a test needs,
count connections and see when the client closes one. No mocked transport."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.http1 import Http1Error, Http1Pool, Http1Response
from tests.servers import RecordingApp, Reply, UvicornThread, running

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


# -- raw servers -------------------------------------------------------------------------


class Conn:
    """What a raw server saw on one connection: the request heads, and whether the
    client closed it (EOF while the server waited for the next request)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.client_closed = asyncio.Event()
        self.ended = asyncio.Event()  # the handler returned: the server closed its end


Handler = Callable[[Reader, Writer, Conn], Awaitable[None]]


class RawServer:
    """A TCP server on 127.0.0.1 (TLS with ``ssl``) running ``handle`` per connection;
    ``conns`` lists what each connection saw, in the order they were accepted."""

    def __init__(self, handle: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self._handle = handle
        self._ssl = ssl_context
        self.conns: list[Conn] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[Writer] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[bytes]:
        return [head for conn in self.conns for head in conn.requests]

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: Reader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        conn = Conn()
        self.conns.append(conn)
        try:
            await self._handle(reader, writer, conn)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            conn.client_closed.set()
        except asyncio.CancelledError:
            # Only __aexit__ cancels these tasks; ending quietly keeps asyncio's stream
            # callback from logging the cancellation as an error.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            conn.ended.set()


async def read_request(reader: Reader, conn: Conn) -> bytes | None:
    """Read one request (head and Content-Length body); None at EOF (client closed)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        conn.client_closed.set()
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    conn.requests.append(head)
    return head + body


def answering(*answers: bytes, close_after: int | None = None) -> Handler:
    """Answer the requests on each connection with ``answers`` in turn (the last one
    repeats); after ``close_after`` answers close the connection, else keep it open until
    the client closes it."""

    async def handle(reader: Reader, writer: Writer, conn: Conn) -> None:
        n = 0
        while await read_request(reader, conn) is not None:
            writer.write(answers[min(n, len(answers) - 1)])
            await writer.drain()
            n += 1
            if n == close_after:
                return

    return handle


async def wait_for(event: asyncio.Event, what: str) -> None:
    """Await an event the test relies on (a generous bound so a failure cannot hang)."""
    try:
        async with asyncio.timeout(5.0):
            await event.wait()
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


# -- fixtures and helpers --------------------------------------------------------------


@pytest.fixture
async def pool() -> AsyncIterator[Http1Pool]:
    async with Http1Pool() as p:
        yield p


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
def uv(app: RecordingApp) -> Iterator[UvicornThread]:
    with running(app) as server:
        yield server


def header(response: Http1Response, name: str) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value
    return None


async def get(pool: Http1Pool, url: str, timeout_s: float = 5.0) -> Http1Response:
    return await pool.request("GET", url, [], b"", timeout_s=timeout_s)


async def failure(call: Awaitable[Http1Response]) -> Http1Error:
    with pytest.raises(Http1Error) as caught:
        await call
    return caught.value


# -- the request on the wire -----------------------------------------------------------


async def test_post_reaches_the_app_as_sent(
    pool: Http1Pool, uv: UvicornThread, app: RecordingApp
) -> None:
    """Method, target, headers (in order, with duplicates), Host with the port,
    Content-Length and body reach the app; its status, headers and body come back."""
    app.reply = Reply(status=201, content_type="text/xml", body=b"<Response/>")
    body = bytes(range(256))
    headers = [("Content-Type", "application/octet-stream"), ("X-A", "1"), ("X-A", "2")]
    response = await pool.request("POST", f"{uv.url}/hook?a=1&b=%2B", headers, body, timeout_s=5)
    assert (response.status, response.body) == (201, b"<Response/>")
    assert header(response, "content-type") == "text/xml"
    seen = app.last
    assert (seen.method, seen.path, seen.query, seen.body) == ("POST", "/hook", "a=1&b=%2B", body)
    assert seen.header_all("host") == [f"127.0.0.1:{uv.port}"]
    assert seen.header_all("content-length") == ["256"]
    assert seen.header_all("x-a") == ["1", "2"]
    names = [name for name, _ in seen.headers]
    assert names.index("content-type") < names.index("x-a")


async def test_length_is_left_out_only_for_a_bodyless_get(
    pool: Http1Pool, uv: UvicornThread, app: RecordingApp
) -> None:
    """A GET without a body sends no Content-Length; a POST without one says 0."""
    await get(pool, f"{uv.url}/g")
    assert not app.last.has_header("content-length")
    await pool.request("POST", f"{uv.url}/p", [], b"", timeout_s=5.0)
    assert app.last.header_all("content-length") == ["0"]


async def test_header_values_are_sent_as_utf8(
    pool: Http1Pool, uv: UvicornThread, app: RecordingApp
) -> None:
    """A non-ASCII header value goes out as its UTF-8 bytes."""
    await pool.request("POST", f"{uv.url}/h", [("X-Name", "José €")], b"", timeout_s=5.0)
    assert (app.last.header("x-name") or "").encode("latin-1") == "José €".encode()


async def test_target_goes_out_as_given(pool: Http1Pool) -> None:
    """Escapes in the URL are not requoted; bytes a request line cannot hold (space,
    non-ASCII) are percent-encoded; the fragment is dropped; Host omits a default port."""
    async with RawServer(answering(OK)) as server:
        await get(pool, f"{server.url}/a%7Eb/c+d?x=%2b&y=a b&z=é#frag")
        await get(pool, f"{server.url}")
    first, second = server.requests
    assert first.startswith(b"GET /a%7Eb/c+d?x=%2b&y=a%20b&z=%C3%A9 HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{server.port}\r\n".encode() in first
    assert second.startswith(b"GET / HTTP/1.1\r\n")


async def test_url_credentials_become_basic_auth(
    pool: Http1Pool, uv: UvicornThread, app: RecordingApp
) -> None:
    """user:password@ in the URL is sent as Authorization: Basic (replacing the caller's)
    and is not part of Host."""
    url = f"http://app%20user:p%40ss@127.0.0.1:{uv.port}/hook"
    await pool.request("POST", url, [("Authorization", "Bearer x")], b"x", timeout_s=5.0)
    expected = "Basic " + base64.b64encode(b"app user:p@ss").decode()
    assert app.last.header_all("authorization") == [expected]
    assert app.last.header("host") == f"127.0.0.1:{uv.port}"


async def test_unusable_url_raises_value_error(pool: Http1Pool) -> None:
    """A URL that is not http(s), has no host or has a bad port is a ValueError."""
    for url in ("ftp://example.com/x", "http:///x", "http://h:99999/x", "/relative"):
        with pytest.raises(ValueError):
            await get(pool, url, timeout_s=1.0)


# -- keep-alive --------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(pool: Http1Pool) -> None:
    """Sequential requests to one host share one connection."""
    async with RawServer(answering(OK)) as server:
        for _ in range(5):
            assert (await get(pool, f"{server.url}/x")).body == b"ok"
    assert len(server.conns) == 1
    assert len(server.requests) == 5


async def test_keep_alive_reuses_connections_with_uvicorn(
    pool: Http1Pool, uv: UvicornThread, app: RecordingApp
) -> None:
    """Concurrent requests open at most one connection each, then reuse them."""
    for _ in range(3):
        results = await asyncio.gather(*(get(pool, f"{uv.url}/c") for _ in range(8)))
        assert all(r.status == 200 for r in results)
    assert len(app.requests) == 24
    assert pool._total <= 8  # white-box: connections open or opening


async def test_idle_connection_closed_by_server_is_replaced(pool: Http1Pool) -> None:
    """A server that closes a connection after its answer: the pool notices, and the next
    request opens a new connection and succeeds."""
    async with RawServer(answering(OK, close_after=1)) as server:
        assert (await get(pool, f"{server.url}/1")).status == 200
        await wait_for(server.conns[0].ended, "the server closed its end")
        for _ in range(500):  # white-box: the pool drops the idle connection on its own
            if pool._total == 0:
                break
            await asyncio.sleep(0.01)
        assert pool._total == 0
        assert (await get(pool, f"{server.url}/2")).status == 200
    assert len(server.conns) == 2


async def test_request_crossing_a_keep_alive_close_is_retried_once(pool: Http1Pool) -> None:
    """The stale keep-alive race: the server reads the second request on a reused
    connection and closes without answering; the pool resends it on a new connection."""

    async def handle(reader: Reader, writer: Writer, conn: Conn) -> None:
        await read_request(reader, conn)
        writer.write(OK)
        await writer.drain()
        if len(conn.requests) == 1 and conn is server.conns[0]:
            await read_request(reader, conn)  # the next request: dropped with the connection

    async with RawServer(handle) as server:
        assert (await get(pool, f"{server.url}/1")).status == 200
        assert (await get(pool, f"{server.url}/2")).status == 200
    assert [len(c.requests) for c in server.conns] == [2, 1]


async def test_connection_close_answer_is_not_reused(pool: Http1Pool) -> None:
    """An answer with Connection: close ends the connection, even if the server keeps it
    open."""
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    async with RawServer(answering(closing)) as server:
        for _ in range(2):
            assert (await get(pool, f"{server.url}/x")).body == b"ok"
        await wait_for(server.conns[0].client_closed, "the pool closed the connection")
    assert len(server.conns) == 2


async def test_http10_answer_is_not_reused_without_keep_alive(pool: Http1Pool) -> None:
    """An HTTP/1.0 answer closes the connection unless it says Connection: keep-alive."""
    plain = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    kept = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    async with RawServer(answering(plain)) as server:
        for _ in range(2):
            assert (await get(pool, f"{server.url}/x")).body == b"ok"
    assert len(server.conns) == 2
    async with RawServer(answering(kept)) as server:
        for _ in range(2):
            assert (await get(pool, f"{server.url}/x")).body == b"ok"
    assert len(server.conns) == 1


async def test_idle_connections_expire_after_keepalive_s() -> None:
    """An idle connection is closed once it has been idle for keepalive_s."""
    async with RawServer(answering(OK)) as server, Http1Pool(keepalive_s=0.05) as pool:
        await get(pool, f"{server.url}/x")
        await wait_for(server.conns[0].client_closed, "the pool closed the idle connection")
        await get(pool, f"{server.url}/x")
    assert len(server.conns) == 2


async def test_unasked_bytes_after_an_answer_end_the_connection(pool: Http1Pool) -> None:
    """Bytes after a complete answer (a second answer nobody asked for) make the
    connection unusable: the next request uses a new one."""
    async with RawServer(answering(OK + OK)) as server:
        assert (await get(pool, f"{server.url}/1")).body == b"ok"
        assert (await get(pool, f"{server.url}/2")).body == b"ok"
    assert len(server.conns) == 2


# -- answer framing ----------------------------------------------------------------------


async def test_chunked_answer_is_decoded(pool: Http1Pool) -> None:
    """A chunked answer is reassembled (trailers are not headers) and the connection is
    reused."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/xml\r\n\r\n"
        b"5\r\n<Resp\r\n7;ext=1\r\nonse/>\n\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with RawServer(answering(chunked)) as server:
        for _ in range(2):
            response = await get(pool, f"{server.url}/x")
            assert response.body == b"<Response/>\n"
            assert header(response, "x-trailer") is None
            assert header(response, "content-type") == "text/xml"
    assert len(server.conns) == 1


async def test_answer_without_length_is_read_to_eof(pool: Http1Pool) -> None:
    """An answer with neither Content-Length nor chunking runs to the end of the
    connection, arriving in pieces."""

    async def handle(reader: Reader, writer: Writer, conn: Conn) -> None:
        await read_request(reader, conn)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"world")
        await writer.drain()
        writer.close()

    async with RawServer(handle) as server:
        assert (await get(pool, f"{server.url}/1")).body == b"hello world"
        assert (await get(pool, f"{server.url}/2")).body == b"hello world"
    assert len(server.conns) == 2


async def test_interim_answers_are_skipped(pool: Http1Pool) -> None:
    """100 Continue and 103 Early Hints before the final answer are skipped, their
    headers too."""
    interim = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    )
    async with RawServer(answering(interim + OK)) as server:
        for _ in range(2):
            response = await pool.request("POST", f"{server.url}/x", [], b"data", timeout_s=5)
            assert (response.status, response.body) == (200, b"ok")
            assert header(response, "link") is None
    assert len(server.conns) == 1


async def test_no_body_statuses_and_head(pool: Http1Pool) -> None:
    """204 and 304 have no body (whatever they announce) and keep the connection; a HEAD
    answer's Content-Length announces no body either."""
    no_content = b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"
    not_modified = b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n'
    async with RawServer(answering(no_content, not_modified, OK)) as server:
        first = await get(pool, f"{server.url}/1")
        second = await get(pool, f"{server.url}/2")
        third = await get(pool, f"{server.url}/3")
    assert [(r.status, r.body) for r in (first, second, third)] == [
        (204, b""),
        (304, b""),
        (200, b"ok"),
    ]
    assert len(server.conns) == 1
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
    async with RawServer(answering(head)) as server:
        response = await pool.request("HEAD", f"{server.url}/h", [], b"", timeout_s=5.0)
        assert (response.status, response.body) == (200, b"")
        assert header(response, "content-length") == "1000"
    assert server.requests[0].startswith(b"HEAD /h HTTP/1.1\r\n")


# -- failures ----------------------------------------------------------------------------


async def test_oversized_answer_is_invalid() -> None:
    """An answer larger than max_response_bytes fails with invalid_response and its
    connection is closed."""
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
    async with RawServer(answering(big)) as server, Http1Pool(max_response_bytes=1000) as pool:
        error = await failure(get(pool, f"{server.url}/x"))
        assert error.kind == "invalid_response"
        assert "1000 bytes" in str(error)
        await wait_for(server.conns[0].client_closed, "the pool closed the connection")


async def test_garbage_answer_is_invalid(pool: Http1Pool) -> None:
    """Bytes that are not an HTTP answer fail with invalid_response."""
    async with RawServer(answering(b"SSH-2.0-OpenSSH_9.6\r\nnonsense\r\n\r\n")) as server:
        error = await failure(get(pool, f"{server.url}/x"))
    assert error.kind == "invalid_response"


async def test_switching_protocols_is_invalid(pool: Http1Pool) -> None:
    """A 101 (the pool never asks for an upgrade) fails with invalid_response."""
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
    async with RawServer(answering(upgrade)) as server:
        error = await failure(get(pool, f"{server.url}/x"))
    assert error.kind == "invalid_response"


async def test_answer_cut_off_is_invalid(pool: Http1Pool) -> None:
    """A connection closed in the middle of an answer fails with invalid_response."""
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"
    async with RawServer(answering(cut, close_after=1)) as server:
        error = await failure(get(pool, f"{server.url}/x"))
    assert error.kind == "invalid_response"


async def test_closed_without_answer_on_a_new_connection_is_connect(pool: Http1Pool) -> None:
    """A new connection closed before any answer fails with connect (no retry)."""

    async def handle(reader: Reader, writer: Writer, conn: Conn) -> None:
        await read_request(reader, conn)

    async with RawServer(handle) as server:
        error = await failure(get(pool, f"{server.url}/x"))
    assert error.kind == "connect"
    assert len(server.requests) == 1


async def test_refused_port_is_connect(pool: Http1Pool) -> None:
    """Nothing listening: connect."""
    async with RawServer(answering(OK)) as server:
        url = server.url
    error = await failure(get(pool, f"{url}/x"))
    assert error.kind == "connect"


async def test_server_that_never_answers_times_out(pool: Http1Pool) -> None:
    """No answer within timeout_s: timeout, and the connection is closed."""

    async def handle(reader: Reader, writer: Writer, conn: Conn) -> None:
        await read_request(reader, conn)
        await read_request(reader, conn)  # returns at EOF: the client gave up

    async with RawServer(handle) as server:
        error = await failure(get(pool, f"{server.url}/x", timeout_s=0.2))
        assert error.kind == "timeout"
        await wait_for(server.conns[0].client_closed, "the pool closed the connection")


async def test_waiters_are_served_in_turn_within_limit_per_host() -> None:
    """Beyond limit_per_host, requests wait for a connection and then reuse it; one whose
    deadline passes while waiting fails with timeout."""
    release = asyncio.Event()

    async def handle(reader: Reader, writer: Writer, conn: Conn) -> None:
        while await read_request(reader, conn) is not None:
            await release.wait()
            writer.write(OK)
            await writer.drain()

    async with RawServer(handle) as server, Http1Pool(limit_per_host=2) as pool:
        tasks = [asyncio.create_task(get(pool, f"{server.url}/{i}")) for i in range(6)]
        hopeless = asyncio.create_task(get(pool, f"{server.url}/late", timeout_s=0.1))
        error = await failure(hopeless)
        assert error.kind == "timeout"
        assert len(server.conns) == 2
        release.set()
        results = await asyncio.gather(*tasks)
    assert all(r.body == b"ok" for r in results)
    assert len(server.conns) == 2
    assert len(server.requests) == 6


async def test_total_limit_closes_an_idle_connection_to_another_host() -> None:
    """At the total limit, a request to another host closes an idle connection."""
    async with (
        RawServer(answering(OK)) as first,
        RawServer(answering(OK)) as second,
        Http1Pool(limit=1) as pool,
    ):
        await get(pool, f"{first.url}/x")
        await get(pool, f"{second.url}/x")
        await wait_for(first.conns[0].client_closed, "the idle connection was closed")


async def test_total_limit_makes_another_host_wait_for_a_busy_connection() -> None:
    """At the total limit with every connection busy, a request to another host waits;
    when the busy answer ends, that connection is closed to make room for it."""
    release = asyncio.Event()

    async def slow(reader: Reader, writer: Writer, conn: Conn) -> None:
        while await read_request(reader, conn) is not None:
            await release.wait()
            writer.write(OK)
            await writer.drain()

    async with (
        RawServer(slow) as first,
        RawServer(answering(OK)) as second,
        Http1Pool(limit=1) as pool,
    ):
        busy = asyncio.create_task(get(pool, f"{first.url}/x"))
        other = asyncio.create_task(get(pool, f"{second.url}/x"))
        await asyncio.sleep(0.05)
        assert not other.done() and second.conns == []
        release.set()
        assert (await busy).body == b"ok"
        assert (await other).body == b"ok"
        await wait_for(first.conns[0].client_closed, "the first host's connection closed")


async def test_large_request_body_arrives_whole(
    pool: Http1Pool, uv: UvicornThread, app: RecordingApp
) -> None:
    """A body far beyond the transport's write buffer is sent whole (the transport drains
    it while the pool waits for the answer)."""
    body = bytes(range(256)) * (16 * 1024)  # 4 MiB
    response = await pool.request("POST", f"{uv.url}/big", [], body, timeout_s=10.0)
    assert response.status == 200
    assert app.last.body == body


async def test_cancellation_propagates_and_closes_the_connection(pool: Http1Pool) -> None:
    """Cancelling a request in flight raises CancelledError and closes its connection;
    the next request uses a new one."""
    arrived = asyncio.Event()

    async def handle(reader: Reader, writer: Writer, conn: Conn) -> None:
        if not server.conns[1:]:  # the first connection never answers
            await read_request(reader, conn)
            arrived.set()
            await read_request(reader, conn)
            return
        await answering(OK)(reader, writer, conn)

    async with RawServer(handle) as server:
        task = asyncio.create_task(get(pool, f"{server.url}/slow"))
        await wait_for(arrived, "the request arrived")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(server.conns[0].client_closed, "the pool closed the connection")
        assert (await get(pool, f"{server.url}/next")).body == b"ok"
    assert len(server.conns) == 2


async def test_aclose_closes_connections_and_fails_waiters() -> None:
    """aclose() closes idle connections, fails requests waiting for a connection, and
    makes later requests a RuntimeError."""
    second = asyncio.Event()

    async def handle(reader: Reader, writer: Writer, conn: Conn) -> None:
        while await read_request(reader, conn) is not None:
            if len(server.requests) == 1:  # later ones get no answer
                writer.write(OK)
                await writer.drain()
            else:
                second.set()

    async with RawServer(handle) as server:
        pool = Http1Pool(limit_per_host=1)
        await get(pool, f"{server.url}/1")  # leaves one idle connection
        busy = asyncio.create_task(get(pool, f"{server.url}/2"))
        waiting = asyncio.create_task(get(pool, f"{server.url}/3"))
        await wait_for(second, "the second request arrived")  # the third one waits
        await pool.aclose()
        for task in (busy, waiting):
            error = await failure(task)
            assert error.kind == "connect"
        await wait_for(server.conns[0].client_closed, "aclose() closed the connection")
        with pytest.raises(RuntimeError):
            await get(pool, f"{server.url}/4")
        await pool.aclose()  # idempotent


# -- TLS ---------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path, str]:
    """A certificate for 127.0.0.1 and localhost: (cert file, key file, cert PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sendergate test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(pem)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file, pem.decode()


async def test_tls_with_a_trusted_certificate(tmp_path: Path) -> None:
    """https works with the pool's ssl_context (and is reused); a pool that does not
    trust the certificate fails with connect."""
    cert_file, key_file, pem = _self_signed(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    client_context = ssl.create_default_context(cadata=pem)
    async with RawServer(answering(OK), ssl_context=server_context) as server:
        async with Http1Pool(ssl_context=client_context) as pool:
            for host in ("127.0.0.1", "localhost", "localhost"):
                response = await get(pool, f"https://{host}:{server.port}/secure")
                assert response.body == b"ok"
        assert f"\r\nHost: localhost:{server.port}\r\n".encode() in server.requests[-1]
        assert len(server.conns) == 2  # one per host name
        async with Http1Pool() as untrusting:
            error = await failure(get(untrusting, f"https://127.0.0.1:{server.port}/"))
        assert error.kind == "connect"
        assert "certificate" in str(error).lower()
