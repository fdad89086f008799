"""problem+json for every failure, and X-Request-ID on every response."""

from __future__ import annotations

from tests.conftest import Api


async def test_unknown_route_is_a_404_problem(api: Api) -> None:
    async with api.client.get("/nope", headers={"X-Request-ID": "abc-123"}) as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
        assert resp.headers["X-Request-ID"] == "abc-123"
        problem = await resp.json(content_type=None)
    assert problem == {
        "type": "/problems/not-found",
        "title": "Not found",
        "status": 404,
        "detail": "no route matches this path",
        "instance": "/nope",
        "request_id": "abc-123",
    }


async def test_wrong_method_is_a_405_problem_with_allow(api: Api) -> None:
    async with api.client.delete("/v1/records/bulk", headers=api.headers()) as resp:
        assert resp.status == 405
        assert "POST" in resp.headers["Allow"]
        problem = await resp.json(content_type=None)
        assert problem["type"] == "/problems/method-not-allowed"


async def test_insane_request_ids_are_replaced(api: Api) -> None:
    for sent in ("x" * 500, "bad id with spaces", "<script>"):
        async with api.client.get("/healthz", headers={"X-Request-ID": sent}) as resp:
            rid = resp.headers["X-Request-ID"]
            assert rid != sent
            assert len(rid) == 32


async def test_every_response_has_a_request_id(api: Api) -> None:
    for path in ("/healthz", "/v1/bulk_requests", "/v1/bulk_requests/1"):
        async with api.client.get(path, headers=api.headers()) as resp:
            assert resp.headers["X-Request-ID"]


async def test_problem_request_id_matches_the_header(api: Api) -> None:
    async with api.client.get("/v1/bulk_requests/abc", headers=api.headers()) as resp:
        problem = await resp.json(content_type=None)
        assert problem["request_id"] == resp.headers["X-Request-ID"]
        assert problem["instance"] == "/v1/bulk_requests/abc"
