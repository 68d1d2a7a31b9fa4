"""The shared cached fetcher (kbs.trust.fetch) against a loopback aiohttp service.

The fake service answers GETs and POSTs from a script per (method, path, request body) and counts
requests, so every test can say how many reached it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import stat
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from aiohttp import web

from kbs.errors import CollateralUnavailable, MalformedEvidence
from kbs.trust.cachedir import CacheDir
from kbs.trust.fetch import Fetcher, Request
from tests import fake_http
from tests.fake_http import Reply, scripted

Key = tuple[str, str, str]  # method, path with query, sha256 of the request body

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def key(method: str, path: str, body: bytes = b"") -> Key:
    return method, path, hashlib.sha256(body).hexdigest()


class FakeService:
    def __init__(self) -> None:
        self.routes: dict[Key, list[Reply]] = {}
        self.hits: Counter[Key] = Counter()
        self.delay = 0.0
        self.base = ""

    def add(self, method: str, path: str, *replies: Reply, body: bytes = b"") -> Key:
        k = key(method, path, body)
        self.routes[k] = list(replies)
        return k

    @property
    def total(self) -> int:
        return sum(self.hits.values())

    async def handle(self, request: web.Request) -> web.Response:
        k = key(request.method, request.path_qs, await request.read())
        self.hits[k] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return scripted(self.routes.get(k))


@contextlib.asynccontextmanager
async def serve(service: FakeService) -> AsyncIterator[str]:
    async with fake_http.serve(service.handle) as base:
        service.base = base
        yield base


def run(test: Callable[[FakeService, str], Awaitable[None]]) -> FakeService:
    service = FakeService()

    async def main() -> None:
        async with serve(service) as base:
            await asyncio.wait_for(test(service, base), timeout=10)

    asyncio.run(main())
    return service


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed before anyone connects


class Clock:
    """Monotonic seconds and the wall clock, both moved by hand."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = T0

    def __call__(self) -> float:
        return self.mono

    def now(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)


def fetcher(base: str, cache: Path | None = None, clock: Clock | None = None, **kwargs: object) -> Fetcher:
    options: dict[str, object] = {"retries": 2, "backoff": 0.01, "burst": 50, "rate_per_second": 50.0}
    if clock is not None:
        options.update(clock=clock, now=clock.now)
    options.update(kwargs)
    return Fetcher("demo", base, label="Demo", cache_dir=cache, **options)  # type: ignore[arg-type]


def must_start_with(prefix: bytes) -> Callable[[bytes, Mapping[str, str], str], None]:
    def validate(body: bytes, headers: Mapping[str, str], where: str) -> None:
        if not body.startswith(prefix):
            raise MalformedEvidence(f"answer from {where} is not an artefact", check="demo.form")
    return validate


def artefact(path: str = "/artefact") -> Request:
    return Request(path, "artefact", "demo.artefact", must_start_with(b"ART"))


def next_update(body: bytes, headers: Mapping[str, str]) -> datetime | None:
    """Like a CRL, TCB info or OCSP response: the artefact says until when it is current."""
    return datetime.fromisoformat(json.loads(body)["nextUpdate"])


def dated(path: str = "/tcb") -> Request:
    return Request(path, "TCB info", "demo.tcb", must_start_with(b"{"), valid_until=next_update)


def dated_body(until: datetime, version: int) -> bytes:
    return json.dumps({"version": version, "nextUpdate": until.isoformat()}).encode()


def entry_files(cache: Path) -> list[Path]:
    folder = cache / "demo"
    return sorted(folder.iterdir()) if folder.exists() else []


# -- single flight ---------------------------------------------------------------------------

def test_concurrent_requests_make_one_fetch(tmp_path: Path) -> None:
    async def body(service: FakeService, base: str) -> None:
        k = service.add("GET", "/artefact", (200, b"ART one", {}))
        service.delay = 0.2  # every caller arrives while the first request is out
        async with fetcher(base, tmp_path) as f:
            got = await asyncio.gather(*(f.fetch(artefact()) for _ in range(25)))
            assert {g.body for g in got} == {b"ART one"}
            assert service.hits[k] == 1
            assert (await f.fetch(artefact())).origin == "memory"
        assert service.hits[k] == 1

    run(body)


def test_a_caller_that_is_cancelled_does_not_cancel_the_others() -> None:
    async def body(service: FakeService, base: str) -> None:
        k = service.add("GET", "/artefact", (200, b"ART", {}))
        service.delay = 0.2
        async with fetcher(base) as f:
            leaving = asyncio.ensure_future(f.fetch(artefact()))
            staying = asyncio.ensure_future(f.fetch(artefact()))
            await asyncio.sleep(0.05)
            leaving.cancel()
            assert (await staying).body == b"ART"
            assert leaving.cancelled()
        assert service.hits[k] == 1

    run(body)


# -- 429 and Retry-After ---------------------------------------------------------------------

def test_429_retry_after_is_honoured_for_every_request() -> None:
    clock = Clock()

    async def body(service: FakeService, base: str) -> None:
        k = service.add("GET", "/artefact", (429, b"", {"Retry-After": "3"}), (200, b"ART", {}))
        other = service.add("GET", "/other", (200, b"ART other", {}))
        async with fetcher(base, clock=clock) as f:
            with pytest.raises(CollateralUnavailable, match=r"429 Too Many Requests .*Retry-After '3'") as info:
                await f.fetch(artefact())
            assert info.value.check == "demo.throttled"
            assert service.hits[k] == 1  # not retried
            clock.advance(2.9)
            for path in ("/artefact", "/other"):  # the whole service is off limits, not one URL
                with pytest.raises(CollateralUnavailable, match="no request is sent to it before 2026-11-20T12:00:03Z"):
                    await f.fetch(artefact(path))
            assert service.total == 1
            clock.advance(0.2)
            assert (await f.fetch(artefact())).body == b"ART"
            assert (await f.fetch(artefact("/other"))).body == b"ART other"
        assert service.hits[k] == 2 and service.hits[other] == 1

    run(body)


def test_429_retry_after_as_an_http_date() -> None:
    clock = Clock()

    async def body(service: FakeService, base: str) -> None:
        when = format_datetime(T0 + timedelta(seconds=120), usegmt=True)
        service.add("GET", "/artefact", (429, b"", {"Retry-After": when}), (200, b"ART", {}))
        async with fetcher(base, clock=clock) as f:
            with pytest.raises(CollateralUnavailable, match="in 120 s"):
                await f.fetch(artefact())
            clock.advance(119)
            with pytest.raises(CollateralUnavailable, match="no request is sent"):
                await f.fetch(artefact())
            clock.advance(1.5)
            assert (await f.fetch(artefact())).body == b"ART"
        assert service.total == 2

    run(body)


def test_retry_after_of_a_503_sets_the_retry_delay() -> None:
    async def body(service: FakeService, base: str) -> None:
        k = service.add("GET", "/artefact", (503, b"", {"Retry-After": "1"}), (200, b"ART", {}))
        async with fetcher(base, backoff=0.0) as f:
            started = time.monotonic()
            assert (await f.fetch(artefact())).body == b"ART"
            assert time.monotonic() - started >= 0.95  # waited as told, not the zero backoff
        assert service.hits[k] == 2

    run(body)


# -- disk cache ------------------------------------------------------------------------------

def test_disk_cache_survives_a_restart_without_the_network(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    chain = "-----BEGIN%20CERTIFICATE-----%0A..."
    request = Request("/tcb?fmspc=00906ED50000", "TCB info", "demo.tcb", must_start_with(b"ART"),
                      keep_headers=("TCB-Info-Issuer-Chain",))

    async def body(service: FakeService, base: str) -> None:
        service.add("GET", "/tcb?fmspc=00906ED50000", (200, b"ART tcb", {"TCB-Info-Issuer-Chain": chain}))
        async with fetcher(base, cache) as f:
            got = await f.fetch(request)
            assert got.origin == "network" and got.source == f"{base}/tcb?fmspc=00906ED50000"
        assert service.total == 1

    run(body)

    async def restarted() -> None:  # a new process: empty memory, and no service to ask
        async with fetcher(dead_url(), cache, retries=0) as f:
            got = await f.fetch(request)
            assert got.origin == "disk" and got.body == b"ART tcb"
            assert got.headers == {"TCB-Info-Issuer-Chain": chain}
            with pytest.raises(CollateralUnavailable, match="after 1 attempt"):
                await f.fetch(artefact("/not-cached"))  # proof that the network really is gone

    asyncio.run(restarted())
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE((cache / "demo").stat().st_mode) == 0o700
    files = entry_files(cache)
    assert len(files) == 2 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert files[0].read_bytes() == b"ART tcb"


def test_offline_mode_refuses_naming_the_cache_path(tmp_path: Path) -> None:
    async def body(service: FakeService, base: str) -> None:
        service.add("GET", "/artefact", (200, b"ART", {}))
        async with fetcher(base, tmp_path / "offline-cache", offline=True) as f:
            with pytest.raises(CollateralUnavailable) as info:
                await f.fetch(artefact())
        assert info.value.check == "demo.offline"
        assert f"cache directory: {tmp_path / 'offline-cache'}" in str(info.value)
        assert "not in the Demo cache and offline mode is on" in str(info.value)
        async with fetcher(base, offline=True) as f:
            with pytest.raises(CollateralUnavailable, match="no cache directory is configured"):
                await f.fetch(artefact())
        assert service.total == 0

    run(body)


def test_answers_are_validated_before_anything_is_cached(tmp_path: Path) -> None:
    clock = Clock()

    async def body(service: FakeService, base: str) -> None:
        k = service.add("GET", "/artefact", (200, b"<html>maintenance</html>", {}), (200, b"ART", {}))
        async with fetcher(base, tmp_path, clock=clock, transient_ttl=30) as f:
            with pytest.raises(MalformedEvidence, match="not an artefact"):
                await f.fetch(artefact())
            assert entry_files(tmp_path) == [] and f.memory_bytes == 0
            with pytest.raises(MalformedEvidence, match="remembered"):  # a transient failure, remembered
                await f.fetch(artefact())
            assert service.hits[k] == 1
            clock.advance(31)
            assert (await f.fetch(artefact())).body == b"ART"
        assert service.hits[k] == 2 and len(entry_files(tmp_path)) == 2

    run(body)


def test_a_damaged_disk_entry_is_a_miss(tmp_path: Path) -> None:
    async def body(service: FakeService, base: str) -> None:
        k = service.add("GET", "/artefact", (200, b"ART good", {}))
        async with fetcher(base, tmp_path) as f:
            await f.fetch(artefact())
        body_file = entry_files(tmp_path)[0]
        body_file.write_bytes(b"ART evil")  # passes the form check, not the recorded SHA-256
        async with fetcher(base, tmp_path) as f:
            assert (await f.fetch(artefact())).body == b"ART good"
        assert service.hits[k] == 2 and body_file.read_bytes() == b"ART good"

    run(body)


# -- freshness from the artefact's own dates -------------------------------------------------

def test_expired_artefact_is_refetched_and_refused_offline(tmp_path: Path) -> None:
    clock = Clock()
    first, second = T0 + timedelta(hours=1), T0 + timedelta(days=30)

    async def body(service: FakeService, base: str) -> None:
        k = service.add("GET", "/tcb", (200, dated_body(first, 1), {}), (200, dated_body(second, 2), {}))
        async with fetcher(base, tmp_path, clock=clock) as f:
            got = await f.fetch(dated())
            assert got.valid_until == first and got.origin == "network"
            assert (await f.fetch(dated())).origin == "memory"
        async with fetcher(base, tmp_path, clock=clock) as f:
            assert (await f.fetch(dated())).origin == "disk"  # still current: from disk
        assert service.hits[k] == 1
        clock.advance(3601)  # past the first copy's nextUpdate
        async with fetcher(base, tmp_path, clock=clock, offline=True) as f:
            with pytest.raises(CollateralUnavailable) as info:
                await f.fetch(dated())
            assert info.value.check == "demo.offline"
            assert "the cached copy expired at 2026-11-20T13:00:00Z" in str(info.value)
            assert str(tmp_path) in str(info.value)
        async with fetcher(base, tmp_path, clock=clock) as f:
            got = await f.fetch(dated())
            assert json.loads(got.body)["version"] == 2 and got.valid_until == second
        assert service.hits[k] == 2
        async with fetcher(base, tmp_path, clock=clock, offline=True) as f:
            assert json.loads((await f.fetch(dated())).body)["version"] == 2  # the fresh copy replaced it

    run(body)


def test_immutable_artefacts_never_expire_and_dateless_ones_are_not_cached(tmp_path: Path) -> None:
    clock = Clock()
    no_date = Request("/nodate", "undated", "demo.undated", must_start_with(b"ART"),
                      valid_until=lambda body, headers: None)

    async def body(service: FakeService, base: str) -> None:
        service.add("GET", "/artefact", (200, b"ART", {}))
        nodate = service.add("GET", "/nodate", (200, b"ART undated", {}))
        async with fetcher(base, tmp_path, clock=clock) as f:
            await f.fetch(artefact())
            await f.fetch(no_date)
            await f.fetch(no_date)
        assert service.hits[nodate] == 2  # an expiring artefact without a date is good for one answer only
        clock.advance(10 * 365 * 86400)
        async with fetcher(base, tmp_path, clock=clock, offline=True) as f:
            assert (await f.fetch(artefact())).origin == "disk"

    run(body)


# -- headers, POST ---------------------------------------------------------------------------

def test_kept_headers_are_returned_validated_and_cached(tmp_path: Path) -> None:
    def needs_chain(body: bytes, headers: Mapping[str, str], where: str) -> None:
        if "SGX-PCK-CRL-Issuer-Chain" not in headers:
            raise MalformedEvidence(f"{where} sent no issuer chain", check="demo.headers")

    request = Request("/pckcrl?ca=platform&encoding=der", "PCK CRL", "demo.crl", needs_chain,
                      keep_headers=("SGX-PCK-CRL-Issuer-Chain",))

    async def body(service: FakeService, base: str) -> None:
        k = service.add("GET", "/pckcrl?ca=platform&encoding=der",
                        (200, b"CRL", {"X-Request-Id": "1"}),
                        (200, b"CRL", {"sgx-pck-crl-issuer-chain": "chain%20pem", "X-Request-Id": "2"}))
        async with fetcher(base, tmp_path) as f:
            with pytest.raises(MalformedEvidence, match="no issuer chain"):
                await f.fetch(request)
            assert entry_files(tmp_path) == []
        async with fetcher(base, tmp_path) as f:  # a fresh fetcher: the failure above is not remembered here
            got = await f.fetch(request)
        assert got.headers == {"SGX-PCK-CRL-Issuer-Chain": "chain%20pem"}  # kept ones only, as asked
        assert service.hits[k] == 2
        meta = json.loads(next(p for p in entry_files(tmp_path) if p.name.endswith(".meta.json")).read_text())
        assert meta["headers"] == {"SGX-PCK-CRL-Issuer-Chain": "chain%20pem"} and meta["kind"] == "demo.crl"
        async with fetcher(base, tmp_path, offline=True) as f:
            assert (await f.fetch(request)).headers == {"SGX-PCK-CRL-Issuer-Chain": "chain%20pem"}

    run(body)


def test_post_bodies_are_keyed_separately(tmp_path: Path) -> None:
    def ocsp(request_body: bytes) -> Request:
        return Request("/", "OCSP response", "demo.ocsp", must_start_with(b"ART"), method="POST",
                       body=request_body, headers=(("Content-Type", "application/ocsp-request"),))

    async def body(service: FakeService, base: str) -> None:
        a = service.add("POST", "/", (200, b"ART for A", {}), body=b"request A")
        b = service.add("POST", "/", (200, b"ART for B", {}), body=b"request B")
        get = service.add("GET", "/", (200, b"ART for GET", {}))
        async with fetcher(base, tmp_path) as f:
            assert (await f.fetch(ocsp(b"request A"))).body == b"ART for A"
            assert (await f.fetch(ocsp(b"request B"))).body == b"ART for B"
            assert (await f.fetch(artefact("/"))).body == b"ART for GET"
            assert (await f.fetch(ocsp(b"request A"))).body == b"ART for A"
        assert (service.hits[a], service.hits[b], service.hits[get]) == (1, 1, 1)
        async with fetcher(base, tmp_path, offline=True) as f:
            assert (await f.fetch(ocsp(b"request B"))).body == b"ART for B"
            with pytest.raises(CollateralUnavailable, match="offline"):
                await f.fetch(ocsp(b"request C"))
        assert len(entry_files(tmp_path)) == 6

    run(body)
    assert ocsp_key_differs()


def ocsp_key_differs() -> bool:
    one = Request("/", "x", "demo.x", must_start_with(b""), method="POST", body=b"1").key
    two = Request("/", "x", "demo.x", must_start_with(b""), method="POST", body=b"2").key
    return one != two and one.stem != two.stem and one.stem.startswith("post_")


# -- the flat layout of earlier versions ------------------------------------------------------

def test_a_file_of_the_old_flat_layout_is_read_and_moved(tmp_path: Path) -> None:
    (tmp_path / "legacy-artefact").write_bytes(b"ART old")
    request = Request("/artefact", "artefact", "demo.artefact", must_start_with(b"ART"), legacy_name="legacy-artefact")

    async def body() -> None:
        async with fetcher(dead_url(), tmp_path, offline=True) as f:
            got = await f.fetch(request)
        assert got.body == b"ART old" and got.origin == "disk"
        entry = CacheDir(tmp_path).read("demo", request.key)
        assert entry is not None and entry.body == b"ART old" and entry.kind == "demo.artefact"

    asyncio.run(body())


def test_bad_configuration_is_refused() -> None:
    from kbs.errors import UsageError

    for kwargs in ({"rate_per_second": 0}, {"burst": 0}, {"token_wait": -1}, {"max_body": 0}):
        with pytest.raises(UsageError) as info:
            Fetcher("demo", "http://127.0.0.1:1", **kwargs)  # type: ignore[arg-type]
        assert info.value.check == "demo.config"
    with pytest.raises(UsageError, match="http"):
        Fetcher("demo", "ftp://example.com")
    with pytest.raises(UsageError):
        Fetcher("../etc", "http://127.0.0.1:1")
    assert os.sep not in Request("/a/../../b", "x", "demo.x", must_start_with(b"")).key.stem


# -- answers named by their path, recorded headers, network-only checks, lookups ------------------------

def test_a_post_keyed_by_its_path_is_cached_whatever_its_body(tmp_path: Path) -> None:
    """An OCSP request carries a new nonce each time: cached under the CertID its path spells."""
    seen: list[str] = []

    def fresh_only(body: bytes, headers: Mapping[str, str], where: str) -> None:
        seen.append(where)
        if body != b"ART echo":
            raise MalformedEvidence(f"answer from {where} does not echo the nonce", check="demo.nonce")

    def request(nonce: bytes) -> Request:
        return Request("/certid/abc", "OCSP response", "demo.ocsp", must_start_with(b"ART"), method="POST",
                       body=nonce, keyed_by_path=True, url=None, recorded_headers=(("X-Chain", "a b"),),
                       check_network=fresh_only)

    async def body(service: FakeService, base: str) -> None:
        asked = service.add("POST", "/certid/abc", (200, b"ART echo", {"X-Chain": "from the service"}), body=b"n1")
        async with fetcher(base, tmp_path) as f:
            first = await f.fetch(request(b"n1"))
            assert first.origin == "network" and first.headers == {"X-Chain": "a b"}  # recorded wins, never sent
            assert (await f.fetch(request(b"n2"))).origin == "memory"  # another nonce, the same artefact
            assert await f.lookup(request(b"n3")) is not None
        assert service.hits[asked] == 1 and len(seen) == 1  # the network-only check ran once
        async with fetcher(base, tmp_path, offline=True) as f:
            cached = await f.fetch(request(b"n4"))
            assert cached.origin == "disk" and cached.headers == {"X-Chain": "a b"} and len(seen) == 1
        assert request(b"1").key == request(b"2").key and request(b"1").key.request_sha256 is None

    run(body)


def test_a_failed_network_only_check_is_not_cached(tmp_path: Path) -> None:
    def refuse(body: bytes, headers: Mapping[str, str], where: str) -> None:
        raise MalformedEvidence(f"answer from {where} does not echo the nonce", check="demo.nonce")

    request = Request("/certid/x", "OCSP response", "demo.ocsp", must_start_with(b"ART"), method="POST", body=b"n",
                      keyed_by_path=True, check_network=refuse)

    async def body(service: FakeService, base: str) -> None:
        service.add("POST", "/certid/x", (200, b"ART", {}), body=b"n")
        async with fetcher(base, tmp_path) as f:
            with pytest.raises(MalformedEvidence) as info:
                await f.fetch(request)
            assert info.value.check == "demo.nonce"
            assert await f.lookup(request) is None
        assert entry_files(tmp_path) == []

    run(body)


def test_lookup_never_asks(tmp_path: Path) -> None:
    async def body(service: FakeService, base: str) -> None:
        service.add("GET", "/artefact", (200, b"ART", {}))
        async with fetcher(base, tmp_path) as f:
            assert await f.lookup(artefact()) is None
            assert service.total == 0
            await f.fetch(artefact())
            hit = await f.lookup(artefact())
            assert hit is not None and hit.origin == "memory"
        async with fetcher(base, tmp_path) as f:
            hit = await f.lookup(artefact())
            assert hit is not None and hit.origin == "disk"
        assert service.total == 1

    run(body)
