"""The Grafana dashboard (deploy/grafana/kbs-dashboard.json) and the Prometheus alert rules
(deploy/prometheus/kbs-alerts.yml) name only what the broker exports: every metric in every PromQL expression,
and every label they match on or group by, is checked against a scrape of a real broker that has done a little
of everything (SNP with a VCEK from a fake KDS, TDX from an offline PCS cache, Rego and JSON policies, a store
error, rate-limit and connection-cap refusals), so that each labelled series exists.  promtool (Debian's
`prometheus` package) checks the rules and runs their unit tests when it is installed."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests import fake_http
from tests.amd_synth import SyntheticAmd
from tests.broker import REPO, Broker, full_flow, jar, run_broker
from tests.intel_synth import DEFAULT_FMSPC, FakePcs, SyntheticIntel, pcs_in_thread
from tests.tdx_synth import TdxGuest
from tests.test_metrics_ops import NoVcekGuest, scrape
from tests.test_server_e2e import admin

DASHBOARD = REPO / "deploy" / "grafana" / "kbs-dashboard.json"
RULES = REPO / "deploy" / "prometheus" / "kbs-alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "kbs-alerts.test.yml"
ADDED_BY_PROMETHEUS = frozenset({"job", "instance"})  # target labels every scraped series gets


# -- a PromQL reader: enough of the grammar to find metric and label names ------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$(?:\{\w+(?::\w+)?\}|\w+)")  # $job, ${job}, $__rate_interval
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_TOKEN = re.compile(r"\d[\w.]*|[A-Za-z_:][\w:]*")
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                      "offset", "inf", "nan", "atan2"})


def _plain(expr: str) -> str:
    """The expression with string literals emptied (label values, regexes) and Grafana's variables replaced."""
    return _GRAFANA_VARIABLE.sub("1", _STRING.sub('""', expr))


def metric_names(expr: str) -> set[str]:
    """Every metric an expression selects: identifiers that are not functions or aggregations (followed by
    `(`), keywords, numbers or durations, label names in `{}`, or label lists of by/without/on/ignoring."""
    text = _RANGE.sub(" ", _GROUPING.sub(" ", _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", _plain(expr))))
    names = set()
    for token in _TOKEN.finditer(text):
        word = token.group()
        if word[0].isdigit() or word.lower() in KEYWORDS or text[token.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def label_uses(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """(each selector's metric and the labels it matches on, every label grouped or joined by)."""
    text = _plain(expr)
    selectors = [(m.group(1) or "", set(_MATCHER.findall(m.group(2)))) for m in _SELECTOR.finditer(text)]
    grouped = {label.strip() for m in _GROUPING.finditer(text) for label in m.group(1).split(",") if label.strip()}
    return selectors, grouped


def test_the_reader_finds_metrics_and_nothing_else() -> None:
    expr = ('histogram_quantile(0.99, sum by (route, le) (rate(kbs_http_request_duration_seconds_bucket'
            '{job=~"$job", route=~"/kbs/v0/(auth|attest)"}[$__rate_interval]))) > 1 and on(job) '
            'sum without (instance) (increase(kbs_overloaded_total[5m] offset 1h)) > bool 2e3 '
            'unless min(kbs_collateral_next_expiry_timestamp_seconds < +Inf) - time() > 3 * 86400')
    assert metric_names(expr) == {"kbs_http_request_duration_seconds_bucket", "kbs_overloaded_total",
                                  "kbs_collateral_next_expiry_timestamp_seconds"}
    selectors, grouped = label_uses(expr)
    assert ("kbs_http_request_duration_seconds_bucket", {"job", "route"}) in selectors
    assert grouped == {"route", "le", "job", "instance"}
    assert metric_names('sum(rate(kbs_no_such_thing_total{reason="by"}[5m]))') == {"kbs_no_such_thing_total"}


# -- what the files hold -------------------------------------------------------------------------------

def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                out.append((f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
    walk(board["panels"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            call = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert call, f"variable {variable['name']}: only label_values(SELECTOR, LABEL) is understood here"
            out.append((f"variable {variable['name']}", f"group by ({call.group(2)}) ({call.group(1)})"))
    return out


def rule_expressions() -> list[tuple[str, str]]:
    document = yaml.safe_load(RULES.read_text())
    return [(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
            for group in document["groups"] for rule in group["rules"]]


def test_the_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"] and board["title"]
    assert all(p["datasource"]["uid"] == "${datasource}" and p["targets"] for p in panels)
    assert all(len({t["refId"] for t in p["targets"]}) == len(p["targets"]) for p in panels)
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("refusals by reason", "attestations", "latency p50 / p99", "in flight", "open connections",
                  "overload", "rate limits", "collateral fetches", "policy evaluation", "memory", "cpu"):
        assert topic in titles, topic
    rules = {name.removeprefix("rule ") for name, _ in rule_expressions()}
    assert {"KbsReleaseLogWriteFailing", "KbsRefusalSpike", "KbsCollateralExpiringSoon", "KbsStoreErrors",
            "KbsHighLatency"} <= rules


# -- against a broker that has done a little of everything ---------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Sample name -> label names, from one scrape of a broker after a little of everything."""
    tmp = tmp_path_factory.mktemp("dashboards")
    pki, intel = SyntheticAmd("Milan"), SyntheticIntel()
    snp_guest = NoVcekGuest(pki)
    (tmp / "ark.pem").write_bytes(pki.ark_pem)
    (tmp / "intel-root.pem").write_bytes(intel.root.pem)
    fake_pcs = FakePcs()
    fake_pcs.serve_collateral(intel.collateral())
    with pcs_in_thread(fake_pcs):  # an offline PCS cache for the TDX verifier, as `kbs collateral fetch` fills it
        done = subprocess.run([sys.executable, "-m", "kbs.cli", "collateral", "fetch", "--cache-dir", str(tmp / "pcs"),
                               "--pcs-url", fake_pcs.base, "--root-ca-crl-url", fake_pcs.root_ca_crl_url,
                               "--trust-root", str(tmp / "intel-root.pem"), "--fmspc", DEFAULT_FMSPC.hex()],
                              capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr

    async def kds(request: web.Request) -> web.Response:
        return web.Response(body=snp_guest.vek.der) if "/vcek/" in request.path else web.Response(status=404)

    config = (f'[verifiers]\nenabled = ["snp", "tdx", "sample"]\n'
              f'[verifiers.snp]\ntrust_roots = ["{tmp / "ark.pem"}"]\nkds_url = "{{kds}}"\n'
              f'cache_dir = "{tmp / "kds"}"\n'
              f'[verifiers.tdx]\ntrust_roots = ["{tmp / "intel-root.pem"}"]\ncache_dir = "{tmp / "pcs"}"\n'
              "offline = true\n"
              "[limits]\nauth_per_second = 0.1\nrate_burst = 12\nmax_connections_per_client = 8\n")
    with fake_http.in_thread(lambda: fake_http.serve(kds, "GET")) as kds_url, \
            run_broker(tmp, config.replace("{kds}", kds_url)) as b:
        _do_a_little_of_everything(b, snp_guest, TdxGuest(intel))
        text = scrape(b.url)
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def _do_a_little_of_everything(b: Broker, snp: NoVcekGuest, tdx: TdxGuest) -> None:
    rego = "package policy\nimport rego.v1\ndefault allow := false\nallow if input.submods.cpu0\n"

    async def provision() -> None:
        assert (await admin(b, "PUT", "/kbs/v0/admin/policies/rego-any", data=rego))[0] == 200
        assert (await admin(b, "POST", "/kbs/v0/resource/lab/key/rego?policy=rego-any", data=b"r"))[0] == 200
        assert (await admin(b, "POST", "/kbs/v0/resource/lab/key/json", data=b"j"))[0] == 200
        assert (await admin(b, "POST", "/kbs/v0/resource/lab/key/tampered", data=b"t"))[0] == 200
    asyncio.run(provision())
    assert asyncio.run(full_flow(b.url, "sample", "lab/key/rego"))[0] == 200  # a release, Rego
    assert asyncio.run(full_flow(b.url, "snp", "lab/key/json", guest=snp))[0] == 200  # VCEK fetched from KDS
    assert asyncio.run(full_flow(b.url, "sample", "lab/key/json"))[0] == 401  # a JSON policy's deny
    assert asyncio.run(full_flow(b.url, "tdx", "lab/key/json", guest=tdx))[0] == 200  # offline PCS cache
    with sqlite3.connect(b.state_dir / "kbs.sqlite3") as db:
        db.execute("UPDATE resources SET policy_id = 'rego-any' WHERE path = 'lab/key/tampered'")
    assert asyncio.run(full_flow(b.url, "sample", "lab/key/tampered"))[0] == 503  # a store error

    async def flood() -> list[int]:
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            statuses = []
            for _ in range(12):
                async with http.post(f"{b.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample"}) as r:
                    statuses.append(r.status)
            return statuses
    assert 429 in asyncio.run(flood())  # the auth rate limit
    port = int(b.url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(12)]  # over the per-client cap
    try:
        assert idle[-1].recv(1) == b""  # the twelfth is closed at once
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_expression_names_only_exported_metrics_and_labels(exported: dict[str, set[str]], source: str) -> None:
    expressions = dashboard_expressions() if source == "dashboard" else rule_expressions()
    assert expressions
    problems = []
    for where, expr in expressions:
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: names no metric: {expr}")
        for name in sorted(names - set(exported)):
            problems.append(f"{where}: {name} is not exported by the broker")
        known = set().union(*(exported.get(n, set()) for n in names)) | ADDED_BY_PROMETHEUS
        selectors, grouped = label_uses(expr)
        for name, labels in selectors:
            for label in sorted(labels - exported.get(name, known) - ADDED_BY_PROMETHEUS):
                problems.append(f"{where}: {name} has no label {label!r}")
        for label in sorted(grouped - known):
            problems.append(f"{where}: groups by {label!r}, which none of {sorted(names)} has")
    assert not problems, "\n".join(problems)


def test_a_misnamed_metric_would_fail(exported: dict[str, set[str]]) -> None:
    """The check above is not vacuous: a typo in a metric or a label is caught."""
    assert "kbs_resource_request_total" not in exported and "kbs_resource_requests_total" in exported
    assert "reson" not in exported["kbs_resource_requests_total"]
    for name in ("kbs_collateral_fetches_total", "kbs_collateral_cache_total",
                 "kbs_collateral_next_expiry_timestamp_seconds", "kbs_policy_evaluation_seconds_bucket",
                 "kbs_store_errors_total", "kbs_rate_limited_total", "kbs_connections_refused_total",
                 "process_resident_memory_bytes", "kbs_attested_sessions"):
        assert name in exported, name


# -- promtool ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    return path


def test_promtool_checks_the_rules(promtool: str) -> None:
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in done.stdout


def test_promtool_fires_the_alerts_from_synthetic_series(promtool: str) -> None:
    done = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], capture_output=True, text=True, timeout=60,
                          cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert {"KbsReleaseLogWriteFailing", "KbsStoreErrors", "KbsCollateralExpiringSoon", "KbsHighLatency"} <= fired


def test_promtool_notices_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("kbs_store_errors_total[5m])", "kbs_store_errors_total[5m)"))
    done = subprocess.run([promtool, "check", "rules", str(broken)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
