"""The guest client (`kbs.guest`): against a real `kbs serve` on loopback, a fake configfs-tsm tree
that plays the kernel (a synthetic VCEK signs a report per inblob), and fake brokers that fail on purpose."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kbs.errors import KbsError
from kbs.evidence.binding import primary_runtime_digest
from kbs.evidence.snp.certtable import GUID_ARK, GUID_ASK, GUID_VCEK, build_cert_table
from kbs.evidence.snp.coco import report_from_coco
from kbs.evidence.snp.verify import verify_snp
from kbs.guest import GuestError, cli
from kbs.guest.client import backoff_delay, fetch_resource, parse_resource
from kbs.guest.evidence import SampleEvidence, TsmReport
from kbs.keys import jwe
from kbs.trust.x509 import parse_certificate
from tests.amd_synth import NOW, SyntheticAmd, build_report, sign_report
from tests.broker import Broker, SnpGuest, free_port, run_broker
from tests.fake_tsm import FakeConfigfs

SAMPLE_SECRET = b"sample-key:" + bytes(range(40))
SNP_SECRET = b"disk-key:" + bytes(range(255, 223, -1))
SAMPLE_POLICY = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": [
    {"claim": "sample.svn", "equals": "1"}]}]})
TINY = 0.001  # seconds of backoff: retries in tests are quick
DIGEST = bytes(range(48))


# -- a fake configfs-tsm: the kernel's side, on an ordinary directory -------------------------------

class FakeTsm(FakeConfigfs, TsmReport):
    """A synthetic VCEK signs a report per inblob; the auxblob is its certificate table."""

    provider_name = "sev_guest"

    def __init__(self, root: Path, guest: SnpGuest, *, aux: bool = True, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.guest = guest
        pki = guest.pki
        self.auxblob = build_cert_table([(GUID_VCEK, guest.vek.der), (GUID_ASK, pki.ask_der),
                                         (GUID_ARK, pki.ark_der)]) if aux else b""

    def make_outblob(self, inblob: bytes) -> bytes:
        assert self.guest.vek.private_key is not None
        return sign_report(build_report(chip_id=self.guest.chip, report_data=inblob,
                                        measurement=self.guest.measurement, policy=self.guest.policy),
                           self.guest.vek.private_key)


class CountingSample(SampleEvidence):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def evidence(self, report_data: bytes) -> dict[str, str]:
        self.calls += 1
        return super().evidence(report_data)


@pytest.fixture(scope="module")
def snp_guest(synth_milan: SyntheticAmd) -> SnpGuest:
    return SnpGuest(synth_milan)


@pytest.fixture
def tsm_root(tmp_path: Path) -> Path:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    return root


# -- the real broker -------------------------------------------------------------------------------

async def _admin(broker: Broker, method: str, path: str, data: bytes | str) -> Any:
    async with aiohttp.ClientSession() as http, \
            http.request(method, f"{broker.url}{path}", headers=broker.admin_headers(), data=data) as r:
        body = await r.json(content_type=None)
        assert r.status == 200, body
        return body


def _provision(broker: Broker) -> None:
    async def go() -> None:
        await _admin(broker, "PUT", "/kbs/v0/admin/policies/sample-ok", SAMPLE_POLICY)
        await _admin(broker, "POST", "/kbs/v0/resource/lab/key/sample?policy=sample-ok", SAMPLE_SECRET)
        await _admin(broker, "POST", "/kbs/v0/resource/lab/key/default", b"refused-to-sample")
        await _admin(broker, "POST", "/kbs/v0/resource/prod/key/disk", SNP_SECRET)  # default policy: SNP only
    asyncio.run(go())


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, synth_milan: SyntheticAmd) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("guest-broker")
    (tmp / "ark.pem").write_bytes(synth_milan.ark_pem)
    trust = f'[verifiers.snp]\ntrust_roots = ["{tmp / "ark.pem"}"]\noffline = true\ncache_dir = "{tmp / "kds"}"\n'
    with run_broker(tmp, trust, env={"KBS_LOG_LEVEL": "WARNING"}) as b:
        _provision(b)
        yield b


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("bearer", [False, True], ids=["cookie", "bearer"])
@pytest.mark.parametrize("kind", ["EC-P256", "EC-P521", "RSA-OAEP-256"])
def test_sample_guest_fetches_exact_key(broker: Broker, kind: str, bearer: bool) -> None:
    key = asyncio.run(fetch_resource(broker.url, "kbs:///lab/key/sample", SampleEvidence(), key_kind=kind,
                                     use_bearer=bearer, retries=0))
    assert key == SAMPLE_SECRET


def test_a_policy_denial_is_final(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    """The default policy refuses `sample`: the guest says so at once, without retrying (another attempt
    with the same TEE gets the same decision)."""
    source = CountingSample()
    with pytest.raises(GuestError) as info:
        asyncio.run(fetch_resource(broker.url, "kbs:///lab/key/default", source, retries=5, backoff=5.0))
    assert info.value.check == "guest.denied" and info.value.status == 401
    assert info.value.detail is not None and info.value.detail.startswith("the release policy denied this request")
    assert "default" not in info.value.detail  # the guest is not told which policy or condition
    assert source.calls == 1  # no second handshake
    started = time.monotonic()
    code = cli.main(["get-resource", "kbs:///lab/key/default", "--url", broker.url, "--tee", "sample",
                     "--retries", "1", "--backoff", "0.001"])
    err = capsys.readouterr().err
    assert code == 1 and time.monotonic() - started < 10
    assert err.count("\n") == 1 and "PolicyDeny" in err and "(reference " in err, err


def test_snp_guest_through_configfs_tsm_gets_key(broker: Broker, snp_guest: SnpGuest, tsm_root: Path) -> None:
    tsm = FakeTsm(tsm_root, snp_guest)
    for bearer in (False, True):
        assert asyncio.run(fetch_resource(broker.url, "kbs:///prod/key/disk", tsm, use_bearer=bearer,
                                          retries=0)) == SNP_SECRET
    inblob = tsm.writes[0][1]
    assert tsm.writes[0][0] == "inblob" and len(inblob) == 64 and inblob[48:] == bytes(16)
    assert list(tsm_root.iterdir()) == []  # every entry removed


def test_missing_resource_fails_at_once(broker: Broker, snp_guest: SnpGuest, tsm_root: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    tsm = FakeTsm(tsm_root, snp_guest)
    with pytest.raises(GuestError) as info:
        asyncio.run(fetch_resource(broker.url, "kbs:///prod/key/missing", tsm, retries=5, backoff=5.0))
    assert info.value.check == "guest.not_found" and info.value.status == 404
    assert info.value.detail is not None and info.value.detail.startswith("resource not found: prod/key/missing")
    assert tsm.inblob_writes() == 1  # no second handshake

    # The CLI, with `--tee auto` finding the (fake) SNP provider.
    monkeypatch.setattr(cli, "TsmReport", lambda root, **kw: FakeTsm(root, snp_guest, **kw))
    started = time.monotonic()
    code = cli.main(["get-resource", "kbs:///prod/key/missing", "--url", broker.url, "--tsm-path", str(tsm_root),
                     "--backoff", "5"])
    err = capsys.readouterr().err
    assert code == 1 and time.monotonic() - started < 5
    assert err.startswith("kbs-guest: guest.not_found:") and "resource not found: prod/key/missing" in err


def test_cli_writes_output_0600_atomically(broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    out = tmp_path / "keys" / "disk.key"
    out.parent.mkdir()
    out.write_bytes(b"old, world-readable")
    out.chmod(0o644)
    real_replace = os.replace
    modes: list[int] = []

    def checked_replace(src: str, dst: str) -> None:
        modes.append(stat.S_IMODE(os.stat(src).st_mode))  # the temp file, just before it takes the name
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", checked_replace)
    old_umask = os.umask(0)
    try:
        code = cli.main(["get-resource", "kbs:///lab/key/sample", "--url", broker.url, "--tee", "sample",
                         "--output", str(out), "--key-type", "EC-P521", "--bearer"])
    finally:
        os.umask(old_umask)
    assert code == 0, capsysbinary.readouterr().err
    assert modes == [0o600]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.read_bytes() == SAMPLE_SECRET
    assert [p.name for p in out.parent.iterdir()] == ["disk.key"]  # no temp file left

    assert cli.main(["-v", "get-resource", "kbs:///lab/key/sample", "--url", broker.url, "--tee", "sample"]) == 0
    captured = capsysbinary.readouterr()
    assert captured.out == SAMPLE_SECRET
    assert b"kbs-guest: fetched lab/key/sample" in captured.err and SAMPLE_SECRET not in captured.err


# -- configfs-tsm on its own -------------------------------------------------------------------------

def test_tsm_evidence_is_coco_json_of_the_signed_report(snp_guest: SnpGuest, tsm_root: Path) -> None:
    tsm = FakeTsm(tsm_root, snp_guest, privlevel=0)
    evidence = tsm.evidence(DIGEST)
    assert json.loads(json.dumps(evidence)) == evidence
    coco = report_from_coco(evidence)
    assert coco.report == tsm.outblobs[-1]
    assert coco.report[0x50:0x90] == DIGEST + bytes(16)
    pki = snp_guest.pki
    assert list(coco.certificates) == [("VCEK", snp_guest.vek.der), ("ASK", pki.ask_der), ("ARK", pki.ark_der)]
    verify_snp(coco.report, coco.x509_certificates(), NOW, trust_roots=[parse_certificate(pki.ark_der)])
    assert tsm.writes[0] == ("privlevel", b"0") and tsm.writes[1][0] == "inblob"
    assert list(tsm_root.iterdir()) == []


def test_tsm_without_auxblob_sends_no_chain(snp_guest: SnpGuest, tsm_root: Path) -> None:
    evidence = FakeTsm(tsm_root, snp_guest, aux=False).evidence(DIGEST)
    assert evidence["cert_chain"] is None


def test_tsm_generation_change_is_retried_then_given_up(snp_guest: SnpGuest, tsm_root: Path) -> None:
    tsm = FakeTsm(tsm_root, snp_guest, races=1)
    report_from_coco(tsm.evidence(DIGEST))
    assert tsm.inblob_writes() == 2
    tsm = FakeTsm(tsm_root, snp_guest, races=100, attempts=3)
    with pytest.raises(GuestError, match="kept changing") as info:
        tsm.evidence(DIGEST)
    assert info.value.check == "guest.tsm.race" and tsm.inblob_writes() == 3
    assert list(tsm_root.iterdir()) == []


def test_tsm_absent_unwritable_or_not_snp(snp_guest: SnpGuest, tmp_path: Path, tsm_root: Path) -> None:
    missing = tmp_path / "no" / "tsm"
    with pytest.raises(GuestError, match=str(missing)) as info:
        TsmReport(missing).evidence(DIGEST)
    assert info.value.check == "guest.tsm.absent"

    class ReadOnly(TsmReport):
        def _mkdir(self, entry: Path) -> None:
            raise PermissionError(13, "Permission denied", str(entry))

    with pytest.raises(GuestError, match=f"{tsm_root}: Permission denied") as info:
        ReadOnly(tsm_root).evidence(DIGEST)
    assert info.value.check == "guest.tsm.permission"

    with pytest.raises(GuestError, match="tdx_guest") as info:
        FakeTsm(tsm_root, snp_guest, provider="tdx_guest").evidence(DIGEST)
    assert info.value.check == "guest.tsm.provider" and list(tsm_root.iterdir()) == []


def test_cli_auto_needs_configfs_tsm_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code = cli.main(["get-resource", "kbs:///a/b/c", "--url", url, "--tsm-path", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 1 and str(tmp_path / "none") in err and "--tee sample" in err
    assert cli.main(["get-resource", "kbs:///a/b", "--url", url, "--tee", "sample"]) == 2
    assert cli.main(["get-resource", "kbs:///a/b/c", "--tee", "sample"]) == 2  # no --url
    assert cli.main(["get-resource", "kbs:///a/b/c", "--url", url, "--key-type", "RSA1_5"]) == 2
    assert cli.main(["get-resource", "kbs:///a/b/c", "--url", url, "--init-data", str(tmp_path / "x")]) == 2


def test_resource_uri_forms() -> None:
    assert parse_resource("kbs:///default/key/1") == ("default", "key", "1")
    assert parse_resource("kbs://ignored.example/r/t/x.y") == ("r", "t", "x.y")
    assert parse_resource("r/t/x") == ("r", "t", "x")
    for bad in ("https:///a/b/c", "kbs:///a/b/c/d", "kbs:///a/../c", "kbs:///a/b/c?x=1", "a/b"):
        with pytest.raises(GuestError):
            parse_resource(bad)


def test_backoff_is_full_jitter_and_capped() -> None:
    for attempt in range(40):
        assert 0.0 <= backoff_delay(attempt, 1.0) <= min(30.0, 2.0 ** attempt)


# -- fake brokers that misbehave on purpose ----------------------------------------------------------

class FakeKbs:
    """Just enough of a KBS: each route answers from its `plan` of error statuses first, then works."""

    def __init__(self, secret: bytes = b"fake-secret", **plans: list[int]) -> None:
        self.secret = secret
        self.plans = {"auth": [], "attest": [], "resource": [], **plans}
        self.calls = {"auth": 0, "attest": 0, "resource": 0}
        self.bodies: dict[str, list[Any]] = {"auth": [], "attest": []}
        self.resource_headers: list[dict[str, str]] = []
        self.sessions: dict[str, dict[str, Any]] = {}
        self.delay = 0.0

    def _planned(self, route: str) -> web.Response | None:
        self.calls[route] += 1
        if self.plans[route]:
            status = self.plans[route].pop(0)
            return web.json_response({"type": "https://github.com/confidential-containers/kbs/errors/Fake",
                                      "detail": f"planned {status} on {route}"}, status=status)
        return None

    async def auth(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        self.bodies["auth"].append(await request.json())
        planned = self._planned("auth")
        if planned:
            return planned
        sid = os.urandom(16).hex()
        self.sessions[sid] = {"nonce": base64.b64encode(os.urandom(32)).decode()}
        response = web.json_response({"nonce": self.sessions[sid]["nonce"], "extra-params": ""})
        response.headers["Set-Cookie"] = f"kbs-session-id={sid}; Expires=Wed, 01 Jan 2200 00:00:00 GMT"
        return response

    async def attest(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies["attest"].append(body)
        planned = self._planned("attest")
        if planned:
            return planned
        session = self.sessions[request.cookies["kbs-session-id"]]
        assert body["runtime-data"]["nonce"] == session["nonce"]
        session["jwk"] = body["runtime-data"]["tee-pubkey"]
        session["token"] = f"token-{os.urandom(8).hex()}"
        return web.json_response({"token": session["token"]})

    async def resource(self, request: web.Request) -> web.Response:
        self.resource_headers.append(dict(request.headers))
        planned = self._planned("resource")
        if planned:
            return planned
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        session = next(s for sid, s in self.sessions.items()
                       if s.get("token") == bearer or sid == request.cookies.get("kbs-session-id"))
        return web.json_response(jwe.encrypt(self.secret, session["jwk"]))


@asynccontextmanager
async def serve(kbs: FakeKbs) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/kbs/v0/auth", kbs.auth)
    app.router.add_post("/kbs/v0/attest", kbs.attest)
    app.router.add_get("/kbs/v0/resource/{repo}/{type}/{tag}", kbs.resource)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def run_against(kbs: FakeKbs, fetch: Callable[[str], Any]) -> Any:
    async def go() -> Any:
        async with serve(kbs) as url:
            return await fetch(url)
    return asyncio.run(go())


def test_wire_format_of_auth_and_attest() -> None:
    kbs = FakeKbs()
    got = run_against(kbs, lambda url: fetch_resource(url, "r/t/x", SampleEvidence(), init_data="version = '0.1.0'\n",
                                                      retries=0))
    assert got == b"fake-secret"
    assert kbs.bodies["auth"] == [{"version": "0.4.0", "tee": "sample",
                                   "extra-params": {"supported-hash-algorithms": ["sha384"]}}]
    body = kbs.bodies["attest"][0]
    assert set(body) == {"init-data", "runtime-data", "tee-evidence"}
    assert body["init-data"] == {"format": "toml", "body": "version = '0.1.0'\n"}
    runtime = body["runtime-data"]
    assert set(runtime) == {"nonce", "tee-pubkey"} and runtime["tee-pubkey"]["alg"] == "ECDH-ES+A256KW"
    digest = primary_runtime_digest(runtime["nonce"], runtime["tee-pubkey"], "")
    assert body["tee-evidence"] == {"primary_evidence": {"svn": "1", "report_data": base64.b64encode(digest).decode()},
                                    "additional_evidence": ""}
    assert "kbs-session-id=" in kbs.resource_headers[0]["Cookie"]


def test_large_answer_is_read_whole() -> None:
    secret = os.urandom(300_000)  # the JWE arrives in many chunks
    assert run_against(FakeKbs(secret), lambda url: fetch_resource(url, "r/t/x", SampleEvidence(),
                                                                   retries=0)) == secret


def test_bearer_sends_token_and_no_cookie() -> None:
    kbs = FakeKbs()
    assert run_against(kbs, lambda url: fetch_resource(url, "r/t/x", SampleEvidence(), use_bearer=True,
                                                       retries=0)) == b"fake-secret"
    headers = kbs.resource_headers[0]
    assert headers["Authorization"].startswith("Bearer token-") and "Cookie" not in headers


def test_503_twice_then_works() -> None:
    kbs = FakeKbs(auth=[503, 503])
    assert run_against(kbs, lambda url: fetch_resource(url, "r/t/x", SampleEvidence(), retries=3,
                                                       backoff=TINY)) == b"fake-secret"
    assert kbs.calls["auth"] == 3


def test_always_503_gives_up_after_n_attempts() -> None:
    kbs = FakeKbs(auth=[503] * 10)
    with pytest.raises(GuestError, match="gave up after 3 attempts") as info:
        run_against(kbs, lambda url: fetch_resource(url, "r/t/x", SampleEvidence(), retries=2, backoff=TINY))
    assert info.value.check == "guest.unavailable" and info.value.status == 503
    assert info.value.detail == "planned 503 on auth" and kbs.calls["auth"] == 3


def test_401_reruns_handshake_with_fresh_key() -> None:
    kbs = FakeKbs(resource=[401])
    assert run_against(kbs, lambda url: fetch_resource(url, "r/t/x", SampleEvidence(), retries=1,
                                                       backoff=TINY)) == b"fake-secret"
    assert kbs.calls == {"auth": 2, "attest": 2, "resource": 2}
    first, second = (b["runtime-data"] for b in kbs.bodies["attest"])
    assert first["nonce"] != second["nonce"] and first["tee-pubkey"] != second["tee-pubkey"]


@pytest.mark.parametrize(("status", "check"), [(404, "guest.not_found"), (400, "guest.http"), (403, "guest.http")])
def test_404_and_other_4xx_fail_at_once(status: int, check: str) -> None:
    kbs = FakeKbs(resource=[status])
    with pytest.raises(GuestError) as info:
        run_against(kbs, lambda url: fetch_resource(url, "r/t/x", SampleEvidence(), retries=5, backoff=5.0))
    assert info.value.check == check and info.value.status == status
    assert info.value.detail == f"planned {status} on resource" and kbs.calls["auth"] == 1


def test_connection_refused_and_timeouts_are_retried() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(GuestError, match="gave up after 2 attempts: auth: cannot reach") as info:
        asyncio.run(fetch_resource(url, "r/t/x", SampleEvidence(), retries=1, backoff=TINY))
    assert info.value.check == "guest.unavailable"
    kbs = FakeKbs()
    kbs.delay = 0.5
    with pytest.raises(GuestError, match="no answer") as info:
        run_against(kbs, lambda url: fetch_resource(url, "r/t/x", SampleEvidence(), retries=1, backoff=0.001,
                                                    timeout=0.1))
    assert info.value.check == "guest.unavailable"


def test_key_and_token_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    kbs = FakeKbs(secret=b"TOP-SECRET-KEY-BYTES", resource=[401])
    with caplog.at_level(logging.DEBUG):
        run_against(kbs, lambda url: fetch_resource(url, "r/t/x", SampleEvidence(), retries=1, backoff=TINY))
    text = caplog.text
    assert "retrying" in text  # the retry was logged, so the check is not vacuous
    assert "TOP-SECRET" not in text and b"TOP-SECRET-KEY-BYTES".hex() not in text and "token-" not in text


def test_jwe_that_does_not_open_is_an_error() -> None:
    class WrongKey(FakeKbs):
        async def resource(self, request: web.Request) -> web.Response:
            return web.json_response(jwe.encrypt(b"x", jwe.generate_tee_key("EC-P256").jwk))

    with pytest.raises(GuestError) as info:
        run_against(WrongKey(), lambda url: fetch_resource(url, "r/t/x", SampleEvidence(), retries=3, backoff=TINY))
    assert info.value.check == "guest.decrypt"
    assert isinstance(info.value, KbsError)


def test_ca_cert_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    http_url, https_url = f"http://127.0.0.1:{free_port()}", f"https://127.0.0.1:{free_port()}"
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    for option in ("--ca-cert", "--cacert"):  # --cacert: the old spelling still works
        code = cli.main(["get-resource", "kbs:///a/b/c", "--url", http_url, "--tee", "sample", option, str(ca)])
        err = capsys.readouterr().err
        assert code == 2 and "is not https://" in err and str(ca) in err
    code = cli.main(["get-resource", "kbs:///a/b/c", "--url", https_url, "--tee", "sample", "--ca-cert", str(ca)])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot load CA certificates from --ca-cert {ca}" in err
    monkeypatch.setenv("KBS_CA_CERT", str(ca))  # the systemd unit's config file sets it
    assert cli.main(["get-resource", "kbs:///a/b/c", "--url", https_url, "--tee", "sample"]) == 2
    assert "cannot load CA certificates" in capsys.readouterr().err
    monkeypatch.setenv("KBS_CA_CERT", "")  # empty: the system trust store
    code = cli.main(["get-resource", "kbs:///a/b/c", "--url", http_url, "--tee", "sample", "--retries", "0"])
    assert code == 1 and "cannot reach" in capsys.readouterr().err
