"""Webhooks are not on PostgreSQL yet (README "Running on PostgreSQL"): every webhook
route answers a clear 501 problem and changes nothing, and the dispatcher idles
without failing rounds, so requests still run and complete."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import Api, record

WEBHOOK_CALLS = [
    ("POST", "/v1/webhook_endpoints", {"url": "https://example.test/hook"}),
    ("GET", "/v1/webhook_endpoints", None),
    ("GET", "/v1/webhook_endpoints/1", None),
    ("PATCH", "/v1/webhook_endpoints/1", {"enabled": False}),
    ("DELETE", "/v1/webhook_endpoints/1", None),
    ("GET", "/v1/webhook_endpoints/1/deliveries", None),
    ("POST", "/v1/webhook_endpoints/1/deliveries/1/retry", None),
]


@pytest.fixture
def postgres_only(backend: str) -> None:
    if backend != "postgres":
        pytest.skip("on SQLite webhooks work: tests/test_webhooks.py")


@pytest.mark.usefixtures("postgres_only")
async def test_every_webhook_route_refuses_with_a_501_problem_on_postgres(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    await api.create_stream()
    for method, path, body in WEBHOOK_CALLS:
        async with api.client.request(method, path, headers=api.headers(), json=body) as resp:
            problem = await resp.json(content_type=None)
            assert resp.status == 501, (method, path, problem)
            assert resp.content_type == "application/problem+json"
        assert "not available on PostgreSQL" in problem["detail"], problem
    # Requests run as ever (their outbox events reach no dispatcher round that fails).
    summary = await api.submit([record(1)])
    final = await api.wait_terminal(summary["id"])
    assert final["status"] == "completed"
    assert not [r for r in caplog.records if r.name.startswith("server.webhooks")]
