"""schemathesis against a live broker, from the document it serves at /openapi.json: a bounded run over every
operation (examples, coverage and fuzzing phases; a fixed seed), admin operations with a fresh signed token
each.  Any 5xx, undocumented status, content type or header, or body outside its schema fails the operation.

The broker is a real `kbs serve` on loopback with the suite's test limits (per-client rate limits off, a
high per-client connection cap): schemathesis is one client sending hundreds of requests.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, cast

import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from kbs.keys.jwe import generate_tee_key
from kbs.server.config import Config
from kbs.server.openapi import PATH, document
from kbs.server.protocol import COOKIE
from tests.broker import Broker, run_broker

# Not positive_data_acceptance: a body can match its schema and still be refused (400) for what no JSON
# Schema says, such as a policy that does not parse.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection, ignored_auth, missing_required_header,
          unsupported_method]
# Bounded: about 30 operations, each with its examples, the coverage phase's cases and this many fuzzed ones.
SETTINGS = {
    "seed": 20260913,  # the same cases every run: a failure here is reproducible
    "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],  # a loaded CI machine is slow
    "cache": {"enabled": False},
    "generation": {"max-examples": 25, "database": "none"},
    "phases": {"stateful": {"enabled": False}},
    "request-timeout": 20,
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with run_broker(tmp_path_factory.mktemp("schemathesis")) as b:
        yield b


# Built as the test broker builds it (dev mode, default limits): test_the_served_document_is_the_one_tested
# checks the two are equal.  Loaded at collection so that each operation is a test of its own (pytest-xdist
# shares them out); schemathesis's fixture-based loader does not work with pytest 9 (it sets Node._nodeid).
schema = schemathesis.openapi.from_dict(document(Config()), config=schemathesis.Config.from_dict(SETTINGS))


def _needs_admin(case: schemathesis.Case[Any]) -> bool:
    security = case.operation.definition.raw.get("security", case.operation.schema.raw_schema.get("security", []))
    return {"adminToken": []} in security


def _with_admin_token(case: schemathesis.Case[Any], broker: Broker) -> None:
    """A fresh admin token (single use) on an admin operation's case, unless the case is about a wrong or
    missing Authorization header.  Set at call time: the coverage phase's cases are made at collection,
    before the broker exists, so schemathesis's auth providers cannot sign for them."""
    meta = case.meta
    if _needs_admin(case) and (meta is None or not meta.is_negative_at(ParameterLocation.HEADER)):
        case.headers = {**(case.headers or dict[str, Any]()), **broker.admin_headers()}  # type: ignore[assignment]


_TEES = itertools.cycle(Config().enabled_tees)


TEE_KEY: dict[str, Any] = generate_tee_key("EC-P256").jwk


def _with_session(case: schemathesis.Case[Any], broker: Broker) -> None:
    """A real session cookie (from /kbs/v0/auth, for each enabled TEE in turn) on a case of an operation that
    reads one, unless the case is about the cookie; in a well-formed attestation message, that session's
    nonce and a real TEE key: the generated evidence then reaches that TEE's verifier."""
    meta = case.meta
    if {"sessionCookie": []} not in case.operation.definition.raw.get("security", []):
        return
    if meta is not None and meta.is_negative_at(ParameterLocation.COOKIE):
        return
    answer = requests.post(f"{broker.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": next(_TEES)}, timeout=10)
    case.cookies = {**(case.cookies or {}), COOKIE: answer.cookies[COOKIE]}
    runtime = case.body.get("runtime-data") if isinstance(case.body, dict) else None
    if isinstance(runtime, dict) and (meta is None or not meta.is_negative_at(ParameterLocation.BODY)):
        case.body = {**cast(dict[str, Any], case.body),
                     "runtime-data": {**runtime, "nonce": answer.json()["nonce"], "tee-pubkey": TEE_KEY}}


@schema.parametrize()
def test_the_broker_keeps_to_its_openapi_description(case: schemathesis.Case[Any], broker: Broker) -> None:
    _with_admin_token(case, broker)
    _with_session(case, broker)
    with requests.Session() as session:
        case.call_and_validate(base_url=broker.url, session=session, checks=CHECKS)


def test_admin_cases_are_signed_and_guest_cases_are_not(broker: Broker) -> None:
    """The run above reaches the admin handlers (a 401 on every admin case would pass every check)."""
    status = schema["/kbs/v0/admin/status"]["GET"].Case()
    _with_admin_token(status, broker)
    assert status.call(base_url=broker.url).status_code == 200
    auth = schema["/kbs/v0/auth"]["POST"].Case(body={"version": "0.4.0", "tee": "sample"},
                                                  media_type="application/json")
    _with_admin_token(auth, broker)
    assert "Authorization" not in (auth.headers or {})
    assert auth.call(base_url=broker.url).status_code == 200


def test_the_served_document_is_the_one_tested(broker: Broker) -> None:
    served = requests.get(f"{broker.url}{PATH}", timeout=10).json()
    assert served == schema.raw_schema
    labels = {cast(Ok[Any], result).ok().label for result in schema.get_all_operations()}
    assert len(labels) >= 30 and "GET /kbs/v0/admin/status" in labels and "POST /kbs/v0/auth" in labels
