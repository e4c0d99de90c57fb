"""Real servers for tests: any ASGI app under uvicorn in a background thread, and a
recording downstream application.

Typical use::

    downstream = RecordingApp(Reply(status=200, content_type="text/xml", body=b"<Response/>"))
    with running(downstream) as server:
        ...  # send something to f"{server.url}/hook"
        seen = downstream.last
        assert seen.body == b"..."
        assert seen.header("x-sendergate-verdict") == "deliver"

``UvicornThread`` binds its own socket on ``127.0.0.1`` (a free port unless one is given),
so ``port`` and ``url`` are known before the server starts, and ``stop()`` really closes
the listening socket: a client that connects after ``stop()`` gets "connection refused",
which is what a "downstream is down" test needs. ``start()`` after ``stop()`` listens on
the same port again.

Both helpers are thread-safe where it matters: the app runs on the server thread's event
loop, the test reads ``RecordingApp.requests`` from its own thread or loop.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class UvicornThread:
    """Run an ASGI app with uvicorn on a background thread, on ``127.0.0.1``.

    ``port=0`` (the default) picks a free port when the object is created; ``url`` is then
    ``http://127.0.0.1:<port>`` (no trailing slash). ``start()`` returns once uvicorn accepts
    connections (or raises ``RuntimeError`` if it failed to start, e.g. the app's lifespan
    startup failed). ``stop()`` asks uvicorn to exit, waits for the thread and closes the
    listening socket; requests still in flight get ``graceful_s`` seconds before they are
    cancelled. The object is a context manager (``with UvicornThread(app) as server:``);
    ``running(app)`` is the same as a function.

    ``lifespan`` is passed to uvicorn ("auto" runs the app's lifespan if it has one, e.g.
    ``create_app(settings)``); ``http`` picks uvicorn's HTTP implementation ("auto" is
    httptools when installed, else h11).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        port: int = 0,
        lifespan: Literal["auto", "on", "off"] = "auto",
        http: Literal["auto", "h11", "httptools"] = "auto",
        graceful_s: int = 1,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.app = app
        self._lifespan = lifespan
        self._http = http
        self._graceful_s = graceful_s
        self._start_timeout_s = start_timeout_s
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        # Reserve the port now, so that url is known before start(): bind and close a
        # probe socket; start() binds the same port again with SO_REUSEADDR.
        if port == 0:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
        self.port = port
        self.host = "127.0.0.1"

    @property
    def url(self) -> str:
        """Base URL of the server, without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True between a successful ``start()`` and ``stop()``."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Listen on ``port`` and serve the app; return when it accepts connections."""
        if self.running:
            raise RuntimeError("server already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        config = uvicorn.Config(
            self.app,
            lifespan=self._lifespan,
            http=self._http,
            ws="none",
            log_config=None,  # leave the test process's logging alone
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=self._graceful_s,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn:{self.port}", daemon=True
        )
        self._sock, self._server, self._thread = sock, server, thread
        thread.start()
        deadline = time.monotonic() + self._start_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop serving and close the port (idempotent)."""
        server, thread, sock = self._server, self._thread, self._sock
        self._server = self._thread = self._sock = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(self._graceful_s + 5.0)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(5.0)
        if sock is not None:
            sock.close()  # uvicorn closes it too; closing twice is harmless

    def __enter__(self) -> UvicornThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def running(app: ASGIApp, **kwargs: Any) -> Iterator[UvicornThread]:
    """``with running(app) as server:`` start ``app`` under uvicorn, stop it on exit.

    Keyword arguments are those of ``UvicornThread``.
    """
    server = UvicornThread(app, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the downstream app received it.

    ``headers`` are in arrival order with lowercase names, values decoded as latin-1 (the
    ASGI convention, so ``value.encode("latin-1")`` gives the bytes on the wire);
    ``query`` is the raw query string (no ``?``) decoded the same way; ``body`` is the exact
    body bytes.
    """

    method: str
    path: str
    raw_path: bytes
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case), in order."""
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    def has_header(self, name: str) -> bool:
        return self.header(name) is not None

    @property
    def header_dict(self) -> dict[str, str]:
        """Headers as a dict (the last value wins): handy for signature libraries."""
        return dict(self.headers)


@dataclass(frozen=True, slots=True)
class Reply:
    """What ``RecordingApp`` answers: status, content type, body, extra headers, and a
    delay before answering (the delay ends early when the client disconnects, so a test
    of a client timeout does not keep the server busy)."""

    status: int = 200
    content_type: str | None = "text/plain; charset=utf-8"
    body: bytes = b"ok"
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0


Responder = Reply | Callable[[RecordedRequest], Reply]


class RecordingApp:
    """An ASGI downstream app that records every request and answers with a ``Reply``.

    ``reply`` is the default answer; ``routes`` maps an exact path to its own answer.
    Either may be a ``Reply`` or a function ``RecordedRequest -> Reply``; both can be
    changed between requests (``app.reply = Reply(status=500)``). Requests are recorded
    before the answer is sent, so once a client has its response the request is in
    ``requests``. For requests that the system under test sends in the background, use
    ``await app.wait_for(n)`` (async tests) or ``app.wait_for_sync(n)``.
    """

    def __init__(
        self,
        reply: Responder | None = None,
        *,
        routes: dict[str, Responder] | None = None,
    ) -> None:
        self.reply: Responder = reply if reply is not None else Reply()
        self.routes: dict[str, Responder] = dict(routes or {})
        self._requests: list[RecordedRequest] = []
        self._cond = threading.Condition()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the requests received so far, oldest first."""
        with self._cond:
            return list(self._requests)

    @property
    def last(self) -> RecordedRequest:
        """The most recent request (AssertionError when there is none)."""
        with self._cond:
            assert self._requests, "the downstream app received no request"
            return self._requests[-1]

    def clear(self) -> None:
        with self._cond:
            self._requests.clear()

    def wait_for_sync(self, count: int = 1, timeout_s: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``count`` requests arrived; AssertionError on timeout."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self._requests) >= count, timeout_s)
            assert ok, f"expected {count} request(s), got {len(self._requests)}"
            return list(self._requests)

    async def wait_for(self, count: int = 1, timeout_s: float = 5.0) -> list[RecordedRequest]:
        """Like ``wait_for_sync`` without blocking the caller's event loop."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._cond:
                if len(self._requests) >= count:
                    return list(self._requests)
                got = len(self._requests)
            assert time.monotonic() < deadline, f"expected {count} request(s), got {got}"
            await asyncio.sleep(0.01)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        assert scope["type"] == "http"
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        request = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            raw_path=scope.get("raw_path") or scope["path"].encode(),
            query=scope["query_string"].decode("latin-1"),
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]),
            body=b"".join(chunks),
        )
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()
        responder = self.routes.get(request.path, self.reply)
        reply = responder(request) if callable(responder) else responder
        if reply.delay_s > 0 and await _disconnected_within(receive, reply.delay_s):
            return
        headers = [(b"content-length", str(len(reply.body)).encode())]
        if reply.content_type is not None:
            headers.append((b"content-type", reply.content_type.encode("latin-1")))
        headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers)
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})


async def _disconnected_within(receive: Receive, delay_s: float) -> bool:
    """Wait ``delay_s``; True if the client disconnected first."""
    try:
        async with asyncio.timeout(delay_s):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return False
    return True


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
