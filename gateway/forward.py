"""Deliver: relay an event to the application behind the gateway, and make the gateway's
few other outbound calls (the Telnyx Call Control reject action, SNS confirmation and
signing-certificate download).

Why a connection pool of its own (``gateway/http1.py``: asyncio protocol + httptools'
llhttp parser) rather than aiohttp or httpx: the relay is the hot path, and a general
client spends most of its CPU on what a relay never uses. Client CPU per request
(``time.process_time``) with 32 concurrent tasks POSTing a 1 KB Twilio form under uvloop
on the 2-core reference machine, measured while other work shared the machine:

* ``bench/clients.py`` (a small Starlette app under uvicorn; client and app pinned to one
  core each; about 3,000 req/s, so nearly one answer per event-loop wake-up), three runs:
  ``aiohttp.ClientSession`` 202–274 µs, this ``Forwarder`` 133–163 µs (header policy and
  signing included), the bare ``Http1Pool`` 102–122 µs; ``httpx.AsyncClient`` about
  2,500 µs in the one run that measured it. About 40 µs of the pool's share there is
  kernel time (a send, a read and one or two epoll waits per request).
* The same POST to a bare ASGI app that answers faster (nothing pinned; the pool reached
  10,000–14,000 req/s, several answers per wake-up): the bare pool 38–43 µs,
  ``aiohttp.ClientSession`` 198–226 µs.
* The pool's own Python work, with the socket replaced by an in-memory transport: about
  12–21 µs per request; the ``Forwarder``'s policy and signing add about 20–30 µs.

The interface here (``Forwarder.forward`` / ``post_json`` / ``fetch`` returning a
``ForwardResult``) names no transport type, so the transport can be swapped.

One ``Forwarder`` per process, opened in the app lifespan (``await start()``) and closed
with it (``await aclose()``). Its pool speaks HTTP/1.1 with keep-alive (idle connections
closed after 4 s, below common app servers' 5 s), does not follow redirects, keeps no
cookies, reads no proxy settings from the environment, decompresses nothing on a relay
(``post_json``/``fetch`` decode a gzip or deflate answer, since the gateway reads those)
and adds no ``User-Agent``/``Accept``/``Accept-Encoding``/``Content-Type`` of its own. A
request that meets the end of a kept-alive connection before any byte of an answer (the
application closed it while idle, e.g. restarting) is resent once on a new connection. A
forward URL with ``user:password@`` sends those as HTTP Basic auth, in place of the
provider's own ``Authorization`` (which was meant for the gateway).

Header policy of ``forward`` (what the application receives):

* The provider's headers, in order and with duplicates, **less** the hop-by-hop ones
  (``Connection``, ``Keep-Alive``, ``Proxy-Authenticate``, ``Proxy-Authorization``,
  ``Proxy-Connection``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade`` and any
  named in ``Connection``), ``Host`` (set from the forward URL) and ``Content-Length``
  (recomputed). Also removed: ``Expect`` (the body is already read) and
  ``Accept-Encoding``, replaced by ``Accept-Encoding: identity``, because the answer is
  relayed byte for byte and the provider never asked the application for a coding.
* The provider's signature headers (``X-Twilio-Signature``, ``telnyx-signature-ed25519``,
  ...) are kept, so an application whose URL is the one the provider signed can still
  verify the provider.
* Anything that would let a caller spoof the gateway is removed: every incoming
  ``X-SenderGate-*``; ``webhook-id``/``webhook-timestamp``/``webhook-signature`` when the
  gateway signs (without a secret they are passed through: they may be a Standard
  Webhooks provider's own); ``X-Request-Id`` when the caller gives one.
* Added: ``X-SenderGate-Verdict``, ``X-SenderGate-Rule`` (the rule id, or ``none`` when
  no rule decided), ``X-SenderGate-Sender``, ``X-SenderGate-Event-Id``, ``X-Request-Id``
  (when given) and, with a signing secret, ``webhook-id`` (= the event id),
  ``webhook-timestamp`` (Unix seconds from the injected clock) and ``webhook-signature``
  over the exact body bytes.
* A header whose name is not an HTTP token or whose value holds CR, LF or NUL (or a lone
  surrogate, which has no UTF-8 form) is dropped, ours included. Header values are
  ``str`` as ASGI/Starlette give them (the wire bytes decoded as latin-1); they go out as
  the same bytes when those are ASCII or UTF-8, and a value whose bytes are neither is
  dropped (the pool writes headers as UTF-8).

Answers: the application's status, ``Content-Type`` and body come back unchanged for any
status below 500 (a 4xx is the application's answer, a 3xx is not followed). A 5xx, a
timeout or a failed connection becomes a failure the provider should retry: 503 for a
5xx (the body is not relayed), 504 for a timeout, 502 for a refused/reset connection, an
unusable forward URL or an unreadable answer (not HTTP, cut off, over 10 MiB).
``forward`` never raises for a transport problem; it raises only
``asyncio.CancelledError`` (which must propagate) and ``RuntimeError`` when used outside
``start()``..``aclose()``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal
from urllib.parse import quote_from_bytes

from gateway.http1 import Http1Error, Http1Pool, Http1Response
from gateway.signing import standard_webhooks_secret, standard_webhooks_sign

logger = logging.getLogger(__name__)

ForwardError = Literal["connect", "timeout", "status_5xx", "invalid_response"]

#: RFC 9110 §7.6.1 hop-by-hop headers, plus the common non-standard Proxy-Connection.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Never relayed from the provider: hop-by-hop, recomputed, or replaced by our own.
_DROP: Final = HOP_BY_HOP | {"host", "content-length", "expect", "accept-encoding"}
_GATEWAY_PREFIX: Final = "x-sendergate-"
_WEBHOOK_HEADERS: Final = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature"})
# Connection tokens that name no header we would otherwise relay.
_PLAIN_CONNECTION_TOKENS: Final = frozenset({"", "close", "keep-alive"})

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch
_UNSAFE_VALUE: Final = re.compile(r"[\r\n\x00]").search
# A query string that can go on the request line as it came: printable ASCII except "#".
_QUERY_AS_IS: Final = re.compile(r"[\x21\x22\x24-\x7e]*").fullmatch
_QUERY_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "#")

_USER_AGENT: Final = "SenderGate"  # only on the gateway's own calls, never on a relay
_CONNECT_TIMEOUT_S: Final = 3.0
# Below the idle timeout of common app servers (uvicorn 5 s, Node 5 s), so that the pool
# rarely sends a request on a connection the application is closing (the pool retries
# such a request once on a new connection, see gateway/http1.py).
_KEEPALIVE_S: Final = 4.0
# What the gateway's own calls (post_json, fetch) accept: they read the body themselves.
_OWN_MAX_DECODED_BYTES: Final = 10 * 2**20


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """The outcome of one outbound call.

    ``status`` is the remote's status when it answered below 500, else the status to
    answer the provider with: 503 (``error="status_5xx"``), 504 (``"timeout"``) or 502
    (``"connect"``, ``"invalid_response"``). ``ok`` is True exactly when the remote
    answered below 500; then ``content_type``, ``body`` and ``headers`` are its answer
    (``headers`` holds ``Content-Type`` and, only if the remote ignored our
    ``Accept-Encoding: identity``, ``Content-Encoding``: relay them as they are). On
    failure they are empty. ``upstream_status`` is the status the remote actually sent
    (None if it sent none), ``detail`` a short description of a failure for logs, and
    ``elapsed_ms`` the wall time of the call (monotonic clock).
    """

    status: int
    content_type: str | None
    body: bytes
    headers: tuple[tuple[str, str], ...]
    ok: bool
    error: ForwardError | None
    elapsed_ms: float
    upstream_status: int | None = None
    detail: str | None = None

    @property
    def success(self) -> bool:
        """A 2xx answer: what ``post_json`` and ``fetch`` callers usually need."""
        return self.ok and 200 <= self.status < 300


class Forwarder:
    """The process's one pooled outbound HTTP client; see the module docstring.

    ``signing_secret`` is the ``[forward] signing_secret`` (``whsec_<base64>``); when it is
    None the Standard Webhooks headers are not added (warning about that is the app's
    job). ``clock`` gives ``webhook-timestamp`` (Unix seconds; only the signature uses it).
    ``limit``/``limit_per_host`` bound the pool's open connections (total / per
    ``host:port``): requests beyond them wait for a free connection within their timeout.
    """

    def __init__(
        self,
        signing_secret: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        limit: int = 256,
        limit_per_host: int = 128,
    ) -> None:
        # Decoded once (ValueError here, at start-up, for an unusable secret).
        self._key = None if signing_secret is None else standard_webhooks_secret(signing_secret)
        self._clock = clock
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._pool: Http1Pool | None = None

    async def start(self) -> None:
        """Open the connection pool (call from the running event loop, e.g. the lifespan)."""
        if self._pool is not None:
            raise RuntimeError("Forwarder.start() called twice")
        self._pool = Http1Pool(
            limit=self._limit,
            limit_per_host=self._limit_per_host,
            keepalive_s=_KEEPALIVE_S,
            connect_timeout_s=_CONNECT_TIMEOUT_S,
        )

    async def aclose(self) -> None:
        """Close the pool and its connections (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()

    async def __aenter__(self) -> Forwarder:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def signs(self) -> bool:
        """True when forwarded events carry a Standard Webhooks signature."""
        return self._key is not None

    async def forward(
        self,
        url: str,
        *,
        method: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        event_id: str,
        verdict: str,
        rule: int | None,
        sender: str,
        timeout_s: float,
        request_id: str | None = None,
    ) -> ForwardResult:
        """Relay one event to ``url`` (see the module docstring for the header policy).

        ``query`` is the provider's raw query string without ``?``; it is appended to
        ``url``'s own query with ``&``. ``timeout_s`` bounds the whole call (connect
        within ``min(timeout_s, 3)``); derive it from the provider's own limit.
        """
        pool = self._live_pool()
        _check_timeout(timeout_s)
        key = self._key
        out = _relay_headers(headers, drop_webhook=key is not None, request_id=request_id)
        _add(out, "X-SenderGate-Verdict", verdict)
        _add(out, "X-SenderGate-Rule", "none" if rule is None else str(rule))
        _add(out, "X-SenderGate-Sender", sender)
        _add(out, "X-SenderGate-Event-Id", event_id)
        if request_id is not None:
            _add(out, "X-Request-Id", request_id)
        if key is not None and _add(out, "webhook-id", event_id):
            timestamp = int(self._clock())
            out.append(("webhook-timestamp", str(timestamp)))
            out.append(
                ("webhook-signature", standard_webhooks_sign(key, event_id, timestamp, body))
            )
        started = time.perf_counter()
        try:
            response = await pool.request(
                method, _target_url(url, query), out, body, timeout_s=timeout_s
            )
        except Exception as exc:  # CancelledError is a BaseException: it propagates
            return _failure(exc, started)
        return _answer(response, started)

    async def post_json(
        self, url: str, *, json_body: object, bearer: str | None, timeout_s: float
    ) -> ForwardResult:
        """POST ``json_body`` as JSON (``Authorization: Bearer`` when given), e.g. the Telnyx
        Call Control reject action. A body that ``json.dumps`` cannot encode raises
        ``TypeError``/``ValueError`` (a caller bug); transport problems never raise."""
        pool = self._live_pool()
        _check_timeout(timeout_s)
        data = json.dumps(json_body, separators=(",", ":")).encode()
        out = [
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("User-Agent", _USER_AGENT),
        ]
        if bearer is not None:
            _add(out, "Authorization", f"Bearer {bearer}")
        return await self._own_call(pool, "POST", url, out, data, timeout_s)

    async def fetch(self, url: str, *, timeout_s: float) -> ForwardResult:
        """A plain GET (SNS ``SubscribeURL`` confirmation, SNS signing certificate);
        redirects are not followed. Check ``result.success``."""
        pool = self._live_pool()
        _check_timeout(timeout_s)
        return await self._own_call(pool, "GET", url, [("User-Agent", _USER_AGENT)], b"", timeout_s)

    async def _own_call(
        self,
        pool: Http1Pool,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout_s: float,
    ) -> ForwardResult:
        """One of the gateway's own calls: like a relay, but a compressed answer (sent
        although we asked for none) is decompressed, since the gateway reads it."""
        started = time.perf_counter()
        try:
            response = await pool.request(method, url, headers, body, timeout_s=timeout_s)
            decoded = _decoded(response)
        except Exception as exc:
            return _failure(exc, started)
        return _answer(response, started, decoded)

    def _live_pool(self) -> Http1Pool:
        pool = self._pool
        if pool is None:
            raise RuntimeError("Forwarder used outside start() .. aclose()")
        return pool


def _check_timeout(timeout_s: float) -> None:
    if not timeout_s > 0 or math.isinf(timeout_s):
        raise ValueError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")


def _relay_headers(
    headers: Iterable[tuple[str, str]], *, drop_webhook: bool, request_id: str | None
) -> list[tuple[str, str]]:
    """The provider's headers that may go on to the application (module docstring)."""
    out: list[tuple[str, str]] = []
    extra_hop: set[str] | None = None
    for name, value in headers:
        kind = _NAME_KINDS.get(name)
        if kind is None:
            kind = _name_kind(name)
        if kind is not _KEEP and (
            kind is _DROPPED
            or (kind is _WEBHOOK and drop_webhook)
            or (kind is _REQUEST_ID and request_id is not None)
        ):
            continue
        if kind is _CONNECTION:
            for token in value.split(","):
                token = token.strip().lower()
                if token not in _PLAIN_CONNECTION_TOKENS:
                    if extra_hop is None:
                        extra_hop = set()
                    extra_hop.add(token)
            continue
        if not (value.isascii() and value.isprintable()):  # else plainly safe
            if not value.isascii():
                wire = _wire_value(value)
                if wire is None:
                    continue
                value = wire
            if _UNSAFE_VALUE(value) is not None:
                continue
        out.append((name, value))
    if extra_hop:  # rare: a Connection header naming other headers
        out = [(name, value) for name, value in out if name.lower() not in extra_hop]
    out.append(("Accept-Encoding", "identity"))
    return out


# What the relay policy does with a header, by name (``_relay_headers``).
_KEEP: Final = "keep"
_DROPPED: Final = "drop"  # hop-by-hop, recomputed, ours (X-SenderGate-*), or not a token
_CONNECTION: Final = "connection"  # dropped, and so are the headers it names
_WEBHOOK: Final = "webhook"  # dropped when the gateway signs
_REQUEST_ID: Final = "request-id"  # dropped when the gateway has a request id
# Memo of _name_kind: providers send the same few names with every event. Bounded, as
# names come from the network; past the bound, names are classified on every call.
_NAME_KINDS: dict[str, str] = {}
_MAX_NAME_KINDS: Final = 1024


def _name_kind(name: str) -> str:
    lname = name.lower()
    if lname == "connection":
        kind = _CONNECTION
    elif lname in _DROP or lname.startswith(_GATEWAY_PREFIX) or _TOKEN(name) is None:
        kind = _DROPPED
    elif lname in _WEBHOOK_HEADERS:
        kind = _WEBHOOK
    elif lname == "x-request-id":
        kind = _REQUEST_ID
    else:
        kind = _KEEP
    if len(_NAME_KINDS) < _MAX_NAME_KINDS:
        _NAME_KINDS[name] = kind
    return kind


def _wire_value(value: str) -> str | None:
    """A non-ASCII header value such that its UTF-8 encoding (how the pool writes
    headers) gives the wire bytes back; None when those bytes are not UTF-8 (they cannot
    be sent unchanged) or the text cannot be encoded at all."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeEncodeError:  # not latin-1 decoded wire text: send its UTF-8
        return value if _encodable(value) else None
    except UnicodeDecodeError:
        return None


def _encodable(value: str) -> bool:
    """False for text holding a lone surrogate (possible in JSON), which UTF-8 cannot
    encode: such a header is dropped rather than failing the whole relay."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _add(out: list[tuple[str, str]], name: str, value: str) -> bool:
    """Add one of our own headers unless its value could break the header block."""
    if not (value.isascii() and value.isprintable()):  # else plainly safe
        if _UNSAFE_VALUE(value) is not None:
            logger.warning("dropped header %s: its value holds CR, LF or NUL", name)
            return False
        if not value.isascii() and not _encodable(value):
            logger.warning("dropped header %s: its value cannot be encoded as UTF-8", name)
            return False
    out.append((name, value))
    return True


def _target_url(url: str, query: str) -> str:
    """The forward URL without fragment, with the provider's query appended."""
    base = url.partition("#")[0]
    if not query:
        return base
    if _QUERY_AS_IS(query) is None:
        try:
            raw = query.encode("latin-1")
        except UnicodeEncodeError:
            raw = query.encode("utf-8")
        query = quote_from_bytes(raw, safe=_QUERY_SAFE)
    # The provider's query goes on the request line exactly as it came (the pool does not
    # requote a target).
    if "?" not in base:
        return f"{base}?{query}"
    return f"{base}{query}" if base.endswith(("?", "&")) else f"{base}&{query}"


def _header(headers: list[tuple[str, str]], lname: str) -> str | None:
    """The first value of a header (``lname`` in lower case), or None."""
    for name, value in headers:
        if name.lower() == lname:
            return value
    return None


def _decoded(response: Http1Response) -> bytes | None:
    """The body of an answer to one of our own calls decompressed, when it came with a
    gzip or deflate Content-Encoding (capped, against a decompression bomb); else None."""
    encoding = _header(response.headers, "content-encoding")
    if encoding is None or response.status >= 500:
        return None
    coding = encoding.strip().lower()
    if coding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif coding == "deflate":
        # zlib-wrapped as the RFC says, or raw deflate as some servers send it.
        wbits = zlib.MAX_WBITS if response.body[:1] == b"\x78" else -zlib.MAX_WBITS
    else:
        return None  # identity, or a coding we do not decode
    decompressor = zlib.decompressobj(wbits)
    try:
        out = decompressor.decompress(response.body, _OWN_MAX_DECODED_BYTES)
    except zlib.error as exc:
        raise Http1Error("invalid_response", f"the answer's {coding} body is corrupt") from exc
    if decompressor.unconsumed_tail:
        raise Http1Error(
            "invalid_response", f"the answer decompresses to over {_OWN_MAX_DECODED_BYTES} bytes"
        )
    return out


def _answer(response: Http1Response, started: float, decoded: bytes | None = None) -> ForwardResult:
    """The result for an answer; ``decoded`` is its body decompressed, if it was."""
    status = response.status
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    if status >= 500:
        # Relay nothing of a failing app's answer: the provider gets 503 and retries.
        return ForwardResult(
            status=503,
            content_type=None,
            body=b"",
            headers=(),
            ok=False,
            error="status_5xx",
            elapsed_ms=elapsed_ms,
            upstream_status=status,
            detail=f"the application answered {status}",
        )
    content_type: str | None = None
    encoding: str | None = None
    for name, value in response.headers:
        lname = name.lower()
        if lname == "content-type":
            if content_type is None:
                content_type = value
        elif lname == "content-encoding" and encoding is None:
            encoding = value
    headers: tuple[tuple[str, str], ...] = ()
    if content_type is not None:
        headers = (("Content-Type", content_type),)
    # A body we decompressed (post_json, fetch) no longer has its Content-Encoding.
    if encoding is not None and decoded is None and encoding.strip().lower() != "identity":
        headers += (("Content-Encoding", encoding),)
    return ForwardResult(
        status=status,
        content_type=content_type,
        body=response.body if decoded is None else decoded,
        headers=headers,
        ok=True,
        error=None,
        elapsed_ms=elapsed_ms,
        upstream_status=status,
    )


def _failure(exc: Exception, started: float) -> ForwardResult:
    """Translate a transport exception into the answer the provider should get."""
    error: ForwardError
    if isinstance(exc, Http1Error):
        error = exc.kind
        status = 504 if error == "timeout" else 502
    elif isinstance(exc, ValueError):
        # A URL the pool cannot use (not http/https, no host, bad port), or a header it
        # cannot encode: nothing can be connected to.
        status, error = 502, "connect"
    else:
        logger.exception("unexpected error in an outbound call")
        status, error = 502, "invalid_response"
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return ForwardResult(
        status=status,
        content_type=None,
        body=b"",
        headers=(),
        ok=False,
        error=error,
        elapsed_ms=(time.perf_counter() - started) * 1000.0,
        detail=detail,
    )
