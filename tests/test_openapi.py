"""The OpenAPI document: valid 3.1, in step with the routes, served as stored, public.

The schemathesis run in test_contract.py checks that the server behaves as documented;
these tests check the document itself and that it covers exactly what the app serves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from openapi_spec_validator import OpenAPIV31SpecValidator

from server.api.openapi import OPENAPI_FILE
from server.app import create_app
from server.config import Settings
from server.currencies import CURRENCY_EXPONENTS
from server.http.errors import _TITLES
from tests.conftest import Api

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def load_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(OPENAPI_FILE.read_text(encoding="utf-8"))
    return document


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def registered_operations(settings: Settings) -> set[tuple[str, str]]:
    app = create_app(settings)  # routes only: the app is never started
    operations = set()
    for route in app.router.routes():
        # aiohttp adds HEAD beside every GET by itself; it is not part of the contract.
        if route.method == "HEAD":
            continue
        canonical = route.resource.canonical if route.resource is not None else ""
        operations.add((route.method, canonical))
    return operations


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used, got {ref!r}"
    node: Any = document
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), f"{ref} does not resolve at {token!r}"
        assert token in node, f"{ref} does not resolve at {token!r}"
        node = node[token]
    return node


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def test_document_is_valid_openapi_3_1() -> None:
    document = load_document()
    assert document["openapi"].startswith("3.1.")
    errors = [str(e.message) for e in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []


def test_every_route_is_documented_and_every_documented_operation_exists(
    settings: Settings,
) -> None:
    registered = registered_operations(settings)
    documented = documented_operations(load_document())
    undocumented = sorted(registered - documented)
    unserved = sorted(documented - registered)
    assert registered == documented, (
        f"registered but not documented: {undocumented}; documented but not registered: {unserved}"
    )


def test_every_ref_resolves_and_every_component_is_used() -> None:
    document = load_document()
    used = set(refs(document))
    for ref in sorted(used):
        resolve(document, ref)
    # An unused component is dead text that nothing checks: it drifts from the server.
    defined = {
        f"#/components/{kind}/{name}"
        for kind, entries in document["components"].items()
        if kind != "securitySchemes"
        for name in entries
    }
    assert defined - used == set()


def test_operation_conventions() -> None:
    """Conventions the server applies to every route, checked across the document."""
    document = load_document()
    public = {"/healthz", "/metrics", "/", "/static/{name}", "/v1/openapi.json"}
    assert document["components"]["securitySchemes"]["ApiKeyAuth"] == {
        **document["components"]["securitySchemes"]["ApiKeyAuth"],
        "type": "apiKey",
        "in": "header",
        "name": "X-API-KEY",
    }
    assert document["security"] == [{"ApiKeyAuth": []}]
    operation_ids = []
    for method, path, operation in operations(document):
        label = f"{method} {path}"
        operation_ids.append(operation["operationId"])
        responses = operation["responses"]
        if path in public:
            assert operation.get("security") == [], f"{label} is public"
            assert "401" not in responses, label
        else:
            assert path.startswith("/v1/"), label
            assert "security" not in operation, f"{label} must use the global API-key security"
            assert "401" in responses, f"{label} must document 401"
        assert "500" in responses, f"{label} must document 500"
        for status, response in responses.items():
            response = resolve(document, response["$ref"]) if "$ref" in response else response
            assert "X-Request-ID" in response.get("headers", {}), f"{label} {status}"
            # /healthz answers its own JSON body with 503, so a monitor reads one shape.
            if int(status) >= 400 and (path, status) != ("/healthz", "503"):
                assert list(response["content"]) == ["application/problem+json"], (
                    f"{label} {status} must be a problem"
                )
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"


def test_problem_types_match_the_server() -> None:
    problem = load_document()["components"]["schemas"]["Problem"]
    assert sorted(problem["properties"]["type"]["enum"]) == sorted(
        f"/problems/{kind}" for kind in _TITLES
    )


def test_currencies_match_the_server() -> None:
    currency = load_document()["components"]["schemas"]["Currency"]
    assert currency["enum"] == sorted(CURRENCY_EXPONENTS)


def test_links_name_real_operations_and_parameters() -> None:
    document = load_document()
    by_id = {operation["operationId"]: operation for _, _, operation in operations(document)}
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            for name, link in response.get("links", {}).items():
                label = f"{method} {path} {status} → {name}"
                target = by_id.get(link["operationId"])
                assert target is not None, f"{label}: no operation {link['operationId']}"
                declared = {
                    (p["in"], p["name"])
                    for p in (
                        resolve(document, q["$ref"]) if "$ref" in q else q
                        for q in target["parameters"]
                    )
                }
                for parameter in link["parameters"]:
                    where, _, name_ = parameter.rpartition(".")
                    assert any(n == name_ and (not where or i == where) for i, n in declared), (
                        f"{label}: {link['operationId']} has no parameter {parameter}"
                    )


async def test_served_document_is_the_file_and_public(api: Api) -> None:
    # No X-API-KEY on purpose: the document is public.
    async with api.client.get("/v1/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert resp.headers["X-Request-ID"]
        body = await resp.read()
    assert body == OPENAPI_FILE.read_bytes()
    assert json.loads(body) == load_document()
