"""A small asyncio HTTP/1.1 client connection pool: the forwarder's transport.

Why not aiohttp or httpx: relaying an event is the gateway's hot path, and a general
client spends most of its CPU on what the gateway never uses (cookie jars, redirects,
multidict headers, URL normalisation, tracing hooks, a task per request). This pool does
only what a relay needs, on ``asyncio.Protocol`` and httptools' llhttp parser (the one
uvicorn uses), so that a request costs one head build, one ``transport.write``, one Future
and one timer. ``gateway/forward.py`` has the measured numbers.

Behaviour:

* ``request()`` sends one request and returns the whole answer (status, headers in order
  as received and latin-1 decoded, body). Redirects are not followed, nothing is
  decompressed, no header is added except ``Host`` (with the port when it is not the
  scheme's default), ``Content-Length`` (left out for a body-less GET, HEAD, OPTIONS or
  TRACE) and, for a URL with ``user:password@``, ``Authorization: Basic`` (replacing any
  ``Authorization`` the caller gave). Caller headers go out as given, encoded UTF-8: the
  caller validates them (names are tokens, no CR/LF/NUL in values) and must not pass
  ``Host``, ``Content-Length`` or ``Transfer-Encoding``. The request target is the URL's
  path and query as given (only bytes that cannot appear on a request line, such as
  spaces or non-ASCII, are percent-encoded); the fragment is dropped.
* 1xx interim answers (100 Continue, 103 Early Hints) are skipped; 204, 304 and answers to
  HEAD have no body; chunked bodies are decoded (trailer fields are dropped).
* One request per connection at a time (no pipelining). Connections are kept alive and
  reused last-in first-out per (scheme, host, port); an idle connection is closed after
  ``keepalive_s`` or as soon as the server closes it. An answer with ``Connection: close``,
  an HTTP/1.0 answer without keep-alive, an answer delimited by the end of the
  connection, an answer to HEAD, and any answer followed by unexpected bytes close the
  connection instead.
* At most ``limit_per_host`` connections per (scheme, host, port) and ``limit`` in all
  (an idle connection to another host is closed to make room); further requests wait,
  first come first served, within their own deadline.
* ``timeout_s`` bounds the whole call (waiting for a connection, connecting, sending,
  reading); connecting is also bounded by ``connect_timeout_s``. The pool never retries,
  except once on a fresh connection when a request sent on a reused keep-alive connection
  met the end of that connection before any byte of an answer (see ``request``).

Failures raise ``Http1Error`` with ``kind``: ``"connect"`` (refused, reset, DNS or TLS
failure, or closed before any answer), ``"timeout"``, or ``"invalid_response"`` (not
HTTP, a 101 upgrade, cut off mid-answer, or over ``max_response_bytes`` as received: head,
interim answers and chunk framing included). ``ValueError`` means an unusable URL or a
header that cannot be encoded; ``RuntimeError`` a request after ``aclose()``.
Cancellation propagates, and the connection it interrupted is closed.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import ssl
from collections.abc import Sequence
from types import TracebackType
from typing import Final, Literal, NamedTuple, cast
from urllib.parse import quote, unquote_to_bytes, urlsplit

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

Http1ErrorKind = Literal["connect", "timeout", "invalid_response"]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# Methods whose empty body is sent without Content-Length (as aiohttp and browsers do);
# any other method states ``Content-Length: 0``.
_NO_LENGTH_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Printable ASCII: what may stay as it is in a request target ("%" too: escapes are kept).
_TARGET_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F))
_MAX_CACHED_URLS: Final = 256


class Http1Error(Exception):
    """A request that got no usable answer; ``kind`` says why, the message what happened."""

    def __init__(self, kind: Http1ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: Http1ErrorKind = kind


class Http1Response(NamedTuple):
    """A complete answer: status, headers as received (latin-1 decoded, in order, with
    duplicates) and the body bytes."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class _Target(NamedTuple):
    """A parsed request URL: the pool key, where to connect, and the fixed part of the
    request head (`` <target> HTTP/1.1\\r\\nHost: ...\\r\\n``)."""

    key: tuple[str, str, int]
    host: str
    port: int
    tls: bool
    name: str  # host:port, for messages (never the URL: it may hold credentials)
    line: str
    has_auth: bool


class _Unexpected(Exception):
    """Raised inside a parser callback when the server starts an unasked-for answer."""


class _Host:
    """Connections to one (scheme, host, port): idle ones (oldest first), how many are
    open or opening, and the requests waiting for one."""

    __slots__ = ("count", "idle", "waiters")

    def __init__(self) -> None:
        self.idle: list[_Conn] = []
        self.count = 0
        # A waiter's result: a connection handed over, or None for "a slot is reserved
        # for you: open a connection".
        self.waiters: collections.deque[asyncio.Future[_Conn | None]] = collections.deque()


class Http1Pool:
    """A pool of HTTP/1.1 connections; see the module docstring.

    Create it anywhere; use it from one event loop; ``await aclose()`` when done.
    ``ssl_context`` is used for https (default: ``ssl.create_default_context()``, made on
    first use).
    """

    def __init__(
        self,
        *,
        limit: int = 256,
        limit_per_host: int = 128,
        keepalive_s: float = 4.0,
        connect_timeout_s: float = 3.0,
        max_response_bytes: int = 10 * 2**20,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if limit < 1 or limit_per_host < 1:
            raise ValueError("connection limits must be at least 1")
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._max_response_bytes = max_response_bytes
        self._ssl_context = ssl_context
        self._targets: dict[str, _Target] = {}
        self._hosts: dict[tuple[str, str, int], _Host] = {}
        self._total = 0  # connections open or opening, all hosts
        self._conns: set[_Conn] = set()  # connections with a live transport
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._writes: list[tuple[_Conn, bytes]] = []  # requests of this loop turn

    def _write_soon(self, conn: _Conn, payload: bytes) -> None:
        """Send the requests made in one turn of the event loop together, at its end:
        one wake-up of the application for all of them (see gateway.turns, which does
        the same for the gateway's own answers)."""
        if not self._writes:
            asyncio.get_running_loop().call_soon(self._flush_writes)
        self._writes.append((conn, payload))

    def _flush_writes(self) -> None:
        writes, self._writes = self._writes, []
        for conn, payload in writes:
            conn.write_now(payload)

    async def request(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        timeout_s: float,
    ) -> Http1Response:
        """Send ``method url`` with ``headers`` and ``body``; return the complete answer.

        Raises ``Http1Error`` (``connect``/``timeout``/``invalid_response``) when there is
        no usable answer within ``timeout_s`` seconds.
        """
        if self._closed:
            raise RuntimeError("Http1Pool used after aclose()")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        target = self._targets.get(url)
        if target is None:
            target = self._parse(url)
        if target.has_auth:
            headers = [h for h in headers if h[0].lower() != "authorization"]
        payload = _request_bytes(method, target.line, headers, body)
        now = loop.time()
        deadline = now + timeout_s
        fresh = False
        while True:
            conn = None if fresh else self._idle_conn(target.key, now)
            if conn is None:
                conn = await self._wait_or_open(target, deadline, loop)
            reused = conn.uses > 0
            answer: asyncio.Future[Http1Response] = loop.create_future()
            timer = loop.call_at(deadline, _expire, answer, target.name, timeout_s)
            conn.send(payload, answer, method == "HEAD")
            try:
                response = await answer
            except Http1Error as exc:
                timer.cancel()
                conn.abort()
                # The server closed a keep-alive connection while it sat idle in the pool,
                # and the request crossed that close. Retry once on a new connection: the
                # alternative is a 502 to the provider, which would then send the same
                # event again anyway, so this duplicates no more than that would.
                if (
                    reused
                    and not fresh
                    and exc.kind == "connect"
                    and not conn.got_bytes
                    and not self._closed
                ):
                    fresh = True
                    now = loop.time()
                    continue
                raise
            except BaseException:  # cancelled: never hand back a connection mid-answer
                timer.cancel()
                conn.abort()
                if answer.done() and not answer.cancelled():
                    answer.exception()  # mark it retrieved
                raise
            timer.cancel()
            if conn.reusable:
                self._put(conn)
            else:
                conn.close()
            return response

    async def __aenter__(self) -> Http1Pool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection and fail the requests waiting for one (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for host in self._hosts.values():
            while host.waiters:
                waiter = host.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(Http1Error("connect", "the connection pool was closed"))
        for conn in list(self._conns):
            conn.abort()
        # connection_lost (which closes each socket) runs from the loop's next iterations.
        for _ in range(5):
            if not self._conns:
                break
            await asyncio.sleep(0)

    # -- connections -----------------------------------------------------------------

    def _idle_conn(self, key: tuple[str, str, int], now: float) -> _Conn | None:
        """The most recently used idle connection, or None (closing expired ones)."""
        host = self._hosts.get(key)
        if host is None or not host.idle:
            return None
        idle = host.idle
        conn = idle.pop()
        conn.idle = False
        if conn.idle_since > now - self._keepalive_s:
            return conn
        conn.close()  # expired, and every older one with it
        while idle:
            idle[-1].close()
        return None

    async def _wait_or_open(
        self, target: _Target, deadline: float, loop: asyncio.AbstractEventLoop
    ) -> _Conn:
        """A connection for ``target``: a new one if a slot is free, else the first one
        released or slot freed (first come, first served) before ``deadline``."""
        while True:
            if self._closed:
                raise Http1Error("connect", "the connection pool was closed")
            host = self._hosts.get(target.key)
            if host is None:
                host = self._hosts[target.key] = _Host()
            if not host.waiters and host.count < self._limit_per_host:
                if self._total >= self._limit:
                    self._evict_idle()
                if self._total < self._limit:
                    host.count += 1
                    self._total += 1
                    return await self._open(host, target, deadline, loop)
            waiter: asyncio.Future[_Conn | None] = loop.create_future()
            host.waiters.append(waiter)
            timer = loop.call_at(deadline, _expire_wait, waiter, target.name)
            try:
                conn = await waiter
            except BaseException:  # timed out, cancelled, or the pool was closed
                timer.cancel()
                with contextlib.suppress(ValueError):  # not there if already served
                    host.waiters.remove(waiter)
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._give_back(host, waiter.result())  # served just as we gave up
                raise
            timer.cancel()
            if conn is None:  # a slot was reserved for us
                return await self._open(host, target, deadline, loop)
            if not conn.closed:
                return conn
            # Handed a connection that the server closed before we could use it: again.

    async def _open(
        self, host: _Host, target: _Target, deadline: float, loop: asyncio.AbstractEventLoop
    ) -> _Conn:
        """Connect, using the slot already counted in ``host.count`` and ``_total``."""
        conn = _Conn(self, host, target.name, self._max_response_bytes)
        context = self._tls_context() if target.tls else None
        until = min(deadline, loop.time() + self._connect_timeout_s)
        try:
            # A timeout context only here: connecting is rare (connections are reused).
            async with asyncio.timeout_at(until):
                await loop.create_connection(
                    lambda: conn,
                    target.host,
                    target.port,
                    ssl=context,
                    server_hostname=target.host if context is not None else None,
                )
        except TimeoutError:
            conn.abort()
            raise Http1Error("timeout", f"could not connect to {target.name} in time") from None
        except OSError as exc:  # refused, unreachable, DNS (gaierror), TLS (SSLError)
            conn.abort()
            raise Http1Error("connect", f"cannot connect to {target.name}: {exc}") from exc
        except BaseException:
            conn.abort()
            raise
        if self._closed:
            conn.abort()
            raise Http1Error("connect", "the connection pool was closed")
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        context = self._ssl_context
        if context is None:
            context = self._ssl_context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
        return context

    def _put(self, conn: _Conn) -> None:
        """Take back a connection whose answer was read completely."""
        if conn.closed:
            return
        host = conn.host
        while host.waiters:
            waiter = host.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if self._closed or (self._total >= self._limit and self._starved_host() is not None):
            conn.close()  # its slot serves a request waiting for another host
            return
        loop = self._loop
        assert loop is not None
        conn.idle_since = loop.time()
        conn.idle = True
        host.idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_at(conn.idle_since + self._keepalive_s, self._sweep)

    def _give_back(self, host: _Host, conn: _Conn | None) -> None:
        """Return what a waiter received but cannot use (it timed out or was cancelled)."""
        if conn is None:  # an unused reserved slot
            host.count -= 1
            self._total -= 1
            self._grant(host)
        else:
            self._put(conn)

    def _gone(self, conn: _Conn) -> None:
        """A connection closed (once per connection): free its slot for a waiter."""
        host = conn.host
        if conn.idle:
            conn.idle = False
            host.idle.remove(conn)
        host.count -= 1
        self._total -= 1
        self._grant(host)

    def _grant(self, host: _Host) -> None:
        """Give a free slot to the first waiter of ``host``, else of a host that waits only
        because of the total limit."""
        if self._closed or self._total >= self._limit:
            return
        if host.count >= self._limit_per_host or not self._reserve_for_waiter(host):
            starved = self._starved_host()
            if starved is not None:
                self._reserve_for_waiter(starved)

    def _reserve_for_waiter(self, host: _Host) -> bool:
        """Reserve a slot of ``host`` for its first live waiter; False if none waits."""
        while host.waiters:
            waiter = host.waiters.popleft()
            if not waiter.done():
                host.count += 1
                self._total += 1
                waiter.set_result(None)
                return True
        return False

    def _starved_host(self) -> _Host | None:
        """A host with waiters that is below its own limit (so only the total stops it)."""
        for host in self._hosts.values():
            if host.count < self._limit_per_host and any(not w.done() for w in host.waiters):
                return host
        return None

    def _evict_idle(self) -> None:
        """At the total limit: close the longest-idle connection of any host."""
        oldest: _Conn | None = None
        for host in self._hosts.values():
            if host.idle and (oldest is None or host.idle[0].idle_since < oldest.idle_since):
                oldest = host.idle[0]
        if oldest is not None:
            oldest.close()

    def _sweep(self) -> None:
        """Close idle connections older than keepalive_s; forget unused hosts."""
        self._sweeper = None
        loop = self._loop
        if loop is None or self._closed:
            return
        expired = loop.time() - self._keepalive_s
        next_due: float | None = None
        for key, host in list(self._hosts.items()):
            idle = host.idle
            while idle and idle[0].idle_since <= expired:
                idle[0].close()
            if idle:
                due = idle[0].idle_since + self._keepalive_s
                next_due = due if next_due is None else min(next_due, due)
            elif host.count == 0 and not host.waiters:
                del self._hosts[key]
        if next_due is not None:
            self._sweeper = loop.call_at(next_due, self._sweep)

    # -- URLs ------------------------------------------------------------------------

    def _parse(self, url: str) -> _Target:
        """Parse and cache ``url`` (the forward URL is nearly always the same one)."""
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"not an http:// or https:// URL: {scheme or 'no scheme'}")
        host = parts.hostname
        if not host:
            raise ValueError("the URL has no host")
        port = parts.port  # ValueError for a port that is not a number in range
        if port is None:
            port = _DEFAULT_PORTS[scheme]
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
        shown = f"[{host}]" if ":" in host else host  # an IPv6 literal
        host_header = shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"
        path = parts.path or "/"
        request_target = f"{path}?{parts.query}" if parts.query else path
        request_target = quote(request_target, safe=_TARGET_SAFE)
        line = f" {request_target} HTTP/1.1\r\nHost: {host_header}\r\n"
        has_auth = parts.username is not None
        if has_auth:
            userinfo = parts.netloc.rpartition("@")[0]
            user, _, password = userinfo.partition(":")
            credentials = unquote_to_bytes(user) + b":" + unquote_to_bytes(password)
            line += f"Authorization: Basic {base64.b64encode(credentials).decode()}\r\n"
        target = _Target(
            key=(scheme, host, port),
            host=host,
            port=port,
            tls=scheme == "https",
            name=f"{shown}:{port}",
            line=line,
            has_auth=has_auth,
        )
        if len(self._targets) >= _MAX_CACHED_URLS:
            del self._targets[next(iter(self._targets))]
        self._targets[url] = target
        return target


def _request_bytes(
    method: str, line: str, headers: Sequence[tuple[str, str]], body: bytes
) -> bytes:
    """The request head and body, ready for one ``transport.write``."""
    parts = [method, line]
    parts.extend([f"{name}: {value}\r\n" for name, value in headers])
    if body or method not in _NO_LENGTH_METHODS:
        parts.append(f"Content-Length: {len(body)}\r\n\r\n")
    else:
        parts.append("\r\n")
    head = "".join(parts).encode()
    return head + body if body else head


def _expire(answer: asyncio.Future[Http1Response], name: str, timeout_s: float) -> None:
    if not answer.done():
        answer.set_exception(
            Http1Error("timeout", f"no complete answer from {name} within {timeout_s:g} s")
        )


def _expire_wait(waiter: asyncio.Future[_Conn | None], name: str) -> None:
    if not waiter.done():
        waiter.set_exception(Http1Error("timeout", f"no connection to {name} became free in time"))


class _Conn(asyncio.Protocol):
    """One connection: the asyncio protocol and the httptools parser callbacks.

    ``answer`` is the Future of the request in flight (None between requests). Parsing
    state is per answer.
    """

    __slots__ = (
        "answer",
        "body",
        "closed",
        "head",
        "headers",
        "headers_done",
        "host",
        "idle",
        "idle_since",
        "max_bytes",
        "name",
        "parser",
        "paused",
        "pool",
        "reusable",
        "size",
        "status",
        "transport",
        "until_eof",
        "uses",
    )

    def __init__(self, pool: Http1Pool, host: _Host, name: str, max_bytes: int) -> None:
        self.pool = pool
        self.host = host
        self.name = name
        self.max_bytes = max_bytes
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.answer: asyncio.Future[Http1Response] | None = None
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.size = 0  # bytes of the current answer received so far
        self.status = 0
        self.headers_done = False
        self.until_eof = False
        self.head = False
        self.reusable = True
        self.closed = False
        self.paused = False
        self.idle = False
        self.idle_since = 0.0
        self.uses = 0

    # -- driven by the pool ----------------------------------------------------------

    def send(self, payload: bytes, answer: asyncio.Future[Http1Response], head: bool) -> None:
        self.answer = answer
        self.head = head
        self.size = 0
        self.headers_done = False
        self.until_eof = False
        transport = self.transport
        if self.closed or transport is None:
            answer.set_exception(Http1Error("connect", "the server closed the connection"))
            return
        self.uses += 1
        # The whole request in one write. If it exceeds the transport's high-water mark,
        # the transport keeps sending it on its own while we wait for the answer; there is
        # nothing more to write, so there is nothing to pause (see pause_writing).
        self.pool._write_soon(self, payload)

    def write_now(self, payload: bytes) -> None:
        if self.closed or self.transport is None:
            return  # connection_lost has failed the answer already
        try:
            self.transport.write(payload)
        except Exception as exc:  # closed since send(): as if the server had closed it
            self._ended(exc)

    def close(self) -> None:
        """Close gracefully (used for connections that are done, not broken)."""
        if self.transport is not None:
            self.transport.close()
        self._finish()

    def abort(self) -> None:
        """Close at once, dropping anything unsent (a broken or abandoned exchange)."""
        if self.transport is not None:
            self.transport.abort()
        self._finish()

    @property
    def got_bytes(self) -> bool:
        """Whether any byte of the current answer arrived."""
        return self.size > 0

    def _finish(self) -> None:
        if not self.closed:
            self.closed = True
            self.reusable = False
            self.pool._gone(self)

    def _fail(self, error: Http1Error) -> None:
        answer = self.answer
        self.answer = None
        if answer is not None and not answer.done():
            answer.set_exception(error)
        self.abort()

    def _complete(self, body: bytes) -> None:
        answer = self.answer
        self.answer = None
        if answer is not None and not answer.done():
            answer.set_result(Http1Response(self.status, self.headers, body))

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:  # abandoned while connecting
            transport.close()
            return
        self.transport = cast(asyncio.Transport, transport)
        self.pool._conns.add(self)

    def data_received(self, data: bytes) -> None:
        if self.answer is None:  # bytes nobody asked for: the connection is unusable
            self.abort()
            return
        # Counted here, once per read, rather than per header or body piece: the answer
        # (head, interim answers and chunk framing included) may overshoot the limit by at
        # most one read before it is refused.
        self.size += len(data)
        if self.size > self.max_bytes:
            self._fail(self._invalid(f"exceeds {self.max_bytes} bytes"))
            return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self._fail(self._invalid("switched protocols"))
        except HttpParserError as exc:
            if isinstance(exc.__context__, _Unexpected):
                self.reusable = False  # the answer is complete; more followed it
                self.abort()
            else:
                self._fail(self._invalid(f"is not valid HTTP/1.1 ({exc})"))

    def eof_received(self) -> bool:
        self._ended(None)
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool._conns.discard(self)
        self._ended(exc)
        self._finish()

    def pause_writing(self) -> None:
        # Only a request larger than the write buffer gets here; the transport drains it
        # on its own. Remembered so that a connection is not reused while still sending.
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def _ended(self, exc: Exception | None) -> None:
        """The server closed the connection (or it broke): finish or fail the answer."""
        self.reusable = False
        if self.answer is None or self.answer.done():
            return
        if self.until_eof:  # an answer delimited by the end of the connection
            self._complete(b"".join(self.body))
        elif not self.got_bytes:
            why = f" ({exc})" if exc is not None else ""
            self._fail(Http1Error("connect", f"{self.name} closed the connection{why}"))
        else:
            self._fail(self._invalid("was cut off"))

    def _invalid(self, what: str) -> Http1Error:
        return Http1Error("invalid_response", f"the answer from {self.name} {what}")

    # -- httptools callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.answer is None:
            raise _Unexpected  # an answer nobody asked for (after a complete one)
        self.headers = []
        self.body = []
        self.headers_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a trailer field after a chunked body: not relayed
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        parser = self.parser
        status = self.status = parser.get_status_code()
        if status < 200:
            return  # interim (100 Continue, 103 Early Hints): the real answer follows
        if self.head:
            # llhttp cannot be told that this answers a HEAD, and would wait for the body
            # its Content-Length announces: complete now and close the connection.
            self.reusable = False
            self._complete(b"")
        elif not parser.should_keep_alive():
            self.until_eof = status != 204 and status != 304 and _delimited_by_eof(self.headers)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200 or self.answer is None:
            return  # end of an interim answer, or of a HEAD answer completed already
        if not self.parser.should_keep_alive() or self.paused:
            self.reusable = False
        self._complete(b"".join(self.body))


def _delimited_by_eof(headers: list[tuple[str, str]]) -> bool:
    """True when an answer's body runs to the end of the connection (RFC 9112 §6.3):
    neither a Content-Length nor a final chunked Transfer-Encoding."""
    for name, value in headers:
        lname = name.lower()
        if lname == "content-length":
            return False
        if lname == "transfer-encoding" and value.rstrip().lower().endswith("chunked"):
            return False
    return True
