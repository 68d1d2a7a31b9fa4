"""NVIDIA RIMs (kbs.trust.nvidia.rim and its parts): NVIDIA's real RIMs and NVIDIA's negative ones, then
synthetic RIMs each broken in exactly one way (parsing, the XML-DSig profile, the chain, the signature, the
SWID fields), the cache, and the RIM ids a report's values name."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod

from kbs.errors import KbsError, MalformedEvidence
from kbs.trust.nvidia import rim as rim_module
from kbs.trust.nvidia.rim import VerifiedRim, cached_rim, configure_rim_cache, verify_rim, verify_rim_authentic
from kbs.trust.nvidia.rim_ids import check_rim_id, driver_rim_id, format_vbios_version, vbios_rim_id
from kbs.trust.nvidia.rim_roots import CORIM_ROOT_NAME, CORIM_ROOT_SHA256, corim_root_certificate
from kbs.trust.nvidia.rim_signature import DS_NS
from kbs.trust.nvidia.rim_xml import HASH_NS, MAX_RIM_BYTES, SWID_NS, hardened_parser, read_document, refuse_dtd
from kbs.trust.x509 import load_certificates
from tests.conftest import vector_file, vectors_dir
from tests.nvidia_rim_synth import Golden, SyntheticRims, document
from tests.pki_synth import DAY, Node, fresh_key, key_usage

GPU = ("gpu",)
DRIVER = "go-nvattest-tools/rim/NV_GPU_DRIVER_GH100_550.90.07.xml"
VBIOS = "go-nvattest-tools/rim/NV_GPU_VBIOS_1010_0200_882_96009F0001.xml"
SDK = "attestation-sdk/unit-tests"
# Inside both real signers' windows (driver 2024-06-01..2026-06-01, VBIOS 2024-02-23..2026-02-22).
AT = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
RIM_ID = "NV_GPU_DRIVER_GH100_1.2.3"
DIGEST_7 = hashlib.sha384(b"block 8").digest()
ENTRIES: dict[int, Golden] = {7: DIGEST_7, 35: [hashlib.sha384(b"a").digest(), hashlib.sha384(b"b").digest()]}


def real(path: str) -> bytes:
    return vector_file(*GPU, *path.split("/")).read_bytes()


def refused(check: str, xml: bytes, at: dt.datetime = NOW, **kwargs: Any) -> str:
    """verify_rim refuses with `check`; the message."""
    with pytest.raises(KbsError) as info:
        verify_rim(xml, at, **kwargs)
    assert info.value.check == check, str(info.value)
    return str(info.value)


@pytest.fixture(scope="module")
def rims() -> SyntheticRims:
    return SyntheticRims(NOW)


@pytest.fixture
def synth(rims: SyntheticRims) -> Callable[..., VerifiedRim]:
    def verify(xml: bytes, at: dt.datetime = NOW) -> VerifiedRim:
        return verify_rim(xml, at, trust_roots=rims.trust_roots, rim_id=RIM_ID)
    return verify


def synth_refused(rims: SyntheticRims, check: str, xml: bytes, at: dt.datetime = NOW) -> str:
    return refused(check, xml, at, trust_roots=rims.trust_roots, rim_id=RIM_ID)


# -- NVIDIA's RIMs ------------------------------------------------------------------------------------

def test_the_shipped_root_is_the_pinned_one() -> None:
    root = corim_root_certificate()
    assert root.fingerprint == CORIM_ROOT_SHA256 and root.subject_cn == CORIM_ROOT_NAME


def test_real_driver_and_vbios_rims_verify() -> None:
    driver = verify_rim(real(DRIVER), AT, rim_id="NV_GPU_DRIVER_GH100_550.90.07")
    vbios = verify_rim(real(VBIOS), AT)
    assert (driver.name, driver.colloquial_version, driver.firmware_manufacturer_id) == ("GH100", "550.90.07", "5703")
    assert vbios.colloquial_version == "96.00.9F.00.01"
    assert [e.index for e in driver.active_entries] == [7, *range(21, 41)]
    assert [e.index for e in vbios.active_entries] == [*range(0, 7), *range(8, 13)]
    assert len(driver.entries) == len(vbios.entries) == 64
    assert max(len(e.alternatives) for e in driver.active_entries) == 4
    assert all(e.size == 48 and all(len(h) == 48 for h in e.alternatives) for e in driver.entries)
    assert driver.id.startswith("63f9f7f7de3322e3") and len(driver.id) == 96
    assert [c.subject_cn for c in driver.chain] == ["HCC RIM L4 Signer", "NVIDIA Reference Value L3 GH100 002",
                                                    "NVIDIA Reference Value GH100 CA", CORIM_ROOT_NAME]
    assert driver.pin.fingerprint == CORIM_ROOT_SHA256
    assert [(c.subject_cn, i.subject_cn) for c, i in driver.revocation_targets] == list(
        zip([c.subject_cn for c in driver.chain[:3]], [c.subject_cn for c in driver.chain[1:]], strict=True))
    assert driver.not_after == dt.datetime(2026, 6, 1, 2, 8, 29, tzinfo=dt.UTC)  # the L4 signer's
    assert vbios.not_after == dt.datetime(2026, 2, 22, 23, 17, 58, tzinfo=dt.UTC)
    assert driver.sha256 == hashlib.sha256(real(DRIVER)).hexdigest()


def test_incorrect_signature_driver_rim() -> None:
    message = refused("nvgpu.rim.signature", real(f"{SDK}/incorrect_signature_driver_rim.xml"), AT,
                      rim_id="NV_GPU_DRIVER_GH100_550.144.03")
    assert "RIM NV_GPU_DRIVER_GH100_550.144.03" in message and "HCC RIM L4 Signer" in message
    verify_rim(real(f"{SDK}/NV_GPU_DRIVER_GH100_550.144.03.xml"), AT)  # the genuine one it was made from


def test_incorrect_cert_chain_driver_rim_is_debug_signed() -> None:
    message = refused("nvgpu.rim.chain", real(f"{SDK}/incorrect_cert_chain_driver_rim.xml"), AT)
    assert "NVIDIA CoRIM L1 Root CA Debug Only" in message and "debug" in message
    assert "the pinned NVIDIA CoRIM signing Root CA" in message


@pytest.mark.parametrize("path", [DRIVER, VBIOS, f"{SDK}/NV_GPU_DRIVER_GH100_550.144.03.xml",
                                  f"{SDK}/incorrect_cert_chain_driver_rim.xml"])
def test_incorrect_rim_root_never_validates(path: str) -> None:
    wrong = load_certificates(real(f"{SDK}/incorrect_rim_root.crt"))
    refused("nvgpu.rim.chain", real(path), AT, trust_roots=wrong)


def test_a_day_after_the_signer_expired() -> None:
    driver = verify_rim(real(DRIVER), AT)
    message = refused("nvgpu.rim.chain", real(DRIVER), driver.not_after + DAY)
    assert "HCC RIM L4 Signer expired at 2026-06-01T02:08:29+00:00" in message
    refused("nvgpu.rim.chain", real(DRIVER), driver.not_before - DAY)
    verify_rim(real(DRIVER), driver.not_after)  # both ends inclusive
    # NVIDIA's "expired" sample: a one-day signer (2025-01-01..02); the chain is refused before its edited body.
    expired = real(f"{SDK}/sample_rims/NV_GPU_DRIVER_GH100_570.124.03_expired.xml")
    assert "RIM L4 Signer expired" in refused("nvgpu.rim.chain", expired, dt.datetime(2025, 1, 3, tzinfo=dt.UTC))


def test_edited_measurement_mismatch_driver_rim_fails_its_digest() -> None:
    # NVIDIA edited this RIM and turned their RIM signature check off; the digest no longer matches.
    message = refused("nvgpu.rim.signature", real(f"{SDK}/sample_rims/NV_GPU_DRIVER_GH100_535.86.09_"
                                                  "measurement_mismatch.xml"), AT)
    assert "InvalidDigest" in message
    genuine = verify_rim(real(f"{SDK}/sample_rims/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml"),
                         dt.datetime(2024, 6, 1, tzinfo=dt.UTC))
    assert genuine.colloquial_version == "96.00.5E.00.01"


def swidtags() -> list[str]:
    folder = vectors_dir() / "gpu" / "nvtrust" / "rims"
    return sorted(p.name for p in folder.glob("*.swidtag")) if folder.is_dir() else []


@pytest.mark.parametrize("name", swidtags() or [pytest.param("", marks=pytest.mark.skip(
    reason=f"no gpu/nvtrust/rims under KBS_VECTORS={vectors_dir()}"))])
def test_every_nvtrust_swidtag_verifies_inside_its_window(name: str) -> None:
    xml = real(f"nvtrust/rims/{name}")
    rim = verify_rim_authentic(xml, rim_id=None)
    assert rim.valid_at(rim.not_before) and rim.not_before < rim.not_after
    assert verify_rim(xml, rim.not_after) is rim  # the other end of its window, from the cache
    assert rim.name == "GH100" and rim.pin.fingerprint == CORIM_ROOT_SHA256
    if name.startswith("Driver"):
        assert [e.index for e in rim.active_entries] == [7, *range(21, 41)]
    else:
        assert [e.index for e in rim.active_entries] == [*range(0, 7), *range(8, 13)]
        assert rim.colloquial_version.replace(".", "").upper() == name.split("_")[3]
    refused("nvgpu.rim.chain", xml, rim.not_after + dt.timedelta(seconds=1))


# -- parsing safely -----------------------------------------------------------------------------------

BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" tagId="&lol3;"/>"""
EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" tagId="&x;"/>"""


@pytest.mark.parametrize(("xml", "said"), [
    (BOMB, "<!DOCTYPE"),
    (EXTERNAL, "<!DOCTYPE"),
    (b'<SoftwareIdentity tagId="x">&ext;</SoftwareIdentity>', "not well-formed"),  # undeclared entity
    (b"<SoftwareIdentity><!ENTITY x 'y'></SoftwareIdentity>", "<!ENTITY"),
    ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r SYSTEM "http://x/"><r/>'.encode("utf-16"), "NUL"),
    (b"<SoftwareIdentity", "not well-formed"),
    (b"not xml at all", "not well-formed"),
    (b"<a/>" + b" " * MAX_RIM_BYTES, "more than the"),
])
def test_hostile_xml_is_refused_before_anything_else(xml: bytes, said: str) -> None:
    assert said in refused("nvgpu.rim.parse", xml)


def test_a_dtd_that_slipped_past_the_byte_scan_is_still_refused() -> None:
    lenient = etree.fromstring(b'<!DOCTYPE r [<!ENTITY e "v">]><r>&e;</r>',
                               etree.XMLParser(resolve_entities=False))
    with pytest.raises(MalformedEvidence, match="document type declaration"):
        refuse_dtd(lenient, "RIM")
    assert etree.fromstring(b"<r/>", hardened_parser()).tag == "r"
    built = etree.Element("r")
    built.append(etree.Entity("e"))  # an entity reference without a DTD: only a tree built by hand has one
    with pytest.raises(MalformedEvidence, match="entity reference"):
        refuse_dtd(built, "RIM")


# -- the XML-DSig profile -----------------------------------------------------------------------------

def _signature(tree: Any) -> Any:
    return tree.find(f"{{{DS_NS}}}Signature")


def test_synthetic_rim_verifies(rims: SyntheticRims, synth: Callable[..., VerifiedRim]) -> None:
    rim = synth(rims.sign(RIM_ID, "1.2.3", ENTRIES))
    assert [(e.index, e.alternatives) for e in rim.active_entries] == [(7, (DIGEST_7,)), (35, tuple(ENTRIES[35]))]
    assert rim.colloquial_version == "1.2.3" and len(rim.chain) == 4 and rim.chain[-1].fingerprint == \
        rims.root.parsed.fingerprint


def test_synthetic_rim_is_not_nvidias(rims: SyntheticRims) -> None:
    message = refused("nvgpu.rim.chain", rims.sign(RIM_ID, "1.2.3", ENTRIES), rim_id=RIM_ID)
    assert "the RIM carries the root 'Synthetic CoRIM Signing Root CA'" in message
    assert "which is not the pinned NVIDIA CoRIM signing Root CA" in message


def test_a_synthetic_debug_root_is_named_as_one() -> None:
    debug = SyntheticRims(NOW, root_cn="Synthetic CoRIM L1 Root CA Debug Only", slot=8)
    message = refused("nvgpu.rim.chain", debug.sign(RIM_ID, "1", ENTRIES))
    assert "debug-signed RIMs are never accepted" in message


def test_the_signature_must_be_there(rims: SyntheticRims) -> None:
    xml = rims.sign(RIM_ID, "1", ENTRIES, after=lambda t: t.remove(_signature(t)))
    assert "holds 0 ds:Signature" in synth_refused(rims, "nvgpu.rim.signature", xml)


def test_a_second_signature_is_refused(rims: SyntheticRims) -> None:
    def twice(tree: Any) -> None:
        tree.append(etree.fromstring(etree.tostring(_signature(tree))))
    xml = rims.sign(RIM_ID, "1", ENTRIES, after=twice)
    assert "holds 2 ds:Signature" in synth_refused(rims, "nvgpu.rim.signature", xml)


def test_the_signature_must_be_a_child_of_the_root(rims: SyntheticRims) -> None:
    def nest(tree: Any) -> None:
        signature = _signature(tree)
        tree.remove(signature)
        tree.find(f"{{{SWID_NS}}}Payload").append(signature)
    xml = rims.sign(RIM_ID, "1", ENTRIES, after=nest)
    assert "not a child of the root" in synth_refused(rims, "nvgpu.rim.signature", xml)


def test_an_object_in_the_signature_is_refused(rims: SyntheticRims) -> None:
    def wrap(tree: Any) -> None:  # the classic wrapping: a copy of the signed document inside ds:Object
        obj = etree.SubElement(_signature(tree), f"{{{DS_NS}}}Object")
        obj.append(etree.fromstring(etree.tostring(tree.find(f"{{{SWID_NS}}}Payload"))))
    xml = rims.sign(RIM_ID, "1", ENTRIES, after=wrap)
    assert "Object" in synth_refused(rims, "nvgpu.rim.signature", xml)


def test_a_reference_to_an_element_instead_of_the_document_is_refused(rims: SyntheticRims) -> None:
    # Wrapping: sign only the Meta (by Id), then change the unsigned Payload; read from "the document" that
    # would give the attacker's measurements.  The profile wants URI="" (the whole document).
    root = document(RIM_ID, "1", ENTRIES)
    root.find(f"{{{SWID_NS}}}Meta").set("Id", "meta")

    def evil(tree: Any) -> None:
        tree.find(f"{{{SWID_NS}}}Payload")[7].set(f"{{{HASH_NS}}}Hash0", "ab" * 48)
    xml = rims.sign_document(root, reference_uri="meta", after=evil)
    assert "Reference URI is '#meta'" in synth_refused(rims, "nvgpu.rim.signature", xml)


@pytest.mark.parametrize(("kwargs", "said"), [
    ({"signature_method": SignatureMethod.ECDSA_SHA256}, "SignatureMethod"),
    ({"signature_method": SignatureMethod.ECDSA_SHA512}, "SignatureMethod"),
    ({"digest": DigestAlgorithm.SHA256}, "DigestMethod"),
    ({"digest": DigestAlgorithm.SHA512}, "DigestMethod"),
    ({"c14n": CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0}, "CanonicalizationMethod"),
    ({"c14n": CanonicalizationMethod.CANONICAL_XML_1_0}, "CanonicalizationMethod"),
    ({"c14n": CanonicalizationMethod.CANONICAL_XML_1_1_WITH_COMMENTS}, "CanonicalizationMethod"),
])
def test_other_algorithms_are_refused(rims: SyntheticRims, kwargs: dict[str, Any], said: str) -> None:
    assert said in synth_refused(rims, "nvgpu.rim.signature", rims.sign(RIM_ID, "1", ENTRIES, **kwargs))


def test_an_rsa_signer_is_refused_by_the_profile(rims: SyntheticRims) -> None:
    signer = rims.issue_signer(key=fresh_key("rsa"))
    xml = rims.sign(RIM_ID, "1", ENTRIES, signer=signer, signature_method=SignatureMethod.RSA_SHA384)
    assert "rsa-sha384" in synth_refused(rims, "nvgpu.rim.signature", xml)


def test_transforms_are_exactly_enveloped_then_c14n11(rims: SyntheticRims) -> None:
    def drop_c14n(tree: Any) -> None:
        transforms = tree.find(f".//{{{DS_NS}}}Transforms")
        transforms.remove(transforms[1])
    xml = rims.sign(RIM_ID, "1", ENTRIES, after=drop_c14n)
    assert "transforms are" in synth_refused(rims, "nvgpu.rim.signature", xml)


@pytest.mark.parametrize("edit", ["key_name", "no_certificates", "not_base64", "not_der", "too_many", "huge"])
def test_key_info_holds_exactly_the_chain(rims: SyntheticRims, edit: str) -> None:
    def change(tree: Any) -> None:
        key_info = _signature(tree).find(f"{{{DS_NS}}}KeyInfo")
        data = key_info[0]
        if edit == "key_name":
            etree.SubElement(key_info, f"{{{DS_NS}}}KeyName").text = "signer"
        elif edit == "no_certificates":
            for cert in list(data):
                data.remove(cert)
        elif edit == "not_base64":
            data[1].text = "@@@@"
        elif edit == "not_der":
            data[1].text = "MIIBAAAA"
        elif edit == "huge":
            data[1].text = "A" * 32 * 1024
        else:
            for _ in range(6):
                data.append(etree.fromstring(etree.tostring(data[1])))
    synth_refused(rims, "nvgpu.rim.chain", rims.sign(RIM_ID, "1", ENTRIES, after=change))


# -- the chain ----------------------------------------------------------------------------------------

def test_a_forged_link_is_refused(rims: SyntheticRims) -> None:
    forged = rims.issue_signer(signer=rims.pki.key(9))
    message = synth_refused(rims, "nvgpu.rim.chain", rims.sign(RIM_ID, "1", ENTRIES, signer=forged))
    assert "[chain.signature]" in message


def test_links_must_be_ecdsa_sha384(rims: SyntheticRims) -> None:
    sha256_l3 = Node(rims.l3.cn, rims.l3.key, rims.l3.cert, "ecdsa-p256-sha256")  # the L3 key, signing SHA-256
    signer = rims.pki.issue("Synthetic RIM L4 Signer", sha256_l3, key=rims.pki.key(4), ca=False, serial=0x76,
                            not_before=NOW - DAY, not_after=NOW + 30 * DAY)
    message = synth_refused(rims, "nvgpu.rim.chain", rims.sign(RIM_ID, "1", ENTRIES, signer=signer))
    assert "[chain.signature_algorithm]" in message


def test_the_signer_must_not_be_a_ca(rims: SyntheticRims) -> None:
    signer = rims.issue_signer(ca=True, path_length=0, key_usage=key_usage(digital_signature=True, key_cert_sign=True))
    assert "is a CA certificate" in synth_refused(rims, "nvgpu.rim.chain",
                                                  rims.sign(RIM_ID, "1", ENTRIES, signer=signer))


def test_the_signer_key_usage_must_allow_signatures(rims: SyntheticRims) -> None:
    signer = rims.issue_signer(key_usage=key_usage(key_encipherment=True))
    assert "lacks digitalSignature" in synth_refused(rims, "nvgpu.rim.chain",
                                                     rims.sign(RIM_ID, "1", ENTRIES, signer=signer))


def test_the_signer_key_must_be_p384(rims: SyntheticRims) -> None:
    signer = rims.issue_signer(key=ec.generate_private_key(ec.SECP256R1()))
    assert "P-384" in synth_refused(rims, "nvgpu.rim.chain", rims.sign(RIM_ID, "1", ENTRIES, signer=signer))


def test_a_signer_that_is_itself_a_trust_root_is_refused(rims: SyntheticRims) -> None:
    xml = rims.sign(RIM_ID, "1", ENTRIES)
    message = refused("nvgpu.rim.chain", xml, trust_roots=[rims.signer.parsed])
    assert "itself a trust root" in message


def test_the_chain_length_is_bounded(rims: SyntheticRims) -> None:
    issuer = rims.l3
    extra = []
    for number in range(4):
        issuer = rims.pki.issue(f"Synthetic Extra CA {number}", issuer, key=rims.pki.key(10 + number), serial=0x90 +
                                number, not_before=NOW - DAY, not_after=NOW + DAY)
        extra.append(issuer)
    signer = rims.pki.issue("Synthetic RIM L4 Signer", issuer, key=rims.pki.key(4), ca=False, serial=0x77,
                            not_before=NOW - DAY, not_after=NOW + DAY)
    chain = [signer, *reversed(extra), rims.l3, rims.ca, rims.root]
    message = synth_refused(rims, "nvgpu.rim.chain", rims.sign(RIM_ID, "1", ENTRIES, signer=signer, chain=chain))
    assert "[chain.depth]" in message


def test_the_signer_validity_is_checked_at_the_given_time(rims: SyntheticRims) -> None:
    xml = rims.sign(RIM_ID, "1", ENTRIES)
    assert "expired" in synth_refused(rims, "nvgpu.rim.chain", xml, rims.signer.cert.not_valid_after_utc + DAY)
    assert "not valid before" in synth_refused(rims, "nvgpu.rim.chain", xml, NOW - 2 * DAY)


# -- the signature ------------------------------------------------------------------------------------

def test_a_changed_measurement_breaks_the_digest(rims: SyntheticRims) -> None:
    xml = rims.sign(RIM_ID, "1", ENTRIES)
    assert DIGEST_7.hex().encode() in xml
    changed = xml.replace(DIGEST_7.hex().encode(), bytes(48).hex().encode())
    assert "InvalidDigest" in synth_refused(rims, "nvgpu.rim.signature", changed)


def test_a_signature_by_another_key_is_refused(rims: SyntheticRims) -> None:
    xml = rims.sign(RIM_ID, "1", ENTRIES, key=rims.pki.key(9))  # the chain names the L4 signer
    assert "InvalidSignature" in synth_refused(rims, "nvgpu.rim.signature", xml)


def test_a_truncated_signature_value_is_refused(rims: SyntheticRims) -> None:
    def truncate(tree: Any) -> None:
        value = _signature(tree).find(f"{{{DS_NS}}}SignatureValue")
        value.text = value.text[:64]
    synth_refused(rims, "nvgpu.rim.signature", rims.sign(RIM_ID, "1", ENTRIES, after=truncate))


def test_comments_are_not_signed_and_not_read(rims: SyntheticRims, synth: Callable[..., VerifiedRim]) -> None:
    xml = rims.sign(RIM_ID, "1", ENTRIES)
    commented = xml.replace(b"<Payload>", b"<Payload><!-- Hash0 = 00 -->")
    assert commented != xml
    assert synth(commented).entries == synth(xml).entries


def test_measurements_are_read_from_what_signxml_returns(rims: SyntheticRims, monkeypatch: pytest.MonkeyPatch,
                                                         synth: Callable[..., VerifiedRim]) -> None:
    seen: list[Any] = []
    original = read_document

    def spy(root: Any, what: str) -> Any:
        seen.append(root)
        return original(root, what)
    monkeypatch.setattr(rim_module, "read_document", spy)
    configure_rim_cache(0)
    try:
        synth(rims.sign(RIM_ID, "1", ENTRIES))
    finally:
        configure_rim_cache(rim_module.RIM_CACHE_BYTES)
    assert len(seen) == 1 and seen[0].find(f"{{{DS_NS}}}Signature") is None  # the signed tree, signature removed


# -- the SWID fields (each RIM correctly signed) --------------------------------------------------------

def _resource(tree: Any, index: int) -> Any:
    return tree.find(f"{{{SWID_NS}}}Payload")[index]


FIELD_EDITS: list[tuple[str, Callable[[Any], object], str]] = [
    ("root", lambda t: setattr(t, "tag", f"{{{SWID_NS}}}SoftwareIdentityX"), "wanted SoftwareIdentity"),
    ("tag_id", lambda t: t.attrib.pop("tagId"), "lacks the attribute 'tagId'"),
    ("meta", lambda t: t.remove(t.find(f"{{{SWID_NS}}}Meta")), "0 Meta elements"),
    ("version", lambda t: t.find(f"{{{SWID_NS}}}Meta").attrib.pop("colloquialVersion"), "colloquialVersion"),
    ("type", lambda t: _resource(t, 7).set("type", "Other"), "wanted 'Measurement'"),
    ("index", lambda t: _resource(t, 7).set("index", "x7"), "index is 'x7'"),
    ("index_range", lambda t: _resource(t, 7).set("index", "256"), "wanted a decimal 0..255"),
    ("duplicate", lambda t: _resource(t, 8).set("index", "7"), "index 7 twice"),
    ("active", lambda t: _resource(t, 7).set("active", "yes"), "wanted True or False"),
    ("alternatives", lambda t: _resource(t, 7).set("alternatives", "2"), "wanted Hash0..Hash1"),
    ("alternatives_zero", lambda t: _resource(t, 7).set("alternatives", "0"), "alternatives=0"),
    ("hash_length", lambda t: _resource(t, 7).set(f"{{{HASH_NS}}}Hash0", "ab" * 32), "wanted 96 hex digits"),
    ("hash_hex", lambda t: _resource(t, 7).set(f"{{{HASH_NS}}}Hash0", "zz" * 48), "wanted 96 hex digits"),
    ("size", lambda t: _resource(t, 7).set("size", "0"), "size 0"),
    ("unknown_attribute", lambda t: _resource(t, 7).set("extra", "1"), "unknown attribute 'extra'"),
    ("foreign_hash", lambda t: _resource(t, 7).set("{urn:other}Hash1", "00"), "unknown attribute"),
    ("element", lambda t: t.find(f"{{{SWID_NS}}}Payload").append(etree.Element(f"{{{SWID_NS}}}File")),
     "only Resource"),
    ("payload", lambda t: t.remove(t.find(f"{{{SWID_NS}}}Payload")), "0 Payload elements"),
    ("empty_version", lambda t: t.find(f"{{{SWID_NS}}}Meta").set("colloquialVersion", " "), "wanted 1-256 characters"),
    ("alternatives_range", lambda t: _resource(t, 7).set("alternatives", "17"), "wanted a decimal 0..16"),
    ("resources", lambda t: [t.find(f"{{{SWID_NS}}}Payload").append(etree.Element(f"{{{SWID_NS}}}Resource"))
                             for _ in range(200)], "more than the 256 allowed"),
    ("empty_payload", lambda t: [t.find(f"{{{SWID_NS}}}Payload").remove(r) for r in list(t.find(
        f"{{{SWID_NS}}}Payload"))], "holds no Resource"),
]


@pytest.mark.parametrize(("name", "edit", "said"), FIELD_EDITS, ids=[f[0] for f in FIELD_EDITS])
def test_swid_fields_are_read_strictly(rims: SyntheticRims, name: str, edit: Callable[[Any], object],
                                       said: str) -> None:
    root = document(RIM_ID, "1", ENTRIES)
    edit(root)
    message = synth_refused(rims, "nvgpu.rim.parse", rims.sign_document(root))
    assert said in message and f"RIM {RIM_ID}" in message


def test_optional_fields(rims: SyntheticRims, synth: Callable[..., VerifiedRim]) -> None:
    root = document(RIM_ID, "1", ENTRIES)
    meta = root.find(f"{{{SWID_NS}}}Meta")
    meta.attrib.pop(next(a for a in meta.attrib if a.endswith("FirmwareManufacturerId")))
    _resource(root, 7).attrib.pop("name")
    _resource(root, 7).set("active", "true")
    rim = synth(rims.sign_document(root))
    assert rim.firmware_manufacturer_id is None and rim.entries[7].name == "" and rim.entries[7].active


# -- the cache ----------------------------------------------------------------------------------------

def test_a_warm_check_is_one_lookup(rims: SyntheticRims, synth: Callable[..., VerifiedRim],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    xml = rims.sign(RIM_ID, "warm", ENTRIES)
    first = synth(xml)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a warm check parsed the RIM again")
    monkeypatch.setattr(rim_module, "parse_xml", never)
    assert synth(xml) is first and synth(bytearray(xml)) is first
    monkeypatch.undo()
    # Outside its window everything runs again, and the refusal says what expired.
    assert "expired" in synth_refused(rims, "nvgpu.rim.chain", xml, first.not_after + DAY)
    # The same bytes under other roots are not served from the cache.
    refused("nvgpu.rim.chain", xml, rim_id=RIM_ID)


def test_cached_rim_answers_only_from_the_cache(rims: SyntheticRims, synth: Callable[..., VerifiedRim]) -> None:
    xml = rims.sign(RIM_ID, "cached", ENTRIES)
    assert cached_rim(xml, NOW, trust_roots=rims.trust_roots) is None
    rim = synth(xml)
    assert cached_rim(xml, NOW, trust_roots=rims.trust_roots) is rim
    assert cached_rim(xml, rim.not_after + DAY, trust_roots=rims.trust_roots) is None
    assert cached_rim(xml, NOW) is None  # other roots


def test_the_cache_is_bounded_by_bytes(rims: SyntheticRims, synth: Callable[..., VerifiedRim]) -> None:
    configure_rim_cache(60 * 1024)
    try:
        for number in range(5):
            synth(rims.sign(RIM_ID, f"v{number}", ENTRIES))
        assert rim_module._verified.bytes_used <= 60 * 1024 and len(rim_module._verified) < 5
    finally:
        configure_rim_cache(rim_module.RIM_CACHE_BYTES)


# -- RIM ids ------------------------------------------------------------------------------------------

def test_driver_rim_ids() -> None:
    assert driver_rim_id("550.90.07", "HOPPER") == "NV_GPU_DRIVER_GH100_550.90.07"
    assert driver_rim_id(b"550.90.07\x00", "hopper") == "NV_GPU_DRIVER_GH100_550.90.07"
    assert driver_rim_id("575.32", "BLACKWELL", b"GB100\x00") == "NV_GPU_CC_DRIVER_GB100_575.32"
    assert driver_rim_id("575.32", "Blackwell", "GB102") == "NV_GPU_CC_DRIVER_GB102_575.32"
    assert driver_rim_id("575.32", "BLACKWELL") == "NV_GPU_CC_DRIVER_GB100_575.32"  # opaque data v0: no CHIP_INFO
    assert driver_rim_id("575.32", "BLACKWELL", b"\x00\x00") == "NV_GPU_CC_DRIVER_GB100_575.32"


def test_vbios_rim_ids() -> None:
    assert vbios_rim_id(b"1010\x00", b"0200\x00", b"882\x00\x00\x00\x00\x00\x00", "96.00.9f.00.01") == \
        "NV_GPU_VBIOS_1010_0200_882_96009F0001"
    assert vbios_rim_id("G525", "0220", "886", format_vbios_version(bytes.fromhex("008800970f000000"))) == \
        "NV_GPU_VBIOS_G525_0220_886_970088000F"
    assert format_vbios_version(bytes.fromhex("009f009601000000")) == "96.00.9f.00.01"


@pytest.mark.parametrize("call", [
    lambda: driver_rim_id("../../etc/passwd", "HOPPER"),
    lambda: driver_rim_id("550/90", "HOPPER"),
    lambda: driver_rim_id("", "HOPPER"),
    lambda: driver_rim_id(b"\xff550", "HOPPER"),
    lambda: driver_rim_id("550.90.07", "AMPERE"),
    lambda: driver_rim_id("575.32", "BLACKWELL", "GB 100"),
    lambda: vbios_rim_id("1010", "0200", "882", "96.00.9f.00.01?x=1"),
    lambda: vbios_rim_id("1010", "0200", "8" * 65, "96.00.9f.00.01"),
    lambda: format_vbios_version(b"\x00" * 7),
    lambda: check_rim_id("GPU_DRIVER"),
    lambda: check_rim_id("NV_" + "A" * 200),
    lambda: check_rim_id("NV_a/../b"),
])
def test_ids_from_hostile_values_are_refused(call: Callable[[], str]) -> None:
    with pytest.raises(MalformedEvidence) as info:
        call()
    assert info.value.check == "nvgpu.rim.id"


def test_ids_are_safe_file_names() -> None:
    assert re.fullmatch(r"[A-Za-z0-9._-]+", driver_rim_id("550.90.07", "HOPPER"))
    assert Path(driver_rim_id("1.0", "HOPPER")).name == "NV_GPU_DRIVER_GH100_1.0"
