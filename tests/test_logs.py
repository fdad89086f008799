"""server/http/logs.py: one access-log line per HTTP request, never the API key."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import API_KEY, Api


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "server.access"]


async def test_one_access_line_per_request_with_route_status_and_environment(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    await api.get("/v1/bulk_requests/12345", expect=404, headers={"X-Request-ID": "trace-1"})
    [line] = access_lines(caplog)
    assert line.method == "GET"  # type: ignore[attr-defined]
    assert line.route == "/v1/bulk_requests/{id}"  # type: ignore[attr-defined]
    assert line.status == 404  # type: ignore[attr-defined]
    assert line.request_id == "trace-1"  # type: ignore[attr-defined]
    assert line.environment == "default"  # type: ignore[attr-defined]
    assert line.duration_ms >= 0  # type: ignore[attr-defined]
    assert API_KEY not in str(line.__dict__)


async def test_unauthenticated_and_unmatched_requests_are_logged_too(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    async with api.client.get("/v1/data_streams", headers={"X-API-KEY": "wrong"}) as resp:
        assert resp.status == 401
    async with api.client.get("/no/such/route") as resp:
        assert resp.status == 404
    lines = access_lines(caplog)
    assert [(r.status, r.environment) for r in lines] == [(401, None), (404, None)]  # type: ignore[attr-defined]
    assert lines[1].route is None  # type: ignore[attr-defined]
    assert "wrong" not in str([r.__dict__ for r in lines])
