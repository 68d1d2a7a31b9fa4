"""NVIDIA's device chain (kbs.trust.nvidia.certs, .fwid): every real chain of the vectors, trustee's broken
ones, and a synthetic PKI (tests/nvidia_synth.py) broken one check at a time."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtensionOID

from kbs.errors import ChainInvalid, KbsError, MalformedEvidence
from kbs.trust import chain as chain_module
from kbs.trust.nvidia import certs
from kbs.trust.nvidia.certs import (
    CORIM_ROOT_SHA256,
    DEVICE_ROOT_SHA256,
    MAX_CHAIN_BYTES,
    check_fwid,
    configure_device_chain_cache,
    verify_device_chain,
)
from kbs.trust.nvidia.fwid import OID_COMPOSITE_DEVICE_ID, OID_TCB_INFO
from kbs.trust.x509 import load_certificates
from tests.conftest import vector_file, vectors_dir
from tests.gpu_reports import GpuReport, real_reports
from tests.nvidia_synth import BLACKWELL, HOPPER, SyntheticNvidia, composite_device_id, pem, tcb_info
from tests.pki_synth import NOW, fresh_key, key_usage

AT = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)  # every real device certificate is valid from 2023 to 9999
NVTRUST = "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"
BLACKWELL_SAMPLE = "d090cab1b6e6ffddca83d1781e25b3f040fa1f3c7608230cb5f41b1c1b99f5f748349e59d0ef8eb830c9bc79ccf77502"


def labelled(info: pytest.ExceptionInfo[KbsError], check: str, *parts: str) -> str:
    message = str(info.value)
    assert info.value.check == check, message
    for part in parts:
        assert part in message, message
    return message


def gpu(path: str) -> bytes:
    return vector_file("gpu", *path.split("/")).read_bytes()


def report_fwid(report: bytes) -> bytes | None:
    """Opaque field 20 of a report (reference/gpu.md §1.2, §1.4), read the plain way, or None."""
    response = report[37:]
    record = int.from_bytes(response[5:8], "little")
    at = 8 + record + 32
    size = int.from_bytes(response[at:at + 2], "little")
    opaque, offset = response[at + 2:at + 2 + size], 0
    while offset + 4 <= len(opaque):
        kind = int.from_bytes(opaque[offset:offset + 2], "little")
        length = int.from_bytes(opaque[offset + 2:offset + 4], "little")
        if kind == 20:
            return opaque[offset + 4:offset + 4 + length]
        offset += 4 + length
    return None


def _reports() -> list[GpuReport]:
    return real_reports(vectors_dir())


def _ids() -> Iterator[str]:
    return (r.name for r in _reports())


@pytest.fixture(scope="module")
def nvidia() -> SyntheticNvidia:
    return SyntheticNvidia(NOW)


# -- the pins -----------------------------------------------------------------------------------------

def test_the_pins_are_the_roots_nvidia_ships() -> None:
    device = load_certificates(gpu("roots/nvidia_device_identity_ca.pem"))
    corim = load_certificates(gpu("roots/nvidia_corim_signing_root_ca.pem"))
    assert [c.fingerprint for c in device] == [DEVICE_ROOT_SHA256]
    assert [c.fingerprint for c in corim] == [CORIM_ROOT_SHA256]
    assert {p.name for p in certs.nvidia_roots().pins} == {"NVIDIA Device Identity CA", "NVIDIA CoRIM signing Root CA"}


# -- every real chain ---------------------------------------------------------------------------------

@pytest.mark.parametrize("report", _reports() or [pytest.param(None, marks=pytest.mark.skip("no GPU vectors"))],
                         ids=list(_ids()) or None)
def test_every_real_chain_verifies_and_its_fwid_is_the_reports(report: GpuReport) -> None:
    chain = verify_device_chain(report.chain_pem, AT)
    assert len(chain.certificates) == 5 and chain.root.fingerprint == DEVICE_ROOT_SHA256
    assert chain.pin.name == "NVIDIA Device Identity CA"
    assert chain.public_point == report.leaf_point and len(chain.public_point) == 97
    assert chain.hwmodel.endswith(" BROM") and chain.ueid == str(chain.leaf.serial)
    assert chain.not_after == dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    if chain.fwid_source.oid == OID_COMPOSITE_DEVICE_ID:  # NVIDIA's rule: the value's last 48 bytes
        assert chain.leaf.extensions[OID_COMPOSITE_DEVICE_ID][-48:] == chain.fwid
    fwid = report_fwid(report.data)
    if not report.genuine:  # NVIDIA's invalid-signature sample: its FWID is not the chain's (SOURCES.md)
        with pytest.raises(ChainInvalid) as info:
            check_fwid(chain, fwid)
        labelled(info, "nvgpu.fwid", chain.fwid.hex(), fwid.hex() if fwid else "")
    elif fwid is None:  # the 535.86.09 sample has no FWID field: not compared, as NVIDIA does
        assert check_fwid(chain, fwid) is False
    else:
        assert check_fwid(chain, fwid) is True


def test_fwid_of_real_hopper_and_blackwell_leaves() -> None:
    hopper = verify_device_chain(gpu("nvtrust/hopperCertChain.txt"), AT)
    assert hopper.fwid.hex() == NVTRUST and hopper.fwid_source.oid == OID_COMPOSITE_DEVICE_ID
    claims = gpu("trustee/hopperAttestationReport-claims.txt").decode()
    assert re.search(r'"fwid"\s*:\s*"([0-9a-f]+)"', claims).group(1) == NVTRUST  # type: ignore[union-attr]
    assert hopper.hwmodel == "GH100 A01 GSP BROM"
    assert hopper.ueid == "478176379286082186618948445787393647364802107249"  # NRAS's ueid for this GPU
    samples = "attestation-sdk/unit-tests/sample_attestation_data/gpu"
    blackwell = verify_device_chain(gpu(f"{samples}/blackwellCertChain.txt"), AT)
    assert blackwell.fwid.hex() == BLACKWELL_SAMPLE and blackwell.fwid_source.oid == OID_TCB_INFO
    assert blackwell.hwmodel == "GB100 A01 GSP BROM"
    report = bytes.fromhex(gpu(f"{samples}/blackwellAttestationReport.txt").decode().strip())
    assert report_fwid(report) == blackwell.fwid


# -- trustee's broken chains, and NVIDIA's names on other keys ------------------------------------------

@pytest.mark.parametrize(("case", "reason"), [
    ("case2", "holds 1 certificate(s) ('NVIDIA Device Identity CA')"),
    ("case3", "certificate 1 'GH100 A01 GSP BROM' is issued by 'NVIDIA GH100 Provisioner ICA 1', but certificate 2 "
              "is 'NVIDIA GH100 Identity'"),
    ("case4", "certificate 0 'GH100 A01 GSP BROM' is a CA certificate, not the device leaf"),
])
def test_trustees_broken_chains_are_refused(case: str, reason: str) -> None:
    with pytest.raises(ChainInvalid) as info:
        verify_device_chain(gpu(f"trustee/hopper_cert_chain_{case}.txt"), AT)
    labelled(info, "nvgpu.chain", reason, "wanted exactly 5")


def test_a_root_with_nvidias_name_and_another_key_is_refused() -> None:
    forger = SyntheticNvidia(NOW, slot=3)  # its root is named exactly like NVIDIA's: CN and O
    assert forger.root.cert.subject == x509.load_der_x509_certificate(
        load_certificates(gpu("roots/nvidia_device_identity_ca.pem"))[0].der).subject
    fake = forger.issue_gpu()
    with pytest.raises(ChainInvalid) as info:
        verify_device_chain(fake.pem_chain, NOW)  # the real pins
    labelled(info, "nvgpu.chain", "device certificate 4 (root) 'NVIDIA Device Identity CA'",
             "it has the name of the trusted root 'NVIDIA Device Identity CA'", "never by name", "[chain.root]")


def test_a_real_chain_with_another_root_sent_last_is_refused() -> None:
    real = load_certificates(gpu("nvtrust/hopperCertChain.txt"))
    namesake = SyntheticNvidia(NOW, slot=3).root.parsed
    with pytest.raises(ChainInvalid) as info:  # NVIDIA's verifier would ignore it; we refuse
        verify_device_chain(pem([*real[:4], namesake]), AT)
    labelled(info, "nvgpu.chain", "device certificate 4 (root)", "[chain.root]")
    corim = load_certificates(gpu("roots/nvidia_corim_signing_root_ca.pem"))[0]
    with pytest.raises(ChainInvalid) as other:  # pinned, but not the root of this chain
        verify_device_chain(pem([*real[:4], corim]), AT)
    labelled(other, "nvgpu.chain", "device certificate 3 (identity CA) 'NVIDIA GH100 Identity' is issued by "
                                   "'NVIDIA Device Identity CA', but certificate 4 is 'NVIDIA CoRIM signing Root CA'")


def test_configured_roots_replace_the_pin(nvidia: SyntheticNvidia) -> None:
    with pytest.raises(ChainInvalid) as info:  # a lab root does not make NVIDIA's chains trusted
        verify_device_chain(gpu("nvtrust/hopperCertChain.txt"), AT, trust_roots=nvidia.trust_roots)
    labelled(info, "nvgpu.chain", "is not a configured trust root", "[chain.root]")
    assert verify_device_chain(nvidia.issue_gpu().pem_chain, NOW, trust_roots=nvidia.trust_roots)


# -- the synthetic PKI, one check at a time -----------------------------------------------------------

@pytest.mark.parametrize("arch", [HOPPER, BLACKWELL])
def test_synthetic_chains_verify(nvidia: SyntheticNvidia, arch: str) -> None:
    device = nvidia.issue_gpu(arch)  # type: ignore[arg-type]
    chain = verify_device_chain(device.pem_chain, NOW, trust_roots=nvidia.trust_roots)
    assert chain.certificates == device.certificates and chain.fwid == device.fwid
    assert check_fwid(chain, device.fwid) is True
    assert chain.hwmodel == ("GH100 A01 GSP BROM" if arch == HOPPER else "GB100 A01 GSP BROM")
    assert chain.fwid_source.oid == (OID_COMPOSITE_DEVICE_ID if arch == HOPPER else OID_TCB_INFO)
    assert chain.public_point == device.key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


@pytest.mark.parametrize(("arch", "encoding"), [(HOPPER, "tcbinfo"), (BLACKWELL, "composite")])
def test_either_fwid_encoding_on_either_architecture(nvidia: SyntheticNvidia, arch: str, encoding: str) -> None:
    device = nvidia.issue_gpu(arch, encoding=encoding)  # type: ignore[arg-type]
    chain = verify_device_chain(device.pem_chain, NOW, trust_roots=nvidia.trust_roots)
    assert chain.fwid == device.fwid


def test_counts_and_sizes_are_bounded_before_parsing(nvidia: SyntheticNvidia) -> None:
    device = nvidia.issue_gpu()
    with pytest.raises(ChainInvalid) as six:
        verify_device_chain(device.pem_chain + pem(device.certificates[-1:]), NOW, trust_roots=nvidia.trust_roots)
    labelled(six, "nvgpu.chain", "holds 6 PEM certificates, wanted exactly 5")
    with pytest.raises(ChainInvalid) as four:
        verify_device_chain(pem(device.certificates[:4]), NOW, trust_roots=nvidia.trust_roots)
    labelled(four, "nvgpu.chain", "holds 4 certificate(s)")
    with pytest.raises(ChainInvalid) as none:
        verify_device_chain(b"", NOW, trust_roots=nvidia.trust_roots)
    labelled(none, "nvgpu.chain", "holds 0 certificate(s) (nothing)")
    with pytest.raises(MalformedEvidence) as huge:
        verify_device_chain(device.pem_chain + b" " * MAX_CHAIN_BYTES, NOW, trust_roots=nvidia.trust_roots)
    labelled(huge, "nvgpu.chain", f"more than the {MAX_CHAIN_BYTES} allowed")
    broken = device.pem_chain.replace(b"MII", b"M!I", 1)
    with pytest.raises(MalformedEvidence) as garbled:
        verify_device_chain(broken, NOW, trust_roots=nvidia.trust_roots)
    labelled(garbled, "nvgpu.chain", "does not parse", "[certificate.pem]")


def test_the_order_is_the_devices(nvidia: SyntheticNvidia) -> None:
    device = nvidia.issue_gpu()
    leaf, brom, ica, identity, root = device.certificates
    with pytest.raises(ChainInvalid) as info:
        verify_device_chain(pem([leaf, ica, brom, identity, root]), NOW, trust_roots=nvidia.trust_roots)
    labelled(info, "nvgpu.chain", "device certificate 0 (leaf) 'GH100 A01 GSP FMC LF' is issued by "
                                  "'GH100 A01 GSP BROM', but certificate 1 is 'NVIDIA GH100 Provisioner ICA 1'")


@pytest.mark.parametrize(("knobs", "where", "label"), [
    ({"leaf_signer": "forged"}, "device certificate 0 (leaf)", "[chain.signature]"),
    ({"leaf_digest": hashes.SHA256()}, "device certificate 0 (leaf)", "[chain.signature_algorithm]"),
    ({"brom_ca": False}, "device certificate 1 (BROM)", "[chain.ca]"),
    ({"leaf_not_after": NOW - dt.timedelta(days=1)}, "device certificate 0 (leaf)", "[chain.validity]"),
    ({"leaf_not_before": NOW + dt.timedelta(days=1)}, "device certificate 0 (leaf)", "[chain.validity]"),
    ({"leaf_extra": ((x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), True),)},
     "device certificate 0 (leaf)", "[chain.critical_extension]"),
])
def test_each_walker_check_names_the_certificate(nvidia: SyntheticNvidia, knobs: dict[str, object], where: str,
                                                label: str) -> None:
    if knobs.get("leaf_signer") == "forged":
        knobs = {**knobs, "leaf_signer": fresh_key("p384")}
    device = nvidia.issue_gpu(**knobs)  # type: ignore[arg-type]
    with pytest.raises(ChainInvalid) as info:
        verify_device_chain(device.pem_chain, NOW, trust_roots=nvidia.trust_roots)
    labelled(info, "nvgpu.chain", where, label)


@pytest.mark.parametrize(("knobs", "reason"), [
    ({"leaf_key": "p256"}, "has a key of type 1.2.840.10045.2.1 (1.2.840.10045.3.1.7), wanted ECDSA P-384"),
    ({"leaf_ca": True}, "is a CA certificate"),
    ({"leaf_usage": key_usage(key_agreement=True)}, "keyUsage is keyAgreement, wanted digitalSignature"),
    ({"encoding": "none"}, "carries no FWID extension"),
    ({"encoding": "both"}, "carries both FWID extensions"),
])
def test_each_leaf_check(nvidia: SyntheticNvidia, knobs: dict[str, object], reason: str) -> None:
    if knobs.get("leaf_key") == "p256":
        knobs = {"leaf_key": ec.generate_private_key(ec.SECP256R1())}
    device = nvidia.issue_gpu(**knobs)  # type: ignore[arg-type]
    with pytest.raises(ChainInvalid) as info:
        verify_device_chain(device.pem_chain, NOW, trust_roots=nvidia.trust_roots)
    labelled(info, "nvgpu.chain", "device certificate 0", reason)


FWID = bytes(range(48))


@pytest.mark.parametrize(("encoding", "value", "reason"), [
    ("composite", lambda key: composite_device_id(FWID, key).replace(b"\x04\x30", b"\x0c\x30"),
     "does not decode as a composite device id"),  # the FWID a UTF8String
    ("composite", lambda key: composite_device_id(FWID, key) + b"\x00", "after its value"),
    ("composite", lambda key: composite_device_id(FWID, key, version=2), "has version 2, wanted 1"),
    ("composite", lambda key: composite_device_id(FWID[:32], key), "its fwid is 32 bytes, wanted 48"),
    ("composite", lambda key: composite_device_id(FWID, key, hash_oid="2.16.840.1.101.3.4.2.1"),
     "its fwid is hashed with 2.16.840.1.101.3.4.2.1, wanted SHA-384"),
    ("composite", lambda key: b"\x30\x81\x03\x02\x01\x01", "does not decode"),  # a long length where short fits
    ("tcbinfo", lambda key: tcb_info(FWID, fwids=[]), "is not canonical DER"),  # an empty [6] is no DER
    ("tcbinfo", lambda key: tcb_info(FWID, fwids=[FWID[:47]]), "fwids[0] is 47 bytes, wanted 48"),
    ("tcbinfo", lambda key: tcb_info(FWID)[:-3], "does not decode as a DICE TcbInfo"),
])
def test_each_fwid_extension_defect(nvidia: SyntheticNvidia, encoding: str, value: object, reason: str) -> None:
    key = fresh_key("p384")
    assert callable(value)
    device = nvidia.issue_gpu(encoding=encoding, fwid_value=value(key))  # type: ignore[arg-type]
    with pytest.raises(ChainInvalid) as info:
        verify_device_chain(device.pem_chain, NOW, trust_roots=nvidia.trust_roots)
    labelled(info, "nvgpu.chain", "device certificate 0", "FWID extension", reason)


def test_fwid_extensions_are_bounded(nvidia: SyntheticNvidia) -> None:
    device = nvidia.issue_gpu(fwid_value=b"\x04\x82\x13\x88" + bytes(5000))
    with pytest.raises(ChainInvalid) as info:
        verify_device_chain(device.pem_chain, NOW, trust_roots=nvidia.trust_roots)
    labelled(info, "nvgpu.chain", "is 5004 bytes, more than the 4096 allowed")


def test_a_malformed_extension_the_walker_reads(nvidia: SyntheticNvidia) -> None:
    broken = x509.UnrecognizedExtension(ExtensionOID.BASIC_CONSTRAINTS, b"\x30\x03\x01\x01")
    device = nvidia.issue_gpu(brom_extra=((broken, True),))
    with pytest.raises(MalformedEvidence) as info:
        verify_device_chain(device.pem_chain, NOW, trust_roots=nvidia.trust_roots)
    labelled(info, "nvgpu.chain", "device certificate 1 (BROM)", "basicConstraints", "[certificate.extension]")


def test_tcb_info_without_fwids_is_refused(nvidia: SyntheticNvidia) -> None:
    bare = bytes.fromhex("3008") + b"\x80\x06NVIDIA"
    device = nvidia.issue_gpu(BLACKWELL, fwid_value=bare)
    with pytest.raises(ChainInvalid) as info:
        verify_device_chain(device.pem_chain, NOW, trust_roots=nvidia.trust_roots)
    labelled(info, "nvgpu.chain", "holds no fwids")


def test_check_fwid(nvidia: SyntheticNvidia) -> None:
    device = nvidia.issue_gpu(fwid=FWID)
    chain = verify_device_chain(device.pem_chain, NOW, trust_roots=nvidia.trust_roots)
    assert check_fwid(chain, FWID) is True
    assert check_fwid(chain, None) is False
    other = bytes(48)
    with pytest.raises(ChainInvalid) as info:
        check_fwid(chain, other)
    labelled(info, "nvgpu.fwid", f"the report's FWID is {other.hex()}", f"says {FWID.hex()}", OID_COMPOSITE_DEVICE_ID)
    with pytest.raises(ChainInvalid) as short:
        check_fwid(chain, FWID[:32])
    labelled(short, "nvgpu.fwid", "is 32 bytes", "wanted 48")


# -- the cache ----------------------------------------------------------------------------------------

def test_chains_are_cached_by_bytes_and_validity_is_checked_every_time(
        nvidia: SyntheticNvidia, monkeypatch: pytest.MonkeyPatch) -> None:
    configure_device_chain_cache(certs.DEVICE_CHAIN_CACHE_BYTES)
    walks = []
    real_walk = chain_module.walk_chain

    def counting(*args: object, **kwargs: object) -> object:
        walks.append(1)
        return real_walk(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(certs, "walk_chain", counting)
    device = nvidia.issue_gpu(leaf_not_after=NOW + dt.timedelta(days=10))
    first = verify_device_chain(device.pem_chain, NOW, trust_roots=nvidia.trust_roots)
    assert verify_device_chain(device.pem_chain, NOW, trust_roots=nvidia.trust_roots) is first
    assert len(walks) == 1
    with pytest.raises(ChainInvalid) as info:  # cached, yet expired at this time
        verify_device_chain(device.pem_chain, NOW + dt.timedelta(days=11), trust_roots=nvidia.trust_roots)
    labelled(info, "nvgpu.chain", "device certificate 0 (leaf)", "expired", "[chain.validity]")
    with pytest.raises(ChainInvalid):  # the pins are part of the key: NVIDIA's pin does not reuse the lab's result
        verify_device_chain(device.pem_chain, NOW)
    configure_device_chain_cache(0)
    verify_device_chain(device.pem_chain, NOW, trust_roots=nvidia.trust_roots)
    verify_device_chain(device.pem_chain, NOW, trust_roots=nvidia.trust_roots)
    assert len(walks) == 4
    configure_device_chain_cache(certs.DEVICE_CHAIN_CACHE_BYTES)


def test_a_failed_chain_is_not_cached(nvidia: SyntheticNvidia) -> None:
    device = nvidia.issue_gpu(leaf_not_after=NOW - dt.timedelta(days=1))
    for _ in range(2):
        with pytest.raises(ChainInvalid):
            verify_device_chain(device.pem_chain, NOW, trust_roots=nvidia.trust_roots)
    assert verify_device_chain(device.pem_chain, NOW - dt.timedelta(days=2), trust_roots=nvidia.trust_roots)
