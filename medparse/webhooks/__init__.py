"""Webhooks: Standard Webhooks signing, thin payloads, the retry schedule and an SSRF-safe sender.

Pure of the gateway and the workers; both use it. Deliveries are rows in Postgres (the outbox,
see ``db.outbox``); the worker task ``webhooks.deliver`` sends them.
"""
