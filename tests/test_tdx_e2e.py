"""TDX guests get keys through a running broker exactly as SNP guests do: the CoCo TDX evidence form,
report data bound as for SNP, init-data bound into MRCONFIGID, Intel collateral from a directory.
A DEBUG TD attests but the default policy refuses it; a platform whose TCB is Revoked is refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kbs.guest import cli as guest_cli
from kbs.guest.client import fetch_resource
from kbs.guest.evidence import TdxQuote
from kbs.keys.jwe import decrypt, generate_tee_key
from tests import ccel_synth
from tests.broker import Broker, attest, attestation, auth, full_flow, jar, run_broker
from tests.fake_tsm import FakeConfigfs
from tests.intel_synth import SyntheticIntel, default_platform_levels, platform_level
from tests.tdx_synth import TdBody, TdxGuest
from tests.test_server_e2e import admin, logged

SECRET = b"tdx-disk-key:" + bytes(range(20))
INIT_DATA = 'algorithm = "sha384"\nversion = "0.1.0"\n[data]\n"aa.toml" = "x"\n'


@pytest.fixture(scope="module")
def intel() -> SyntheticIntel:
    return SyntheticIntel()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, intel: SyntheticIntel) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("tdx")
    (tmp / "root.pem").write_bytes(intel.root.pem)
    # Platforms with PCESVN 13 are UpToDate; 5..12 match a Revoked level.
    levels = [default_platform_levels()[0], platform_level("Revoked", pcesvn=5, date="2019-01-01T00:00:00Z")]
    intel.write_dir(tmp / "collateral", intel.collateral(tcb_info=intel.sign_tcb_info(levels)))
    config = (f'[verifiers]\nenabled = ["tdx", "sample"]\n[verifiers.tdx]\ntrust_roots = ["{tmp / "root.pem"}"]\n'
              f'collateral_dir = "{tmp / "collateral"}"\n')
    with run_broker(tmp, config) as b:
        assert asyncio.run(admin(b, "POST", "/kbs/v0/resource/tdx/key/disk", data=SECRET))[0] == 200
        yield b


@pytest.mark.parametrize("bearer", [False, True], ids=["cookie", "bearer"])
def test_tdx_guest_obtains_its_key(broker: Broker, intel: SyntheticIntel, bearer: bool) -> None:
    """The default policy releases to a TD whose every submod is affirming (UpToDate, not DEBUG)."""
    status, body, key = asyncio.run(full_flow(broker.url, "tdx", "tdx/key/disk", guest=TdxGuest(intel),
                                              bearer=bearer))
    assert status == 200, body
    assert decrypt(body, key.private_key) == SECRET


async def _claims(url: str, guest: TdxGuest, init_data: str | None = None,
                  host_data: bytes = b"") -> tuple[int, dict[str, Any], int]:
    key = generate_tee_key("EC-P256")
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        nonce = await auth(http, url, "tdx")
        status, body = await attest(http, url, attestation(nonce, key, "tdx", guest, init_data=init_data,
                                                           host_data=host_data))
        if status != 200:
            return status, body, 0
        async with http.get(f"{url}/kbs/v0/resource/tdx/key/disk") as r:
            released = r.status
        return status, json.loads(base64.urlsafe_b64decode(body["token"].split(".")[1] + "==")), released


def test_debug_td_attests_but_the_default_policy_refuses_it(broker: Broker, intel: SyntheticIntel) -> None:
    status, claims, released = asyncio.run(_claims(broker.url, TdxGuest(intel, body=TdBody(td_attributes=0x10000001))))
    assert status == 200
    cpu0 = claims["submods"]["cpu0"]
    assert cpu0["ear.veraison.annotated-evidence"]["tdx"]["td_attributes"]["debug"] is True
    assert cpu0["ear.status"] == "warning" and released == 401


def test_revoked_platform_is_refused(broker: Broker, intel: SyntheticIntel) -> None:
    status, body, _ = asyncio.run(_claims(broker.url, TdxGuest(intel, pcesvn=7)))
    assert status == 401 and "tcb.revoked" in body["detail"]
    assert logged(broker, body["reference"])["reason"] == "tcb.revoked"


def test_init_data_is_bound_into_mrconfigid(broker: Broker, intel: SyntheticIntel) -> None:
    digest = hashlib.sha384(INIT_DATA.encode()).digest()
    status, claims, _ = asyncio.run(_claims(broker.url, TdxGuest(intel), init_data=INIT_DATA, host_data=digest))
    assert status == 200
    evidence = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
    assert evidence["init_data_claims"] == {"aa.toml": "x"} and evidence["init_data"] == digest.hex()
    status, body, _ = asyncio.run(_claims(broker.url, TdxGuest(intel), init_data=INIT_DATA, host_data=bytes(48)))
    assert status == 401 and "binding.init_data" in body["detail"]


def test_report_data_must_bind_the_session(broker: Broker, intel: SyntheticIntel) -> None:
    async def go() -> tuple[int, dict[str, Any]]:
        key = generate_tee_key("EC-P256")
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "tdx")
            other = base64.b64encode(b"\x01" * 32).decode()
            return await attest(http, broker.url, attestation(nonce, key, "tdx", TdxGuest(intel), report_nonce=other))
    status, body = asyncio.run(go())
    assert status == 401 and "binding.report_data" in body["detail"]


def test_collateral_dir_problems_stop_the_broker_at_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"\[verifiers.tdx\] collateral_dir"), \
            run_broker(tmp_path, f'[verifiers.tdx]\ncollateral_dir = "{tmp_path / "absent"}"\n'):
        pass


class FakeTdxTsm(FakeConfigfs, TdxQuote):
    """configfs-tsm with the tdx_guest provider: each inblob becomes a quote of the synthetic TD."""

    provider_name = "tdx_guest"

    def __init__(self, root: Path, guest: TdxGuest, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.guest = guest

    def make_outblob(self, inblob: bytes) -> bytes:
        return self.guest.quote(inblob) + bytes(100)  # Intel's buffers carry zero padding


def test_kbs_guest_gets_a_key_through_configfs_tsm_tdx(broker: Broker, intel: SyntheticIntel, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "tsm"
    root.mkdir()
    log = tmp_path / "CCEL"
    log.write_bytes(ccel_synth.build_log([]))  # no events: the replay is the all-zero RTMRs the TD reports
    guest = TdxGuest(intel)
    tsm = FakeTdxTsm(root, guest, eventlog=log)
    assert asyncio.run(fetch_resource(broker.url, "kbs:///tdx/key/disk", tsm, retries=0)) == SECRET
    assert tsm.inblob_writes() == 1 and list(root.iterdir()) == []
    # `kbs-guest --tee auto` finds the tdx_guest provider by itself.
    monkeypatch.setattr(guest_cli, "TdxQuote", lambda root, **kw: FakeTdxTsm(root, guest, eventlog=log))
    monkeypatch.setattr(guest_cli, "TsmReport", lambda root, **kw: FakeTdxTsm(root, guest, eventlog=log))
    out = tmp_path / "key"
    code = guest_cli.main(["get-resource", "kbs:///tdx/key/disk", "--url", broker.url, "--tsm-path", str(root),
                           "--output", str(out), "--retries", "0"])
    assert code == 0 and out.read_bytes() == SECRET
