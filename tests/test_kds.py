"""KdsClient against a local aiohttp server that serves the real AMD certificates.

No test touches the internet: a fake KDS listens on 127.0.0.1 on an ephemeral port.
Vectors are read in place from $KBS_VECTORS (default ../shared/vectors next to the repo).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from kbs.errors import CollateralUnavailable, MalformedEvidence, UsageError
from kbs.evidence.snp_report import TcbVersion, parse_report
from kbs.trust.kds import KdsClient, vcek_url_path
from kbs.trust.x509 import load_certificates

REPO = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get("KBS_VECTORS", REPO.parent / "shared" / "vectors"))
SNP = VECTORS / "snp"
REAL_TURIN_URL = "/vcek/v1/Turin/3b42092f69c656d3?ucodeSPL=71&snpSPL=2&teeSPL=0&blSPL=1&fmcSPL=0"

Key = tuple[str, tuple[tuple[str, str], ...]]
Reply = tuple[int, bytes, dict[str, str]]


def snp_dir() -> Path:
    if not SNP.is_dir():
        pytest.skip(f"SNP vectors not found at {SNP} (set KBS_VECTORS to the shared vectors directory)")
    return SNP


def url_key(path_and_query: str) -> Key:
    """A URL's path and its query parameters, independent of their order."""
    url = URL(path_and_query)
    return url.path, tuple(sorted(url.query.items()))


class FakeKds:
    """Serves scripted replies per URL (query order ignored) and counts requests."""

    def __init__(self) -> None:
        self.routes: dict[Key, list[Reply]] = {}
        self.hits: Counter[Key] = Counter()
        self.base = ""

    def add(self, path_and_query: str, *replies: Reply) -> Key:
        key = url_key(path_and_query)
        self.routes[key] = list(replies)
        return key

    def ok(self, path_and_query: str, body: bytes) -> Key:
        return self.add(path_and_query, (200, body, {}))

    @property
    def total(self) -> int:
        return sum(self.hits.values())

    async def handle(self, request: web.Request) -> web.Response:
        key = (request.path, tuple(sorted(request.query.items())))
        self.hits[key] += 1
        replies = self.routes.get(key)
        if not replies:
            return web.Response(status=404, text="not found")
        status, body, headers = replies.pop(0) if len(replies) > 1 else replies[0]
        return web.Response(status=status, body=body, headers=headers)


@contextlib.asynccontextmanager
async def serve(kds: FakeKds) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", kds.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        kds.base = f"http://{host}:{port}"
        yield kds.base
    finally:
        await runner.cleanup()


def run(test: Callable[[FakeKds, str], Awaitable[None]]) -> FakeKds:
    """Run an async test body against a fresh fake KDS; returns the fake for inspection."""
    kds = FakeKds()

    async def main() -> None:
        async with serve(kds) as base:
            await asyncio.wait_for(test(kds, base), timeout=8)

    asyncio.run(main())
    return kds


def fast_client(base: str, cache_dir: Path | None = None,
                session: aiohttp.ClientSession | None = None) -> KdsClient:
    """A client with 3 retries and a 10 ms backoff, so retry tests stay fast."""
    return KdsClient(base, cache_dir=cache_dir, session=session, retries=3, backoff=0.01, timeout=5.0)


def cache_files(cache: Path) -> list[Path]:
    return sorted(cache.iterdir()) if cache.exists() else []


# -- vectors -------------------------------------------------------------------------------

def report_vcek(name: str, family: str) -> tuple[bytes, TcbVersion, bytes]:
    """(CHIP_ID, REPORTED_TCB, VCEK DER) of one vector."""
    d = snp_dir() / name
    report = parse_report((d / "report.bin").read_bytes())
    return bytes(report.raw.chip_id), report.tcbs(family)["reported"], (d / "vcek.der").read_bytes()


def chain_pem(product: str, kind: str = "VCEK") -> bytes:
    return (snp_dir() / "chains" / f"{product.lower()}_{kind.lower()}_cert_chain.pem").read_bytes()


def make_crl(next_update: datetime) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ARK-Milan")])
    builder = (x509.CertificateRevocationListBuilder().issuer_name(name)
               .last_update(next_update - timedelta(days=30)).next_update(next_update))
    return builder.sign(key, hashes.SHA384()).public_bytes(Encoding.DER)


def tcb(bl: int, tee: int, snp: int, ucode: int, fmc: int | None = None) -> TcbVersion:
    return TcbVersion(raw=0, bl=bl, tee=tee, snp=snp, ucode=ucode, fmc=fmc)


# -- URL forms -----------------------------------------------------------------------------

def test_milan_and_genoa_url_use_all_64_chip_id_bytes() -> None:
    chip = bytes(range(1, 65))
    for product in ("Milan", "Genoa"):
        path = vcek_url_path(product, chip, tcb(2, 0, 5, 68))
        assert path == f"/vcek/v1/{product}/{chip.hex()}?blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68"
        assert len(path.split("/")[4].split("?")[0]) == 128


def test_milan_url_from_real_report() -> None:
    chip, reported, _ = report_vcek("milan-v2-gsg", "Milan")
    expected = json.loads((snp_dir() / "milan-v2-gsg" / "expected.json").read_text())
    path = vcek_url_path("Milan", chip, reported)
    assert path.startswith(f"/vcek/v1/Milan/{expected['chip_id']}?")
    assert path.endswith("?blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68")


def test_turin_url_is_the_real_one() -> None:
    chip, reported, _ = report_vcek("turin-v5-oak", "Turin")
    path = vcek_url_path("Turin", chip, reported)
    assert path == "/vcek/v1/Turin/3b42092f69c656d3?fmcSPL=0&blSPL=1&teeSPL=0&snpSPL=2&ucodeSPL=71"
    assert url_key(path) == url_key(REAL_TURIN_URL)


def test_turin_without_fmc_is_refused() -> None:
    with pytest.raises(UsageError, match="fmcSPL"):
        vcek_url_path("Turin", b"\x01" * 64, tcb(1, 0, 2, 71))


def test_masked_chip_id_is_refused() -> None:
    with pytest.raises(CollateralUnavailable, match="all zero") as info:
        vcek_url_path("Milan", bytes(64), tcb(2, 0, 5, 68))
    assert info.value.check == "kds.chip_id_masked"
    # Turin only uses the first 8 bytes: zero there is masked too.
    with pytest.raises(CollateralUnavailable, match="all zero"):
        vcek_url_path("Turin", bytes(8) + b"\x01" * 56, tcb(1, 0, 2, 71, 0))


def test_unknown_product_kind_and_chip_size_are_refused() -> None:
    with pytest.raises(CollateralUnavailable, match="Venice"):
        vcek_url_path("Venice", b"\x01" * 64, tcb(1, 0, 2, 71, 0))
    with pytest.raises(UsageError, match="64"):
        vcek_url_path("Milan", b"\x01" * 8, tcb(1, 0, 2, 71))

    async def body() -> None:
        async with KdsClient(offline=True) as client:
            with pytest.raises(CollateralUnavailable, match="Siena"):
                await client.cert_chain("Siena")
            with pytest.raises(CollateralUnavailable):
                await client.crl("milan")
            with pytest.raises(UsageError):
                await client.cert_chain("Milan", kind="VXEK")

    asyncio.run(body())


# -- fetching and caching -------------------------------------------------------------------

def test_vcek_fetched_validated_and_cached(tmp_path: Path) -> None:
    chip, reported, der = report_vcek("milan-v2-gsg", "Milan")
    cache = tmp_path / "kds"

    async def body(kds: FakeKds, base: str) -> None:
        key = kds.ok(vcek_url_path("Milan", chip, reported), der)
        async with fast_client(base, cache_dir=cache) as client:
            assert await client.vcek("Milan", chip, reported) == der
            assert await client.vcek("Milan", chip, reported) == der
        assert kds.hits[key] == 1
        # A new client (empty memory) is served from disk.
        async with fast_client(base, cache_dir=cache) as client:
            assert await client.vcek("Milan", chip, reported) == der
        assert kds.hits[key] == 1

    run(body)
    files = cache_files(cache)
    assert len(files) == 1 and files[0].read_bytes() == der
    assert not files[0].name.startswith(".")  # no temp file left behind


def test_turin_vcek_at_real_url(tmp_path: Path) -> None:
    chip, reported, der = report_vcek("turin-v5-oak", "Turin")

    async def body(kds: FakeKds, base: str) -> None:
        key = kds.ok(REAL_TURIN_URL, der)
        async with fast_client(base, cache_dir=tmp_path) as client:
            assert await client.vcek("Turin", chip, reported) == der
        assert kds.hits[key] == 1

    run(body)


def test_concurrent_identical_requests_share_one_fetch() -> None:
    chip, reported, der = report_vcek("genoa-v5-oak", "Genoa")

    async def body(kds: FakeKds, base: str) -> None:
        key = kds.ok(vcek_url_path("Genoa", chip, reported), der)
        async with fast_client(base) as client:
            got = await asyncio.gather(*(client.vcek("Genoa", chip, reported) for _ in range(5)))
        assert got == [der] * 5
        assert kds.hits[key] == 1

    run(body)


@pytest.mark.parametrize("product", ["Milan", "Genoa", "Turin"])
@pytest.mark.parametrize("kind", ["VCEK", "VLEK"])
def test_cert_chain(tmp_path: Path, product: str, kind: str) -> None:
    pem = chain_pem(product, kind)
    expected = [c.der for c in load_certificates(pem)]

    async def body(kds: FakeKds, base: str) -> None:
        key = kds.ok(f"/{kind.lower()}/v1/{product}/cert_chain", pem)
        async with fast_client(base, cache_dir=tmp_path) as client:
            assert await client.cert_chain(product, kind) == expected
            assert await client.cert_chain(product, kind) == expected
        assert kds.hits[key] == 1

    run(body)

    async def offline() -> list[bytes]:
        async with KdsClient("http://127.0.0.1:9", cache_dir=tmp_path, offline=True) as client:
            return await client.cert_chain(product, kind)

    assert asyncio.run(offline()) == expected


def test_offline_hit_and_miss(tmp_path: Path) -> None:
    chip, reported, der = report_vcek("milan-v3-oak", "Milan")

    async def body(kds: FakeKds, base: str) -> None:
        kds.ok(vcek_url_path("Milan", chip, reported), der)
        async with fast_client(base, cache_dir=tmp_path) as client:
            await client.vcek("Milan", chip, reported)
        before = kds.total
        async with KdsClient(base, cache_dir=tmp_path, offline=True) as client:
            assert await client.vcek("Milan", chip, reported) == der
            with pytest.raises(CollateralUnavailable,
                               match="not in the KDS cache and offline mode is on"):
                await client.cert_chain("Milan")
            other = tcb(reported.bl, reported.tee, reported.snp, reported.ucode + 1)
            with pytest.raises(CollateralUnavailable, match="offline mode is on"):
                await client.vcek("Milan", chip, other)
        async with KdsClient(base, offline=True) as client:  # no cache at all
            with pytest.raises(CollateralUnavailable, match="offline mode is on"):
                await client.crl("Milan")
        assert kds.total == before

    run(body)


# -- HTTP errors and retries -----------------------------------------------------------------

def test_404_fails_at_once_naming_the_url() -> None:
    async def body(kds: FakeKds, base: str) -> None:
        key = kds.add("/vcek/v1/Milan/cert_chain", (404, b"no", {}))
        async with fast_client(base) as client:
            with pytest.raises(CollateralUnavailable, match=re.escape(f"{base}/vcek/v1/Milan/cert_chain")):
                await client.cert_chain("Milan")
        assert kds.hits[key] == 1

    run(body)


def test_other_4xx_is_not_retried() -> None:
    async def body(kds: FakeKds, base: str) -> None:
        key = kds.add("/vcek/v1/Genoa/crl", (403, b"forbidden", {}))
        async with fast_client(base) as client:
            with pytest.raises(CollateralUnavailable, match="403"):
                await client.crl("Genoa")
        assert kds.hits[key] == 1

    run(body)


def test_503_then_200_succeeds_after_retry(tmp_path: Path) -> None:
    pem = chain_pem("Milan")

    async def body(kds: FakeKds, base: str) -> None:
        key = kds.add("/vcek/v1/Milan/cert_chain", (503, b"busy", {}), (200, pem, {}))
        async with fast_client(base, cache_dir=tmp_path) as client:
            assert len(await client.cert_chain("Milan")) == 2
        assert kds.hits[key] == 2

    run(body)


def test_429_honours_retry_after() -> None:
    pem = chain_pem("Turin")

    async def body(kds: FakeKds, base: str) -> None:
        key = kds.add("/vcek/v1/Turin/cert_chain", (429, b"slow down", {"Retry-After": "0"}),
                      (200, pem, {}))
        # With backoff 30 s, only honouring Retry-After: 0 finishes inside wait_for.
        async with KdsClient(base, retries=2, backoff=30.0) as client:
            chain = await asyncio.wait_for(client.cert_chain("Turin"), timeout=3)
        assert len(chain) == 2
        assert kds.hits[key] == 2

    run(body)


def test_exhausted_retries(tmp_path: Path) -> None:
    async def body(kds: FakeKds, base: str) -> None:
        key = kds.add("/vlek/v1/Milan/crl", (503, b"busy", {}))
        async with KdsClient(base, cache_dir=tmp_path, retries=2, backoff=0.01) as client:
            with pytest.raises(CollateralUnavailable, match=r"after 3 attempts .*HTTP 503"):
                await client.crl("Milan", "VLEK")
        assert kds.hits[key] == 3
        assert cache_files(tmp_path) == []

    run(body)


def test_connection_errors_are_retried_then_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the client connects

    async def body() -> None:
        async with KdsClient(f"http://127.0.0.1:{port}", retries=1, backoff=0.01) as client:
            with pytest.raises(CollateralUnavailable, match="after 2 attempts"):
                await client.cert_chain("Milan")

    asyncio.run(body())


def test_provided_session_is_left_open() -> None:
    pem = chain_pem("Genoa")

    async def body(kds: FakeKds, base: str) -> None:
        kds.ok("/vcek/v1/Genoa/cert_chain", pem)
        async with aiohttp.ClientSession() as session:
            async with fast_client(base, session=session) as client:
                await client.cert_chain("Genoa")
            assert not session.closed

    run(body)


# -- bad bodies are never cached -------------------------------------------------------------

def test_garbage_vcek_is_refused_and_not_cached(tmp_path: Path) -> None:
    chip, reported, _ = report_vcek("milan-v2-gsg", "Milan")

    async def body(kds: FakeKds, base: str) -> None:
        key = kds.ok(vcek_url_path("Milan", chip, reported), b"<html>maintenance</html>")
        async with fast_client(base, cache_dir=tmp_path) as client:
            for _ in range(2):
                with pytest.raises(MalformedEvidence, match="VCEK"):
                    await client.vcek("Milan", chip, reported)
        assert kds.hits[key] == 2  # nothing was remembered either

    run(body)
    assert cache_files(tmp_path) == []


def test_wrong_certificate_as_vcek_is_refused(tmp_path: Path) -> None:
    chip, reported, der = report_vcek("milan-v2-gsg", "Milan")
    ask_der = load_certificates(chain_pem("Milan"))[0].der
    other_tcb = tcb(reported.bl, reported.tee, reported.snp + 1, reported.ucode)
    other_chip = bytes([chip[0] ^ 1]) + chip[1:]

    async def body(kds: FakeKds, base: str) -> None:
        kds.ok(vcek_url_path("Milan", chip, reported), ask_der)
        kds.ok(vcek_url_path("Milan", chip, other_tcb), der)
        kds.ok(vcek_url_path("Milan", other_chip, reported), der)
        async with fast_client(base, cache_dir=tmp_path) as client:
            with pytest.raises(MalformedEvidence, match="SEV-VCEK"):
                await client.vcek("Milan", chip, reported)
            with pytest.raises(MalformedEvidence, match="SPLs"):
                await client.vcek("Milan", chip, other_tcb)
            with pytest.raises(MalformedEvidence, match="another chip"):
                await client.vcek("Milan", other_chip, reported)

    run(body)
    assert cache_files(tmp_path) == []


def test_bad_chains_are_refused_and_not_cached(tmp_path: Path) -> None:
    milan = load_certificates(chain_pem("Milan"))
    pem = chain_pem("Milan")
    first_block = pem[:pem.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----\n")]
    swapped = pem[len(first_block):] + first_block

    async def body(kds: FakeKds, base: str) -> None:
        kds.ok("/vcek/v1/Milan/cert_chain", first_block)
        kds.ok("/vlek/v1/Milan/cert_chain", swapped)
        kds.ok("/vcek/v1/Genoa/cert_chain", pem)  # Milan's chain under Genoa
        kds.ok("/vlek/v1/Turin/cert_chain", milan[0].der)  # DER, not a PEM bundle
        async with fast_client(base, cache_dir=tmp_path) as client:
            with pytest.raises(MalformedEvidence, match="1 certificate"):
                await client.cert_chain("Milan")
            with pytest.raises(MalformedEvidence, match="SEV-VLEK-Milan"):
                await client.cert_chain("Milan", "VLEK")
            with pytest.raises(MalformedEvidence, match="SEV-Genoa"):
                await client.cert_chain("Genoa")
            with pytest.raises(MalformedEvidence, match="PEM"):
                await client.cert_chain("Turin", "VLEK")

    run(body)
    assert cache_files(tmp_path) == []


def test_garbage_crl_is_refused() -> None:
    async def body(kds: FakeKds, base: str) -> None:
        kds.ok("/vcek/v1/Milan/crl", b"\x30\x03\x02\x01\x00")
        async with fast_client(base) as client:
            with pytest.raises(MalformedEvidence, match="CRL"):
                await client.crl("Milan")

    run(body)


def test_damaged_cache_file_is_a_miss(tmp_path: Path) -> None:
    pem = chain_pem("Milan")

    async def body(kds: FakeKds, base: str) -> None:
        key = kds.ok("/vcek/v1/Milan/cert_chain", pem)
        async with fast_client(base, cache_dir=tmp_path) as client:
            await client.cert_chain("Milan")
        [file] = cache_files(tmp_path)
        file.write_bytes(b"truncated")
        async with fast_client(base, cache_dir=tmp_path) as client:
            assert len(await client.cert_chain("Milan")) == 2
        assert kds.hits[key] == 2
        assert file.read_bytes() == pem

    run(body)


# -- CRLs ------------------------------------------------------------------------------------

def test_crl_cached_until_next_update(tmp_path: Path) -> None:
    fresh = make_crl(datetime.now(UTC) + timedelta(days=7))

    async def body(kds: FakeKds, base: str) -> None:
        key = kds.ok("/vcek/v1/Milan/crl", fresh)
        async with fast_client(base, cache_dir=tmp_path) as client:
            assert await client.crl("Milan") == fresh
        async with KdsClient(base, cache_dir=tmp_path, offline=True) as client:
            assert await client.crl("Milan") == fresh
        assert kds.hits[key] == 1

    run(body)


def test_expired_cached_crl_is_refetched(tmp_path: Path) -> None:
    stale = make_crl(datetime.now(UTC) - timedelta(days=1))
    fresh = make_crl(datetime.now(UTC) + timedelta(days=7))

    async def body(kds: FakeKds, base: str) -> None:
        key = kds.add("/vlek/v1/Genoa/crl", (200, stale, {}), (200, fresh, {}))
        async with fast_client(base, cache_dir=tmp_path) as client:
            assert await client.crl("Genoa", "VLEK") == stale
        # Offline, an expired CRL does not count as cached.
        async with KdsClient(base, cache_dir=tmp_path, offline=True) as client:
            with pytest.raises(CollateralUnavailable, match="offline mode is on"):
                await client.crl("Genoa", "VLEK")
        async with fast_client(base, cache_dir=tmp_path) as client:
            assert await client.crl("Genoa", "VLEK") == fresh
            assert await client.crl("Genoa", "VLEK") == fresh
        assert kds.hits[key] == 2
        assert [f.read_bytes() for f in cache_files(tmp_path)] == [fresh]

    run(body)


def test_fetches_are_logged_without_certificate_contents(caplog: pytest.LogCaptureFixture) -> None:
    pem = chain_pem("Milan")

    async def body(kds: FakeKds, base: str) -> None:
        kds.ok("/vcek/v1/Milan/cert_chain", pem)
        async with fast_client(base) as client:
            await client.cert_chain("Milan")

    with caplog.at_level(logging.DEBUG, logger="kbs.kds"):
        kds = run(body)
    records: list[Any] = [r for r in caplog.records if r.name == "kbs.kds"]
    text = "\n".join(r.getMessage() for r in records)
    assert f"{kds.base}/vcek/v1/Milan/cert_chain" in text and "200" in text
    assert b"BEGIN" not in text.encode() and pem.split(b"\n")[1].decode() not in text
