"""Our signatures verify with the public ``standardwebhooks`` library, and nothing else does."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from medparse.webhooks.signing import SECRET_PREFIX, new_secret, webhook_headers

BODY = b'{"type":"job.succeeded","timestamp":"2026-11-27T12:00:00Z","data":{"id":"j1"}}'
MSG_ID = "msg_0123456789abcdef0123456789abcdef"


def test_a_secret_is_whsec_and_32_random_bytes() -> None:
    secret = new_secret()
    assert secret.startswith(SECRET_PREFIX)
    assert len(base64.b64decode(secret[len(SECRET_PREFIX):])) == 32
    assert new_secret() != secret


def test_a_signed_delivery_verifies_with_the_standardwebhooks_library() -> None:
    secret = new_secret()
    headers = webhook_headers([secret], MSG_ID, int(time.time()), BODY)
    assert headers["webhook-id"] == MSG_ID and headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, headers)["data"]["id"] == "j1"


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp", "secret"])
def test_tampered_body_id_timestamp_or_a_wrong_secret_fail(tamper: str) -> None:
    secret = new_secret()
    now = int(time.time())
    headers = webhook_headers([secret], MSG_ID, now, BODY)
    body = BODY
    if tamper == "body":
        body = BODY.replace(b"j1", b"j2")
    elif tamper == "id":
        headers["webhook-id"] = MSG_ID[:-1] + "0"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(now - 1)
    else:
        secret = new_secret()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_a_six_minute_old_timestamp_fails_even_if_correctly_signed() -> None:
    secret = new_secret()
    headers = webhook_headers([secret], MSG_ID, int(time.time()) - 6 * 60, BODY)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(BODY, headers)
    recent = webhook_headers([secret], MSG_ID, int(time.time()) - 4 * 60, BODY)
    Webhook(secret).verify(BODY, recent)


def test_during_rotation_two_signatures_are_sent_and_either_secret_verifies() -> None:
    old, new = new_secret(), new_secret()
    headers = webhook_headers([new, old], MSG_ID, int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(BODY, headers)
    Webhook(old).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)
