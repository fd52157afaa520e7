"""A validated job submission: what ``POST /v1/jobs`` asks for, parsed (gateway/jobs/submission.py)
and handed to the submit use case."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.jobs.schemas import JobOptions
from gateway.webhooks.rules import JobWebhookRequest


@dataclass(frozen=True)
class JobSubmission:
    image: bytes
    prompts: list[str]
    options: JobOptions
    priority: int = 0
    #: ``webhook_url`` / ``webhook_events`` (see gateway.webhooks.submission)
    webhook: JobWebhookRequest | None = None

    def fingerprint_parts(self, image_sha256: str) -> list[str]:
        """What the request asks for, for Idempotency-Key matching (not the raw multipart bytes);
        ``image_sha256``: the hex digest of ``image``, hashed off the event loop when large."""
        return [
            image_sha256,
            "\x1f".join(self.prompts),
            self.options.model_dump_json(exclude_none=True),
            str(self.priority),
        ] + ([self.webhook.fingerprint()] if self.webhook else [])
