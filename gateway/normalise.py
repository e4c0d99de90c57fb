"""Sender, recipient and rule-target normalisation (SPEC §2, PROVIDERS §5).

Everything here is pure (no I/O) and cached: the same raw string always gives the same
value, and ``phonenumbers`` (~15 µs a parse) and the RFC 5322 header parser run once per
distinct input. Rules are matched against the ``value`` these functions produce, so the
rule writer (``normalise_rule_target``) uses the very same code as the hot path.

Email: the header parser of :mod:`email.headerregistry` (``policy.default``) is used
rather than ``email.utils.getaddresses``, whose ``strict=`` fix for CVE-2023-27043 is not
in every 3.11 patch release. Any parser defect other than two harmless ones (an unquoted
period in a display name such as ``John Q. Public``, and a UTF-8 local part) makes the
address ``invalid``: an ambiguous From must never be read as somebody else.

Phone: E.164 through ``phonenumbers``. ``is_possible_number`` (strictly
``IS_POSSIBLE``, not "possible local-only") is the acceptance test rather than
``is_valid_number``, so that fictional and newly allocated ranges still normalise.
"""

from __future__ import annotations

import re
from email import policy as _email_policy
from email.errors import NonASCIILocalPartDefect, ObsoleteHeaderDefect
from encodings import idna as _idna
from functools import lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberType
from phonenumbers import ValidationResult as _VR

from gateway.models import MatchType, Sender

__all__ = [
    "normalise_domain",
    "normalise_email",
    "normalise_mailbox_address",
    "normalise_number",
    "normalise_phone",
    "normalise_rule_target",
    "phone_info",
]

_CACHE_SIZE = 131072

# --------------------------------------------------------------------------- domains

# RFC 1123 "LDH" label: letters, digits, hyphens; no hyphen at either end; 1-63 chars.
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
# IDNA2003 (RFC 3490 §3.1) treats these as label separators too.
_IDNA_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_MAX_DOMAIN_LEN = 253


def _domain_or_reason(raw: str) -> tuple[str | None, str]:
    """(A-label domain, "") or (None, why it is not a domain)."""
    text = raw.strip().translate(_IDNA_DOTS)
    if text.endswith("."):
        text = text[:-1]
    if not text:
        return None, "the domain is empty"
    labels: list[str] = []
    for label in text.lower().split("."):
        if not label:
            return None, f"the domain {raw.strip()!r} has an empty label"
        if label.isascii():
            if label.startswith("xn--"):
                # Already punycoded: it must decode and round-trip, else it is junk.
                try:
                    ok = _idna.ToASCII(_idna.ToUnicode(label)).decode("ascii") == label
                except (UnicodeError, ValueError):
                    ok = False
                if not ok:
                    return None, f"{label!r} is not a valid punycode (xn--) label"
        else:
            try:
                label = _idna.ToASCII(label).decode("ascii").lower()
            except (UnicodeError, ValueError):
                return None, f"{label!r} is not a valid internationalised domain label"
        if len(label) > 63:
            return None, f"the label {label[:20]!r}... is longer than 63 characters"
        if not _LDH_LABEL.fullmatch(label):
            return None, f"the label {label!r} may hold only letters, digits and inner hyphens"
        labels.append(label)
    domain = ".".join(labels)
    if len(domain) > _MAX_DOMAIN_LEN:
        return None, f"the domain is longer than {_MAX_DOMAIN_LEN} characters"
    return domain, ""


@lru_cache(maxsize=_CACHE_SIZE)
def _domain_cached(raw: str) -> tuple[str | None, str]:
    return _domain_or_reason(raw)


def normalise_domain(raw: str) -> str | None:
    """Normalise a domain name to lowercase IDNA A-labels, or ``None`` when invalid.

    Only surrounding whitespace and one trailing dot are removed; a leading ``@`` or
    ``*.`` makes the input invalid. One label (a top-level domain such as ``xyz``) is
    allowed. ``bücher.example`` and ``xn--bcher-kva.example`` give the same value.
    Unicode labels go through the stdlib IDNA2003 codec (so ``ß`` maps to ``ss``).
    """
    return _domain_cached(raw)[0]


# --------------------------------------------------------------------------- email

_POLICY = _email_policy.default
# RFC 5322 line-length limit. Longer values are refused before parsing: the header
# parser is super-linear on crafted input (thousands of quotes or commas take 100+ ms).
_MAX_EMAIL_LEN = 998
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
# Fast path: a bare ``local@domain`` (optionally in angle brackets) with an ASCII
# dot-atom local part needs no header parser.
_SIMPLE_ADDR = re.compile(rf"<?({_ATEXT}+(?:\.{_ATEXT}+)*)@([A-Za-z0-9.-]+)>?", re.ASCII)
# Fast path: ``Plain Name <local@domain>`` where the name holds only word characters,
# spaces, hyphens and apostrophes (no quotes, commas, parentheses, dots or '@').
_SIMPLE_NAMED = re.compile(rf"[\w '-]*<({_ATEXT}+(?:\.{_ATEXT}+)*)@([A-Za-z0-9.-]+)>")
# A local part that can be written without quotes (RFC 5322 dot-atom, RFC 6532 UTF-8).
_ATEXT_UTF8 = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010ffff-]"
_DOT_ATOM = re.compile(rf"{_ATEXT_UTF8}+(?:\.{_ATEXT_UTF8}+)*")
# ``a@example.com.`` and ``<a@example.com.>``: a trailing root dot the parser rejects.
_TRAILING_DOT = re.compile(r"(@[^\s<>@()\[\]\",;:\\]+)\.(?=\s*(?:>|\(|$))")


def _tolerable(defect: Exception) -> bool:
    """Defects that do not make the address ambiguous."""
    if isinstance(defect, NonASCIILocalPartDefect):
        return True  # SMTPUTF8 (RFC 6531) mailbox
    return isinstance(defect, ObsoleteHeaderDefect) and "period in 'phrase'" in str(defect)


def _parse_header(text: str) -> tuple[str, str] | str:
    """(local part, domain) of the one mailbox in ``text``, or the reason there is none."""
    try:
        header = _POLICY.header_factory("From", text)
        defects = header.defects
        groups = header.groups
    except Exception:  # the parser raises IndexError, RecursionError, ... on junk
        return "it cannot be parsed as an email address"
    for defect in defects:
        if not _tolerable(defect):
            return f"it cannot be parsed unambiguously ({defect})"
    if any(group.display_name is not None for group in groups):
        return "it is a group, not a single mailbox"
    addresses = [address for group in groups for address in group.addresses]
    if not addresses:
        return "it holds no address"
    if len(addresses) > 1:
        return "it holds more than one address"
    return addresses[0].username, addresses[0].domain


def _quote_local(local: str) -> str:
    """The local part as written in an address: bare when it is a dot-atom, else quoted."""
    if _DOT_ATOM.fullmatch(local):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


@lru_cache(maxsize=_CACHE_SIZE)
def _email_cached(raw: str) -> tuple[str, str] | str:
    """(value, domain) for an address, or the human-readable reason it is not one."""
    text = raw.strip()
    if not text or text == "<>":
        return "the address is empty"
    if len(text) > _MAX_EMAIL_LEN:
        return f"the address is longer than {_MAX_EMAIL_LEN} characters"
    if "@" not in text:
        return f"{text[:80]!r} is not an email address: it has no '@'"
    simple = _SIMPLE_ADDR.fullmatch(text)
    if simple is None or text.startswith("<") != text.endswith(">"):
        simple = _SIMPLE_NAMED.fullmatch(text)
    if simple is not None:
        local, domain_part = simple.group(1), simple.group(2)
    else:
        # Unfold a folded header; other control characters are left to the parser.
        text = text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
        parsed = _parse_header(text)
        if isinstance(parsed, str):
            fixed = _TRAILING_DOT.sub(r"\1", text)
            retry = _parse_header(fixed) if fixed != text else parsed
            if isinstance(retry, str):
                return f"{raw.strip()[:80]!r} is not a valid email address: {parsed}"
            parsed = retry
        local, domain_part = parsed
    if not local:
        return f"{raw.strip()[:80]!r} has an empty local part"
    if not domain_part:
        return f"{raw.strip()[:80]!r} has no domain"
    if not local.replace(" ", "").isprintable() or any(c.isspace() and c != " " for c in local):
        return f"{raw.strip()[:80]!r} has control characters in its local part"
    if domain_part.startswith("["):
        return f"{raw.strip()[:80]!r} has a domain literal; only domain names are accepted"
    domain, why = _domain_cached(domain_part)
    if domain is None:
        return f"{raw.strip()[:80]!r} is not a valid email address: {why}"
    return f"{_quote_local(local.lower())}@{domain}", domain


_INVALID_VALUE = "invalid"


@lru_cache(maxsize=_CACHE_SIZE)
def _email_sender_cached(raw: str) -> Sender:
    result = _email_cached(raw)
    if isinstance(result, str):
        return Sender(kind="invalid", value=_INVALID_VALUE, raw=raw)
    return Sender(kind="email", value=result[0], raw=raw, domain=result[1])


def normalise_email(raw: str) -> Sender:
    """Normalise a header From or envelope sender to ``Sender(kind="email")``.

    Accepts RFC 5322 forms: display names (quoted, or RFC 2047 encoded words), comments,
    angle brackets. The value is the lowercase ``local@domain`` with an A-label domain
    and no trailing dot; a local part that needs quoting stays quoted. An empty envelope
    sender (``<>``), parser defects, groups, several addresses, a missing ``@``, an
    empty local part or a bad domain give ``Sender(kind="invalid", value="invalid")``.
    Never raises.
    """
    return _email_sender_cached(raw)


def normalise_mailbox_address(raw: str) -> str:
    """Normalise one of our mailbox addresses (a target id); ``ValueError`` if invalid."""
    result = _email_cached(raw)
    if isinstance(result, str):
        raise ValueError(result)
    return result[0]


# --------------------------------------------------------------------------- phone

_PROVIDER_PREFIXES = ("whatsapp:", "tel:")
_WITHHELD_WORDS = frozenset(
    {"anonymous", "restricted", "private", "unknown", "unavailable", "withheld", "blocked"}
)
# Twilio spells withheld caller ids on the keypad: ANONYMOUS, RESTRICTED, BLOCKED,
# UNKNOWN, UNAVAILABLE (PROVIDERS §5).
_TWILIO_PLACEHOLDERS = frozenset({"266696687", "7378742833", "2562533", "8656696", "86282452253"})
# Digits with the separators people and providers write; an optional leading '+'.
_PHONEISH = re.compile(r"\+?[0-9 ().\-/]+", re.ASCII)
_NON_DIGITS = re.compile(r"[^0-9]", re.ASCII)
_MAX_DIGITS = 20  # E.164 is at most 15; leave room for IDD and national prefixes


def _possible(number: PhoneNumber) -> bool:
    return phonenumbers.is_possible_number_with_reason(number) == _VR.IS_POSSIBLE


def _try_parse(text: str, region: str | None) -> PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except NumberParseException:
        return None


def _stable_e164(number: PhoneNumber, parsed_from: str = "") -> str | None:
    """E.164 text of a possible number, re-parsed until it reads back as itself.

    ``phonenumbers`` may drop a national prefix when it re-reads its own output
    (``+20000000000`` reads back as ``+2000000000``); stored values must be a fixed point.
    ``parsed_from`` is the text ``number`` came from without a region: when the output
    equals it, it is a fixed point already and the second parse is skipped.
    """
    for _ in range(3):
        if not _possible(number):
            return None
        text = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        if text == parsed_from:
            return text
        again = _try_parse(text, None)
        if again is None:
            return None
        if phonenumbers.format_number(again, phonenumbers.PhoneNumberFormat.E164) == text:
            return text
        number = again
    return None


def _e164_of(text: str, region: str) -> str | None:
    """E.164 for a phone-looking string (see ``_PHONEISH``), or ``None``."""
    digits = _NON_DIGITS.sub("", text)
    if not digits or len(digits) > _MAX_DIGITS:
        return None
    if text.startswith("+") or digits.startswith("00"):
        # Explicitly international ('+' or the common 00 international prefix).
        international_text = "+" + (digits if text.startswith("+") else digits[2:])
        number = _try_parse(international_text, None)
        return None if number is None else _stable_e164(number, international_text)
    national = _try_parse(text, region)
    national_ok = national is not None and _possible(national)
    if len(digits) >= 11 and not (
        national_ok and national is not None and phonenumbers.is_valid_number(national)
    ):
        # A country code without '+' (Vonage's msisdn, "14155550100" in a path).
        international = _try_parse("+" + digits, None)
        if (
            international is not None
            and _possible(international)
            and (not national_ok or phonenumbers.is_valid_number(international))
        ):
            result = _stable_e164(international, "+" + digits)
            if result is not None:
                return result
    if national is not None and national_ok:
        return _stable_e164(national)
    return None


def _anonymous(raw: str, prefix: str | None) -> Sender:
    return Sender(kind="anonymous", value="anonymous", raw=raw, prefix=prefix)


@lru_cache(maxsize=_CACHE_SIZE)
def _phone_cached(raw: str, region: str) -> Sender:
    text = raw.strip()
    lowered = text.lower()
    prefix: str | None = None
    stripped = True
    while stripped:
        stripped = False
        for provider_prefix in _PROVIDER_PREFIXES:
            if lowered.startswith(provider_prefix):
                prefix = prefix or provider_prefix[:-1]
                text = text[len(provider_prefix) :].strip()
                lowered = text.lower()
                stripped = True
    if not text:
        return _anonymous(raw, prefix)
    if lowered in _WITHHELD_WORDS:
        return _anonymous(raw, prefix)
    if lowered.startswith("client:"):
        name = lowered[len("client:") :].strip()
        if not name or name in _WITHHELD_WORDS:
            return _anonymous(raw, prefix or "client")
        return Sender(kind="token", value="client:" + name, raw=raw, prefix=prefix)
    if lowered.startswith(("sip:", "sips:")):
        user = lowered.split(":", 1)[1].split("@", 1)[0].split(";", 1)[0].strip()
        if not user or user in _WITHHELD_WORDS:  # RFC 3323 sip:anonymous@anonymous.invalid
            return _anonymous(raw, prefix or "sip")
        if user.startswith("+") and _PHONEISH.fullmatch(user):
            e164 = _e164_of(user, region)
            if e164 is not None:
                return Sender(kind="phone", value=e164, raw=raw, prefix=prefix or "sip")
        return Sender(kind="token", value=lowered, raw=raw, prefix=prefix)
    if _PHONEISH.fullmatch(text):
        digits = _NON_DIGITS.sub("", text)
        if digits:
            if digits in _TWILIO_PLACEHOLDERS:
                return _anonymous(raw, prefix)
            e164 = _e164_of(text, region)
            if e164 is not None:
                return Sender(kind="phone", value=e164, raw=raw, prefix=prefix)
            # Short code or an impossible number: keep the digits (and an explicit '+').
            token = ("+" if text.startswith("+") else "") + digits
            return Sender(kind="token", value=token, raw=raw, prefix=prefix)
    return Sender(kind="token", value=lowered, raw=raw, prefix=prefix)


def normalise_phone(raw: str, region: str = "US") -> Sender:
    """Normalise a caller / SMS sender to a ``Sender`` of kind phone, token or anonymous.

    ``whatsapp:`` and ``tel:`` are stripped into ``Sender.prefix``. Withheld callers
    (the words anonymous, restricted, private, unknown, unavailable, withheld, blocked,
    alone or after ``client:`` or as a ``sip:`` user; empty input; Twilio's keypad
    placeholder numbers) give ``value="anonymous"``. Numbers (``+``, ``00``, national
    forms in ``region``, a country code without ``+``) give E.164 when
    ``phonenumbers`` finds them possible. Everything else (short codes, alphanumeric
    ids, ``client:``/``sip:`` identities, garbage) is a lowercase token. Never raises.
    """
    return _phone_cached(raw, region.upper())


@lru_cache(maxsize=_CACHE_SIZE)
def _number_cached(raw: str, region: str) -> str | None:
    text = raw.strip()
    if not _PHONEISH.fullmatch(text):
        return None
    return _e164_of(text, region)


def normalise_number(raw: str, region: str = "US") -> str:
    """Normalise one of our numbers (a target id or a real-number target) to E.164.

    Accepts ``+14155550100``, ``+1 (415) 555-0100``, national forms in ``region`` and a
    country code without ``+`` (``14155550100``). URL decoding is the caller's job.
    Raises ``ValueError`` with the reason when the input is not a possible number.
    """
    region = region.upper()
    if not raw.strip():
        raise ValueError("the phone number is empty")
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{region!r} is not a known phone region code")
    value = _number_cached(raw, region)
    if value is None:
        if not _PHONEISH.fullmatch(raw.strip()):
            raise ValueError(
                f"{raw.strip()[:40]!r} is not a phone number: use digits, an optional "
                "leading '+', spaces, dashes, dots or parentheses"
            )
        raise ValueError(f"{raw.strip()[:40]!r} is not a possible phone number")
    return value


# --------------------------------------------------------------------------- rules

_DIGITS_ONLY = re.compile(r"\+?[0-9]+", re.ASCII)
_PREFIX_JUNK = re.compile(r"[\s-]+")
_MAX_TOKEN_LEN = 256


def _exact_number_target(target: str, region: str) -> str:
    text = target.strip()
    if not text:
        raise ValueError("an exact_number target must not be empty")
    sender = normalise_phone(text, region)
    if sender.kind == "anonymous":
        raise ValueError(
            f"{text[:40]!r} is a withheld caller id: use match_type 'anonymous' "
            "with target 'anonymous'"
        )
    if sender.kind == "phone":
        return sender.value
    value = sender.value
    if _DIGITS_ONLY.fullmatch(value):
        if value.startswith("+"):
            raise ValueError(
                f"{text[:40]!r} is not a possible phone number "
                "(for a range of numbers use match_type 'number_prefix')"
            )
        if not 3 <= len(value) <= 8:
            raise ValueError(
                f"{text[:40]!r} is neither a possible phone number in region {region} "
                "nor a 3-8 digit short code"
            )
        return value
    if len(value) > _MAX_TOKEN_LEN or not value.isprintable():
        raise ValueError(
            "an exact_number target must be a phone number, a short code, an "
            "alphanumeric sender id or a client:/sip: identity"
        )
    return value


def _number_prefix_target(target: str) -> str:
    text = _PREFIX_JUNK.sub("", target)
    digits = text[1:] if text.startswith("+") else text
    if not digits.isascii() or not digits.isdigit() or not 1 <= len(digits) <= 15:
        raise ValueError(
            f"{target.strip()[:40]!r} is not a number prefix: write '+' and 1 to 15 digits "
            "of the E.164 number, such as +1900 or +65"
        )
    if digits.startswith("0"):
        raise ValueError(
            f"{target.strip()[:40]!r} is not a number prefix: E.164 country codes never "
            "start with 0 (write +44, not 0044)"
        )
    return "+" + digits


def normalise_rule_target(match_type: MatchType, target: str, region: str = "US") -> str:
    """Normalise a rule's ``match_target`` for its ``match_type``; ``ValueError`` if refused.

    exact_email: a valid address. domain: a bare domain (one label = a TLD; no ``@`` or
    ``*.``). invalid / anonymous: only that word. exact_number: E.164 for numbers, else
    the token of a short code, alphanumeric id or ``client:``/``sip:`` identity.
    number_prefix: ``+`` and 1-15 digits.
    """
    if match_type == "exact_email":
        return normalise_mailbox_address(target)
    if match_type == "domain":
        domain, why = _domain_cached(target)
        if domain is None:
            hint = ""
            if target.strip().startswith(("@", "*.")):
                hint = " (write the bare domain; include_subdomains covers subdomains)"
            raise ValueError(f"{target.strip()[:80]!r} is not a domain: {why}{hint}")
        return domain
    if match_type == "invalid":
        if target.strip().lower() != "invalid":
            raise ValueError("the target of an 'invalid' rule must be the word 'invalid'")
        return "invalid"
    if match_type == "anonymous":
        if target.strip().lower() != "anonymous":
            raise ValueError("the target of an 'anonymous' rule must be the word 'anonymous'")
        return "anonymous"
    if match_type == "exact_number":
        return _exact_number_target(target, region.upper())
    if match_type == "number_prefix":
        return _number_prefix_target(target)
    raise ValueError(f"unknown match_type {match_type!r}")


# --------------------------------------------------------------------------- info

_TYPE_NAMES: dict[int, str] = {
    PhoneNumberType.FIXED_LINE: "fixed_line",
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
    PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium_rate",
    PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.PERSONAL_NUMBER: "personal_number",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "uan",
    PhoneNumberType.VOICEMAIL: "voicemail",
}


def phone_info(e164: str) -> tuple[str, str | None]:
    """(number type, region code) of an E.164 number, for contacts.

    The type is a lowercase word (mobile, fixed_line, toll_free, ... or unknown); the
    region is an ISO code such as ``"GB"``, or ``None`` for non-geographic or unknown
    numbers. Never raises.
    """
    return _phone_info_cached(e164)


@lru_cache(maxsize=_CACHE_SIZE)
def _phone_info_cached(e164: str) -> tuple[str, str | None]:
    number = _try_parse(e164, None)
    if number is None:
        return "unknown", None
    kind = _TYPE_NAMES.get(phonenumbers.number_type(number), "unknown")
    region = phonenumbers.region_code_for_number(number)
    if not region or not region.isalpha() or region == "ZZ":
        region = None
    return kind, region
