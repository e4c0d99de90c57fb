"""Deliver: relay an event to the application behind the gateway, and make the gateway's
few other outbound calls (the Telnyx Call Control reject action, SNS confirmation and
signing-certificate download).

Why aiohttp and not httpx: relaying a 1 KB form to a local app from one uvicorn worker on
the 2-core reference machine gave about 320 req/s with ``httpx.AsyncClient``, about
1,600 with httpx over an aiohttp transport, and about 3,600 with an
``aiohttp.ClientSession`` (SPEC §4). The relay is the hot path, so the transport is
aiohttp; the interface here (``Forwarder.forward`` / ``post_json`` / ``fetch`` returning a
``ForwardResult``) names no aiohttp type, so the transport can be swapped.

One ``Forwarder`` per process, opened in the app lifespan (``await start()``) and closed
with it (``await aclose()``). Its pooled session is HTTP/1.1 with keep-alive, does not
follow redirects, keeps no cookies, reads no proxy settings from the environment,
decompresses nothing and adds no ``User-Agent``/``Accept``/``Accept-Encoding``/
``Content-Type`` of its own.

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
* A header whose name is not an HTTP token or whose value holds CR, LF or NUL is dropped,
  ours included. Header values are ``str`` as ASGI/Starlette give them (the wire bytes
  decoded as latin-1); they go out as the same bytes when those are ASCII or UTF-8, and
  a value whose bytes are neither is dropped (aiohttp writes headers as UTF-8).

Answers: the application's status, ``Content-Type`` and body come back unchanged for any
status below 500 (a 4xx is the application's answer, a 3xx is not followed). A 5xx, a
timeout or a failed connection becomes a failure the provider should retry: 503 for a
5xx (the body is not relayed), 504 for a timeout, 502 for a refused/reset connection or an
unreadable answer. ``forward`` never raises for a transport problem; it raises only
``asyncio.CancelledError`` (which must propagate) and ``RuntimeError`` when used outside
``start()``..``aclose()``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal
from urllib.parse import quote_from_bytes

import aiohttp
from multidict import CIMultiDict
from yarl import URL

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
_SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_CONNECT_TIMEOUT_S: Final = 3.0
# Below the idle timeout of common app servers (uvicorn 5 s, Node 5 s), so that the pool
# rarely sends a POST on a connection the application is closing (aiohttp retries only
# idempotent methods on such a connection; a POST would come back as a 502).
_KEEPALIVE_S: Final = 4.0


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
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the pooled session (call from the running event loop, e.g. the lifespan)."""
        if self._session is not None:
            raise RuntimeError("Forwarder.start() called twice")
        connector = aiohttp.TCPConnector(
            limit=self._limit,
            limit_per_host=self._limit_per_host,
            keepalive_timeout=_KEEPALIVE_S,
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            version=aiohttp.HttpVersion11,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),  # an app's Set-Cookie must not leak
            trust_env=False,
            raise_for_status=False,
        )

    async def aclose(self) -> None:
        """Close the session and its connections (idempotent)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

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
        session = self._live_session()
        timeout = _client_timeout(timeout_s)
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
            out.add("webhook-timestamp", str(timestamp))
            out.add("webhook-signature", standard_webhooks_sign(key, event_id, timestamp, body))
        started = time.perf_counter()
        try:
            target = _target_url(url, query)
            async with session.request(
                method,
                target,
                headers=out,
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                payload = await response.read()
                return _answer(response, payload, started)
        except Exception as exc:  # CancelledError is a BaseException: it propagates
            return _failure(exc, started)

    async def post_json(
        self, url: str, *, json_body: object, bearer: str | None, timeout_s: float
    ) -> ForwardResult:
        """POST ``json_body`` as JSON (``Authorization: Bearer`` when given), e.g. the Telnyx
        Call Control reject action. A body that ``json.dumps`` cannot encode raises
        ``TypeError``/``ValueError`` (a caller bug); transport problems never raise."""
        session = self._live_session()
        timeout = _client_timeout(timeout_s)
        data = json.dumps(json_body, separators=(",", ":")).encode()
        out: CIMultiDict[str] = CIMultiDict(
            (("Content-Type", "application/json"), ("Accept", "application/json"))
        )
        out.add("User-Agent", _USER_AGENT)
        if bearer is not None:
            _add(out, "Authorization", f"Bearer {bearer}")
        started = time.perf_counter()
        try:
            async with session.post(
                URL(url),
                headers=out,
                data=data,
                allow_redirects=False,
                timeout=timeout,
                auto_decompress=True,
            ) as response:
                payload = await response.read()
                return _answer(response, payload, started)
        except Exception as exc:
            return _failure(exc, started)

    async def fetch(self, url: str, *, timeout_s: float) -> ForwardResult:
        """A plain GET (SNS ``SubscribeURL`` confirmation, SNS signing certificate);
        redirects are not followed. Check ``result.success``."""
        session = self._live_session()
        timeout = _client_timeout(timeout_s)
        started = time.perf_counter()
        try:
            async with session.get(
                URL(url),
                headers=(("User-Agent", _USER_AGENT),),
                allow_redirects=False,
                timeout=timeout,
                auto_decompress=True,
            ) as response:
                payload = await response.read()
                return _answer(response, payload, started)
        except Exception as exc:
            return _failure(exc, started)

    def _live_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            raise RuntimeError("Forwarder used outside start() .. aclose()")
        return session


def _relay_headers(
    headers: Iterable[tuple[str, str]], *, drop_webhook: bool, request_id: str | None
) -> CIMultiDict[str]:
    """The provider's headers that may go on to the application (module docstring)."""
    out: CIMultiDict[str] = CIMultiDict()
    extra_hop: set[str] = set()
    for name, value in headers:
        lname = name.lower()
        if lname in _DROP:
            if lname == "connection":
                for token in value.split(","):
                    token = token.strip().lower()
                    if token not in _PLAIN_CONNECTION_TOKENS:
                        extra_hop.add(token)
            continue
        if (
            lname.startswith(_GATEWAY_PREFIX)
            or (drop_webhook and lname in _WEBHOOK_HEADERS)
            or (request_id is not None and lname == "x-request-id")
        ):
            continue
        if not value.isascii():
            wire = _wire_value(value)
            if wire is None:
                continue
            value = wire
        if _TOKEN(name) is None or _UNSAFE_VALUE(value) is not None:
            continue
        out.add(name, value)
    out.add("Accept-Encoding", "identity")
    for token in extra_hop:  # rare: a Connection header naming other headers
        out.popall(token, None)
    return out


def _wire_value(value: str) -> str | None:
    """A non-ASCII header value such that aiohttp's UTF-8 encoding gives the wire bytes
    back; None when those bytes are not UTF-8 (they cannot be sent unchanged)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeEncodeError:  # not latin-1 decoded wire text: send its UTF-8
        return value
    except UnicodeDecodeError:
        return None


def _add(out: CIMultiDict[str], name: str, value: str) -> bool:
    """Add one of our own headers unless its value could break the header block."""
    if _UNSAFE_VALUE(value) is not None:
        logger.warning("dropped header %s: its value holds CR, LF or NUL", name)
        return False
    out.add(name, value)
    return True


@functools.lru_cache(maxsize=256)
def _base_url(url: str) -> tuple[str, str]:
    """The forward URL in encoded form without fragment, and the joiner for a query."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise aiohttp.InvalidURL(url)
    parsed = parsed.with_fragment(None)
    return str(parsed), "&" if parsed.raw_query_string else "?"


def _target_url(url: str, query: str) -> URL:
    base, joiner = _base_url(url)
    if not query:
        return URL(base, encoded=True)
    if _QUERY_AS_IS(query) is None:
        try:
            raw = query.encode("latin-1")
        except UnicodeEncodeError:
            raw = query.encode("utf-8")
        query = quote_from_bytes(raw, safe=_QUERY_SAFE)
    # encoded=True: the provider's query goes on the request line exactly as it came.
    return URL(base + joiner + query, encoded=True)


@functools.lru_cache(maxsize=64)
def _client_timeout(timeout_s: float) -> aiohttp.ClientTimeout:
    if not timeout_s > 0 or math.isinf(timeout_s):
        raise ValueError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")
    # ceil_threshold=inf: aiohttp would otherwise round deadlines over 5 s up to the next
    # whole second, past a provider's own limit. sock_connect (not connect) so that waiting
    # for a free pooled connection counts only against the total.
    return aiohttp.ClientTimeout(
        total=timeout_s, sock_connect=min(timeout_s, _CONNECT_TIMEOUT_S), ceil_threshold=math.inf
    )


def _answer(response: aiohttp.ClientResponse, payload: bytes, started: float) -> ForwardResult:
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
    content_type = response.headers.get("Content-Type")
    headers: tuple[tuple[str, str], ...] = ()
    if content_type is not None:
        headers = (("Content-Type", content_type),)
    encoding = response.headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() != "identity":
        headers += (("Content-Encoding", encoding),)
    return ForwardResult(
        status=status,
        content_type=content_type,
        body=payload,
        headers=headers,
        ok=True,
        error=None,
        elapsed_ms=elapsed_ms,
        upstream_status=status,
    )


def _failure(exc: Exception, started: float) -> ForwardResult:
    """Translate a transport exception into the answer the provider should get."""
    error: ForwardError
    if isinstance(exc, TimeoutError):  # incl. asyncio.TimeoutError, aiohttp's timeouts
        status, error = 504, "timeout"
    elif isinstance(
        exc,
        aiohttp.ClientConnectionError
        | OSError
        | aiohttp.InvalidURL
        | aiohttp.NonHttpUrlClientError,
    ):
        # refused, reset, DNS, closed before answering; or a URL it cannot connect to
        status, error = 502, "connect"
    elif isinstance(exc, aiohttp.ClientError):
        status, error = 502, "invalid_response"  # unparsable status line/headers/body
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
