"""Attacks on the trust layer through a running `kbs serve`, over HTTP on loopback.

(i) KDS amplification: forged SNP reports (unsigned, or signed by a key no VCEK certifies) for random
    chip ids and no VCEK make the broker ask KDS for a VCEK; a flood of them must cost KDS no more than
    the broker's request limit allows, each refusal must be a 401 that says why, and the broker must go
    on serving.
(ii) Certificate parsing: sixteen certificates with 3,500 empty extensions each (and, within the size
    bound, ones with 1,000) must be refused with the certificate check, cheaply: /healthz keeps
    answering while they are in flight, and the broker's memory stays bounded.

The fake KDS runs in a thread of this process (tests.test_kds.FakeKds): it answers 404 for every VCEK,
as AMD does for a chip it never made, and counts requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from kbs.evidence.binding import primary_runtime_digest
from kbs.evidence.snp.coco import report_to_coco
from kbs.keys.jwe import TeeKey, generate_tee_key
from kbs.trust.amd.kds import DEFAULT_BURST, DEFAULT_RATE_PER_SECOND
from kbs.trust.x509 import MAX_CERTIFICATE_SIZE
from tests.amd_synth import (
    SyntheticAmd,
    build_report,
    distinct_empty_extensions,
    sign_report,
    with_extra_extensions,
)
from tests.broker import Broker, SnpGuest, attest, attestation, auth, jar, run_broker
from tests.test_kds import FakeKds, serve

# What a refused attestation may be logged as: the VCEK fetch that reached KDS (404, wrapped by
# collateral gathering), or the broker's own KDS request limit.
KDS_REFUSALS = {"collateral.vek", "kds.rate_limited", "kds.busy"}
CERTIFICATE_REFUSALS = {"certificate.size", "certificate.extensions"}


class KdsThread:
    """A FakeKds served from its own event loop in a thread, for a broker in another process."""

    def __init__(self) -> None:
        self.kds = FakeKds()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="fake-kds", daemon=True)

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self.kds):
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> KdsThread:
        self._thread.start()
        assert self._ready.wait(10), "fake KDS did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return self.kds.base

    @property
    def requests(self) -> int:
        return self.kds.total


@pytest.fixture
def kds() -> Iterator[KdsThread]:
    with KdsThread() as thread:
        yield thread


@pytest.fixture
def broker(tmp_path: Path, pki: SyntheticAmd, kds: KdsThread) -> Iterator[Broker]:
    (tmp_path / "ark.pem").write_bytes(pki.ark_pem)
    config = (f'[verifiers.snp]\ntrust_roots = ["{tmp_path / "ark.pem"}"]\n'
              f'kds_url = "{kds.url}"\noffline = false\ncache_dir = "{tmp_path / "kds"}"\n')
    with run_broker(tmp_path, config) as b:
        yield b


# -- helpers -----------------------------------------------------------------------------------

def rss_bytes(broker: Broker) -> int:
    """The broker process's resident set (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{broker.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/<pid>/status")


async def _log_page(http: aiohttp.ClientSession, broker: Broker, after: int) -> list[dict[str, Any]]:
    # Refusals before a token exists are in the "refusal" chain (a broker with one log ignores the parameter).
    async with http.get(f"{broker.url}/kbs/v0/admin/release-log?chain=refusal&after={after}&limit=1000",
                        headers=broker.admin_headers()) as r:
        assert r.status == 200, await r.text()
        page: list[dict[str, Any]] = await r.json()
        return page


async def refusals_since(broker: Broker, after: int) -> list[dict[str, Any]]:
    """Logged refusals of /attest calls after sequence number `after`."""
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        while page := await _log_page(http, broker, after):
            out += [e for e in page if e["resource"] == "(attest)" and e["decision"] == "deny"]
            after = max(int(e["seq"]) for e in page)
    return out


async def last_seq(broker: Broker) -> int:
    seq = 0
    async with aiohttp.ClientSession() as http:
        while page := await _log_page(http, broker, seq):
            seq = max(int(e["seq"]) for e in page)
    return seq


def check_refusal(status: int, body: dict[str, Any], allowed: set[str]) -> None:
    """A 401 in Trustee's error shape; where the detail names the check, it must be an allowed one."""
    assert status == 401, body
    assert body.get("type", "").endswith("/AttestationError"), body
    detail = str(body.get("detail", ""))
    if detail.startswith("Attestation error: "):  # bodies may become generic (a reference only)
        label = detail.removeprefix("Attestation error: ").split(":", 1)[0]
        assert label in allowed, body


def forged_evidence(nonce: str, key: TeeKey, pki: SyntheticAmd, index: int) -> dict[str, Any]:
    """SNP evidence for a random chip, bound to this nonce and key, that no VCEK can verify: unsigned
    (v3) or signed by a fresh key (v2, so two products are candidates).  No VCEK is sent, only the
    ASK and ARK for half of them."""
    digest = primary_runtime_digest(nonce, key.jwk, "")
    chip = b"\x01" + os.urandom(63)
    if index % 2:
        report = bytes(build_report(chip_id=chip, report_data=digest + bytes(16)))
    else:
        report = sign_report(build_report(version=2, cpuid=None, chip_id=chip, report_data=digest + bytes(16)),
                             ec.generate_private_key(ec.SECP384R1()))
    certs = [("ASK", pki.ask_der), ("ARK", pki.ark_der)] if index % 4 < 2 else []
    return report_to_coco(report, certs, family="Milan")


def attest_body(nonce: str, key: TeeKey, evidence: dict[str, Any], cert_chain_json: str | None = None) -> str:
    """The /attest body; `cert_chain_json`, if given, replaces the evidence's (null) cert_chain verbatim."""
    body = json.dumps({"init-data": None, "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk},
                       "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""}},
                      separators=(",", ":"))
    if cert_chain_json is not None:
        assert body.count('"cert_chain":null') == 1
        body = body.replace('"cert_chain":null', '"cert_chain":' + cert_chain_json)
    return body


async def post_attest(http: aiohttp.ClientSession, url: str, body: str) -> tuple[int, dict[str, Any]]:
    """The answer; an upload over the body limit may be cut off before it ends, which reads as a 413."""
    try:
        async with http.post(f"{url}/kbs/v0/attest", data=body, headers={"Content-Type": "application/json"}) as r:
            return r.status, await r.json(content_type=None)
    except aiohttp.ClientOSError:
        return 413, {"detail": "connection closed by the broker during the upload"}


class HealthProbe:
    """GET /healthz in a loop, from its own thread (so the attacking client's work does not delay it),
    while an attack runs; records each answer's status and latency."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=10) as r:
                    r.read()
                    status = r.status
            except OSError:
                status = 0
            self.samples.append((status, time.perf_counter() - started))
            self._stop.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    @property
    def worst(self) -> float:
        return max(latency for _, latency in self.samples)


async def legitimate_guest_attests(broker: Broker, guest: SnpGuest) -> None:
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        nonce = await auth(http, broker.url, "snp")
        status, body = await attest(http, broker.url, attestation(nonce, generate_tee_key("EC-P256"), "snp", guest))
        assert status == 200 and "token" in body, body


# -- (i) KDS amplification ---------------------------------------------------------------------

ATTACKS = 120
CONCURRENCY = 12


def test_forged_reports_for_random_chips_cost_kds_only_the_rate_limit(broker: Broker, kds: KdsThread,
                                                                        pki: SyntheticAmd) -> None:
    key = generate_tee_key("EC-P256")

    async def one(index: int, http: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        nonce = await auth(http, broker.url, "snp")
        return await post_attest(http, broker.url, attest_body(nonce, key, forged_evidence(nonce, key, pki, index)))

    async def attack() -> tuple[list[tuple[int, dict[str, Any]]], float]:
        queue = list(range(ATTACKS))
        results: list[tuple[int, dict[str, Any]]] = []

        async def worker() -> None:
            async with aiohttp.ClientSession(cookie_jar=jar()) as http:
                while queue:
                    results.append(await one(queue.pop(), http))

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return results, time.monotonic() - started

    seq = asyncio.run(last_seq(broker))
    before = kds.requests
    with HealthProbe(broker.url) as probe:
        results, elapsed = asyncio.run(attack())
    fetched = kds.requests - before

    # KDS saw at most what the token bucket allows over the attack (a full bucket, then the rate).
    allowed = DEFAULT_BURST + DEFAULT_RATE_PER_SECOND * elapsed + 1
    assert fetched <= allowed, f"{fetched} KDS requests in {elapsed:.1f} s, at most {allowed:.0f} allowed"
    assert fetched >= 1  # the attack did reach the VCEK fetch
    assert all("/vcek/v1/" in path for path, _ in kds.kds.hits)

    # Every exchange was refused with a 401 that says why; the release log names each check.
    assert len(results) == ATTACKS
    for status, body in results:
        check_refusal(status, body, KDS_REFUSALS)
    reasons = Counter(e["reason"] for e in asyncio.run(refusals_since(broker, seq)))
    assert sum(reasons.values()) == ATTACKS and set(reasons) <= KDS_REFUSALS, reasons
    assert reasons["kds.rate_limited"] >= ATTACKS - allowed, reasons
    assert "kds.rate_limited" in broker.log()

    # The broker kept serving: health answered throughout, and a real guest still gets a token.
    assert probe.samples and all(status == 200 for status, _ in probe.samples)
    assert probe.worst < 1.0, f"/healthz took {probe.worst:.2f} s during the attack"
    asyncio.run(legitimate_guest_attests(broker, SnpGuest(pki)))
    assert kds.requests - before == fetched  # the guest sent its VCEK: no fetch


def test_same_forged_chip_flood_costs_one_kds_request(broker: Broker, kds: KdsThread, pki: SyntheticAmd) -> None:
    key = generate_tee_key("EC-P256")
    chip = b"\x02" + os.urandom(63)

    async def one() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            nonce = await auth(http, broker.url, "snp")
            digest = primary_runtime_digest(nonce, key.jwk, "")
            report = bytes(build_report(chip_id=chip, report_data=digest + bytes(16)))
            return await post_attest(http, broker.url, attest_body(nonce, key, report_to_coco(report)))

    async def flood() -> list[tuple[int, dict[str, Any]]]:
        return list(await asyncio.gather(*(one() for _ in range(40))))

    before = kds.requests
    for status, body in asyncio.run(flood()):
        check_refusal(status, body, {"collateral.vek"})
        if str(body.get("detail", "")).startswith("Attestation error: "):
            assert "404 Not Found" in body["detail"], body
    assert kds.requests - before == 1  # one 404, remembered for every later request


# -- (ii) certificates with thousands of extensions ---------------------------------------------

def test_certificates_with_thousands_of_extensions_are_refused_cheaply(broker: Broker, kds: KdsThread,
                                                                        pki: SyntheticAmd) -> None:
    guest = SnpGuest(pki)
    base = guest.vek.der
    # Empty extensions with distinct OIDs, so that nothing short of decoding them all finds fault.
    # "review": the review's payload, sixteen certificates of 3,500 extensions (~36 KB each, 1.3 MB of
    # JSON): the broker's body and JSON limits may refuse it before any certificate is looked at.
    # "size" and "extensions" fit those limits, so the certificate checks are what refuse them:
    # two certificates of 3,500 extensions (over the size bound), sixteen of 400 (within it).
    huge = with_extra_extensions(base, 1, distinct_empty_extensions(3500))
    many = with_extra_extensions(base, 1, distinct_empty_extensions(400))
    assert len(huge) > MAX_CERTIFICATE_SIZE > len(many)
    payloads = {"review": (huge, 16), "size": (huge, 2), "extensions": (many, 16)}
    # Every certificate sent is different (its last two signature bytes count up), as an attacker would
    # make them, so no cache of parsed certificates helps; their JSON is spliced from a prefix made once.
    prefixes = {der: ",".join(map(str, der[:-2])) for der in (huge, many)}
    serial = iter(range(1 << 16))

    def certificates_json(der: bytes, count: int) -> str:
        entries = []
        for i in range(count):
            n = next(serial)
            kind = ("VCEK", "ASK", "ARK", "VLEK")[i % 4]
            entries.append(f'{{"cert_type":"{kind}","data":[{prefixes[der]},{n >> 8},{n & 0xFF}]}}')
        return "[" + ",".join(entries) + "]"

    kinds = list(payloads) * 8
    in_flight = 4  # hostile attestations at once

    async def one(http: aiohttp.ClientSession, kind: str) -> tuple[str, int, dict[str, Any]]:
        nonce = await auth(http, broker.url, "snp")
        key = generate_tee_key("EC-P256")
        evidence = guest.evidence(primary_runtime_digest(nonce, key.jwk, "") + bytes(16))
        evidence["cert_chain"] = None
        body = attest_body(nonce, key, evidence, certificates_json(*payloads[kind]))
        return (kind, *await post_attest(http, broker.url, body))

    async def attack() -> list[tuple[str, int, dict[str, Any]]]:
        queue = list(kinds)
        results: list[tuple[str, int, dict[str, Any]]] = []

        async def worker() -> None:
            # One connection per request: a refused upload leaves its connection closed under the pool.
            async with aiohttp.ClientSession(cookie_jar=jar(), connector=aiohttp.TCPConnector(force_close=True)) \
                    as http:
                while queue:
                    results.append(await one(http, queue.pop()))

        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return results

    seq = asyncio.run(last_seq(broker))
    rss_before = rss_bytes(broker)
    before = kds.requests
    started = time.monotonic()
    with HealthProbe(broker.url) as probe:
        time.sleep(0.1)
        results = asyncio.run(attack())
        elapsed = time.monotonic() - started
        time.sleep(0.1)
    rss_after = rss_bytes(broker)

    assert len(results) == len(kinds)
    for kind, status, body in results:
        if kind == "review":
            assert 400 <= status < 500, body  # refused, by whichever bound comes first
        else:
            check_refusal(status, body, {f"certificate.{kind}"})
    reasons = Counter(e["reason"] for e in asyncio.run(refusals_since(broker, seq)))
    assert reasons["certificate.extensions"] == kinds.count("extensions"), reasons
    assert reasons["certificate.size"] >= kinds.count("size"), reasons
    assert kds.requests == before  # refused before any collateral was fetched

    # pyasn1 took 2.5 s for each such request; the cheap checks make them cost milliseconds.
    assert elapsed < 10, f"{len(kinds)} hostile attestations took {elapsed:.1f} s"
    assert len(probe.samples) >= 3 and all(status == 200 for status, _ in probe.samples)
    assert probe.worst < 1.0, f"/healthz took {probe.worst:.2f} s while hostile certificates were in flight"
    growth = rss_after - rss_before
    assert growth < 100 * 1024 * 1024, f"broker RSS grew by {growth / 2**20:.0f} MiB"

    asyncio.run(legitimate_guest_attests(broker, guest))  # and the broker still serves real guests
