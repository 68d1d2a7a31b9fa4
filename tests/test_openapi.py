"""The OpenAPI description (kbs.server.openapi) against the routes the app really registers, and as served."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from openapi_spec_validator import validate

from kbs.server import admin, protocol
from kbs.server.app import make_app
from kbs.server.config import Config
from kbs.server.openapi import MAX_BYTES, PATH, document
from kbs.store.base import ReleaseRecord
from tests.broker import run_broker

METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


def _routes(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route; HEAD only where aiohttp did not add it beside a GET."""
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    heads = {(m, p) for m, p in routes if m == "HEAD"}
    assert all(("GET", p) in routes for _, p in heads), "a HEAD route without a GET: document it"
    return routes - heads


def _operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in METHODS}


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document(Config())
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    assert doc["openapi"].startswith("3.1")


def _configs(tmp: Path) -> dict[str, Config]:
    token = tmp / "metrics-token"
    token.write_text("0123456789abcdef0123\n")
    token.chmod(0o600)
    return {"dev": Config(), "production": Config(dev_mode=False), "metrics listener": Config(metrics_listen="9100"),
            "metrics token": Config(dev_mode=False, metrics_token_file=token)}


@pytest.mark.parametrize("name", ["dev", "production", "metrics listener", "metrics token"])
def test_every_route_is_documented_and_every_operation_is_routed(name: str, tmp_path: Path) -> None:
    config = _configs(tmp_path)[name]
    routes, operations = _routes(make_app(config)), _operations(document(config))
    assert routes - operations == set(), "routes missing from the document"
    assert operations - routes == set(), "documented operations with no route"


def test_metrics_is_described_as_configured(tmp_path: Path) -> None:
    configs = _configs(tmp_path)
    described = {name: document(config)["paths"].get("/metrics", {}).get("get") for name, config in configs.items()}
    assert described["metrics listener"] is None
    assert set(described["dev"]["responses"]) == {"200", "408"} and described["dev"]["security"] == []
    assert "403" in described["production"]["responses"] and "200" not in described["production"]["responses"]
    assert described["metrics token"]["security"] == [{"metricsToken": []}]
    assert {"200", "401"} <= set(described["metrics token"]["responses"])


def _example(parameter: dict[str, Any]) -> str:
    schema = parameter["schema"]
    return str(schema["enum"][0]) if "enum" in schema else "a-1.b_2"


def test_each_documented_path_resolves_to_its_own_route() -> None:
    """The templates and their parameters, filled in as the document allows, reach the route they describe
    (a parameter's enum, as `{verb}`'s, must match aiohttp's regex for it)."""
    app = make_app(Config())

    async def resolve(method: str, url: str) -> web.AbstractRoute:
        return (await app.router.resolve(make_mocked_request(method, url, app=app))).route

    for path, item in document(Config())["paths"].items():
        for method, operation in item.items():
            values = {p["name"]: _example(p) for p in operation.get("parameters", []) if p["in"] == "path"}
            assert set(values) == set(re.findall(r"{(\w+)}", path)), f"{method} {path}: path parameters"
            route = asyncio.run(resolve(method.upper(), path.format(**values)))
            assert route.method == method.upper() and route.resource is not None, f"{method} {path}"
            assert route.resource.canonical == path


def test_bounds_are_the_handlers_bounds() -> None:
    config = Config(max_body_bytes=70_000, max_attest_body_bytes=12_345)
    paths = document(config)["paths"]
    assert paths["/kbs/v0/auth"]["post"]["requestBody"][MAX_BYTES] == protocol.MAX_AUTH_BODY
    assert paths["/kbs/v0/attest"]["post"]["requestBody"][MAX_BYTES] == 12_345
    assert paths["/kbs/v0/resource/{repo}/{type}/{tag}"]["post"]["requestBody"][MAX_BYTES] == admin.MAX_KEY_BYTES
    assert paths["/kbs/v0/admin/policies/{policy_id}"]["put"]["requestBody"][MAX_BYTES] == 70_000
    pattern = paths["/kbs/v0/resource/{repo}/{type}/{tag}"]["get"]["parameters"][0]["schema"]["pattern"]
    segment = re.compile(pattern.removesuffix("$") + r"\Z")  # JSON Schema's (ECMA) $: no newline before the end
    for text in ("a", "A_b-9.z", "_x", "a" * 128, ".hidden", "a" * 129, "a b", "a\n", ""):
        assert bool(segment.search(text)) == bool(protocol.SEGMENT.fullmatch(text)), text


def test_every_log_record_field_has_a_json_type() -> None:
    """The release log's entries are described from ReleaseRecord's fields: a field of a type the document
    does not know would be described as anything at all."""
    fields = document(Config())["components"]["schemas"]["ReleaseRecord"]["properties"]
    assert {f.name for f in dataclasses.fields(ReleaseRecord)} == set(fields)
    assert all(schema.get("type") for schema in fields.values()), fields


def test_admin_operations_need_the_admin_token_and_guest_ones_do_not() -> None:
    doc = document(Config())
    assert doc["security"] == [{"adminToken": []}]  # the default: every admin route
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            security = operation.get("security", doc["security"])
            guest = path in ("/kbs/v0/auth", "/kbs/v0/attest") or (method == "get" and path.startswith(
                ("/kbs/v0/resource/", "/kbs/v0/log/"))) or not path.startswith("/kbs/") \
                or path.startswith("/kbs/v0/deposit/") \
                or path.startswith("/kbs/v0/owners/")  # the log: public here; owners sign instead of a token
            assert (security != [{"adminToken": []}]) == guest, f"{method} {path}"
            if {"adminToken": []} in security:
                assert "401" in operation["responses"], f"{method} {path}"


def test_the_log_needs_a_token_when_its_readers_are_auditors() -> None:
    paths = document(Config(log_read="auditor"))["paths"]
    for path, item in paths.items():
        if path.startswith("/kbs/v0/log/"):
            assert item["get"]["security"] == [{"adminToken": []}] and "401" in item["get"]["responses"], path


def test_served_without_authentication_with_this_brokers_limits(tmp_path: Path) -> None:
    config = '[limits]\nmax_attest_body_bytes = 4096\n[verifiers]\nenabled = ["sample"]\n'
    with run_broker(tmp_path, config) as broker, urllib.request.urlopen(f"{broker.url}{PATH}", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        served = json.loads(response.read())
    validate(served)
    assert served["paths"]["/kbs/v0/attest"]["post"]["requestBody"][MAX_BYTES] == 4096
    assert served["components"]["schemas"]["Request"]["properties"]["tee"]["enum"] == ["sample"]
    assert _operations(served) == _operations(document(Config()))


@pytest.mark.parametrize("path", ["/kbs/v0/admin/keys", "/kbs/v0/admin/refs/x"])
def test_the_document_holds_no_route_it_does_not_serve(path: str) -> None:
    """A guard on the comparison above: a route added without documenting it is noticed."""
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = make_app(Config())
    app.router.add_get(path + "/undocumented", handler)
    assert ("GET", path + "/undocumented") in _routes(app) - _operations(document(Config()))
