"""Signed webhooks (SPEC §13): the dispatcher that turns outbox events into deliveries and
sends them. Storage is server/db/webhooks.py; the routes are server/api/webhooks.py."""
