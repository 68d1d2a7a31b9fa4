"""The collateral cache (`kbs collateral ...`, kbs.trust.collateral_cache): add, fetch, export, import,
list, prune, and the round trip from a connected cache to an air-gapped broker.

CLI verbs run in process through kbs.cli.main; the broker runs as a real `kbs serve`."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kbs.cli import main
from kbs.evidence.binding import primary_runtime_digest
from kbs.evidence.snp.report import parse_report
from kbs.keys.jwe import generate_tee_key
from kbs.trust.amd.kds import vcek_url_path
from kbs.trust.cachedir import CacheDir, CacheKey, Entry
from tests.amd_synth import SyntheticAmd, build_report, sign_report
from tests.broker import SnpGuest, attest, auth, jar, run_broker
from tests.collateral_archive import edit_member, flip_middle_bit
from tests.conftest import load_snp_vector
from tests.test_kds import FakeKds, serve

AT = "2026-11-25T18:26:55Z"  # inside the validity of every real certificate used here
NOW = dt.datetime.now(dt.UTC)
# Synthetic CRLs are in force from before AT (verification) and current now (caching).
CRL_LAST = min(NOW, dt.datetime.fromisoformat(AT)) - dt.timedelta(days=1)


def kbs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def listing(capsys: pytest.CaptureFixture[str], cache: Path) -> list[dict[str, Any]]:
    code, out, err = kbs(capsys, "collateral", "list", "--cache-dir", str(cache), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["problems"] == []
    entries: list[dict[str, Any]] = doc["entries"]
    return entries


def snapshot(cache: Path) -> dict[str, bytes]:
    """Every file under the cache with its bytes."""
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()} \
        if cache.exists() else {}


def pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)


@pytest.fixture
def files(tmp_path: Path, pki: SyntheticAmd) -> dict[str, Path]:
    """The synthetic PKI's ARK, ASK and a chain file, as an operator would have them."""
    out = {"ark": tmp_path / "ark.pem", "ask": tmp_path / "ask.pem", "chain": tmp_path / "ask_ark.pem"}
    out["ark"].write_bytes(pki.ark_pem)
    out["ask"].write_bytes(pem(pki.ask_der))
    out["chain"].write_bytes(pem(pki.ask_der) + pki.ark_pem)
    return out


def verify_offline(capsys: pytest.CaptureFixture[str], report: Path, cache: Path, *extra: str) -> tuple[int, str, str]:
    return kbs(capsys, "verify", "snp", str(report), "--offline", "--cache-dir", str(cache), "--at", AT, "--json",
               *extra)


# -- add, then verify offline without --certs ------------------------------------------------

@pytest.mark.parametrize("name", ["milan-v2-gsg", "milan-v3-oak", "genoa-v5-oak", "turin-v5-oak"])
def test_add_real_vcek_and_chain_then_verify_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     name: str) -> None:
    v = load_snp_vector(name)
    cache = tmp_path / "cache"
    vmpls = [f"--vmpl={n}" for n in v.vmpls]
    code, _, err = verify_offline(capsys, v.path / "report.bin", cache, *vmpls)
    assert code == 1 and "offline mode is on" in err and str(cache) in err  # nothing cached yet
    code, out, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), "--at", AT,
                         *map(str, v.vek_files), str(v.chain_file))
    assert code == 0, err
    assert "added amd.vcek" in out and "added amd.cert_chain" in out
    code, out, err = verify_offline(capsys, v.path / "report.bin", cache, *vmpls)
    assert code == 0, err
    assert json.loads(out)["measurement"] == v.expected["measurement"]
    product = json.loads(out)["product"]
    kinds = {e["kind"]: e for e in listing(capsys, cache)}
    assert set(kinds) == {"amd.vcek", "amd.cert_chain"}
    assert kinds["amd.cert_chain"]["path"] == f"/vcek/v1/{product}/cert_chain"
    report = parse_report(v.report)
    assert kinds["amd.vcek"]["path"] == vcek_url_path(product, report.raw.chip_id, report.tcbs(product)["reported"])
    assert kinds["amd.vcek"]["valid_until"] is None and kinds["amd.vcek"]["sha256"] == \
        hashlib.sha256(v.vek_files[0].read_bytes()).hexdigest()


def test_real_chain_is_checked_against_the_pins(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                files: dict[str, Path]) -> None:
    v = load_snp_vector("milan-v2-gsg")
    cache = tmp_path / "cache"
    # AMD's certificates with a lab root in place of the pins: refused, nothing cached.
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), "--at", AT, "--trust-root",
                       str(files["ark"]), str(v.vek_files[0]), str(v.chain_file))
    assert code == 1 and "chain.root" in err and "none was cached" in err
    assert snapshot(cache) == {}


def test_add_synthetic_pieces_from_separate_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  pki: SyntheticAmd, files: dict[str, Path]) -> None:
    guest = SnpGuest(pki)
    report = tmp_path / "report.bin"
    assert guest.vek.private_key is not None
    report.write_bytes(sign_report(build_report(chip_id=guest.chip), guest.vek.private_key))
    (tmp_path / "vcek.der").write_bytes(guest.vek.der)
    cache = tmp_path / "cache"
    root = ("--trust-root", str(files["ark"]))
    # Without a pinned or configured root the synthetic ARK is refused.
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), str(tmp_path / "vcek.der"),
                       str(files["ask"]), str(files["ark"]))
    assert code == 1 and "not the pinned AMD root for Milan" in err and snapshot(cache) == {}
    # The chain first (ASK and ARK in separate files), then the VCEK alone: its chain is found in the cache.
    code, out, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), *root, str(files["ask"]),
                         str(files["ark"]))
    assert code == 0 and "amd.cert_chain" in out, err
    code, out, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), *root, str(tmp_path / "vcek.der"))
    assert code == 0 and "amd.vcek" in out, err
    code, out, err = verify_offline(capsys, report, cache, *root)
    assert code == 0, err
    assert json.loads(out)["chip_id"] == guest.chip.hex()


def test_synthetic_turin_vcek_lands_at_the_8_byte_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    turin = SyntheticAmd("Turin")
    hwid = bytes(range(1, 9))
    vek = turin.issue_vek(hwid=hwid)
    (tmp_path / "vcek.der").write_bytes(vek.der)
    (tmp_path / "chain.pem").write_bytes(pem(turin.ask_der) + turin.ark_pem)
    (tmp_path / "ark.pem").write_bytes(turin.ark_pem)
    cache = tmp_path / "cache"
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), "--trust-root",
                       str(tmp_path / "ark.pem"), str(tmp_path / "vcek.der"), str(tmp_path / "chain.pem"))
    assert code == 0, err
    paths = {e["path"] for e in listing(capsys, cache)}
    assert "/vcek/v1/Turin/0102030405060708?fmcSPL=0&blSPL=1&teeSPL=0&snpSPL=2&ucodeSPL=71" in paths


def test_add_refuses_what_does_not_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str], pki: SyntheticAmd,
                                          files: dict[str, Path]) -> None:
    cache = tmp_path / "cache"
    root = ("--trust-root", str(files["ark"]))
    other = SyntheticAmd("Milan")  # same names, other keys
    stranger = tmp_path / "stranger.der"
    stranger.write_bytes(other.issue_vek(hwid=bytes(range(5, 69))).der)
    lonely = tmp_path / "lonely.der"
    lonely.write_bytes(pki.issue_vek(hwid=bytes(range(6, 70))).der)
    masked = tmp_path / "masked.der"
    masked.write_bytes(pki.issue_vek(hwid=bytes(64)).der)
    forged_crl = tmp_path / "forged.crl"
    forged_crl.write_bytes(other.crl(last=NOW - dt.timedelta(days=1), next_=NOW + dt.timedelta(days=7)))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a certificate")
    cases = [
        ((str(stranger), str(files["chain"])), 1, "signature"),  # a VCEK another ASK signed
        ((str(lonely),), 1, "neither given nor cached"),  # no chain given or cached
        ((str(masked), str(files["chain"])), 1, "all zero"),  # a masked hwID has no KDS URL
        ((str(forged_crl), str(files["chain"])), 1, "crl.signature"),  # a CRL the ARK did not sign
        ((str(garbage),), 2, "neither certificates"),
    ]
    for argv, wanted, message in cases:
        code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), *root, *argv)
        assert (code, message in err) == (wanted, True), (argv, err)
        assert snapshot(cache) == {}, argv  # a refused batch leaves nothing behind, not even its good parts


# -- CRLs: freshness, list, prune ------------------------------------------------------------

def test_crl_add_list_verify_and_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str], pki: SyntheticAmd,
                                       files: dict[str, Path]) -> None:
    guest = SnpGuest(pki)
    assert guest.vek.private_key is not None
    report = tmp_path / "report.bin"
    report.write_bytes(sign_report(build_report(chip_id=guest.chip), guest.vek.private_key))
    (tmp_path / "vcek.der").write_bytes(guest.vek.der)
    crl = tmp_path / "ark.crl"
    crl.write_bytes(pki.crl(last=CRL_LAST, next_=NOW + dt.timedelta(days=7)))
    stale = tmp_path / "stale.crl"
    stale.write_bytes(pki.crl(last=NOW - dt.timedelta(days=9), next_=NOW - dt.timedelta(days=2)))
    cache = tmp_path / "cache"
    root = ("--trust-root", str(files["ark"]))

    code, out, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), *root, str(stale), str(files["chain"]))
    assert code == 0 and "skipped amd.crl" in err and "expired at" in err, err
    assert {e["kind"] for e in listing(capsys, cache)} == {"amd.cert_chain"}  # the stale CRL was not cached

    code, out, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), *root, str(crl),
                         str(tmp_path / "vcek.der"))
    assert code == 0, err
    entries = {e["kind"]: e for e in listing(capsys, cache)}
    until = dt.datetime.fromisoformat(entries["amd.crl"]["valid_until"])
    assert abs(until - (NOW + dt.timedelta(days=7))) < dt.timedelta(seconds=2)
    assert entries["amd.crl"]["path"] == "/vcek/v1/Milan/crl" and not entries["amd.crl"]["expired"]
    code, _, err = verify_offline(capsys, report, cache, *root, "--check-crl")
    assert code == 0, err

    # A CRL that expired while cached: prune drops it (and a stray file), keeps the rest.
    expired = pki.crl(last=NOW - dt.timedelta(days=9), next_=NOW - dt.timedelta(hours=1))
    directory = CacheDir(cache)
    directory.write(Entry("kds", "amd.crl", CacheKey("GET", "/vlek/v1/Milan/crl"), expired, "test", NOW,
                          NOW - dt.timedelta(hours=1)))
    (cache / "kds" / "stray").write_bytes(b"left over")
    code, out, _ = kbs(capsys, "collateral", "list", "--cache-dir", str(cache))
    assert "(EXPIRED)" in out and "artefact without its metadata file" in out
    code, out, err = kbs(capsys, "collateral", "prune", "--cache-dir", str(cache))
    assert code == 0 and "removed amd.crl GET /vlek/v1/Milan/crl" in out and "stray" in out, err
    assert {e["path"] for e in listing(capsys, cache)} == {"/vcek/v1/Milan/crl", "/vcek/v1/Milan/cert_chain",
                                                            entries["amd.vcek"]["path"]}
    assert not (cache / "kds" / "stray").exists()


# -- a fake KDS in a thread, for verbs that run their own event loop ---------------------------

class KdsInThread:
    def __init__(self) -> None:
        self.kds = FakeKds()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self.kds):
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> FakeKds:
        self._thread.start()
        assert self._ready.wait(10)
        return self.kds

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def kds_for(pki: SyntheticAmd) -> Iterator[tuple[FakeKds, SnpGuest]]:
    """A fake KDS serving one synthetic guest's VCEK, the Milan chain and a current CRL."""
    guest = SnpGuest(pki)
    with KdsInThread() as kds:
        report = parse_report(sign_report(build_report(chip_id=guest.chip), guest.vek.private_key))  # type: ignore[arg-type]
        kds.ok(vcek_url_path("Milan", guest.chip, report.tcbs("Milan")["reported"]), guest.vek.der)
        kds.ok("/vcek/v1/Milan/cert_chain", pem(pki.ask_der) + pki.ark_pem)
        kds.ok("/vcek/v1/Milan/crl", pki.crl(last=CRL_LAST, next_=NOW + dt.timedelta(days=7)))
        yield kds, guest


def test_fetch_by_chip_and_tcb_then_skip_what_is_cached(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        kds_for: tuple[FakeKds, SnpGuest],
                                                        files: dict[str, Path]) -> None:
    kds, guest = kds_for
    cache = tmp_path / "cache"
    argv = ["collateral", "fetch", "--cache-dir", str(cache), "--kds-url", kds.base, "--trust-root",
            str(files["ark"]), "--product", "Milan", "--chip-id", guest.chip.hex(),
            "--tcb", "bl=2,tee=0,snp=5,ucode=68"]
    code, out, err = kbs(capsys, *argv)
    assert code == 0, err
    assert out.count("fetched ") == 3 and kds.total == 3
    assert {e["kind"] for e in listing(capsys, cache)} == {"amd.vcek", "amd.cert_chain", "amd.crl"}
    assert all(e["source"].startswith(kds.base) for e in listing(capsys, cache))
    code, out, err = kbs(capsys, *argv)
    assert code == 0 and out.count("already cached") == 3 and kds.total == 3, err
    # A chip KDS does not know: exit 1, and the error says so.
    code, _, err = kbs(capsys, *argv[:-4], "--chip-id", "ab" * 64, "--tcb", "bl=2,tee=0,snp=5,ucode=68")
    assert code == 1 and "404 Not Found" in err
    # Fetched answers go through the same checks as added files: without the lab root they are refused.
    code, _, err = kbs(capsys, "collateral", "fetch", "--cache-dir", str(tmp_path / "other"), "--kds-url", kds.base,
                       "--product", "Milan", "--no-crl")
    assert code == 1 and "chain.root" in err and snapshot(tmp_path / "other") == {}


# -- the round trip: connected cache -> archive -> air-gapped broker ----------------------------

def alter_member(archive: Path, out: Path, needle: bytes, fix_manifest: bool) -> None:
    """A copy of `archive` with one bit flipped inside the member holding `needle` (see edit_member)."""
    edit_member(archive, out, needle, flip_middle_bit, fix_manifest=fix_manifest)


def test_round_trip_to_an_air_gapped_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str], pki: SyntheticAmd,
                                           kds_for: tuple[FakeKds, SnpGuest], files: dict[str, Path]) -> None:
    kds, guest = kds_for
    connected, airgap = tmp_path / "connected", tmp_path / "airgap"
    root = ("--trust-root", str(files["ark"]))
    assert guest.vek.private_key is not None
    report = tmp_path / "report.bin"
    report.write_bytes(sign_report(build_report(chip_id=guest.chip), guest.vek.private_key))

    # 1. Connected side: fetch what the guest's report needs, then export it.
    code, out, err = kbs(capsys, "collateral", "fetch", "--cache-dir", str(connected), "--kds-url", kds.base,
                         "--report", str(report), *root)
    assert code == 0 and kds.total == 3, err
    archive = tmp_path / "collateral.tar"
    code, out, err = kbs(capsys, "collateral", "export", "--cache-dir", str(connected), str(archive))
    assert code == 0 and "exported 3 artefact(s)" in out, err

    # 2. An altered archive is refused as a whole, into an empty cache and into a filled one.
    altered, resigned = tmp_path / "altered.tar", tmp_path / "altered-resigned.tar"
    alter_member(archive, altered, guest.vek.der, fix_manifest=False)
    alter_member(archive, resigned, guest.vek.der, fix_manifest=True)
    code, _, err = kbs(capsys, "collateral", "import", "--cache-dir", str(airgap), *root, str(altered))
    assert code == 1 and "refused as a whole" in err and "SHA-256" in err, err
    assert snapshot(airgap) == {}
    code, _, err = kbs(capsys, "collateral", "import", "--cache-dir", str(airgap), *root, str(resigned))
    assert code == 1 and "none was cached" in err, err  # the bytes match the manifest but not a valid VCEK
    assert snapshot(airgap) == {}

    # 3. Air-gapped side: import into an empty cache, identical to the connected one.
    code, out, err = kbs(capsys, "collateral", "import", "--cache-dir", str(airgap), *root, str(archive))
    assert code == 0 and out.count("imported ") == 3, err
    assert {(e["path"], e["sha256"]) for e in listing(capsys, airgap)} == \
        {(e["path"], e["sha256"]) for e in listing(capsys, connected)}
    before = snapshot(airgap)
    code, _, err = kbs(capsys, "collateral", "import", "--cache-dir", str(airgap), *root, str(altered))
    assert code == 1 and snapshot(airgap) == before  # refusing changed nothing

    # 4. A broker with the network off (offline, and KDS unreachable) serves the guest from that cache.
    (tmp_path / "ark.pem").write_bytes(pki.ark_pem)
    config = (f'[trust]\nsnp_roots = ["{tmp_path / "ark.pem"}"]\n'
              f'[kds]\nurl = "http://127.0.0.1:9"\noffline = true\ncache_dir = "{airgap}"\n')
    hits = kds.total
    stranger = SnpGuest(pki, chip=bytes(range(100, 164)))  # a VCEK that is in no cache
    with run_broker(tmp_path, config) as broker:
        status, body = asyncio.run(attest_without_vcek(broker.url, guest))
        assert status == 200 and "token" in body, body
        status, body = asyncio.run(attest_without_vcek(broker.url, stranger))
        assert status == 401 and "offline" in json.dumps(body), body
    assert kds.total == hits


async def attest_without_vcek(url: str, guest: SnpGuest) -> tuple[int, dict[str, Any]]:
    """/auth and /attest with evidence that carries no certificates at all (cert_chain null)."""
    key = generate_tee_key("EC-P256")
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        nonce = await auth(http, url, "snp")
        evidence = guest.evidence(primary_runtime_digest(nonce, key.jwk, "") + bytes(16))
        evidence["cert_chain"] = None
        body = {"init-data": None, "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk},
                "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""}}
        return await attest(http, url, body)
