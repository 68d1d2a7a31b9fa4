"""The Intel PCS client (kbs.trust.intel.pcs) against a fake PCS on loopback, and `kbs collateral` for TDX
collateral: fetch, list, export, import and add, down to an offline client that verifies a quote's TCB."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kbs.cli import main
from kbs.errors import CollateralUnavailable, KbsError, MalformedEvidence
from kbs.trust.cachedir import CacheDir, CacheKey
from kbs.trust.intel import pcs
from kbs.trust.intel.certs import verify_pck_chain
from kbs.trust.intel.collateral import IntelCollateral, verify_collateral
from kbs.trust.intel.pcs import PcsClient
from kbs.trust.intel.tcb import evaluate_tcb
from tests.collateral_archive import edit_member
from tests.conftest import vectors_dir
from tests.intel_synth import (
    DEFAULT_FMSPC,
    DEFAULT_TEE_TCB_SVN,
    FakePcs,
    SyntheticIntel,
    pcs_in_thread,
    qe_values,
    serve,
)

FMSPC = DEFAULT_FMSPC.hex()
PATHS = {"/tdx/certification/v4/tcb?fmspc=90c06f000000", "/tdx/certification/v4/qe/identity",
         "/sgx/certification/v4/pckcrl?ca=platform&encoding=der", "/IntelSGXRootCA.der"}
KINDS = {"intel.tdx_tcb_info", "intel.td_qe_identity", "intel.pck_crl", "intel.root_ca_crl"}


@pytest.fixture(scope="module")
def intel() -> SyntheticIntel:
    return SyntheticIntel()


@pytest.fixture(scope="module")
def served(intel: SyntheticIntel) -> IntelCollateral:
    return intel.collateral()


def client(fake: FakePcs, intel: SyntheticIntel, cache: Path | None = None, **kwargs: Any) -> PcsClient:
    options: dict[str, Any] = {"retries": 0, "burst": 50, "rate_per_second": 50.0,
                               "root_ca_crl_url": fake.root_ca_crl_url, "trust_roots": intel.trust_roots}
    options.update(kwargs)
    return PcsClient(fake.base or "http://127.0.0.1:9", cache_dir=cache, **options)


def run(test: Callable[[FakePcs], Awaitable[None]], fake: FakePcs | None = None) -> FakePcs:
    fake = fake or FakePcs()

    async def main_() -> None:
        async with serve(fake):
            await asyncio.wait_for(test(fake), timeout=10)

    asyncio.run(main_())
    return fake


def check_up_to_date(collateral: IntelCollateral, intel: SyntheticIntel) -> None:
    pck = verify_pck_chain(intel.issue_pck().pem_chain, intel.now, trust_roots=intel.trust_roots)
    verified = verify_collateral(collateral, pck, intel.now, trust_roots=intel.trust_roots)
    result = evaluate_tcb(verified.tcb_info, verified.qe_identity, pck.info, tee_tcb_svn=DEFAULT_TEE_TCB_SVN,
                          tee_tcb_svn2=None, body_type=2, mr_signer_seam=bytes(48), seam_attributes=bytes(8),
                          qe=qe_values())
    assert result.status == "UpToDate"


# -- the client ----------------------------------------------------------------------------------------

def test_client_fetches_checks_and_caches(intel: SyntheticIntel, served: IntelCollateral, tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    async def body(fake: FakePcs) -> None:
        fake.serve_collateral(served)
        async with client(fake, intel, cache) as pcs_client:
            fetched = await pcs_client.collateral(FMSPC)
            assert fetched == served  # bodies as sent, issuer chains decoded from their headers
            assert set(fake.hits) == PATHS and fake.total == 4
            assert await pcs_client.collateral(DEFAULT_FMSPC) == served and fake.total == 4  # memory
        async with client(fake, intel, cache, offline=True) as offline:
            assert await offline.collateral(FMSPC) == served and fake.total == 4  # disk, nothing sent

    run(body)
    check_up_to_date(served, intel)
    # The root CA CRL came from the mirror but is cached under Intel's URL, where every client looks.
    entry = CacheDir(cache).read("pcs", CacheKey("GET", pcs.ROOT_CA_CRL_URL))
    assert entry is not None and entry.body == served.root_ca_crl and entry.kind == "intel.root_ca_crl"
    tcb_entry = CacheDir(cache).read("pcs", CacheKey("GET", pcs.tcb_info_path(FMSPC)))
    assert tcb_entry is not None and tcb_entry.valid_until == intel.now + 29 * dt.timedelta(days=1)
    assert "TCB-Info-Issuer-Chain" in tcb_entry.headers


def refusal(intel: SyntheticIntel, tmp_path: Path, path: str, reply: tuple[int, bytes, dict[str, str]],
            fetch: Callable[[PcsClient], Awaitable[Any]], **kwargs: Any) -> KbsError:
    """What the client says about one scripted answer; and that nothing was cached."""
    cache = tmp_path / "cache"
    caught: list[KbsError] = []

    async def body(fake: FakePcs) -> None:
        fake.add(path, reply)
        async with client(fake, intel, cache, **kwargs) as pcs_client:
            with pytest.raises(KbsError) as info:
                await fetch(pcs_client)
            caught.append(info.value)

    run(body)
    assert not any(cache.rglob("*.meta.json")), "a refused answer was cached"
    return caught[0]


def test_answers_that_fail_their_checks_are_not_cached(intel: SyntheticIntel, served: IntelCollateral,
                                                       tmp_path: Path) -> None:
    tcb_path = pcs.tcb_info_path(FMSPC)
    chain = {pcs.TCB_INFO_CHAIN_HEADER: pcs.encode_issuer_chain(intel.tcb_chain_pem)}
    crl_chain = {pcs.PCK_CRL_CHAIN_HEADER: pcs.encode_issuer_chain(intel.pck_ca_chain_pem())}
    forged = served.tcb_info.replace(b'"pcesvn":13', b'"pcesvn":12', 1)
    cases: list[tuple[str, str, tuple[int, bytes, dict[str, str]], Any, dict[str, Any], str]] = [
        ("forged", tcb_path, (200, forged, chain), lambda c: c.tcb_info(FMSPC), {}, "collateral.signature"),
        ("other FMSPC", tcb_path, (200, intel.sign_tcb_info(fmspc=bytes(6)), chain), lambda c: c.tcb_info(FMSPC), {},
         "asked for"),
        ("no chain", tcb_path, (200, served.tcb_info, {}), lambda c: c.tcb_info(FMSPC), {}, "issuer chain"),
        ("untrusted root", tcb_path, (200, served.tcb_info, chain), lambda c: c.tcb_info(FMSPC),
         {"trust_roots": None}, "chain.root"),
        ("QE identity as TCB info", tcb_path, (200, served.qe_identity, chain), lambda c: c.tcb_info(FMSPC), {},
         "collateral.tcb_info"),
        ("processor CRL", pcs.pck_crl_path("platform"), (200, intel.pck_crl(ca="processor"), crl_chain),
         lambda c: c.pck_crl("platform"), {}, "crl.issuer"),
        ("PCK CRL as root CRL", "/IntelSGXRootCA.der", (200, intel.pck_crl(), {}), lambda c: c.root_ca_crl(), {},
         "not 'Intel SGX Root CA'"),
        ("garbage CRL", "/IntelSGXRootCA.der", (200, b"<html>maintenance</html>", {}), lambda c: c.root_ca_crl(), {},
         "crl.der"),
    ]
    for name, path, reply, fetch, kwargs, words in cases:
        error = refusal(intel, tmp_path / name.replace(" ", "_"), path, reply, fetch, **kwargs)
        assert isinstance(error, MalformedEvidence) and error.check.startswith("pcs."), (name, error.check)
        assert words in str(error), (name, str(error))
    missing = refusal(intel, tmp_path / "missing", "/elsewhere", (200, b"", {}), lambda c: c.qe_identity())
    assert isinstance(missing, CollateralUnavailable) and missing.check == "pcs.not_found"


def test_v3_issuer_chain_header_is_accepted(intel: SyntheticIntel, served: IntelCollateral) -> None:
    async def body(fake: FakePcs) -> None:
        fake.add(pcs.tcb_info_path(FMSPC), (200, served.tcb_info, {
            pcs.TCB_INFO_CHAIN_HEADER_V3: pcs.encode_issuer_chain(intel.tcb_chain_pem)}))
        async with client(fake, intel) as pcs_client:
            answer = await pcs_client.tcb_info(FMSPC)
            assert answer.issuer_chain == intel.tcb_chain_pem and answer.body == served.tcb_info

    run(body)


def test_cached_collateral_is_served_until_its_next_update(intel: SyntheticIntel, served: IntelCollateral,
                                                           tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    clock = {"now": intel.now}

    async def body(fake: FakePcs) -> None:
        fake.serve_collateral(served)
        async with client(fake, intel, cache, now=lambda: clock["now"]) as pcs_client:
            await pcs_client.tcb_info(FMSPC)
        clock["now"] = intel.now + 28 * dt.timedelta(days=1)
        async with client(fake, intel, cache, offline=True, now=lambda: clock["now"]) as offline:
            await offline.tcb_info(FMSPC)
        clock["now"] = intel.now + 30 * dt.timedelta(days=1)
        async with client(fake, intel, cache, offline=True, now=lambda: clock["now"]) as offline:
            with pytest.raises(CollateralUnavailable) as info:
                await offline.tcb_info(FMSPC)
            assert info.value.check == "pcs.offline" and "expired" in str(info.value)
        async with client(fake, intel, cache, now=lambda: clock["now"]) as online:
            await online.tcb_info(FMSPC)  # fetched again
        assert fake.hits["/tdx/certification/v4/tcb?fmspc=90c06f000000"] == 2

    run(body)


def test_request_keys() -> None:
    assert pcs.tcb_info_path("90C06F000000") == "/tdx/certification/v4/tcb?fmspc=90c06f000000"
    assert pcs.pck_crl_path("processor") == "/sgx/certification/v4/pckcrl?ca=processor&encoding=der"
    with pytest.raises(KbsError):
        pcs.parse_fmspc("90c06f")
    with pytest.raises(KbsError):
        pcs.pck_crl_path("other")  # type: ignore[arg-type]
    request = PcsClient(root_ca_crl_url="https://pccs.example:8081/sgx/certification/v4/rootcacrl").root_ca_crl_request()
    assert request.key == CacheKey("GET", pcs.ROOT_CA_CRL_URL) and request.url is not None


# -- kbs collateral --------------------------------------------------------------------------------------

def kbs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def listing(capsys: pytest.CaptureFixture[str], cache: Path) -> dict[str, dict[str, Any]]:
    code, out, err = kbs(capsys, "collateral", "list", "--cache-dir", str(cache), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["problems"] == []
    return {e["kind"]: e for e in doc["entries"]}


def snapshot(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()} \
        if cache.exists() else {}


def offline_collateral(cache: Path, intel: SyntheticIntel, ca: str = "platform") -> IntelCollateral:
    async def fetch() -> IntelCollateral:
        async with PcsClient("http://127.0.0.1:9", cache_dir=cache, offline=True,
                             trust_roots=intel.trust_roots) as offline:
            return await offline.collateral(FMSPC, ca)  # type: ignore[arg-type]
    return asyncio.run(fetch())


@pytest.fixture
def root_pem(intel: SyntheticIntel, tmp_path: Path) -> Path:
    path = tmp_path / "root.pem"
    path.write_bytes(intel.root.pem)
    return path


def alter(archive: Path, out: Path, needle: bytes) -> None:
    """A copy of `archive` whose TCB info member says PCESVN 12 where it said 13, the manifest made to match."""
    edit_member(archive, out, needle, lambda data: data.replace(b'"pcesvn":13', b'"pcesvn":12', 1))


def test_collateral_fetch_export_import_round_trip(intel: SyntheticIntel, served: IntelCollateral, tmp_path: Path,
                                                   root_pem: Path, capsys: pytest.CaptureFixture[str]) -> None:
    connected, airgap = tmp_path / "connected", tmp_path / "airgap"
    fake = FakePcs()
    fake.serve_collateral(served)
    with pcs_in_thread(fake):
        argv = ["collateral", "fetch", "--cache-dir", str(connected), "--pcs-url", fake.base, "--root-ca-crl-url",
                fake.root_ca_crl_url, "--trust-root", str(root_pem), "--fmspc", FMSPC.upper()]
        code, out, err = kbs(capsys, *argv)
        assert code == 0, err
        assert out.count("fetched intel.") == 4 and fake.total == 4
        code, out, err = kbs(capsys, *argv)
        assert code == 0 and out.count("already cached") == 4 and fake.total == 4, err
        # Without the lab root the same answers are refused, and nothing is cached.
        code, _, err = kbs(capsys, "collateral", "fetch", "--cache-dir", str(tmp_path / "other"), "--pcs-url",
                           fake.base, "--root-ca-crl-url", fake.root_ca_crl_url, "--fmspc", FMSPC)
        assert code == 1 and "chain.root" in err and snapshot(tmp_path / "other") == {}
    entries = listing(capsys, connected)
    assert set(entries) == KINDS and all(e["valid_until"] for e in entries.values())
    assert entries["intel.root_ca_crl"]["path"] == pcs.ROOT_CA_CRL_URL

    archive = tmp_path / "collateral.tar.gz"
    code, out, err = kbs(capsys, "collateral", "export", "--cache-dir", str(connected), str(archive))
    assert code == 0 and "exported 4 artefact(s)" in out, err
    altered = tmp_path / "altered.tar"
    alter(archive, altered, served.tcb_info[:40])
    code, _, err = kbs(capsys, "collateral", "import", "--cache-dir", str(airgap), "--trust-root", str(root_pem),
                       str(altered))
    assert code == 1 and "collateral.signature" in err and snapshot(airgap) == {}, err
    code, out, err = kbs(capsys, "collateral", "import", "--cache-dir", str(airgap), "--trust-root", str(root_pem),
                         str(archive))
    assert code == 0 and out.count("imported intel.") == 4, err
    assert {(k, e["sha256"]) for k, e in listing(capsys, airgap).items()} == \
        {(k, e["sha256"]) for k, e in entries.items()}
    # The air-gapped side: an offline client finds everything a quote needs, and it verifies.
    collateral = offline_collateral(airgap, intel)
    assert collateral == served
    check_up_to_date(collateral, intel)


def test_collateral_fetch_by_pck_chain(intel: SyntheticIntel, tmp_path: Path, root_pem: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    processor = intel.collateral(ca="processor")
    chain = tmp_path / "pck.pem"
    chain.write_bytes(intel.issue_pck(ca="processor").pem_chain + b"\0")  # as a quote carries it
    fake = FakePcs()
    fake.serve_collateral(processor, ca="processor")
    with pcs_in_thread(fake):
        code, out, err = kbs(capsys, "collateral", "fetch", "--cache-dir", str(tmp_path / "cache"), "--pcs-url",
                             fake.base, "--root-ca-crl-url", fake.root_ca_crl_url, "--trust-root", str(root_pem),
                             "--pck-chain", str(chain))
    assert code == 0 and out.count("fetched intel.") == 4, err
    assert "/sgx/certification/v4/pckcrl?ca=processor&encoding=der" in fake.hits
    assert listing(capsys, tmp_path / "cache")["intel.pck_crl"]["path"] == pcs.pck_crl_path("processor")
    assert offline_collateral(tmp_path / "cache", intel, "processor") == processor


def test_collateral_add_directory_and_files(intel: SyntheticIntel, served: IntelCollateral, tmp_path: Path,
                                            root_pem: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = intel.write_dir(tmp_path / "dir", served)
    root = ("--trust-root", str(root_pem))
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(tmp_path / "a"), str(directory))
    assert code == 1 and "chain.root" in err and snapshot(tmp_path / "a") == {}  # the synthetic root is not pinned
    code, out, err = kbs(capsys, "collateral", "add", "--cache-dir", str(tmp_path / "a"), *root, str(directory))
    assert code == 0 and out.count("added intel.") == 4, err
    assert offline_collateral(tmp_path / "a", intel) == served

    # The same artefacts as separate files: chains are matched from the certificates given.
    files = [directory / name for name in ("tcb_info.json", "qe_identity.json", "tcb_info_issuer_chain.pem",
                                           "pck_crl.der", "pck_crl_issuer_chain.pem", "root_ca_crl.der")]
    code, out, err = kbs(capsys, "collateral", "add", "--cache-dir", str(tmp_path / "b"), *root, *map(str, files))
    assert code == 0 and out.count("added intel.") == 4, err
    assert {k: e["sha256"] for k, e in listing(capsys, tmp_path / "b").items()} == \
        {k: e["sha256"] for k, e in listing(capsys, tmp_path / "a").items()}

    # One altered document in the directory: the whole batch is refused.
    (directory / "qe_identity.json").write_bytes(served.qe_identity.replace(b'"isvprodid":2', b'"isvprodid":3'))
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(tmp_path / "c"), *root, str(directory))
    assert code == 1 and "collateral.signature" in err and snapshot(tmp_path / "c") == {}
    # A document without its chain, or a root CRL without a root to check it, into an empty cache.
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(tmp_path / "d"), *root,
                       str(directory / "tcb_info.json"))
    assert code == 1 and "issuer chain" in err
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(tmp_path / "d"),
                       str(directory / "root_ca_crl.der"))
    assert code == 1 and "no pinned Intel SGX Root CA certificate" in err and snapshot(tmp_path / "d") == {}


def test_collateral_add_real_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = vectors_dir() / "tdx" / "dcap-qvl" / "quote_v4_b0c06f_collateral.json"
    if not path.is_file():
        pytest.skip(f"TDX vectors not found under KBS_VECTORS={vectors_dir()}")
    cache = tmp_path / "cache"
    # Checked against the pinned Intel root at a time inside its window: authentic, but long expired now.
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), "--at", "2025-07-01T00:00:00Z",
                       str(path))
    assert code == 0 and err.count("skipped intel.") == 4 and "expired at" in err, err
    assert snapshot(cache) == {}
    forged = tmp_path / "forged.json"
    bundle = json.loads(path.read_text())
    bundle["tcb_info"] = bundle["tcb_info"].replace('"pcesvn":11', '"pcesvn":12', 1)
    forged.write_text(json.dumps(bundle))
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), "--at", "2025-07-01T00:00:00Z",
                       str(forged))
    assert code == 1 and "collateral.signature" in err
