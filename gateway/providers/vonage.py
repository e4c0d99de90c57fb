"""Vonage Voice (answer webhook), SMS API (inbound SMS) and Messages API webhooks.

Two signature schemes, both keyed by the account's *signature secret* (the source
``secret``):

* **Signed webhooks** (Voice, Messages): ``Authorization: Bearer <JWT>``, HS256 over the
  signature secret (the SDK verifies with ``jwt.decode(token, secret, algorithms=
  ["HS256"])``). Verified here with ``hmac`` directly: only ``alg`` HS256 is accepted,
  ``iat`` must lie within ``options.tolerance_s`` (default 300 s) of now, ``exp``/``nbf``
  are honoured when present, and a ``payload_hash`` claim must equal the SHA-256 of the
  payload (the raw body, or the parameters as compact JSON in their order for GET).
  ``jti`` feeds the replay cache.
* **SMS ``sig``** (inbound SMS, when signing is enabled): the parameters without
  ``sig``, sorted, as ``&k=v&k=v`` with ``&`` and ``=`` inside values replaced by ``_``;
  ``md5hash`` = ``md5(query + secret)``, the HMAC methods = ``HMAC(secret, query)``, hex
  in either case. ``options.sms_signature_method`` picks the method (default
  ``md5hash``); the ``timestamp`` parameter must be within the tolerance and ``nonce``
  feeds the replay cache. [U] Vonage documents no timestamp tolerance.

Vonage sends numbers without ``+`` (``447700900000``): digit-only numbers get one.

Dropping a call: Vonage calls the answer webhook once the call is answered and has no
documented pre-answer reject [U]. The drop answer is an NCCO with no actions (``[]``):
"when all the actions in the NCCO are complete, the call ends", so the call ends at
once. [U] Unverified on a live account; a rejected NCCO (syntax error) would send
Vonage to the fallback answer URL, so the NCCO is overridable through
``options.drop_ncco`` (an array, as TOML or JSON text, e.g. a short ``talk`` action).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from typing import ClassVar

from gateway.errors import BadRequest, ConfigError, InvalidSignature, UnsupportedMediaType
from gateway.providers._common import (
    FORM,
    JSON,
    Form,
    Options,
    parse_json,
    parse_urlencoded,
    plus_international,
    required_secret,
    scalar_text,
)
from gateway.providers.base import Answer, ParsedEvent, RawRequest, ReplayGuarded
from gateway.settings import SourceSettings
from gateway.signing import (
    ReplayCache,
    b64decode_strict,
    check_timestamp,
    constant_time_equals,
    hmac_sha256,
    parse_unix_timestamp,
)

DEFAULT_TOLERANCE_S = 300.0
EXP_LEEWAY_S = 30.0
SMS_SIGNATURE_METHODS = ("md5hash", "md5", "sha1", "sha256", "sha512")


# --- HS256 JWT -----------------------------------------------------------------------------


def _b64url_decode(segment: str) -> bytes | None:
    return b64decode_strict(segment.replace("-", "+").replace("_", "/"))


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt_hs256_encode(claims: dict[str, object], secret: str) -> str:
    """An HS256 JWT (for tests and the e2e helpers)."""
    header = _b64url_encode(
        json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode()
    )
    payload = _b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{_b64url_encode(hmac_sha256(secret.encode(), signing_input))}"


def jwt_hs256_verify(
    token: str, secret: bytes, now: float, tolerance_s: float
) -> dict[str, object]:
    """Verify an HS256 JWT and its time claims; answer its claims.

    Raises ``InvalidSignature`` saying what is wrong. ``iat`` is required (Vonage always
    sets it) and must be within ``tolerance_s`` of ``now``.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidSignature("Authorization bearer token is not a JWT")
    header_raw, payload_raw, signature_raw = (_b64url_decode(p) for p in parts)
    if header_raw is None or payload_raw is None or signature_raw is None:
        raise InvalidSignature("JWT segments are not base64url")
    header = _json_object(header_raw)
    if header is None or header.get("alg") != "HS256":
        raise InvalidSignature("JWT algorithm must be HS256")
    expected = hmac_sha256(secret, f"{parts[0]}.{parts[1]}".encode("ascii", "replace"))
    if not constant_time_equals(expected, signature_raw):
        raise InvalidSignature("JWT signature does not match the signature secret")
    claims = _json_object(payload_raw)
    if claims is None:
        raise InvalidSignature("JWT payload is not a JSON object")
    iat = _number_claim(claims, "iat")
    if iat is None:
        raise InvalidSignature("JWT has no iat claim")
    check_timestamp(iat, now, tolerance_s, future_tolerance_s=EXP_LEEWAY_S, what="JWT iat")
    exp = _number_claim(claims, "exp")
    if exp is not None and now > exp + EXP_LEEWAY_S:
        raise InvalidSignature(f"JWT expired {now - exp:.0f} s ago")
    nbf = _number_claim(claims, "nbf")
    if nbf is not None and now + EXP_LEEWAY_S < nbf:
        raise InvalidSignature("JWT is not valid yet (nbf)")
    return claims


def _json_object(raw: bytes) -> dict[str, object] | None:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _number_claim(claims: dict[str, object], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSignature(f"JWT {name} claim is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidSignature(f"JWT {name} claim is not a finite number")
    return number


# --- SMS sig ------------------------------------------------------------------------------


def vonage_sms_signature(params: dict[str, str], secret: str, method: str = "md5hash") -> str:
    """Vonage's SMS ``sig`` over ``params`` (without ``sig``), lowercase hex."""
    query = "".join(
        "&{}={}".format(key, params[key].replace("&", "_").replace("=", "_"))
        for key in sorted(params)
    )
    if method == "md5hash":
        return hashlib.md5((query + secret).encode(), usedforsecurity=False).hexdigest()
    return hmac.new(secret.encode(), query.encode(), method).hexdigest()


class VonageProvider(ReplayGuarded):
    """Vonage Voice answer webhooks, inbound SMS and Messages API webhooks."""

    name: ClassVar[str] = "vonage"
    options_allowed: ClassVar[frozenset[str]] = frozenset(
        {"tolerance_s", "sms_signature_method", "drop_ncco"}
    )

    def __init__(self, source: SourceSettings, *, replay_cache: ReplayCache | None = None) -> None:
        options = Options(source, self.options_allowed)
        self.source = source
        self._secret = required_secret(source, "the account signature secret as secret")
        self.tolerance_s = options.number("tolerance_s", DEFAULT_TOLERANCE_S, minimum=1)
        self.sms_method = options.choice("sms_signature_method", SMS_SIGNATURE_METHODS, "md5hash")
        self.replay_cache = replay_cache or ReplayCache(ttl_s=2 * self.tolerance_s + 60)
        self._voice_drop = Answer(200, "application/json", _drop_ncco(options))
        self._sms_drop = Answer(200, None, b"")

    def handle(self, req: RawRequest, now: float) -> ParsedEvent:
        method = req.method.upper()
        body_json: object = None
        if method == "GET":
            form = parse_urlencoded(req.query, what="query string")
        elif req.media_type == JSON:
            body_json = parse_json(req.body)
            if not isinstance(body_json, dict):
                raise BadRequest("Vonage JSON body must be an object")
            form = _flat_form(body_json)
        elif req.media_type == FORM:
            form = parse_urlencoded(req.body)
        else:
            raise UnsupportedMediaType(
                f"Vonage sends {JSON}, {FORM} or GET parameters, not {req.media_type or 'no type'}"
            )
        replay_key = self._verify(req, form, now) if self.source.verify else None
        return self._parse(form, body_json, replay_key)

    # --- verification ---------------------------------------------------------------------

    def _verify(self, req: RawRequest, form: Form, now: float) -> str | None:
        authorization = req.headers.get("authorization", "")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return self._verify_jwt(req, token.strip(), form, now)
        if "sig" in form:
            return self._verify_sms_sig(form, now)
        raise InvalidSignature(
            "missing Authorization: Bearer JWT (signed webhooks) or sig parameter (signed SMS)"
        )

    def _verify_jwt(self, req: RawRequest, token: str, form: Form, now: float) -> str | None:
        claims = jwt_hs256_verify(token, self._secret.encode(), now, self.tolerance_s)
        claimed_hash = claims.get("payload_hash")
        if claimed_hash is not None:
            if not isinstance(claimed_hash, str):
                raise InvalidSignature("JWT payload_hash claim is not a string")
            if not any(
                constant_time_equals(claimed_hash.lower(), candidate)
                for candidate in _payload_hashes(req, form)
            ):
                raise InvalidSignature("JWT payload_hash does not match the payload")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            return None
        replay_key = "jti:" + jti
        if self.replay_cache.seen(replay_key, now):
            raise InvalidSignature("replayed request: this JWT (jti) was already used")
        return replay_key

    def _verify_sms_sig(self, form: Form, now: float) -> str | None:
        params = {key: value for key, value in _first_pairs(form) if key != "sig"}
        ts = parse_unix_timestamp(params.get("timestamp"), what="timestamp parameter")
        check_timestamp(ts, now, self.tolerance_s, what="SMS timestamp")
        expected = vonage_sms_signature(params, self._secret, self.sms_method)
        given = (form.get("sig") or "").strip().lower()
        if not constant_time_equals(expected, given):
            raise InvalidSignature(
                f"sig does not match ({self.sms_method} with the signature secret)"
            )
        nonce = params.get("nonce")
        replay_key = "nonce:" + (nonce or expected)
        if self.replay_cache.seen(replay_key, now):
            raise InvalidSignature("replayed request: this signed SMS was already received")
        return replay_key

    # --- parsing --------------------------------------------------------------------------

    def _parse(self, form: Form, body_json: object, replay_key: str | None) -> ParsedEvent:
        if form.get("message_uuid"):
            return self._parse_messages(form, body_json, replay_key)
        if form.get("msisdn") is not None or form.get("messageId"):
            return self._parse_sms(form, replay_key)
        if form.get("uuid") or form.get("conversation_uuid"):
            return self._parse_voice(form, replay_key)
        raise BadRequest("Vonage webhook without uuid (voice), messageId (SMS) or message_uuid")

    def _parse_voice(self, form: Form, replay_key: str | None) -> ParsedEvent:
        # Answer webhooks carry no status; event webhooks (started, ringing, answered,
        # completed...) do and are forwarded unfiltered.
        passthrough = form.get("status") is not None or (form.get("direction") == "outbound")
        sender = form.get("from")
        if sender is None and form.get("from_user"):
            sender = "client:" + (form.get("from_user") or "")
        if sender is None and not passthrough:
            raise BadRequest("Vonage answer webhook without from")
        recipient = form.get("to")
        return ParsedEvent(
            channel="voice",
            sender_raw=plus_international(sender or ""),
            recipients_raw=(plus_international(recipient),) if recipient else (),
            provider_event_id=form.get("uuid"),
            variant="voice",
            passthrough=passthrough,
            replay_key=replay_key,
            extra={"conversation_uuid": form.get("conversation_uuid")},
        )

    def _parse_sms(self, form: Form, replay_key: str | None) -> ParsedEvent:
        # Delivery receipts share msisdn/to/messageId but carry a status.
        passthrough = form.get("status") is not None or form.get("err-code") is not None
        sender = form.get("msisdn")
        recipient = form.get("to")
        if not passthrough and (sender is None or recipient is None):
            raise BadRequest("Vonage inbound SMS without msisdn or to")
        return ParsedEvent(
            channel="sms",
            sender_raw=plus_international(sender or ""),
            recipients_raw=(plus_international(recipient),) if recipient else (),
            provider_event_id=form.get("messageId"),
            variant="sms",
            passthrough=passthrough,
            replay_key=replay_key,
        )

    def _parse_messages(self, form: Form, body_json: object, replay_key: str | None) -> ParsedEvent:
        passthrough = form.get("status") is not None
        sender = form.get("from")
        recipient = form.get("to")
        if not passthrough and (sender is None or recipient is None):
            raise BadRequest("Vonage Messages webhook without from or to")
        channel_name = (form.get("channel") or "sms").lower()
        return ParsedEvent(
            channel="sms",
            sender_raw=plus_international(sender or ""),
            recipients_raw=(plus_international(recipient),) if recipient else (),
            provider_event_id=form.get("message_uuid"),
            variant="whatsapp" if channel_name == "whatsapp" else "messages",
            passthrough=passthrough,
            replay_key=replay_key,
            extra={"channel": channel_name},
        )

    def drop_answer(self, event: ParsedEvent) -> Answer:
        return self._voice_drop if event.channel == "voice" else self._sms_drop


def _drop_ncco(options: Options) -> bytes:
    """``options.drop_ncco`` (a TOML array of tables, or JSON text) as JSON bytes."""
    value = options.raw("drop_ncco", [])
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    try:
        encoded = json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, list):
        raise ConfigError(options.key("drop_ncco"), "must be an array (an NCCO), TOML or JSON")
    return encoded


def _flat_form(body: dict[str, object]) -> Form:
    """The scalar top-level fields of a JSON body as a form (numbers as text); the
    Messages API nests ``from``/``to`` for some channels as ``{"number": ...}``."""
    pairs: list[tuple[str, str]] = []
    for key, value in body.items():
        text = scalar_text(value)
        if text is None and isinstance(value, dict):
            text = scalar_text(value.get("number")) or scalar_text(value.get("id"))
        if text is not None:
            pairs.append((key, text))
    return Form(pairs)


def _first_pairs(form: Form) -> list[tuple[str, str]]:
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for key, value in form.pairs:
        if key not in seen:
            seen.add(key)
            out.append((key, value))
    return out


def _payload_hashes(req: RawRequest, form: Form) -> list[str]:
    """Candidate SHA-256 hex digests of the payload Vonage hashed: the raw body, or the
    parameters as compact JSON in arrival order (GET, or a body re-serialised)."""
    candidates: list[bytes] = []
    if req.method.upper() != "GET" and req.body:
        candidates.append(req.body)
        if req.media_type == JSON:
            try:
                parsed = json.loads(req.body)
                candidates.append(json.dumps(parsed, separators=(",", ":")).encode())
                candidates.append(
                    json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode()
                )
            except (ValueError, RecursionError):
                pass
    else:
        ordered = dict(_first_pairs(form))
        candidates.append(json.dumps(ordered, separators=(",", ":")).encode())
        candidates.append(json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode())
    return [hashlib.sha256(c).hexdigest() for c in candidates]
