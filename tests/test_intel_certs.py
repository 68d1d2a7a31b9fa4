"""Intel PCK chains, the SGX extension and the two CRLs (kbs.trust.intel.certs) on a synthetic Intel PKI."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from kbs.errors import ChainInvalid, CollateralUnavailable, KbsError
from kbs.trust.intel.certs import (
    PLATFORM_CA_CN,
    PckChain,
    check_pck_crl,
    check_root_ca_crl,
    parse_sgx_extension,
    verify_pck_chain,
    verify_signing_chain,
)
from kbs.trust.revocation import CertificateRevoked
from tests import der as dertools
from tests.intel_synth import (
    DEFAULT_FMSPC,
    DEFAULT_SGX,
    SGX,
    SyntheticIntel,
    der_bool,
    der_int,
    der_octets,
    item,
    seq,
    sgx_extension,
    sgx_extension_items,
    tcb_items,
)

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.fixture(scope="module")
def intel() -> SyntheticIntel:
    return SyntheticIntel(NOW)


def chain(intel: SyntheticIntel, **kwargs: Any) -> PckChain:
    return verify_pck_chain(intel.issue_pck(**kwargs).pem_chain, NOW, trust_roots=intel.trust_roots)


def refused(check: str, func: Any, *args: Any, **kwargs: Any) -> KbsError:
    with pytest.raises(KbsError) as info:
        func(*args, **kwargs)
    assert info.value.check == check, str(info.value)
    return info.value


# -- the PCK chain -----------------------------------------------------------------------------------

def test_platform_pck_chain_and_its_values(intel: SyntheticIntel) -> None:
    issued = intel.issue_pck(svns=(*DEFAULT_SGX[:5], 255, *DEFAULT_SGX[6:]), pcesvn=300, sgx_type=2)
    verified = verify_pck_chain(issued.pem_chain + b"\0", NOW, trust_roots=intel.trust_roots)  # a quote's NUL
    info = verified.info
    assert verified.intermediate.subject_cn == PLATFORM_CA_CN and verified.root.subject_cn == "Intel SGX Root CA"
    assert info.sgx_tcb_components[5] == 255 and info.pcesvn == 300 and info.sgx_type_name == "ScalableWithIntegrity"
    assert info.fmspc == DEFAULT_FMSPC and info.fmspc_hex == "90c06f000000" and info.pce_id == bytes(2)
    assert info.ca == "platform" and info.platform_instance_id == bytes(range(16, 32))
    assert info.configuration is not None and (info.configuration.dynamic_platform, info.configuration.cached_keys,
                                               info.configuration.smt_enabled) == (True, False, True)
    assert info.public_point == issued.public_point and len(info.public_point) == 65
    assert info.serial == issued.serial


def test_processor_pck_chain(intel: SyntheticIntel) -> None:
    info = chain(intel, ca="processor").info
    assert info.ca == "processor" and info.platform_instance_id is None and info.configuration is None
    # A Processor-CA PCK must not carry the Platform-CA items.
    refused("pck.extension", chain, intel, ca="processor", extension=sgx_extension(platform=True))


def test_root_with_intels_name_and_another_key_is_refused(intel: SyntheticIntel) -> None:
    error = refused("chain.root", verify_pck_chain, intel.issue_pck().pem_chain, NOW)  # the real pin
    assert "has the name of the trusted root 'Intel SGX Root CA'" in str(error)
    error = refused("chain.root", verify_signing_chain, intel.tcb_chain_pem, NOW, what="TCB info")
    assert "never by name" in str(error)


def test_chain_shape_names_and_keys(intel: SyntheticIntel) -> None:
    issued = intel.issue_pck()
    leaf, ca, root = x509.load_pem_x509_certificates(issued.pem_chain)
    pem = [c.public_bytes(Encoding.PEM) for c in (leaf, ca, root)]
    refused("chain.issuer_missing", verify_pck_chain, pem[0] + pem[2], NOW, trust_roots=intel.trust_roots)
    refused("chain.names", verify_pck_chain, pem[1] + pem[2], NOW, trust_roots=intel.trust_roots)  # no leaf
    refused("chain.names", verify_pck_chain, pem[0] + pem[0] + pem[1], NOW, trust_roots=intel.trust_roots)
    refused("chain.names", chain, intel, cn="Intel SGX PCK Something")
    refused("chain.validity", verify_pck_chain, issued.pem_chain, NOW + 8 * 365 * DAY, trust_roots=intel.trust_roots)
    p384 = ec.generate_private_key(ec.SECP384R1())
    refused("pck.key", chain, intel, key=p384)
    # An intermediate named otherwise than Intel's two PCK CAs.
    odd = SyntheticIntel(NOW)
    odd.platform_ca = odd._issue("Intel SGX PCK Other CA", odd.root, ca=True, path_length=0)
    refused("chain.names", verify_pck_chain, odd.issue_pck().pem_chain, NOW, trust_roots=odd.trust_roots)


def test_links_must_be_ecdsa_sha256(intel: SyntheticIntel) -> None:
    issued = intel.issue_pck()
    leaf = x509.load_pem_x509_certificates(issued.pem_chain)[0]
    builder = (x509.CertificateBuilder().subject_name(leaf.subject).issuer_name(leaf.issuer)
               .public_key(leaf.public_key()).serial_number(leaf.serial_number)
               .not_valid_before(leaf.not_valid_before_utc).not_valid_after(leaf.not_valid_after_utc))
    for extension in leaf.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    sha384 = builder.sign(intel.platform_ca.key, hashes.SHA384()).public_bytes(Encoding.PEM)
    refused("chain.signature_algorithm", verify_pck_chain, sha384 + intel.platform_ca.pem + intel.root.pem, NOW,
            trust_roots=intel.trust_roots)
    forged = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()).public_bytes(
        Encoding.PEM)
    refused("chain.signature", verify_pck_chain, forged + intel.platform_ca.pem + intel.root.pem, NOW,
            trust_roots=intel.trust_roots)


# -- the SGX extension -------------------------------------------------------------------------------

def test_real_encoding_of_svn_255_parses() -> None:
    items = sgx_extension_items()
    tcb = tcb_items()
    tcb[5] = item(f"{SGX}.2.6", bytes.fromhex("020200ff"))  # SVN 255 as Intel encodes it
    items[1] = item(f"{SGX}.2", seq(*tcb))
    assert parse_sgx_extension(seq(*items), platform=True).sgx_tcb_components[5] == 255


def _with(index: int, replacement: bytes | None, **kwargs: Any) -> bytes:
    items = sgx_extension_items(**kwargs)
    if replacement is None:
        del items[index]
    else:
        items[index] = replacement
    return seq(*items)


def _with_tcb(index: int, replacement: bytes | None) -> bytes:
    tcb = tcb_items()
    if replacement is None:
        del tcb[index]
    else:
        tcb[index] = replacement
    return _with(1, item(f"{SGX}.2", seq(*tcb)))


MALFORMED = {
    "non-minimal INTEGER": _with_tcb(0, item(f"{SGX}.2.1", bytes.fromhex("02020005"))),
    "SVN 256": _with_tcb(0, item(f"{SGX}.2.1", der_int(256))),
    "negative SVN": _with_tcb(0, item(f"{SGX}.2.1", der_int(-1))),
    "PCESVN 65536": _with_tcb(16, item(f"{SGX}.2.17", der_int(65536))),
    "SVN as OCTET STRING": _with_tcb(0, item(f"{SGX}.2.1", der_octets(b"\x04"))),
    "17 TCB items": _with_tcb(3, None),
    "a TCB item twice": _with_tcb(3, item(f"{SGX}.2.3", der_int(2))),
    "CPUSVN of 15 bytes": _with_tcb(17, item(f"{SGX}.2.18", der_octets(bytes(15)))),
    "PPID missing": _with(0, None),
    "FMSPC of 5 bytes": _with(3, item(f"{SGX}.4", der_octets(bytes(5)))),
    "PCE-ID of 3 bytes": _with(2, item(f"{SGX}.3", der_octets(bytes(3)))),
    "SGX Type as INTEGER": _with(4, item(f"{SGX}.5", der_int(1))),
    "SGX Type 3": _with(4, item(f"{SGX}.5", der_int(3, 0x0A))),
    "FMSPC twice": seq(*sgx_extension_items(), item(f"{SGX}.4", der_octets(DEFAULT_FMSPC))),
    "an unknown item": seq(*sgx_extension_items(), item(f"{SGX}.9", der_octets(b"x"))),
    "no Configuration": _with(6, None),
    "Configuration without SMTEnabled": _with(6, item(f"{SGX}.7", seq(item(f"{SGX}.7.1", der_bool(True)),
                                                                      item(f"{SGX}.7.2", der_bool(True))))),
    "BOOLEAN TRUE as 01": _with(6, item(f"{SGX}.7", seq(item(f"{SGX}.7.1", bytes.fromhex("010101")),
                                                        item(f"{SGX}.7.2", der_bool(True)),
                                                        item(f"{SGX}.7.3", der_bool(True))))),
    "item of three elements": _with(0, dertools.tlv(0x30, item(f"{SGX}.1", b"")[2:] + der_octets(bytes(16))
                                                    + der_int(1))),
    "trailing bytes": sgx_extension() + b"\x00",
    "not a SEQUENCE": der_octets(bytes(16)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_sgx_extensions_are_refused(intel: SyntheticIntel, case: str) -> None:
    error = refused("pck.extension", chain, intel, extension=MALFORMED[case])
    assert str(error).startswith("PCK SGX extension:")


def test_a_leaf_without_the_sgx_extension_is_refused(intel: SyntheticIntel) -> None:
    leaf = intel._issue("Intel SGX PCK Certificate", intel.platform_ca, ca=False)
    error = refused("pck.extension", verify_pck_chain, leaf.pem + intel.platform_ca.pem + intel.root.pem, NOW,
                    trust_roots=intel.trust_roots)
    assert "lacks the SGX extension" in str(error)


# -- CRLs --------------------------------------------------------------------------------------------

def test_pck_crl(intel: SyntheticIntel) -> None:
    verified = chain(intel)
    crl = check_pck_crl(intel.pck_crl((verified.leaf.serial + 1,)), verified, NOW)
    assert crl.issuer_cn == PLATFORM_CA_CN
    with pytest.raises(CertificateRevoked) as revoked:
        check_pck_crl(intel.pck_crl((verified.leaf.serial,)), verified, NOW)
    assert revoked.value.check == "crl.revoked" and "keyCompromise" in str(revoked.value)
    error = refused("collateral.pck_crl", check_pck_crl, None, verified, NOW)
    assert isinstance(error, CollateralUnavailable) and "no PCK CRL" in str(error)
    stale = intel.pck_crl(this_update=NOW - 40 * DAY, next_update=NOW - DAY)
    error = refused("collateral.pck_crl", check_pck_crl, stale, verified, NOW)
    assert "PCK CRL of Intel SGX PCK Platform CA" in str(error) and "expired" in str(error)
    refused("collateral.pck_crl", check_pck_crl, intel.pck_crl(this_update=NOW + DAY), verified, NOW)
    # The Processor CA's CRL for a Platform-CA PCK: its issuer is not the PCK's issuer.
    refused("crl.issuer", check_pck_crl, intel.pck_crl(ca="processor"), verified, NOW)
    refused("crl.signature", check_pck_crl, intel.pck_crl(signer=ec.generate_private_key(ec.SECP256R1())),
            verified, NOW)


def test_root_ca_crl(intel: SyntheticIntel) -> None:
    verified = chain(intel)
    listed = [verified.intermediate, intel.tcb_signing.parsed]
    check_root_ca_crl(intel.root_crl(), verified.root, listed, NOW)
    for cert in listed:
        with pytest.raises(CertificateRevoked):
            check_root_ca_crl(intel.root_crl((cert.serial,)), verified.root, listed, NOW)
    refused("collateral.root_ca_crl", check_root_ca_crl, None, verified.root, listed, NOW)
    refused("collateral.root_ca_crl", check_root_ca_crl, intel.root_crl(next_update=NOW - DAY,
                                                                        this_update=NOW - 9 * DAY),
            verified.root, listed, NOW)
    refused("crl.issuer", check_root_ca_crl, intel.pck_crl(), verified.root, listed, NOW)


def test_chain_errors_are_chain_invalid(intel: SyntheticIntel) -> None:
    with pytest.raises(ChainInvalid):
        chain(intel, extension=MALFORMED["SVN 256"])
