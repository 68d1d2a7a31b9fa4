"""The operator's metrics over real HTTP (issue 13, item 7): who may read /metrics ([metrics]: a bearer token,
a listener of its own, public only in dev mode), and each new series moving when the broker does the thing:
process_* (one worker, and summed over two), collateral fetches, cache lookups and the earliest expiry by
source, policy evaluation time by dialect, attested sessions, store errors and rate-limit rejections."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import math
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from kbs.evidence.snp.coco import report_to_coco
from kbs.keys.jwe import generate_tee_key
from kbs.server.config import ConfigError, parse_config
from tests import fake_http
from tests.amd_synth import SyntheticAmd, build_report, sign_report
from tests.broker import REPO, Broker, SnpGuest, attest, attestation, auth, free_port, full_flow, jar, run_broker
from tests.intel_synth import DEFAULT_FMSPC, FakePcs, SyntheticIntel, pcs_in_thread
from tests.tdx_synth import TdxGuest
from tests.test_server_e2e import admin

TOKEN = "metrics-" + "7f" * 16


# -- helpers -------------------------------------------------------------------------------------------

def get(url: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def scrape(url: str, token: str | None = None) -> str:
    status, text, _ = get(f"{url}/metrics", token)
    assert status == 200, text
    return text


def value(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples carrying `labels` (0 when there are none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def token_file(tmp: Path, text: str = TOKEN, mode: int = 0o600) -> Path:
    path = tmp / "metrics.token"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def production(tmp: Path, extra: str = "") -> str:
    kek = tmp / "kek"
    kek.write_text("ab" * 32)
    kek.chmod(0o600)
    return f'dev_mode = false\nkek_file = "{kek}"\n{extra}'


# -- who may read /metrics -----------------------------------------------------------------------------

def test_a_token_guards_metrics(tmp_path: Path) -> None:
    with run_broker(tmp_path, f'[metrics]\ntoken_file = "{token_file(tmp_path)}"\n') as b:
        status, text, headers = get(f"{b.url}/metrics")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and "token_file" in text
        assert get(f"{b.url}/metrics", "metrics-" + "7f" * 15 + "7e")[0] == 401  # one character off
        assert get(f"{b.url}/metrics", TOKEN[:-1])[0] == 401
        assert value(scrape(b.url, TOKEN), "kbs_build_info") == 1
        assert get(f"{b.url}/healthz")[0] == 200  # probes stay open


def test_a_listener_of_its_own_takes_metrics_off_the_main_port(tmp_path: Path) -> None:
    port = free_port()
    extra = f'[metrics]\nlisten = "{port}"\ntoken_file = "{token_file(tmp_path)}"\n'  # a bare port: loopback
    with run_broker(tmp_path, extra) as b:
        assert get(f"{b.url}/metrics", TOKEN)[0] == 404
        other = f"http://127.0.0.1:{port}"
        assert get(f"{other}/metrics")[0] == 401
        assert get(f"{other}/healthz", TOKEN)[0] == 404  # /metrics alone
        assert value(scrape(other, TOKEN), "kbs_build_info") == 1
        assert f"kbs: metrics on http://127.0.0.1:{port}/metrics" in b.log()


def test_workers_share_a_metrics_port_chosen_once(tmp_path: Path) -> None:
    """[metrics] listen with port 0 and two workers: the supervisor picks one port for both."""
    with run_broker(tmp_path, '[metrics]\nlisten = "127.0.0.1:0"\n', workers=2) as b:
        wait_for_workers(b, 2)
        lines = [line for line in b.log().splitlines() if line.startswith("kbs: metrics on")]
        assert len(lines) == 1, b.log()  # said once, by the first worker
        url = lines[0].removeprefix("kbs: metrics on ").removesuffix("/metrics")
        assert value(scrape(url), "kbs_worker_starts_total") == 2  # both workers': any scrape is the broker's


def test_a_metrics_port_in_use_is_one_error(tmp_path: Path) -> None:
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        config = tmp_path / "kbs.toml"
        config.write_text(f'listen = "127.0.0.1:{free_port()}"\nstate_dir = "{tmp_path / "state"}"\n'
                          f'dev_mode = true\n[metrics]\nlisten = "{busy}"\n')
        done = subprocess.run([sys.executable, "-m", "kbs.cli", "serve", "--check-config", "--config", str(config)],
                              capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 1
    assert f"cannot listen on [metrics] listen {busy}: Address already in use" in done.stderr


def test_production_default_refuses_metrics_until_configured(tmp_path: Path) -> None:
    with run_broker(tmp_path, production(tmp_path)) as b:
        status, text, _ = get(f"{b.url}/metrics")
        assert status == 403 and "[metrics] token_file" in text and "[metrics] listen" in text


@pytest.mark.parametrize(("extra", "message"), [
    ('listen = "nowhere"', "[metrics] listen must be HOST:PORT or PORT, got 'nowhere'"),
    ('listen = "127.0.0.1:8080"', "[metrics] listen '127.0.0.1:8080' is the main listen address"),
    ('public = true\ntoken_file = "/x"', "[metrics] public = true and [metrics] token_file are both set"),
    ('public = "yes"', "[metrics] public must be bool"),
    ("colour = 1", "unknown configuration key [metrics] colour"),
])
def test_metrics_config_errors_name_the_key(extra: str, message: str) -> None:
    import tomllib
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(f"[metrics]\n{extra}\n"))
    assert message in str(caught.value)


def test_metrics_config_warns_about_an_exposed_listener() -> None:
    config = parse_config({"metrics": {"listen": "0.0.0.0:9464"}})
    assert config.metrics_host_port == ("0.0.0.0", 9464)
    assert any("[metrics] listen '0.0.0.0:9464' is not loopback" in w for w in config.warnings)
    assert parse_config({"metrics": {"listen": "9464"}}).metrics_host_port == ("127.0.0.1", 9464)
    assert parse_config({}, parse_config({"dev_mode": False})).metrics_open is False
    assert parse_config({}).metrics_open is True  # dev mode


@pytest.mark.parametrize(("text", "mode", "message"), [
    (TOKEN, 0o644, "is readable or writable by others (mode 0644)"),
    ("short", 0o600, "must hold one token of 16 to 4096 printable ASCII characters"),
    ("has a space in it, sadly", 0o600, "must hold one token"),
])
def test_a_bad_token_file_stops_the_broker_naming_it(tmp_path: Path, text: str, mode: int, message: str) -> None:
    path = token_file(tmp_path, text, mode)
    config = tmp_path / "kbs.toml"
    config.write_text(f'listen = "127.0.0.1:{free_port()}"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'dev_mode = true\n[metrics]\ntoken_file = "{path}"\n')
    done = subprocess.run([sys.executable, "-m", "kbs.cli", "serve", "--check-config", "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 1 and f"[metrics] token_file {path}" in done.stderr and message in done.stderr


# -- process_* -----------------------------------------------------------------------------------------

def test_process_metrics_of_one_process(tmp_path: Path) -> None:
    with run_broker(tmp_path) as b:
        text = scrape(b.url)
        rss = value(text, "process_resident_memory_bytes")
        mine = _rss(b.process.pid)
        assert 0.5 * mine < rss < 2 * mine
        assert value(text, "process_cpu_seconds_total") > 0 and value(text, "process_open_fds") > 3


def wait_for_workers(b: Broker, count: int) -> None:
    """Until every worker has started serving, its metrics listener too: the supervisor says so once each worker
    reported it listens, which a worker does last (run_broker returns once any one answers, and the listening
    socket accepts connections before the workers start)."""
    deadline = time.monotonic() + 30
    while not (all(f"(worker {i} of {count})" in b.log() for i in range(1, count + 1))
               and "all workers listening" in b.log()):
        assert time.monotonic() < deadline, b.log()
        time.sleep(0.05)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_two_workers_sum_their_process_metrics_and_count_sessions_once(tmp_path: Path) -> None:
    """Each worker copies its own readings; any scrape sums the live workers (the supervisor is not one)."""
    port = free_port()
    with run_broker(tmp_path, f'[metrics]\nlisten = "127.0.0.1:{port}"\n', workers=2) as b:
        wait_for_workers(b, 2)
        for _ in range(3):
            assert asyncio.run(full_flow(b.url, "sample", "nothing/here/x"))[0] == 401  # the default policy
        workers = [p for p in _children(b.process.pid) if "kbs.server.workers" in Path(f"/proc/{p}/cmdline")
                   .read_bytes().decode(errors="replace")]
        assert len(workers) == 2
        text = scrape(f"http://127.0.0.1:{port}")
        expected = sum(_rss(p) for p in workers)
        rss = value(text, "process_resident_memory_bytes")
        assert 0.75 * expected < rss < 1.25 * expected and rss > 1.5 * min(_rss(p) for p in workers)
        assert value(text, "process_cpu_seconds_total") > 0
        assert value(text, "kbs_attested_sessions") == 3  # the store's count, not one per worker
        assert value(text, "kbs_policy_evaluation_seconds_count", dialect="json") == 3


# -- policy evaluation, sessions, store errors, rate limits --------------------------------------------

REGO = "package policy\nimport rego.v1\ndefault allow := false\nallow if input.submods.cpu0\n"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with run_broker(tmp_path_factory.mktemp("metrics")) as b:
        async def provision() -> None:
            assert (await admin(b, "PUT", "/kbs/v0/admin/policies/rego-any", data=REGO))[0] == 200
            assert (await admin(b, "POST", "/kbs/v0/resource/lab/key/rego?policy=rego-any", data=b"r"))[0] == 200
            assert (await admin(b, "POST", "/kbs/v0/resource/lab/key/json", data=b"j"))[0] == 200
        asyncio.run(provision())
        yield b


def test_policy_evaluation_time_by_dialect(broker: Broker) -> None:
    before = scrape(broker.url)
    assert asyncio.run(full_flow(broker.url, "sample", "lab/key/rego"))[0] == 200
    for _ in range(2):  # the default policy (JSON) refuses the sample TEE: evaluated all the same
        assert asyncio.run(full_flow(broker.url, "sample", "lab/key/json"))[0] == 401
    after = scrape(broker.url)
    for dialect, count in (("rego", 1), ("json", 2)):
        name = "kbs_policy_evaluation_seconds"
        assert value(after, f"{name}_count", dialect=dialect) - value(before, f"{name}_count", dialect=dialect) == count
        assert value(after, f"{name}_sum", dialect=dialect) > value(before, f"{name}_sum", dialect=dialect)
    assert value(after, "kbs_policy_evaluation_seconds_bucket", dialect="rego", le="+Inf") >= 1


def test_attested_sessions_are_counted_in_the_store(broker: Broker) -> None:
    async def attested(count: int) -> None:
        for _ in range(count):
            key = generate_tee_key("EC-P256")
            async with aiohttp.ClientSession(cookie_jar=jar()) as http:
                nonce = await auth(http, broker.url, "sample")
                assert (await attest(http, broker.url, attestation(nonce, key, "sample")))[0] == 200
    before = value(scrape(broker.url), "kbs_attested_sessions")
    asyncio.run(attested(3))
    async def auth_only() -> None:
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            await auth(http, broker.url, "sample")  # a cookie, nothing stored: not a session yet
    asyncio.run(auth_only())
    assert value(scrape(broker.url), "kbs_attested_sessions") == before + 3
    with sqlite3.connect(broker.state_dir / "kbs.sqlite3") as db:  # expired sessions are not counted
        db.execute("UPDATE sessions SET expires_at = expires_at - 86400")
    assert value(scrape(broker.url), "kbs_attested_sessions") == 0


def test_store_errors_are_counted(broker: Broker) -> None:
    assert asyncio.run(admin(broker, "POST", "/kbs/v0/resource/lab/key/tampered", data=b"t"))[0] == 200
    before = value(scrape(broker.url), "kbs_store_errors_total", check="store.integrity")
    with sqlite3.connect(broker.state_dir / "kbs.sqlite3") as db:  # a row the broker did not write
        db.execute("UPDATE resources SET policy_id = 'rego-any' WHERE path = 'lab/key/tampered'")
    status, body, _ = asyncio.run(full_flow(broker.url, "sample", "lab/key/tampered"))
    assert status == 503, body
    assert value(scrape(broker.url), "kbs_store_errors_total", check="store.integrity") > before


def test_every_rate_limit_rejection_is_counted(tmp_path: Path) -> None:
    with run_broker(tmp_path, "[limits]\nauth_per_second = 0.5\nrate_burst = 2\n") as b:
        async def flood() -> list[int]:
            async with aiohttp.ClientSession() as http:
                statuses = []
                for _ in range(12):
                    async with http.post(f"{b.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample"}) as r:
                        statuses.append(r.status)
                return statuses
        statuses = asyncio.run(flood())
        refused = statuses.count(429)
        assert refused >= 8 and set(statuses) == {200, 429}
        assert value(scrape(b.url), "kbs_rate_limited_total", route="/kbs/v0/auth") == refused


# -- collateral: fetches and cache lookups (AMD KDS), expiry (Intel PCS, offline) ----------------------

@dataclass
class NoVcekGuest(SnpGuest):
    """An SNP guest whose evidence carries no VCEK: the broker fetches it from KDS."""

    def evidence(self, report_data: bytes, host_data: bytes = b"") -> dict[str, Any]:
        assert self.vek.private_key is not None
        report = sign_report(build_report(chip_id=self.chip, report_data=report_data, measurement=self.measurement,
                                          policy=self.policy), self.vek.private_key)
        return report_to_coco(report, [("ASK", self.pki.ask_der), ("ARK", self.pki.ark_der)])


def test_collateral_fetches_and_cache_lookups_by_source(tmp_path: Path) -> None:
    pki = SyntheticAmd("Milan")
    known, unknown = NoVcekGuest(pki), NoVcekGuest(pki, chip=bytes(range(10, 74)))

    async def kds(request: web.Request) -> web.Response:  # KDS knows the first chip's VCEK only
        if request.path.startswith("/vcek/v1/Milan/" + known.chip.hex()):
            return web.Response(body=known.vek.der)
        return web.Response(status=404)

    (tmp_path / "ark.pem").write_bytes(pki.ark_pem)
    with fake_http.in_thread(lambda: fake_http.serve(kds, "GET")) as url:
        config = (f'[verifiers.snp]\ntrust_roots = ["{tmp_path / "ark.pem"}"]\nkds_url = "{url}"\n'
                  f'cache_dir = "{tmp_path / "kds"}"\n')
        with run_broker(tmp_path, config) as b:
            async def attest_as(guest: SnpGuest) -> int:
                key = generate_tee_key("EC-P256")
                async with aiohttp.ClientSession(cookie_jar=jar()) as http:
                    nonce = await auth(http, b.url, "snp")
                    return (await attest(http, b.url, attestation(nonce, key, "snp", guest)))[0]
            assert [asyncio.run(attest_as(known)) for _ in range(3)] == [200, 200, 200]
            text = scrape(b.url)
            assert value(text, "kbs_collateral_fetches_total", source="kds", result="ok") == 1
            assert value(text, "kbs_collateral_cache_total", source="kds", result="miss") == 1
            assert value(text, "kbs_collateral_cache_total", source="kds", result="hit") == 2
            assert [asyncio.run(attest_as(unknown)) for _ in range(2)] == [401, 401]
            text = scrape(b.url)
            assert value(text, "kbs_collateral_fetches_total", source="kds", result="not_found") == 1
            assert value(text, "kbs_collateral_cache_total", source="kds", result="negative") == 1  # remembered
            assert value(text, "kbs_collateral_fetches_total", source="kds", result="ok") == 1


def test_earliest_collateral_expiry_of_an_offline_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An air-gapped TDX broker: the gauge is the TCB info's nextUpdate (the earliest of the four artefacts)."""
    from kbs.cli import main

    intel = SyntheticIntel()
    soon = intel.now.replace(microsecond=0) + dt.timedelta(days=3)
    fake = FakePcs()
    fake.serve_collateral(intel.collateral(tcb_info=intel.sign_tcb_info(next_update=soon)))
    (tmp_path / "root.pem").write_bytes(intel.root.pem)
    with pcs_in_thread(fake):
        code = main(["collateral", "fetch", "--cache-dir", str(tmp_path / "pcs"), "--pcs-url", fake.base,
                     "--root-ca-crl-url", fake.root_ca_crl_url, "--trust-root", str(tmp_path / "root.pem"),
                     "--fmspc", DEFAULT_FMSPC.hex()])
    assert code == 0, capsys.readouterr().err
    config = (f'[verifiers]\nenabled = ["tdx"]\n[verifiers.tdx]\ntrust_roots = ["{tmp_path / "root.pem"}"]\n'
              f'cache_dir = "{tmp_path / "pcs"}"\noffline = true\n')
    with run_broker(tmp_path, config) as b:
        before = scrape(b.url)
        assert math.isinf(value(before, "kbs_collateral_next_expiry_timestamp_seconds") or math.inf)  # none held
        status, body, _ = asyncio.run(full_flow(b.url, "tdx", "none/such/key", guest=TdxGuest(intel)))
        assert status == 404, body  # attested (with the cached collateral), and no such key
        text = scrape(b.url)
        assert value(text, "kbs_collateral_next_expiry_timestamp_seconds", source="pcs", offline="true") == \
            soon.timestamp()
        assert value(text, "kbs_collateral_cache_total", source="pcs", result="hit") >= 4
        assert value(text, "kbs_collateral_fetches_total", source="pcs") == 0  # offline: nothing asked
        request = urllib.request.Request(f"{b.url}/kbs/v0/admin/status", headers=b.admin_headers())
        with urllib.request.urlopen(request, timeout=10) as answer:  # `kbs status` says the same
            assert json.load(answer)["collateral_next_expiry"] == {"pcs": soon.astimezone(dt.UTC).isoformat()}
    assert soon.timestamp() - time.time() > 2 * 86400


def test_token_is_compared_whole(tmp_path: Path) -> None:
    """A prefix, a longer token, another scheme and a Basic header are all refused."""
    with run_broker(tmp_path, f'[metrics]\ntoken_file = "{token_file(tmp_path)}"\n') as b:
        for header in (f"Bearer {TOKEN}x", f"Token {TOKEN}", "Basic " + base64.b64encode(TOKEN.encode()).decode(),
                       "Bearer "):
            request = urllib.request.Request(f"{b.url}/metrics", headers={"Authorization": header})
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=10)
            assert caught.value.code == 401, header
        assert get(f"{b.url}/metrics", TOKEN)[0] == 200
