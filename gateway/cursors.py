"""Opaque page cursors: the (created_at, id) of the last row of a page, newest-first listings."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

from gateway.problems import field_error


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, _, row_id = base64.urlsafe_b64decode(padded).decode().partition("|")
        when = datetime.fromisoformat(created)
        return (when if when.tzinfo else when.replace(tzinfo=UTC)), uuid.UUID(row_id)
    except (ValueError, UnicodeDecodeError):
        raise field_error("cursor", "not a cursor returned by this API", status=400) from None
