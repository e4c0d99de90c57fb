"""A stored event record for tests: sensible defaults (a delivered Twilio SMS), any field
changed by keyword."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from gateway.store.base import EventRecord

T0 = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
NUMBER = "+14155550100"


def event_record(event_id: str, received_at: datetime = T0, **changes: Any) -> EventRecord:
    event = EventRecord(
        id=event_id,
        source="twilio-main",
        provider="twilio",
        channel="sms",
        provider_event_id=f"SM{event_id}",
        sender="+14155550111",
        envelope_sender=None,
        recipient=NUMBER,
        verdict="deliver",
        rule=None,
        reason="mode_default",
        mode="blacklist",
        would_drop=False,
        unauthenticated_allow=False,
        outcome="forwarded",
        received_at=received_at,
        method="POST",
        path="/hooks/twilio-main",
        query="",
        content_type="application/x-www-form-urlencoded",
        headers=(("content-type", "application/x-www-form-urlencoded"),),
        body=b"From=%2B14155550111&Body=hi",
    )
    return dataclasses.replace(event, **changes)
