"""KdsClient against a local aiohttp server that serves the real AMD certificates.

No test touches the internet: a fake KDS listens on 127.0.0.1 on an ephemeral port.
Vectors are read in place from $KBS_VECTORS (default ../shared/vectors next to the repo).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
from kbs.evidence.snp.report import TcbVersion, parse_report
from kbs.trust.amd.kds import (
    DEFAULT_BURST,
    DEFAULT_RETRY_AFTER,
    MAX_RETRY_AFTER,
    MIN_RETRY_AFTER,
    KdsClient,
    vcek_url_path,
)
from kbs.trust.x509 import load_certificates
from tests import fake_http
from tests.fake_http import Reply, scripted

REPO = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get("KBS_VECTORS", REPO.parent / "shared" / "vectors"))
SNP = VECTORS / "snp"
REAL_TURIN_URL = "/vcek/v1/Turin/3b42092f69c656d3?ucodeSPL=71&snpSPL=2&teeSPL=0&blSPL=1&fmcSPL=0"

Key = tuple[str, tuple[tuple[str, str], ...]]


def snp_dir() -> Path:
    if not SNP.is_dir():
        pytest.skip(f"SNP vectors not found at {SNP} (set KBS_VECTORS to the shared vectors directory)")
    return SNP


def url_key(path_and_query: str) -> Key:
    """A URL's path and its query parameters, independent of their order."""
    url = URL(path_and_query)
    return url.path, tuple(sorted(url.query.items()))


class FakeClock:
    """A monotonic clock a test moves by hand (KdsClient(clock=...))."""

    def __init__(self) -> None:
        self.start = self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    @property
    def elapsed(self) -> float:
        return self.now - self.start


class FakeKds:
    """Serves scripted replies per URL (query order ignored) and counts requests.

    Unknown URLs answer 404; `delay` holds every answer back that long (in-flight tests)."""

    def __init__(self) -> None:
        self.routes: dict[Key, list[Reply]] = {}
        self.hits: Counter[Key] = Counter()
        self.base = ""
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0

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
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return scripted(self.routes.get(key))


@contextlib.asynccontextmanager
async def serve(kds: FakeKds) -> AsyncIterator[str]:
    async with fake_http.serve(kds.handle, "GET") as base:
        kds.base = base
        yield base


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
    """The artefact files of the KDS cache (kbs.trust.cachedir: <cache>/kds/<name> beside <name>.meta.json),
    temporary files included; anything else in <cache> fails the test."""
    if not cache.exists():
        return []
    assert {p.name for p in cache.iterdir()} <= {"kds"}, sorted(cache.iterdir())
    folder = cache / "kds"
    if not folder.exists():
        return []
    files = sorted(p for p in folder.iterdir() if not p.name.endswith(".meta.json"))
    assert {p.name + ".meta.json" for p in files if not p.name.startswith(".")} == \
        {p.name for p in folder.iterdir() if p.name.endswith(".meta.json")}
    return files


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


def test_429_is_not_retried_and_retry_after_stops_every_request() -> None:
    pem = chain_pem("Turin")
    clock = FakeClock()

    async def body(kds: FakeKds, base: str) -> None:
        throttled = kds.add("/vcek/v1/Turin/cert_chain", (429, b"slow down", {"Retry-After": "5"}), (200, pem, {}))
        other = kds.ok("/vcek/v1/Milan/cert_chain", chain_pem("Milan"))
        async with KdsClient(base, retries=3, backoff=0.01, clock=clock) as client:
            with pytest.raises(CollateralUnavailable, match=r"429 Too Many Requests .*Retry-After '5'") as info:
                await client.cert_chain("Turin")
            assert info.value.check == "kds.throttled"
            assert kds.hits[throttled] == 1  # no retry loop
            # Until Retry-After has passed nothing goes to KDS, for any URL, and each refusal says until when.
            while clock.elapsed < 4.8:
                clock.advance(0.2)
                for product in ("Turin", "Milan"):
                    with pytest.raises(CollateralUnavailable, match=r"no request is sent to it before "
                                                                    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in ") as info:
                        await client.cert_chain(product)
                    assert info.value.check == "kds.throttled"
            assert kds.total == 1
            clock.advance(0.3)  # 5.1 s after the 429
            assert len(await client.cert_chain("Milan")) == 2
            assert len(await client.cert_chain("Turin")) == 2
        assert kds.hits[throttled] == 2 and kds.hits[other] == 1

    run(body)


def test_429_retry_after_on_the_real_clock() -> None:
    pem = chain_pem("Genoa")

    async def body(kds: FakeKds, base: str) -> None:
        key = kds.add("/vcek/v1/Genoa/cert_chain", (429, b"", {"Retry-After": "1"}), (200, pem, {}))
        async with fast_client(base) as client:
            with pytest.raises(CollateralUnavailable, match="429"):
                await client.cert_chain("Genoa")
            with pytest.raises(CollateralUnavailable, match="no request is sent to it before"):
                await client.cert_chain("Genoa")
            await asyncio.sleep(1.1)
            assert len(await client.cert_chain("Genoa")) == 2
        assert kds.hits[key] == 2

    run(body)


@pytest.mark.parametrize(("header", "seconds"), [(None, DEFAULT_RETRY_AFTER), ("0", MIN_RETRY_AFTER),
                                                 ("86400", MAX_RETRY_AFTER), ("soon", DEFAULT_RETRY_AFTER)])
def test_429_window_is_clamped(header: str | None, seconds: float) -> None:
    clock = FakeClock()

    async def body(kds: FakeKds, base: str) -> None:
        kds.add("/vcek/v1/Milan/crl", (429, b"", {"Retry-After": header} if header is not None else {}))
        async with KdsClient(base, clock=clock) as client:
            with pytest.raises(CollateralUnavailable, match="429"):
                await client.crl("Milan")
            clock.advance(seconds - 0.05)
            with pytest.raises(CollateralUnavailable, match="no request is sent"):
                await client.crl("Milan")
            clock.advance(0.1)
            with pytest.raises(CollateralUnavailable, match="429"):
                await client.crl("Milan")  # asked again: the window is over
        assert kds.total == 2

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
    clock = FakeClock()

    async def body(kds: FakeKds, base: str) -> None:
        key = kds.ok(vcek_url_path("Milan", chip, reported), b"<html>maintenance</html>")
        async with KdsClient(base, cache_dir=tmp_path, clock=clock, transient_ttl=60) as client:
            for _ in range(2):
                with pytest.raises(MalformedEvidence, match="VCEK") as info:
                    await client.vcek("Milan", chip, reported)
                assert info.value.check == "kds.vcek"
            assert kds.hits[key] == 1  # the failure is remembered briefly (a transient failure) ...
            clock.advance(61)
            with pytest.raises(MalformedEvidence, match="VCEK"):
                await client.vcek("Milan", chip, reported)
        assert kds.hits[key] == 2  # ... but the answer itself never is

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


def test_cache_of_the_earlier_flat_layout_is_still_read(tmp_path: Path) -> None:
    """Caches written before kbs.trust.cachedir (one file per URL path, directly in the directory) keep
    working offline after an upgrade, and their entries move into the current layout."""
    pem = chain_pem("Genoa")
    path = "/vcek/v1/Genoa/cert_chain"
    (tmp_path / f"vcek_v1_Genoa_cert_chain.{hashlib.sha256(path.encode()).hexdigest()[:32]}").write_bytes(pem)

    async def offline() -> list[bytes]:
        async with KdsClient("http://127.0.0.1:9", cache_dir=tmp_path, offline=True) as client:
            return await client.cert_chain("Genoa")

    assert asyncio.run(offline()) == [c.der for c in load_certificates(pem)]
    assert [f.read_bytes() for f in (tmp_path / "kds").iterdir() if not f.name.endswith(".meta.json")] == [pem]


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


# -- floods: remembered failures, the request limit, the in-flight bound ----------------------

def random_chip() -> bytes:
    return b"\x01" + os.urandom(63)  # never masked (all zero)


MILAN_TCB = tcb(2, 0, 5, 68)


async def outcomes(calls: Sequence[Awaitable[object]]) -> Counter[str]:
    """How each concurrent call ended: 'ok' or the check label of its CollateralUnavailable."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    seen: Counter[str] = Counter()
    for result in results:
        if isinstance(result, CollateralUnavailable):
            seen[result.check] += 1
        elif isinstance(result, BaseException):
            raise result
        else:
            seen["ok"] += 1
    return seen


def test_flood_for_one_unknown_chip_makes_one_request() -> None:
    chip = random_chip()
    clock = FakeClock()

    async def body(kds: FakeKds, base: str) -> None:
        kds.delay = 0.05  # the flood arrives while the first request is still out
        async with KdsClient(base, clock=clock, negative_ttl=600) as client:
            seen = await outcomes([client.vcek("Milan", chip, MILAN_TCB) for _ in range(200)])
            assert seen == Counter({"kds.not_found": 200})
            assert kds.total == 1
            seen = await outcomes([client.vcek("Milan", chip, MILAN_TCB) for _ in range(200)])
            assert seen == Counter({"kds.not_found": 200}) and kds.total == 1
            with pytest.raises(CollateralUnavailable, match=r"404 Not Found.*remembered: KDS is not asked"):
                await client.vcek("Milan", chip, MILAN_TCB)
            clock.advance(599)
            with pytest.raises(CollateralUnavailable, match="remembered"):
                await client.vcek("Milan", chip, MILAN_TCB)
            assert kds.total == 1
            clock.advance(2)  # past negative_ttl: KDS is asked again, once
            seen = await outcomes([client.vcek("Milan", chip, MILAN_TCB) for _ in range(50)])
            assert seen == Counter({"kds.not_found": 50}) and kds.total == 2

    run(body)


def test_flood_of_distinct_chips_is_rate_limited() -> None:
    clock = FakeClock()

    async def body(kds: FakeKds, base: str) -> None:
        async with KdsClient(base, clock=clock) as client:  # defaults: 1 request/s, burst 5
            started = time.monotonic()
            seen = await outcomes([client.vcek("Milan", random_chip(), MILAN_TCB) for _ in range(300)])
            assert time.monotonic() - started < 2  # refused at once, not queued
            assert seen == Counter({"kds.not_found": DEFAULT_BURST, "kds.rate_limited": 300 - DEFAULT_BURST})
            assert kds.total == DEFAULT_BURST
            with pytest.raises(CollateralUnavailable, match=r"limit on requests to KDS \(1/s, burst 5\) is used up, "
                                                            r"the next is allowed in 1\.0 s") as info:
                await client.vcek("Milan", random_chip(), MILAN_TCB)
            assert info.value.check == "kds.rate_limited"
            # One token a second: ten seconds later, ten more requests (not the rest of the flood).
            for _ in range(10):
                clock.advance(1.0)
                seen = await outcomes([client.vcek("Milan", random_chip(), MILAN_TCB) for _ in range(30)])
                assert seen == Counter({"kds.not_found": 1, "kds.rate_limited": 29})
            assert kds.total == DEFAULT_BURST + 10
            # The bucket holds at most `burst` tokens, however long it was idle.
            clock.advance(3600)
            seen = await outcomes([client.vcek("Milan", random_chip(), MILAN_TCB) for _ in range(30)])
            assert seen["kds.not_found"] == DEFAULT_BURST

    run(body)


def test_rate_limit_on_the_real_clock() -> None:
    async def body(kds: FakeKds, base: str) -> None:
        async with KdsClient(base, rate_per_second=4, burst=2) as client:
            started = time.monotonic()
            for _ in range(40):
                await outcomes([client.vcek("Milan", random_chip(), MILAN_TCB) for _ in range(10)])
                await asyncio.sleep(0.025)
            elapsed = time.monotonic() - started
        assert kds.total <= 2 + 4 * elapsed + 1, (kds.total, elapsed)

    run(body)


def test_in_flight_fetches_are_bounded() -> None:
    async def body(kds: FakeKds, base: str) -> None:
        kds.delay = 0.3
        async with KdsClient(base, max_in_flight=3, burst=20) as client:
            seen = await outcomes([client.vcek("Milan", random_chip(), MILAN_TCB) for _ in range(10)])
        assert seen == Counter({"kds.not_found": 3, "kds.busy": 7})
        assert kds.total == 3 and kds.max_in_flight == 3

    run(body)


def test_transient_failures_are_remembered_briefly() -> None:
    clock = FakeClock()

    async def body(kds: FakeKds, base: str) -> None:
        key = kds.add("/vcek/v1/Milan/cert_chain", (503, b"busy", {}))
        async with KdsClient(base, retries=1, backoff=0.01, clock=clock, transient_ttl=60) as client:
            seen = await outcomes([client.cert_chain("Milan") for _ in range(100)])
            assert seen == Counter({"kds.unavailable": 100})
            assert kds.hits[key] == 2  # one fetch: first attempt and one retry
            clock.advance(59)
            with pytest.raises(CollateralUnavailable, match=r"after 2 attempts .*HTTP 503.*remembered"):
                await client.cert_chain("Milan")
            assert kds.hits[key] == 2
            clock.advance(2)
            with pytest.raises(CollateralUnavailable, match="after 2 attempts"):
                await client.cert_chain("Milan")
            assert kds.hits[key] == 4

    run(body)


def test_connection_failures_are_remembered_briefly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock = FakeClock()

    async def body() -> None:
        async with KdsClient(f"http://127.0.0.1:{port}", retries=1, backoff=0.01, clock=clock) as client:
            with pytest.raises(CollateralUnavailable, match="after 2 attempts"):
                await client.crl("Turin")
            started = time.monotonic()
            with pytest.raises(CollateralUnavailable, match="remembered") as info:
                await client.crl("Turin")
            assert info.value.check == "kds.unavailable" and time.monotonic() - started < 0.05

    asyncio.run(body())


def test_retries_end_within_total_timeout() -> None:
    async def body(kds: FakeKds, base: str) -> None:
        key = kds.add("/vcek/v1/Genoa/crl", (503, b"busy", {}))
        async with KdsClient(base, retries=50, backoff=0.1, total_timeout=1.0, burst=100) as client:
            started = time.monotonic()
            with pytest.raises(CollateralUnavailable, match=r"HTTP 503; no more retries: the next would end "
                                                            r"after the 1 s allowed") as info:
                await client.crl("Genoa")
            assert time.monotonic() - started < 1.5  # total_timeout, plus the last answer's own time
        assert info.value.check == "kds.unavailable"
        assert 2 <= kds.hits[key] <= 4  # 0.1 + 0.2 + 0.4 (+ jitter): never 51

    run(body)


def test_retries_take_tokens_too() -> None:
    async def body(kds: FakeKds, base: str) -> None:
        key = kds.add("/vcek/v1/Milan/crl", (500, b"oops", {}))
        async with KdsClient(base, retries=5, backoff=0.01, rate_per_second=0.01, burst=2,
                             total_timeout=5) as client:
            with pytest.raises(CollateralUnavailable, match="the KDS request limit allows none in time"):
                await client.crl("Milan")
            with pytest.raises(CollateralUnavailable) as info:
                await client.crl("Genoa")
            assert info.value.check == "kds.rate_limited"
        assert kds.hits[key] == 2

    run(body)


def test_memory_cache_is_bounded_by_bytes() -> None:
    pems = {p: chain_pem(p) for p in ("Milan", "Genoa", "Turin")}

    async def body(kds: FakeKds, base: str) -> None:
        keys = {p: kds.ok(f"/vcek/v1/{p}/cert_chain", pem) for p, pem in pems.items()}
        # Room for about two chains (4.6 KB each), not three.
        async with KdsClient(base, memory_cache_bytes=10_000, burst=20) as client:
            for product in ("Milan", "Genoa", "Turin", "Turin", "Genoa", "Milan"):
                await client.cert_chain(product)
            assert 0 < client.fetcher.memory_bytes <= 10_000
        assert [kds.hits[keys[p]] for p in ("Milan", "Genoa", "Turin")] == [2, 1, 1]

    run(body)


def test_a_caller_that_gives_up_does_not_cancel_the_shared_fetch() -> None:
    pem = chain_pem("Milan")

    async def body(kds: FakeKds, base: str) -> None:
        kds.delay = 0.2
        key = kds.ok("/vcek/v1/Milan/cert_chain", pem)
        async with KdsClient(base) as client:
            impatient = asyncio.ensure_future(client.cert_chain("Milan"))
            patient = asyncio.ensure_future(client.cert_chain("Milan"))
            await asyncio.sleep(0.05)
            impatient.cancel()
            assert len(await patient) == 2
            assert impatient.cancelled()
        assert kds.hits[key] == 1

    run(body)


@pytest.mark.parametrize("kwargs", [{"rate_per_second": 0}, {"burst": 0}, {"max_in_flight": 0},
                                    {"total_timeout": 0}, {"negative_ttl": -1}, {"memory_cache_bytes": -1}])
def test_bad_limits_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError) as info:
        KdsClient(**kwargs)
    assert info.value.check == "kds.config"
