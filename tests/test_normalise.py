"""Tests of gateway.normalise: email, domain, phone, rule-target normalisation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.models import MatchType
from gateway.normalise import (
    normalise_domain,
    normalise_email,
    normalise_mailbox_address,
    normalise_number,
    normalise_phone,
    normalise_rule_target,
    phone_info,
)

# ------------------------------------------------------------------------------ email

EMAIL_OK = [
    ("alice@example.org", "alice@example.org", "bare-address"),
    ("  alice@example.org\t", "alice@example.org", "surrounding-whitespace"),
    ("Alice@Example.ORG", "alice@example.org", "mixed-case-whole-address"),
    ("<alice@example.org>", "alice@example.org", "angle-brackets-only"),
    ("Alice Liddell <alice@example.org>", "alice@example.org", "display-name"),
    ('"Liddell, Alice" <alice@example.org>', "alice@example.org", "quoted-name-with-comma"),
    ("John Q. Public <jqp@example.org>", "jqp@example.org", "unquoted-period-in-name"),
    ("=?utf-8?q?J=C3=B6rg?= <jorg@example.org>", "jorg@example.org", "encoded-word-q"),
    ("=?utf-8?b?SsO2cmc=?= <jorg@example.org>", "jorg@example.org", "encoded-word-b"),
    (
        "=?utf-8?q?alice=40evil.example?= <bob@example.org>",
        "bob@example.org",
        "encoded-name-holding-address",
    ),
    ("Bob (work) <bob@example.org>", "bob@example.org", "comment-in-name"),
    ("bob@example.org (Bob)", "bob@example.org", "trailing-comment"),
    ("alice@example.org.", "alice@example.org", "trailing-dot-bare"),
    ("Alice <alice@example.org.>", "alice@example.org", "trailing-dot-in-brackets"),
    ("alice@bücher.example", "alice@xn--bcher-kva.example", "idn-unicode-domain"),
    ("alice@XN--BCHER-KVA.example", "alice@xn--bcher-kva.example", "idn-punycode-domain"),
    ("Jörg@Bücher.example", "jörg@xn--bcher-kva.example", "utf8-local-part-not-punycoded"),
    ("bounces+123=x@mail.example.org", "bounces+123=x@mail.example.org", "verp-envelope"),
    ('"a b"@example.org', '"a b"@example.org', "quoted-local-part-kept-quoted"),
    ("root@localhost", "root@localhost", "one-label-domain"),
    ("Alice <alice@example.org>\r\n", "alice@example.org", "trailing-crlf"),
]


@pytest.mark.parametrize(("raw", "value"), [r[:2] for r in EMAIL_OK], ids=[r[2] for r in EMAIL_OK])
def test_email_normalises(raw: str, value: str) -> None:
    """Each RFC 5322 form gives the lowercase address with an A-label domain."""
    sender = normalise_email(raw)
    assert sender.kind == "email"
    assert sender.value == value
    assert sender.domain == value.rsplit("@", 1)[1]
    assert sender.raw == raw
    assert sender.prefix is None


EMAIL_INVALID = [
    ("", "empty"),
    ("   ", "whitespace"),
    ("<>", "null-envelope-sender-bounce"),
    ("alice", "no-at-sign"),
    ("alice@", "no-domain"),
    ("@example.org", "empty-local-part"),
    ('""@example.org', "empty-quoted-local-part"),
    ("alice@@example.org", "double-at"),
    ("a@b@example.org", "two-at-signs"),
    ("alice@example..org", "empty-label"),
    ("alice@example.org..", "two-trailing-dots"),
    ("alice@-example.org", "label-leading-hyphen"),
    ("alice@ex_ample.org", "label-underscore"),
    ("alice@" + "a" * 64 + ".org", "label-over-63"),
    ("alice@[192.0.2.1]", "domain-literal"),
    ("alice@xn--a.example", "bad-punycode-label"),
    ("alice@example.org, bob@example.org", "two-addresses"),
    ("Alice <alice@example.org>, Bob <bob@example.org>", "two-named-addresses"),
    ("Smith, John <john@example.org>", "unquoted-comma-in-name"),
    ("friends: alice@example.org;", "group-syntax"),
    ("Undisclosed recipients:;", "empty-group"),
    ("<alice@example.org", "unclosed-angle"),
    ("=?utf-8?b?YWxpY2VAZXhhbXBsZS5vcmc=?=", "address-only-inside-encoded-word"),
    ("not an address at all", "garbage-words"),
    ("\x00\x01", "control-characters"),
    ("(" * 4000, "huge-crafted-input"),
]


@pytest.mark.parametrize("raw", [r[0] for r in EMAIL_INVALID], ids=[r[1] for r in EMAIL_INVALID])
def test_email_invalid(raw: str) -> None:
    """Unparseable, ambiguous or empty senders become the sender ``invalid``."""
    sender = normalise_email(raw)
    assert (sender.kind, sender.value, sender.domain) == ("invalid", "invalid", None)
    assert sender.raw == raw


CRAFTED = [
    ("alice@example.org)<bob@example.org>", "invalid", "cve-2023-27043-paren"),
    ("alice@example.org <bob@example.org>", "invalid", "unquoted-address-as-name"),
    ("alice@example.com <alice@example.com>", "invalid", "unquoted-same-address-gh-122600"),
    ('"alice@example.org" <bob@example.org>', "bob@example.org", "quoted-address-as-name"),
    ('"a@x.example" <b@y.example>', "b@y.example", "quoted-address-as-name-2"),
    ("bob@example.org <alice@example.org", "invalid", "unterminated-angle-after-address"),
    ("<@evil.example:bob@example.org>", "invalid", "obsolete-source-route"),
]


@pytest.mark.parametrize(("raw", "value"), [r[:2] for r in CRAFTED], ids=[r[2] for r in CRAFTED])
def test_email_crafted_addresses_do_not_impersonate(raw: str, value: str) -> None:
    """Crafted From values give the mailbox a mail client shows, or invalid, never another."""
    assert normalise_email(raw).value == value


def test_idn_forms_are_one_domain() -> None:
    """The U-label and A-label spellings of a domain give the same address and domain."""
    unicode_form = normalise_email("x@BÜCHER.example")
    puny_form = normalise_email("x@xn--bcher-kva.example.")
    assert unicode_form.value == puny_form.value == "x@xn--bcher-kva.example"
    assert unicode_form.domain == puny_form.domain == "xn--bcher-kva.example"


def test_email_results_are_cached() -> None:
    """A repeated raw sender is answered from the cache (the same frozen object)."""
    assert normalise_email("Cache <cache@example.org>") is normalise_email(
        "Cache <cache@example.org>"
    )


# ------------------------------------------------------------------------------ domain

DOMAIN_OK = [
    ("example.com", "example.com", "plain"),
    (" Example.COM. ", "example.com", "case-space-trailing-dot"),
    ("xyz", "xyz", "one-label-tld"),
    ("bücher.example", "xn--bcher-kva.example", "unicode-label"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example", "punycode-label"),
    ("bücher。example", "xn--bcher-kva.example", "ideographic-full-stop"),
    ("a-b.c0.example", "a-b.c0.example", "hyphen-and-digits"),
]


@pytest.mark.parametrize(
    ("raw", "value"), [r[:2] for r in DOMAIN_OK], ids=[r[2] for r in DOMAIN_OK]
)
def test_normalise_domain(raw: str, value: str) -> None:
    """Domains normalise to lowercase A-labels without a trailing dot."""
    assert normalise_domain(raw) == value


DOMAIN_BAD = [
    ("", "empty"),
    (".", "root-only"),
    ("@example.com", "leading-at"),
    ("*.example.com", "wildcard"),
    ("example..com", "empty-label"),
    ("-example.com", "leading-hyphen"),
    ("example-.com", "trailing-hyphen"),
    ("exa mple.com", "space"),
    ("a" * 64 + ".com", "label-64"),
    (".".join(["a" * 60] * 5), "over-253"),
    ("xn--a.com", "bad-punycode"),
]


@pytest.mark.parametrize("raw", [r[0] for r in DOMAIN_BAD], ids=[r[1] for r in DOMAIN_BAD])
def test_normalise_domain_refuses(raw: str) -> None:
    """Invalid domains (and @ / *. forms, which are not stripped) give None."""
    assert normalise_domain(raw) is None


def test_mailbox_address_normalises() -> None:
    """A target mailbox id is the normalised email value."""
    assert normalise_mailbox_address("Support <Support@Bücher.Example>") == (
        "support@xn--bcher-kva.example"
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("", "empty"), ("support", "no '@'"), ("a@b@c.example", "not a valid"), ("<>", "empty")],
    ids=["empty", "no-at", "two-at", "null-sender"],
)
def test_mailbox_address_refuses_with_reason(raw: str, reason: str) -> None:
    """An invalid mailbox id raises ValueError that says why."""
    with pytest.raises(ValueError, match=reason):
        normalise_mailbox_address(raw)


# ------------------------------------------------------------------------------ phone

PHONE = [
    ("+14155550100", "US", "phone", "+14155550100", None, "e164"),
    ("+1 (415) 555-0100", "US", "phone", "+14155550100", None, "e164-punctuated"),
    ("(415) 555-0100", "US", "phone", "+14155550100", None, "national-us"),
    ("415.555.0100", "US", "phone", "+14155550100", None, "national-us-dots"),
    ("1-415-555-0100", "US", "phone", "+14155550100", None, "national-us-with-1"),
    ("07400 123456", "GB", "phone", "+447400123456", None, "national-gb-mobile"),
    ("020 7946 0000", "GB", "phone", "+442079460000", None, "national-gb-london"),
    ("0044 7400 123456", "US", "phone", "+447400123456", None, "00-prefix-in-us"),
    ("00 1 415 555 0100", "GB", "phone", "+14155550100", None, "00-prefix-in-gb"),
    ("011 44 7400 123456", "US", "phone", "+447400123456", None, "us-idd-011"),
    ("447700900000", "US", "phone", "+447700900000", None, "vonage-msisdn-us-region"),
    ("447700900000", "GB", "phone", "+447700900000", None, "vonage-msisdn-gb-region"),
    ("14155550100", "GB", "phone", "+14155550100", None, "msisdn-us-in-gb-region"),
    ("whatsapp:+14155238886", "US", "phone", "+14155238886", "whatsapp", "whatsapp-prefix"),
    ("WhatsApp:+14155238886", "US", "phone", "+14155238886", "whatsapp", "whatsapp-upper"),
    ("tel:+1-415-555-0100", "US", "phone", "+14155550100", "tel", "tel-uri"),
    ("sip:+14155550100@pbx.example", "US", "phone", "+14155550100", "sip", "sip-e164-user"),
    ("12345", "US", "token", "12345", None, "short-code-5"),
    ("123456", "GB", "token", "123456", None, "short-code-6-gb"),
    ("123-45", "US", "token", "12345", None, "short-code-with-dash"),
    ("5550100", "US", "token", "5550100", None, "local-only-7-digits"),
    ("+12345", "US", "token", "+12345", None, "impossible-plus-number"),
    ("ACMEBank", "US", "token", "acmebank", None, "alphanumeric-id"),
    ("1-800-FLOWERS", "US", "token", "1-800-flowers", None, "vanity-letters-not-dialled"),
    ("whatsapp:AcmeBank", "US", "token", "acmebank", "whatsapp", "whatsapp-alphanumeric"),
    ("client:Alice", "US", "token", "client:alice", None, "twilio-client"),
    ("sip:Bob@Example.com", "US", "token", "sip:bob@example.com", None, "sip-identity"),
    ("sip:1001@pbx.example", "US", "token", "sip:1001@pbx.example", None, "sip-extension"),
    ("!!garbage!!", "US", "token", "!!garbage!!", None, "garbage"),
    ("+1 415 555 0100", "ZZ", "phone", "+14155550100", None, "unknown-region-e164"),
    ("4155550100", "ZZ", "token", "4155550100", None, "unknown-region-national"),
]


@pytest.mark.parametrize(
    ("raw", "region", "kind", "value", "prefix"),
    [r[:5] for r in PHONE],
    ids=[r[5] for r in PHONE],
)
def test_normalise_phone(raw: str, region: str, kind: str, value: str, prefix: str | None) -> None:
    """Numbers become E.164, the rest lowercase tokens, provider prefixes are recorded."""
    sender = normalise_phone(raw, region)
    assert (sender.kind, sender.value, sender.prefix) == (kind, value, prefix)
    assert sender.raw == raw
    assert sender.domain is None


WITHHELD = [
    "anonymous",
    "Anonymous",
    "RESTRICTED",
    "private",
    "Unknown",
    "unavailable",
    "withheld",
    "blocked",
    "client:Anonymous",
    "client:restricted",
    "",
    "   ",
    "whatsapp:",
    "tel:anonymous",
    "sip:anonymous@anonymous.invalid",
    "+266696687",
    "+7378742833",
    "+2562533",
    "+8656696",
    "+86282452253",
    "266696687",
    "7378742833",
    "2562533",
    "8656696",
    "86282452253",
]


@pytest.mark.parametrize("raw", WITHHELD, ids=[repr(w) for w in WITHHELD])
def test_withheld_callers_are_anonymous(raw: str) -> None:
    """Withheld-caller words, empty input and Twilio's placeholder numbers are anonymous."""
    sender = normalise_phone(raw)
    assert (sender.kind, sender.value) == ("anonymous", "anonymous")


def test_phone_region_is_case_insensitive() -> None:
    """The default region may be given in any case."""
    assert normalise_phone("07400 123456", "gb").value == "+447400123456"


NUMBER_OK = [
    ("14155550100", "US", "+14155550100", "no-plus-national-1"),
    ("14155550100", "GB", "+14155550100", "no-plus-international"),
    ("+1 (415) 555-0100", "US", "+14155550100", "punctuated"),
    ("447700900000", "US", "+447700900000", "msisdn"),
    ("07400 123456", "GB", "+447400123456", "national-gb"),
]


@pytest.mark.parametrize(
    ("raw", "region", "value"), [r[:3] for r in NUMBER_OK], ids=[r[3] for r in NUMBER_OK]
)
def test_normalise_number(raw: str, region: str, value: str) -> None:
    """Target numbers in path or config forms normalise to E.164."""
    assert normalise_number(raw, region) == value


NUMBER_BAD = [
    ("", "US", "empty", "empty"),
    ("12345", "US", "not a possible", "short-code"),
    ("whatsapp:+14155550100", "US", "not a phone number", "prefixed"),
    ("%2B14155550100", "US", "not a phone number", "still-url-encoded"),
    ("anonymous", "US", "not a phone number", "word"),
    ("+12345", "US", "not a possible", "too-short"),
    ("4155550100", "XX", "region", "unknown-region"),
]


@pytest.mark.parametrize(
    ("raw", "region", "reason"), [r[:3] for r in NUMBER_BAD], ids=[r[3] for r in NUMBER_BAD]
)
def test_normalise_number_refuses(raw: str, region: str, reason: str) -> None:
    """A target number that is not a possible number raises ValueError with the reason."""
    with pytest.raises(ValueError, match=reason):
        normalise_number(raw, region)


# ------------------------------------------------------------------------------ rules

TARGET_OK: list[tuple[MatchType, str, str, str]] = [
    ("exact_email", "Alice <Alice@Example.org>", "alice@example.org", "email-display-form"),
    ("exact_email", "x@bücher.example", "x@xn--bcher-kva.example", "email-idn"),
    ("domain", "Example.COM.", "example.com", "domain"),
    ("domain", "xyz", "xyz", "domain-tld"),
    ("domain", "bücher.example", "xn--bcher-kva.example", "domain-idn"),
    ("invalid", " INVALID ", "invalid", "invalid-word"),
    ("anonymous", "Anonymous", "anonymous", "anonymous-word"),
    ("exact_number", "+1 (415) 555-0100", "+14155550100", "number-e164"),
    ("exact_number", "(415) 555-0100", "+14155550100", "number-national"),
    ("exact_number", "whatsapp:+14155238886", "+14155238886", "number-whatsapp"),
    ("exact_number", "12345", "12345", "number-short-code"),
    ("exact_number", "AcmeBank", "acmebank", "number-alphanumeric"),
    ("exact_number", "client:Alice", "client:alice", "number-client"),
    ("exact_number", "sip:Bob@Example.com", "sip:bob@example.com", "number-sip"),
    ("number_prefix", "+1900", "+1900", "prefix-plus"),
    ("number_prefix", "65", "+65", "prefix-no-plus"),
    ("number_prefix", "+44 20-7946", "+44207946", "prefix-spaces-dashes"),
    ("number_prefix", "+" + "1" * 15, "+" + "1" * 15, "prefix-15-digits"),
]


@pytest.mark.parametrize(
    ("match_type", "target", "value"),
    [r[:3] for r in TARGET_OK],
    ids=[r[3] for r in TARGET_OK],
)
def test_rule_target_normalises(match_type: MatchType, target: str, value: str) -> None:
    """Each match_type stores its target in the form the hot path compares against."""
    assert normalise_rule_target(match_type, target) == value


TARGET_BAD: list[tuple[MatchType, str, str, str]] = [
    ("exact_email", "alice", "no '@'", "email-no-at"),
    ("exact_email", "a@x.example, b@y.example", "more than one", "email-two"),
    ("exact_email", "", "empty", "email-empty"),
    ("domain", "", "empty", "domain-empty"),
    ("domain", "@example.com", "bare domain", "domain-leading-at"),
    ("domain", "*.example.com", "bare domain", "domain-wildcard"),
    ("domain", "exa_mple.com", "letters, digits", "domain-bad-char"),
    ("invalid", "bogus", "word 'invalid'", "invalid-other-word"),
    ("anonymous", "restricted", "word 'anonymous'", "anonymous-other-word"),
    ("anonymous", "", "word 'anonymous'", "anonymous-empty"),
    ("exact_number", "", "empty", "number-empty"),
    ("exact_number", "   ", "empty", "number-blank"),
    ("exact_number", "anonymous", "match_type 'anonymous'", "number-withheld-word"),
    ("exact_number", "client:Anonymous", "match_type 'anonymous'", "number-client-anon"),
    ("exact_number", "+266696687", "match_type 'anonymous'", "number-twilio-placeholder"),
    ("exact_number", "+1415", "number_prefix", "number-looks-like-prefix"),
    ("exact_number", "12", "short code", "number-two-digits"),
    ("exact_number", "123456789", "short code", "number-nine-digits"),
    ("exact_number", "bad\x00id", "alphanumeric", "number-control-char"),
    ("number_prefix", "", "not a number prefix", "prefix-empty"),
    ("number_prefix", "+", "not a number prefix", "prefix-plus-only"),
    ("number_prefix", "+1(900)", "not a number prefix", "prefix-parentheses"),
    ("number_prefix", "+1900x", "not a number prefix", "prefix-letter"),
    ("number_prefix", "+" + "1" * 16, "not a number prefix", "prefix-16-digits"),
    ("number_prefix", "0044", "never", "prefix-leading-zero"),
    ("number_prefix", "+١٩٠٠", "not a number prefix", "prefix-non-ascii-digits"),
]


@pytest.mark.parametrize(
    ("match_type", "target", "reason"),
    [r[:3] for r in TARGET_BAD],
    ids=[r[3] for r in TARGET_BAD],
)
def test_rule_target_refused(match_type: MatchType, target: str, reason: str) -> None:
    """A target that does not normalise for its match_type raises a clear ValueError."""
    with pytest.raises(ValueError, match=reason):
        normalise_rule_target(match_type, target)


def test_rule_target_uses_region() -> None:
    """exact_number targets in national form use the given region."""
    assert normalise_rule_target("exact_number", "07400 123456", "GB") == "+447400123456"


# ------------------------------------------------------------------------------ info


@pytest.mark.parametrize(
    ("e164", "info"),
    [
        ("+447400123456", ("mobile", "GB")),
        ("+18002752273", ("toll_free", "US")),
        ("+80012345678", ("toll_free", None)),
        ("not a number", ("unknown", None)),
    ],
    ids=["uk-mobile", "us-toll-free", "non-geographic-freephone", "garbage"],
)
def test_phone_info(e164: str, info: tuple[str, str | None]) -> None:
    """phone_info gives the number type word and the region code (None if none)."""
    assert phone_info(e164) == info


# ------------------------------------------------------------------------------ properties

_EMAILISH = st.one_of(
    st.text(),
    st.emails(),
    st.builds(lambda name, addr: f'"{name}" <{addr}>', st.text(), st.emails()),
    st.builds(lambda name, addr: f"{name} <{addr}>", st.text(), st.emails()),
    st.text(alphabet='abcAB@.<>()", :;\\=?-_üx\r\n'),
)
_PHONEISH = st.one_of(
    st.text(),
    st.from_regex(r"\A(whatsapp:|tel:|client:|sip:)?\+?[0-9 ()\-.]{0,18}\Z"),
    st.text(alphabet="+0123456789 -()abcAB:@."),
)


@settings(max_examples=400, deadline=None)
@given(_EMAILISH)
def test_email_never_raises_and_is_idempotent(raw: str) -> None:
    """normalise_email accepts any text, and normalising its value again is a no-op."""
    sender = normalise_email(raw)
    assert sender.kind in ("email", "invalid")
    if sender.kind == "email":
        again = normalise_email(sender.value)
        assert (again.kind, again.value, again.domain) == ("email", sender.value, sender.domain)


@settings(max_examples=400, deadline=None)
@given(_PHONEISH, st.sampled_from(["US", "GB", "DE", "ZZ"]))
def test_phone_never_raises_and_is_idempotent(raw: str, region: str) -> None:
    """normalise_phone accepts any text, and normalising its value again is a no-op."""
    sender = normalise_phone(raw, region)
    assert sender.kind in ("phone", "token", "anonymous")
    if sender.kind in ("phone", "token"):
        again = normalise_phone(sender.value, region)
        assert (again.kind, again.value) == (sender.kind, sender.value)
