"""Generated garbage at every admin endpoint: whatever arrives, the answer is never a 5xx,
and every error is problem+json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.apptools import ADMIN, MEMBER, make_settings, running

PATHS = [
    "/v1/mailboxes",
    "/v1/mailboxes/{a}",
    "/v1/numbers",
    "/v1/numbers/{a}",
    "/v1/mailboxes/{a}/contact-rules",
    "/v1/mailboxes/{a}/contact-rules/{b}",
    "/v1/numbers/{a}/contact-rules",
    "/v1/numbers/{a}/contact-rules/{b}",
    "/v1/org/{a}/contact-rules",
    "/v1/org/mail/contact-rules/{b}",
    "/v1/org/phone/contact-rules",
    "/v1/contact-rules",
    "/v1/contact-rules/batch",
    "/v1/check",
    "/v1/mailboxes/sales@acme.example/contact-rules",
    "/v1/numbers/+14155550100/contact-rules",
    "/v1/mailboxes/sales@acme.example",
]
FIELD_NAMES = [
    "address",
    "number",
    "filter_mode",
    "enforce",
    "forward_url",
    "voice_url",
    "sms_url",
    "rate_limit",
    "action",
    "match_type",
    "match_target",
    "include_subdomains",
    "status",
    "expires_at",
    "note",
    "source",
    "scope",
    "rules",
    "from",
    "to",
    "channel",
    "limit",
    "offset",
    "authenticated",
]
WORDS = [
    "block",
    "allow",
    "mute",
    "domain",
    "exact_email",
    "exact_number",
    "number_prefix",
    "anonymous",
    "invalid",
    "whitelist",
    "blacklist",
    "active",
    "paused",
    "deleted",
    "org:mail",
    "org:phone",
    "sales@acme.example",
    "+14155550100",
    "1/hour",
    "http://x",
    "2026-01-01T00:00:00Z",
    "xyz",
    "",
    "\x00",
    "é",
    "+1",
    "-1",
    "0",
    "201",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.sampled_from(WORDS),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=20,
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=8).map(
        lambda v: json.dumps(v).encode()
    ),
    st.binary(max_size=200),
)
segments = st.sampled_from(WORDS) | st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="/?#"),
    min_size=1,
    max_size=20,
)
queries = st.dictionaries(
    st.sampled_from(FIELD_NAMES), st.sampled_from(WORDS) | st.text(max_size=10), max_size=4
)


def test_no_5xx_for_generated_requests(tmp_path: Path) -> None:
    """Random methods, paths, query strings, content types and bodies never cause a 5xx."""
    with running(make_settings(tmp_path)) as client:
        client.post("/v1/mailboxes", json={"address": "sales@acme.example"}, headers=ADMIN)
        client.post("/v1/numbers", json={"number": "+14155550100"}, headers=ADMIN)

        @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            method=st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT"]),
            template=st.sampled_from(PATHS),
            a=segments,
            b=segments | st.integers(0, 50).map(str),
            query=queries,
            body=bodies,
            ctype=st.sampled_from(["application/json", "text/plain", "", "application/x+json"]),
            who=st.sampled_from([ADMIN, MEMBER, {}]),
        )
        def run(
            method: str,
            template: str,
            a: str,
            b: str,
            query: dict[str, Any],
            body: bytes,
            ctype: str,
            who: dict[str, str],
        ) -> None:
            path = template.replace("{a}", quote(a, safe="@+:")).replace("{b}", quote(b, safe=""))
            headers = {**who, **({"content-type": ctype} if ctype else {})}
            r = client.request(method, path, params=query, content=body, headers=headers)
            assert r.status_code < 500, (method, path, query, body, r.text)
            if r.status_code >= 400:
                assert r.headers["content-type"] == "application/problem+json", r.text
                assert r.json()["detail"]

        run()
