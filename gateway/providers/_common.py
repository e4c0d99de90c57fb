"""Helpers shared by the provider modules: options, body parsing, mail authentication.

Every parser here turns malformed input into ``BadRequest`` / ``UnsupportedMediaType``
with a message a provider's operator can act on, and never lets a ``KeyError``,
``IndexError`` or decode error through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.headerregistry import HeaderRegistry
from email.parser import HeaderParser
from urllib.parse import SplitResult, unquote_to_bytes, urlsplit

from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.errors import BadRequest, ConfigError, UnsupportedMediaType
from gateway.settings import SourceSettings

MAX_FORM_FIELDS = 10_000  # far above any provider's payload; bounds the parser's work

FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
JSON = "application/json"


# --- configuration --------------------------------------------------------------------


class Options:
    """A source's raw ``options`` table, checked against the keys a provider knows.

    Unknown keys and ill-typed values raise ``ConfigError`` naming
    ``sources.NAME.options.KEY``, so a typo stops start-up instead of being ignored.
    """

    def __init__(self, source: SourceSettings, allowed: Iterable[str]) -> None:
        self._source = source
        self._raw: Mapping[str, object] = source.options
        known = frozenset(allowed)
        for key in self._raw:
            if key not in known:
                hint = ", ".join(sorted(known)) or "none"
                raise ConfigError(
                    self.key(key), f"unknown option for provider {source.provider} (known: {hint})"
                )

    def key(self, name: str) -> str:
        return f"sources.{self._source.name}.options.{name}"

    def raw(self, name: str, default: object = None) -> object:
        return self._raw.get(name, default)

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = self._raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise ConfigError(self.key(name), f"must be a number >= {minimum:g}")
        return float(value)

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self._raw.get(name, default)
        if value is not None and not isinstance(value, str):
            raise ConfigError(self.key(name), "must be a string")
        return value

    def choice(self, name: str, choices: Iterable[str], default: str) -> str:
        allowed = tuple(choices)
        value = self.text(name, default)
        if value not in allowed:
            raise ConfigError(self.key(name), f"must be one of {', '.join(allowed)}")
        return value

    def text_list(self, name: str) -> tuple[str, ...]:
        value = self._raw.get(name, ())
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(self.key(name), "must be a list of strings")
        return tuple(str(v) for v in value)


def required_secret(source: SourceSettings, what: str) -> str:
    """The source's secret; a ``ConfigError`` when it is needed (verify on) and absent."""
    if source.secret:
        return source.secret
    if not source.verify:
        return ""
    raise ConfigError(
        f"sources.{source.name}.secret",
        f"{source.provider} needs {what} (or verify = false, explicitly)",
    )


def drop_status(source: SourceSettings, default: int) -> int:
    status = source.drop_status if source.drop_status is not None else default
    if not 200 <= status <= 599:
        raise ConfigError(f"sources.{source.name}.drop_status", "must be an HTTP status code")
    return status


# --- bodies -----------------------------------------------------------------------------


class Form:
    """Multi-valued form fields in arrival order, parsed once."""

    __slots__ = ("_first", "files", "pairs")

    def __init__(self, pairs: list[tuple[str, str]], files: int = 0) -> None:
        self.pairs = pairs
        self.files = files
        first: dict[str, str] = {}
        for key, value in pairs:
            first.setdefault(key, value)
        self._first = first

    def get(self, key: str) -> str | None:
        return self._first.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._first

    def keys(self) -> Iterable[str]:
        return self._first.keys()

    def lists(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key, value in self.pairs:
            out.setdefault(key, []).append(value)
        return out


def parse_urlencoded(data: bytes | str, *, what: str = "form body") -> Form:
    """``k=v&k=v`` (body or query string) → ``Form``; values must be UTF-8."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        pairs = _parse_qsl(text)
    except UnicodeError:
        raise BadRequest(f"{what} is not valid UTF-8") from None
    except ValueError as exc:  # too many fields
        raise BadRequest(f"{what} cannot be parsed: {exc}") from None
    return Form(pairs)


def _parse_qsl(text: str) -> list[tuple[str, str]]:
    """``parse_qsl(text, keep_blank_values=True, errors="strict",
    max_num_fields=MAX_FORM_FIELDS)``, the same pairs and errors, in about half the time
    on provider payloads (it is on every form webhook's path): a name or value without
    ``%`` is kept as it is, one with escapes is unquoted in a single step, which gives
    what ``unquote`` gives because the text is already valid UTF-8."""
    if not text:
        return []
    if text.count("&") + 1 > MAX_FORM_FIELDS:
        raise ValueError("Max number of fields exceeded")
    pairs: list[tuple[str, str]] = []
    for piece in text.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        if "+" in name:
            name = name.replace("+", " ")
        if "%" in name:
            name = unquote_to_bytes(name).decode("utf-8")
        if "+" in value:
            value = value.replace("+", " ")
        if "%" in value:
            value = unquote_to_bytes(value).decode("utf-8")
        pairs.append((name, value))
    return pairs


def parse_multipart(body: bytes, content_type: str) -> Form:
    """``multipart/form-data`` → ``Form`` of its text fields (file parts are counted,
    not kept: filtering needs addresses, not attachments). Field values are decoded by
    their part's charset, UTF-8 by default, undecodable bytes replaced (these values
    are never signature input)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data body without a boundary parameter")
    parser = _MultipartCollector(boundary)
    return parser.parse(body)


class _MultipartCollector:
    def __init__(self, boundary: bytes) -> None:
        self.boundary = boundary
        self.pairs: list[tuple[str, str]] = []
        self.files = 0
        self.ended = False
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._data = bytearray()
        self._name: str | None = None
        self._charset = "utf-8"
        self._is_file = False

    def parse(self, body: bytes) -> Form:
        callbacks = {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_end": self._end,
        }
        try:
            parser = MultipartParser(self.boundary, callbacks)  # type: ignore[arg-type]
            parser.write(body)
            parser.finalize()
        except ValueError as exc:  # python-multipart's errors derive from ValueError
            raise BadRequest(f"multipart body cannot be parsed: {exc}") from None
        if not self.ended:
            raise BadRequest("multipart body is truncated (no closing boundary)")
        return Form(self.pairs, self.files)

    def _part_begin(self) -> None:
        self._headers = {}
        self._data = bytearray()
        self._name = None
        self._is_file = False
        self._charset = "utf-8"

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("utf-8", "replace").strip()
        self._field = bytearray()
        self._value = bytearray()

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition"))
        if disposition.lower() == b"form-data" and b"name" in params:
            self._name = params[b"name"].decode("utf-8", "replace")
        self._is_file = b"filename" in params or b"filename*" in params
        _, type_params = parse_options_header(self._headers.get("content-type"))
        charset = type_params.get(b"charset", b"utf-8").decode("latin-1").strip().lower()
        self._charset = charset or "utf-8"

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._is_file:
            self._data += data[start:end]

    def _part_end(self) -> None:
        if self._is_file:
            self.files += 1
        elif self._name is not None:
            try:
                value = self._data.decode(self._charset, "replace")
            except LookupError:  # an unknown charset name
                value = self._data.decode("utf-8", "replace")
            self.pairs.append((self._name, value))

    def _end(self) -> None:
        self.ended = True


def parse_form_body(req_body: bytes, content_type: str, media_type: str, *, who: str) -> Form:
    """A form body in either encoding (Mailgun, SendGrid)."""
    if media_type == FORM:
        return parse_urlencoded(req_body)
    if media_type == MULTIPART:
        return parse_multipart(req_body, content_type)
    raise UnsupportedMediaType(
        f"{who} sends {FORM} or {MULTIPART}, not {media_type or 'a body without Content-Type'}"
    )


def split_url(url: str) -> SplitResult:
    """``urlsplit`` that reports a malformed public URL (e.g. a bad Host) as a 400."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise BadRequest(f"the request URL cannot be parsed: {url[:100]!r}") from None
    return parts


def parse_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except UnicodeError:
        raise BadRequest("JSON body is not valid UTF-8") from None
    except ValueError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("JSON body is nested too deeply") from None


def parse_json_object(body: bytes, *, what: str = "JSON body") -> dict[str, object]:
    value = parse_json(body)
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def dig(value: object, *path: str | int) -> object:
    """``value[p0][p1]...`` through dicts (str keys) and lists (int indexes), or ``None``."""
    for step in path:
        if isinstance(step, str) and isinstance(value, dict):
            value = value.get(step)
        elif isinstance(step, int) and isinstance(value, list) and -len(value) <= step < len(value):
            value = value[step]
        else:
            return None
    return value


def scalar_text(value: object) -> str | None:
    """A JSON scalar as text (ids may arrive as numbers); ``None`` for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)
    return None


def require(value: str | None, what: str) -> str:
    if value is None or not value.strip():
        raise BadRequest(f"missing field {what}")
    return value


_DIGITS_INTERNATIONAL = re.compile(r"[0-9]{7,15}")


def plus_international(value: str) -> str:
    """Vonage and Plivo send international numbers without ``+`` (``447700900000``):
    add it, so that normalisation does not read them as national numbers of the default
    region. Short codes (up to 6 digits) and alphanumeric ids are left alone."""
    return "+" + value if _DIGITS_INTERNATIONAL.fullmatch(value) else value


_STATUS_ENDED_CALL = frozenset(
    {"completed", "busy", "failed", "no-answer", "canceled", "cancelled", "timeout"}
)


def is_followup_call(
    call_status: str | None,
    direction: str | None,
    callback_source: str | None = None,
    *,
    in_progress_is_followup: bool = False,
) -> bool:
    """A voice request that is not the first webhook of an inbound call (status callback,
    outbound leg, ended call, and for Twilio a mid-call action): forward it without
    filtering. Anything unrecognised is filtered (fail closed)."""
    if callback_source:  # Twilio/TeXML status callbacks: "call-progress-events"
        return True
    if direction is not None and direction.lower().startswith("outbound"):
        return True
    status = (call_status or "").lower()
    return status in _STATUS_ENDED_CALL or (in_progress_is_followup and status == "in-progress")


# --- mail authentication (SPEC §2) ------------------------------------------------------

_REGISTRY = HeaderRegistry()


def normal_domain(domain: str) -> str:
    """Lowercase, no trailing dot, IDNA A-label when it encodes."""
    text = domain.strip().lower().rstrip(".")
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        return text


def header_from_domain(raw: str) -> str | None:
    """The domain of a header From holding exactly one well-formed address, else None.

    Any parse defect counts as "not well formed": an unparseable From never counts as
    authenticated.
    """
    try:
        header = _REGISTRY("from", raw)
        addresses = header.addresses  # type: ignore[attr-defined]
        defects = header.defects
    except Exception:  # the stdlib header parser has raised on crafted input before
        return None
    if len(addresses) != 1 or defects or not addresses[0].domain:
        return None
    return normal_domain(addresses[0].domain)


def address_domain(value: str) -> str | None:
    """The domain of ``local@domain`` / ``<local@domain>`` or of a bare domain."""
    text = value.strip().strip("<>\"'").strip()
    if not text:
        return None
    _, at, domain = text.rpartition("@")
    domain = domain if at else text
    if not domain or any(c.isspace() for c in domain):
        return None
    return normal_domain(domain)


def aligned(domain: str, from_domain: str) -> bool:
    """Relaxed DMARC alignment, approximated without the public suffix list: the same
    domain, or one a subdomain of the other where the parent has at least two labels
    (so ``com`` or a bare suffix never aligns with everything below it)."""
    if domain == from_domain:
        return True
    shorter, longer = sorted((domain, from_domain), key=len)
    return shorter.count(".") >= 1 and longer.endswith("." + shorter)


@dataclass(slots=True)
class MailAuth:
    """Authentication verdicts gathered from a provider's fields and trusted headers."""

    spf: str | None = None
    spf_domain: str | None = None
    dkim: list[tuple[str, str | None]] = field(default_factory=list)  # (result, d=)
    dmarc: str | None = None
    dmarc_from: str | None = None

    def authenticated(self, from_domain: str | None) -> bool:
        if from_domain is None:
            return False
        if self.dmarc == "pass" and (
            self.dmarc_from is None or normal_domain(self.dmarc_from) == from_domain
        ):
            return True
        if self.spf == "pass" and self.spf_domain and aligned(self.spf_domain, from_domain):
            return True
        return any(
            result == "pass" and domain is not None and aligned(domain, from_domain)
            for result, domain in self.dkim
        )

    def as_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.spf is not None:
            out["spf"] = self.spf
        if self.spf_domain:
            out["spf_domain"] = self.spf_domain
        if self.dkim:
            out["dkim"] = "pass" if any(r == "pass" for r, _ in self.dkim) else self.dkim[0][0]
            domains = [d for r, d in self.dkim if r == "pass" and d]
            if domains:
                out["dkim_domains"] = ",".join(domains)
        if self.dmarc is not None:
            out["dmarc"] = self.dmarc
        return out

    def add_authentication_results(self, value: str, trusted_ids: Iterable[str]) -> bool:
        """Take the verdicts of one ``Authentication-Results`` header when its authserv-id
        is one of ``trusted_ids`` (a header added by anyone else is sender-controlled)."""
        authserv, results = parse_authentication_results(value)
        if authserv is None or authserv.lower() not in {t.lower() for t in trusted_ids}:
            return False
        for method, result, props in results:
            if method == "spf" and self.spf is None:
                self.spf = result
                mailfrom = props.get("smtp.mailfrom") or props.get("smtp.helo")
                self.spf_domain = address_domain(mailfrom) if mailfrom else None
            elif method == "dkim":
                d = props.get("header.d") or props.get("header.i")
                self.dkim.append((result, address_domain(d) if d else None))
            elif method == "dmarc" and self.dmarc is None:
                self.dmarc = result
                self.dmarc_from = props.get("header.from")
        return True


_COMMENT = re.compile(r"\([^()]*\)")


def parse_authentication_results(
    value: str,
) -> tuple[str | None, list[tuple[str, str, dict[str, str]]]]:
    """RFC 8601 ``authserv-id; method=result prop=value ...; ...`` → (id, results).

    Comments are removed (nested ones by repetition); results are lowercase.
    """
    text = value
    for _ in range(5):
        text, count = _COMMENT.subn(" ", text)
        if not count:
            break
    segments = text.split(";")
    head = segments[0].split()
    authserv = head[0] if head else None
    results: list[tuple[str, str, dict[str, str]]] = []
    for segment in segments[1:]:
        tokens = segment.split()
        if not tokens:
            continue
        method, eq, result = tokens[0].partition("=")
        if not eq:
            continue
        props: dict[str, str] = {}
        for token in tokens[1:]:
            name, eq, prop_value = token.partition("=")
            if eq:
                props[name.lower()] = prop_value.strip('"')
        results.append((method.partition("/")[0].lower(), result.lower(), props))
    return authserv, results


def parse_received_spf(value: str) -> tuple[str, str | None]:
    """``Pass (comment) identity=mailfrom; envelope-from="a@b"; ...`` → (result, domain)."""
    words = value.split(None, 1)
    result = words[0].lower() if words else "none"
    domain: str | None = None
    for match in re.finditer(r"envelope-from\s*=\s*\"?([^\";\s]+)", value, re.IGNORECASE):
        domain = address_domain(match.group(1))
        break
    return result, domain


def dkim_signature_domains(values: Iterable[str]) -> list[str]:
    """The ``d=`` tag of each ``DKIM-Signature`` header."""
    domains: list[str] = []
    for value in values:
        for tag in value.split(";"):
            name, eq, tag_value = tag.partition("=")
            if eq and name.strip().lower() == "d":
                domain = address_domain(re.sub(r"\s+", "", tag_value))
                if domain:
                    domains.append(domain)
                break
    return domains


def headers_from_block(block: str) -> list[tuple[str, str]]:
    """A raw RFC 5322 header block (SendGrid ``headers``, raw MIME) → (name, value) pairs."""
    try:
        message = HeaderParser().parsestr(block, headersonly=True)
        return [(str(k), str(v)) for k, v in message.items()]
    except Exception:  # a malformed header block means "no trusted headers"
        return []


def first_header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers:
        if key.lower() == lowered:
            return value
    return None


def all_headers(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    lowered = name.lower()
    return [value for key, value in headers if key.lower() == lowered]


def collect_trusted_authentication_results(
    auth: MailAuth, headers: Iterable[tuple[str, str]], trusted_ids: tuple[str, ...]
) -> None:
    if not trusted_ids:
        return
    for value in all_headers(headers, "Authentication-Results"):
        auth.add_authentication_results(value, trusted_ids)


LoaderT = Callable[[str], bytes]
