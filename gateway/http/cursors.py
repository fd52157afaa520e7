"""Opaque page cursors: the (created_at, id) of the last row of a page, newest-first listings.

A cursor comes back from the client, so it is input like any other: a forged one must be a 400,
never a database error (an instant that cannot be shifted to UTC, a huge string).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime

from gateway.http.problems import field_error

#: An encoded cursor is ~90 characters (ISO instant with offset, '|', a UUID, base64).
MAX_CURSOR_CHARS = 200


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    if len(cursor) > MAX_CURSOR_CHARS:
        raise _forged()
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, _, row_id = base64.urlsafe_b64decode(padded).decode().partition("|")
        when = datetime.fromisoformat(created)
        # astimezone: year 1 at +14:00 (or 9999 at -14:00) has no UTC instant: OverflowError.
        when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
        return when, uuid.UUID(row_id)
    except (ValueError, UnicodeDecodeError, OverflowError, binascii.Error):
        raise _forged() from None


def _forged() -> Exception:
    return field_error("cursor", "not a cursor returned by this API", status=400)
