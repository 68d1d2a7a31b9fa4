"""OCSP for NVIDIA chains (kbs.trust.nvidia.ocsp, ocsp_service, ocsp_store): NVIDIA's real responses about
a device chain and two RIM chains, every failure alone on a synthetic PKI, the three stances, the OCSP
directory, and the path through the shared fetcher against a loopback responder."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from kbs.errors import KbsError
from kbs.trust.chain import walk_chain
from kbs.trust.nvidia import ocsp_store
from kbs.trust.nvidia.certs import NVIDIA_SIGNATURE_ALGORITHMS, verify_device_chain
from kbs.trust.nvidia.ocsp import RIM_OCSP_INDICES, OcspChecker, OcspRefused, OcspStatus
from kbs.trust.nvidia.ocsp_service import CHAIN_HEADER, OcspClient, build_request, cache_key, decode_chain
from kbs.trust.nvidia.ocsp_store import OcspDirectory
from kbs.trust.nvidia.rim_roots import rim_roots
from kbs.trust.x509 import Certificate, load_certificates, parse_certificate
from tests.conftest import vector_file
from tests.fake_http import Reply
from tests.nvidia_synth import FakeOcspResponder, SyntheticGpu, SyntheticNvidia, serve
from tests.pki_synth import NOW

OCSP = "go-nvattest-tools/ocsp/test_gpu_{}_base64encoded_ocsp_response.dat"
DEVICE_AT = dt.datetime(2025, 8, 21, 12, 0, tzinfo=dt.UTC)
RIM_AT = dt.datetime(2025, 10, 24, 12, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)
HOUR = dt.timedelta(hours=1)


def gpu_file(path: str) -> bytes:
    return vector_file("gpu", *path.split("/")).read_bytes()


def check(checker: OcspChecker, certificates: tuple[Certificate, ...] | list[Certificate], at: dt.datetime,
          **kwargs: Any) -> tuple[OcspStatus, ...]:
    return asyncio.run(checker.check(certificates, at, **kwargs))


def refused(call: Callable[[], object], detail: str, *parts: str) -> OcspRefused:
    with pytest.raises(OcspRefused) as info:
        call()
    exc = info.value
    assert exc.check == "nvgpu.ocsp" and exc.detail == detail, (exc.detail, str(exc))
    for part in parts:
        assert part in str(exc), str(exc)
    return exc


def windows(der: bytes) -> tuple[dt.datetime, dt.datetime]:
    single = next(iter(ocsp.load_der_ocsp_response(der).responses))
    assert single.next_update_utc is not None
    return single.this_update_utc, single.next_update_utc


# -- NVIDIA's real responses ---------------------------------------------------------------------------

@pytest.fixture
def real_device_dir(tmp_path: Path) -> Path:
    for level in ("l2", "l3", "l4"):  # stored as go-nvattest-tools keeps them: base64 of DER
        (tmp_path / f"{level}.dat").write_bytes(gpu_file(OCSP.format(f"certificate_{level}")))
    return tmp_path


def test_real_device_responses_verify_inside_their_window(real_device_dir: Path) -> None:
    chain = verify_device_chain(gpu_file("nvtrust/hopperCertChain.txt"), DEVICE_AT)
    results = check(OcspChecker(directory=real_device_dir), chain.certificates, DEVICE_AT, stance="cached")
    assert [r.status for r in results] == ["good"] * 3
    assert [r.index for r in results] == [1, 2, 3]
    assert [r.responder for r in results] == ["NVIDIA OCSP Responder L3 GH100 ICA1 Identity",
                                              "NVIDIA OCSP Responder L2 GH100 Identity",
                                              "NVIDIA OCSP Responder L1-A 02"]
    for result in results:
        assert result.next_update and result.this_update
        assert result.next_update - result.this_update == dt.timedelta(hours=24)
    assert results[0].source is not None and results[0].source.endswith("l4.dat")


@pytest.mark.parametrize(("level", "index"), [("l4", 1), ("l3", 2), ("l2", 3)])
def test_real_device_responses_hold_exactly_their_window(tmp_path: Path, level: str, index: int) -> None:
    der = base64.b64decode(gpu_file(OCSP.format(f"certificate_{level}")))
    (tmp_path / f"{level}.der").write_bytes(der)  # DER files are read as well
    chain = verify_device_chain(gpu_file("nvtrust/hopperCertChain.txt"), DEVICE_AT)
    this_update, next_update = windows(der)
    checker = OcspChecker(directory=tmp_path)
    for at in (this_update, next_update - SECOND):
        assert check(checker, chain.certificates, at, indices=[index], stance="cached")[0].status == "good"
    refused(lambda: check(checker, chain.certificates, next_update + SECOND, indices=[index], stance="cached"),
            "ocsp.stale", f"certificate {index}", "expired at")
    refused(lambda: check(checker, chain.certificates, this_update - SECOND, indices=[index], stance="cached"),
            "ocsp.not_yet_valid", "is not valid before")


def test_a_real_response_answers_for_its_certificate_only(tmp_path: Path) -> None:
    (tmp_path / "brom.dat").write_bytes(gpu_file(OCSP.format("certificate_l4")))
    chain = verify_device_chain(gpu_file("nvtrust/hopperCertChain.txt"), DEVICE_AT)
    exc = refused(lambda: check(OcspChecker(directory=tmp_path), chain.certificates, DEVICE_AT, stance="cached"),
                  "ocsp.missing", "certificate 2 'NVIDIA GH100 Provisioner ICA 1'", "stance 'cached' never asks")
    assert [r.status for r in exc.results] == ["good", "unavailable", "unavailable"]
    other = verify_device_chain(gpu_file("attestation-sdk/unit-tests/hopperCertChain.txt"), DEVICE_AT)
    refused(lambda: check(OcspChecker(directory=tmp_path), other.certificates, DEVICE_AT, indices=[1],
                          stance="cached"), "ocsp.missing")  # another GPU's BROM under the same ICA


def rim_chain(name: str) -> list[Certificate]:
    """The signing chain a RIM carries (KeyInfo, leaf first), walked to the pinned CoRIM root."""
    xml = gpu_file(f"go-nvattest-tools/rim/{name}").decode()
    ders = re.findall(r"<(?:ds:)?X509Certificate>(.*?)</(?:ds:)?X509Certificate>", xml, re.S)
    certificates = [parse_certificate(base64.b64decode("".join(d.split()))) for d in ders]
    walked = walk_chain(certificates[0], certificates[1:], rim_roots(), RIM_AT, algorithms=NVIDIA_SIGNATURE_ALGORITHMS)
    return list(walked.certificates)


@pytest.mark.parametrize(("rim", "leaf"), [("NV_GPU_DRIVER_GH100_550.90.07.xml", "driver_rim_l4"),
                                           ("NV_GPU_VBIOS_1010_0200_882_96009F0001.xml", "vbios_l4")])
def test_real_rim_chain_responses_verify(tmp_path: Path, rim: str, leaf: str) -> None:
    for name in (leaf, "driver_rim_l3", "rim_l2"):
        (tmp_path / f"{name}.dat").write_bytes(gpu_file(OCSP.format(name)))
    chain = rim_chain(rim)
    results = check(OcspChecker(directory=tmp_path), chain, RIM_AT, indices=RIM_OCSP_INDICES, stance="cached",
                    what="driver RIM chain")
    assert [(r.subject, r.status) for r in results] == [
        ("HCC RIM L4 Signer", "good"), ("NVIDIA Reference Value L3 GH100 002", "good"),
        ("NVIDIA Reference Value GH100 CA", "good")]
    assert results[2].responder == "NVIDIA OCSP Responder L1 CoRIM Root"
    refused(lambda: check(OcspChecker(directory=tmp_path), chain, RIM_AT + dt.timedelta(days=1),
                          indices=RIM_OCSP_INDICES, stance="cached", what="driver RIM chain"),
            "ocsp.stale", "certificate 0 'HCC RIM L4 Signer'", "of the driver RIM chain")


# -- synthetic: every failure alone ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def nvidia() -> SyntheticNvidia:
    return SyntheticNvidia(NOW)


@pytest.fixture(scope="module")
def device(nvidia: SyntheticNvidia) -> SyntheticGpu:
    return nvidia.issue_gpu()


def store(directory: Path, responses: list[bytes]) -> OcspDirectory:
    directory.mkdir(exist_ok=True)
    for number, der in enumerate(responses):
        (directory / f"response-{number}.der").write_bytes(der)
    return OcspDirectory(directory)


FAILURES: list[tuple[str, dict[str, Any], str, str]] = [
    ("bad signature", {"signer": "forged"}, "ocsp.signature", "does not verify"),
    ("responder of another CA", {"signer": "foreign"}, "ocsp.responder", "not by"),
    ("stale", {"this_update": NOW - 30 * HOUR}, "ocsp.stale", "expired at"),
    ("early", {"this_update": NOW + HOUR}, "ocsp.not_yet_valid", "is not valid before"),
    ("revoked", {"status": "revoked"}, "ocsp.revoked", "is revoked since"),
    ("unknown", {"status": "unknown"}, "ocsp.unknown", "is unknown to OCSP responder"),
    ("hold", {"status": "hold"}, "ocsp.hold", "is on hold (certificateHold)"),
    ("SHA-256 signature", {"digest": hashes.SHA256()}, "ocsp.signature_algorithm", "wanted ECDSA with SHA-384"),
]


@pytest.mark.parametrize(("defect", "label", "says"), [(f[1], f[2], f[3]) for f in FAILURES],
                         ids=[f[0] for f in FAILURES])
def test_each_failure_alone_from_the_directory(tmp_path: Path, nvidia: SyntheticNvidia, device: SyntheticGpu,
                                               defect: dict[str, Any], label: str, says: str) -> None:
    good = nvidia.good_responses(device)
    bad = nvidia.ocsp_response(device.certificates[2], **defect)  # the ICA's answer is the broken one
    directory = store(tmp_path, [good[0], bad, good[2]])
    exc = refused(lambda: check(OcspChecker(directory=directory), device.certificates, NOW, stance="cached"),
                  label, "certificate 2 'NVIDIA GH100 Provisioner ICA 1'", says, f"[{label}]")
    assert exc.index == 2
    assert [r.status for r in exc.results][0::2] == ["good", "good"]
    if label in ("ocsp.revoked", "ocsp.hold", "ocsp.unknown"):
        assert exc.results[1].status == ("unknown" if label == "ocsp.unknown" else "revoked")
    if label == "ocsp.hold":
        assert exc.results[1].revocation_reason == "certificateHold"


@pytest.mark.parametrize(("defect", "label", "says"), [
    *[(f[1], f[2], f[3]) for f in FAILURES],
    ({"about": "other"}, "ocsp.cert_id", "not about"),  # only an answer asked for can carry the wrong CertID
    ({"cert_id_hash": hashes.SHA1()}, "", ""),  # SHA-1 CertIDs are accepted too
], ids=[*(f[0] for f in FAILURES), "wrong CertID", "SHA-1 CertID"])
def test_each_failure_alone_from_the_responder(nvidia: SyntheticNvidia, device: SyntheticGpu, defect: dict[str, Any],
                                               label: str, says: str) -> None:
    if defect.get("about") == "other":
        defect = {"about": nvidia.issue_gpu().certificates[1]}  # another BROM under the same ICA
    fake = FakeOcspResponder(nvidia, answer=defect)

    async def body(base: str) -> tuple[OcspStatus, ...]:
        async with client(base) as ocsp_client:
            return await OcspChecker(ocsp_client).check(device.certificates, NOW, indices=[1])

    if not label:
        assert with_responder(fake, body)[0].status == "good"
        return
    exc = refused(lambda: with_responder(fake, body), label, "certificate 1 'GH100 A01 GSP BROM'", says)
    assert exc.results[0].status in ("unavailable", "revoked", "unknown")


# -- stances, sources, choices ---------------------------------------------------------------------------

def client(base: str, cache_dir: Path | None = None, **knobs: Any) -> OcspClient:
    options: dict[str, Any] = {"retries": 0, "backoff": 0.01, "burst": 50, "rate_per_second": 50.0,
                               "now": lambda: NOW, **knobs}  # the fetcher's wall clock: the synthetic PKI's time
    return OcspClient(base, cache_dir, **options)


def with_responder(fake: FakeOcspResponder, body: Callable[[str], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with serve(fake) as base:
            return await asyncio.wait_for(body(base), timeout=20)
    return asyncio.run(main())


def test_require_fetches_what_is_not_stored_and_caches_it(tmp_path: Path, nvidia: SyntheticNvidia,
                                                          device: SyntheticGpu) -> None:
    fake = FakeOcspResponder(nvidia)
    directory = store(tmp_path / "dir", [nvidia.ocsp_response(device.certificates[3])])

    async def body(base: str) -> None:
        async with client(base, tmp_path / "cache") as ocsp_client:
            checker = OcspChecker(ocsp_client, directory)
            first = await checker.check(device.certificates, NOW)
            assert [r.status for r in first] == ["good"] * 3
            assert first[2].source is not None and first[2].source.startswith("file:")
            assert first[0].source == f"{base}/" and fake.total == 2  # BROM and ICA asked for, with a nonce each
            again = await checker.check(device.certificates, NOW)
            assert [r.source for r in again][:2] == [f"cache: {base}/"] * 2 and fake.total == 2
        async with client(base, tmp_path / "cache", offline=True) as offline:  # a restart without the network
            results = await OcspChecker(offline).check(device.certificates, NOW, indices=[1, 2], stance="cached")
            assert [r.status for r in results] == ["good", "good"]

    with_responder(fake, body)
    for asked in fake.requests:
        assert asked.hash_algorithm.name == "sha384"
        nonce = asked.extensions.get_extension_for_class(x509.OCSPNonce)
        assert nonce.critical and len(nonce.value.nonce) == 32
    cached = sorted((tmp_path / "cache" / "nvidia-ocsp").glob("*.meta.json"))
    assert len(cached) == 2
    assert CHAIN_HEADER in cached[0].read_text()


def test_cached_never_fetches(tmp_path: Path, nvidia: SyntheticNvidia, device: SyntheticGpu) -> None:
    fake = FakeOcspResponder(nvidia)

    async def body(base: str) -> None:
        async with client(base) as ocsp_client:
            with pytest.raises(OcspRefused) as info:
                await OcspChecker(ocsp_client).check(device.certificates, NOW, stance="cached")
            assert info.value.detail == "ocsp.missing" and "never asks NVIDIA" in str(info.value)

    with_responder(fake, body)
    assert fake.total == 0


def test_off_checks_nothing_and_says_so(tmp_path: Path, nvidia: SyntheticNvidia, device: SyntheticGpu) -> None:
    revoked = store(tmp_path, [nvidia.ocsp_response(c, "revoked") for c in device.certificates[1:4]])
    results = check(OcspChecker(directory=revoked), device.certificates, NOW, stance="off")
    assert [r.status for r in results] == ["not checked"] * 3
    assert all(r.this_update is None and r.responder is None for r in results)
    refused(lambda: check(OcspChecker(directory=revoked), device.certificates, NOW), "ocsp.revoked",
            "also certificate 2", "also certificate 3")


def test_the_newest_stored_response_decides(tmp_path: Path, nvidia: SyntheticNvidia, device: SyntheticGpu) -> None:
    brom = device.certificates[1]
    old_good = nvidia.ocsp_response(brom, this_update=NOW - 3 * HOUR)
    new_hold = nvidia.ocsp_response(brom, "hold", this_update=NOW - HOUR)
    refused(lambda: check(OcspChecker(directory=store(tmp_path / "a", [old_good, new_hold])), device.certificates,
                          NOW, indices=[1], stance="cached"), "ocsp.hold")
    released = nvidia.ocsp_response(brom, this_update=NOW - HOUR / 2)
    results = check(OcspChecker(directory=store(tmp_path / "b", [old_good, new_hold, released])), device.certificates,
                    NOW, indices=[1], stance="cached")
    assert results[0].status == "good" and results[0].this_update == NOW - HOUR / 2
    stale = nvidia.ocsp_response(brom, "revoked", this_update=NOW - 30 * HOUR)  # does not hold now: passed over
    results = check(OcspChecker(directory=store(tmp_path / "c", [stale, old_good])), device.certificates, NOW,
                    indices=[1], stance="cached")
    assert results[0].status == "good"


def test_offline_client_with_a_stored_directory(tmp_path: Path, nvidia: SyntheticNvidia, device: SyntheticGpu) -> None:
    directory = store(tmp_path / "dir", nvidia.good_responses(device)[:2])

    async def body() -> None:
        async with client("http://127.0.0.1:9", tmp_path / "cache", offline=True) as offline:
            checker = OcspChecker(offline, directory)
            assert [r.status for r in await checker.check(device.certificates, NOW, indices=[1, 2])] == ["good"] * 2
            with pytest.raises(OcspRefused) as info:
                await checker.check(device.certificates, NOW)
            assert info.value.detail == "nvidia-ocsp.offline" and info.value.index == 3

    asyncio.run(body())


def test_require_without_a_client_refuses_what_is_missing(nvidia: SyntheticNvidia, device: SyntheticGpu) -> None:
    refused(lambda: check(OcspChecker(), device.certificates, NOW), "ocsp.missing", "no OCSP client")


def test_arguments_are_checked(device: SyntheticGpu) -> None:
    with pytest.raises(ValueError, match="outside a chain of 5"):
        check(OcspChecker(), device.certificates, NOW, indices=[4])
    with pytest.raises(ValueError, match="stance"):
        check(OcspChecker(), device.certificates, NOW, stance="sometimes")


# -- the directory -----------------------------------------------------------------------------------

def test_the_directory_skips_what_is_not_a_response_and_rereads_when_changed(
        tmp_path: Path, nvidia: SyntheticNvidia, device: SyntheticGpu) -> None:
    (tmp_path / "notes.txt").write_text("not a response")
    (tmp_path / ".hidden").write_bytes(nvidia.ocsp_response(device.certificates[1]))
    (tmp_path / "sub").mkdir()
    directory = OcspDirectory(tmp_path)
    brom, ica = device.certificates[1], device.certificates[2]
    assert directory.responses(brom, ica) == []
    (tmp_path / "brom.b64").write_bytes(base64.encodebytes(nvidia.ocsp_response(brom)))
    (tmp_path / "stamp").touch()  # a change of the directory, whatever the clock's resolution
    found = directory.responses(brom, ica)
    assert len(found) == 1 and found[0].source.endswith("brom.b64")


def test_the_directory_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nvidia: SyntheticNvidia,
                                  device: SyntheticGpu) -> None:
    monkeypatch.setattr(ocsp_store, "MAX_FILES", 2)
    for number in range(3):
        (tmp_path / f"{number}.der").write_bytes(nvidia.ocsp_response(device.certificates[1]))
    refused(lambda: check(OcspChecker(directory=tmp_path), device.certificates, NOW, indices=[1], stance="cached"),
            "ocsp.directory", "holds 3 files, more than the 2 read")
    monkeypatch.setattr(ocsp_store, "MAX_FILES", 10)
    (tmp_path / "huge.der").write_bytes(b"0" * (ocsp_store.MAX_FILE + 1))
    refused(lambda: check(OcspChecker(directory=tmp_path), device.certificates, NOW, indices=[1], stance="cached"),
            "ocsp.directory", "larger than")
    (tmp_path / "huge.der").unlink()
    monkeypatch.setattr(ocsp_store, "MAX_BYTES", 1500)
    refused(lambda: check(OcspChecker(directory=tmp_path), device.certificates, NOW, indices=[1], stance="cached"),
            "ocsp.directory", "more than 1500 bytes")
    refused(lambda: check(OcspChecker(directory=tmp_path / "absent"), device.certificates, NOW, stance="cached"),
            "ocsp.directory", "cannot be read")


# -- the fetcher path against a loopback responder ------------------------------------------------------

@pytest.mark.parametrize(("script", "label"), [
    ([(404, b"not found", {})], "nvidia-ocsp.not_found"),
    ([(200, b"<html>maintenance</html>", {})], "ocsp.der"),
    ([(429, b"", {"Retry-After": "60"})], "nvidia-ocsp.throttled"),
    ([(503, b"", {})], "nvidia-ocsp.unavailable"),
], ids=["404", "garbage", "429", "503"])
def test_responder_failures(nvidia: SyntheticNvidia, device: SyntheticGpu, script: list[Reply], label: str) -> None:
    fake = FakeOcspResponder(nvidia, script=list(script))

    async def body(base: str) -> None:
        async with client(base) as ocsp_client:
            with pytest.raises(OcspRefused) as info:
                await OcspChecker(ocsp_client).check(device.certificates, NOW, indices=[1])
            assert info.value.detail == label, str(info.value)
            with pytest.raises(OcspRefused) as again:  # remembered, or the service left alone
                await OcspChecker(ocsp_client).check(device.certificates, NOW, indices=[1])
            assert again.value.detail == label

    with_responder(fake, body)
    assert fake.total == 1


def test_unsuccessful_answers_and_missing_nonces_are_refused(nvidia: SyntheticNvidia, device: SyntheticGpu) -> None:
    unauthorized = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
    fake = FakeOcspResponder(nvidia, script=[(200, unauthorized.public_bytes(Encoding.DER), {})])

    async def body(base: str) -> None:
        async with client(base) as ocsp_client:
            with pytest.raises(OcspRefused) as info:
                await OcspChecker(ocsp_client).check(device.certificates, NOW, indices=[1])
            assert info.value.detail == "ocsp.status" and "UNAUTHORIZED" in str(info.value)

    with_responder(fake, body)
    silent = FakeOcspResponder(nvidia, echo_nonce=False)

    async def without_nonce(base: str) -> None:
        async with client(base) as ocsp_client:
            with pytest.raises(OcspRefused) as info:
                await OcspChecker(ocsp_client).check(device.certificates, NOW, indices=[1])
            assert info.value.detail == "ocsp.nonce"
        async with client(base, nonce=False) as no_nonce:  # a responder that echoes none, asked without one
            assert (await OcspChecker(no_nonce).check(device.certificates, NOW, indices=[1]))[0].status == "good"

    with_responder(silent, without_nonce)
    assert all(not list(r.extensions) for r in silent.requests[1:])


def test_the_request_limit_holds(nvidia: SyntheticNvidia, device: SyntheticGpu) -> None:
    fake = FakeOcspResponder(nvidia)

    async def body(base: str) -> None:
        async with client(base, burst=1, rate_per_second=0.001) as ocsp_client:
            with pytest.raises(OcspRefused) as info:
                await OcspChecker(ocsp_client).check(device.certificates, NOW, indices=[1, 2])
            assert info.value.detail == "nvidia-ocsp.rate_limited"
            assert [r.status for r in info.value.results].count("good") == 1

    with_responder(fake, body)
    assert fake.total == 1


def test_a_cached_answer_is_checked_at_the_verification_time(tmp_path: Path, nvidia: SyntheticNvidia,
                                                             device: SyntheticGpu) -> None:
    fake = FakeOcspResponder(nvidia)

    async def body(base: str) -> None:
        async with client(base, tmp_path) as ocsp_client:
            await OcspChecker(ocsp_client).check(device.certificates, NOW, indices=[1])
            with pytest.raises(OcspRefused) as info:  # the same cached answer, a day later
                await OcspChecker(ocsp_client).check(device.certificates, NOW + dt.timedelta(days=1), indices=[1],
                                                     stance="cached")
            assert info.value.detail == "ocsp.stale"

    with_responder(fake, body)


def test_requests_and_keys() -> None:
    chain = load_certificates(gpu_file("nvtrust/hopperCertChain.txt"))
    request = ocsp.load_der_ocsp_request(build_request(chain[1], chain[2], bytes(32)))
    assert request.serial_number == chain[1].serial and request.hash_algorithm.name == "sha384"
    assert request.extensions.get_extension_for_class(x509.OCSPNonce).critical
    assert not list(ocsp.load_der_ocsp_request(build_request(chain[1], chain[2], None)).extensions)
    key = cache_key(chain[1], chain[2])
    assert key.method == "POST" and key.request_sha256 is None and key.path.endswith(f"/{chain[1].serial:x}")
    assert key.path.startswith("/certid/sha384/")
    recorded = OcspClient().request(chain, 1).recorded_headers
    assert [c.subject_cn for c in decode_chain(dict(recorded)[CHAIN_HEADER])] == [c.subject_cn for c in chain[1:]]


def test_kbs_errors_are_the_tree() -> None:
    assert issubclass(OcspRefused, KbsError)
