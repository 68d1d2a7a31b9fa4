"""What the schemathesis run (tests/test_schemathesis.py) found in the broker, each pinned by a request that
failed before the fix: a 500 for a log position past the store's integers, and aiohttp's own refusals
(no such route, a method the path does not take, a body past the app's limit) in text/plain instead of
the JSON error body every other error has."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from kbs.server.errors import ERROR_TYPE
from tests.broker import Broker, run_broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with run_broker(tmp_path_factory.mktemp("regressions"), "[limits]\nmax_body_bytes = 70000\n") as b:
        yield b


def _call(broker: Broker, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(f"{broker.url}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, head, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, head, raw = exc.code, dict(exc.headers), exc.read()
    assert head["Content-Type"].startswith("application/json"), (status, head, raw[:200])
    return status, head, json.loads(raw)


def test_a_log_position_past_the_stores_integers_is_an_empty_page_not_a_500(broker: Broker) -> None:
    for after in ("9" * 30, str(2**63), str(2**63 - 1)):
        status, _, body = _call(broker, "GET", f"/kbs/v0/admin/release-log?chain=refusal&after={after}",
                                headers=broker.admin_headers())
        assert (status, body) == (200, []), after


@pytest.mark.parametrize(("method", "path", "status", "variant"), [
    ("GET", "/no/such/route", 404, "NotFound"),
    ("POST", "/kbs/v0/admin/refs/x/rename", 404, "NotFound"),  # {verb} is add or remove
    ("PATCH", "/kbs/v0/auth", 405, "MethodNotAllowed"),
    ("DELETE", "/healthz", 405, "MethodNotAllowed"),
])
def test_aiohttps_own_refusals_are_json_errors(broker: Broker, method: str, path: str, status: int,
                                               variant: str) -> None:
    got, head, body = _call(broker, method, path, headers=broker.admin_headers())
    assert got == status and body["type"] == ERROR_TYPE + variant and "/openapi.json" in body["detail"]
    if status == 405:
        assert set(head["Allow"].split(",")) >= {"GET" if path == "/healthz" else "POST"}


def test_a_body_past_the_apps_limit_is_a_json_413(broker: Broker) -> None:
    status, _, body = _call(broker, "PUT", "/kbs/v0/admin/policies/too-big", b"{" + b" " * 80_000 + b"}",
                            headers={**broker.admin_headers(), "Content-Type": "text/plain"})
    assert status == 413 and body["type"] == ERROR_TYPE + "RequestEntityTooLarge"
    assert "70000" in body["detail"]

