"""The XML-DSig profile of NVIDIA's RIMs, and its verification with signxml (reference/gpu.md §3.1).

Exactly one profile is accepted, checked on the signature element before any cryptography:

- one ``ds:Signature`` in the whole document, a child of the root, holding exactly ``SignedInfo``,
  ``SignatureValue`` and ``KeyInfo`` (no ``ds:Object``: nothing for a wrapping attack to hide in);
- ``CanonicalizationMethod`` C14N 1.1; ``SignatureMethod`` ecdsa-sha384;
- one ``Reference`` with ``URI=""`` (the whole document: never an element picked by an Id), whose
  ``Transforms`` are exactly enveloped-signature then C14N 1.1, and whose ``DigestMethod`` is sha384;
- ``KeyInfo`` holds one ``X509Data`` of 1-8 ``X509Certificate`` (leaf first), and nothing else.

Then signxml verifies, told the same (`SignatureConfiguration`: ecdsa-sha384 and sha384 only, one
reference, the signature a child of the root) and given the leaf the caller has already walked to a
pinned root as the only key (``x509_cert``: signxml's own chain building is not used).  What it returns
as signed (the canonical document without its signature, parsed again) is the only tree the caller reads:
a Resource that was not signed can never be read.  Every refusal is `nvgpu.rim.signature`, except
missing or malformed certificates (`nvgpu.rim.chain`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from datetime import datetime
from typing import Any

import cryptography.exceptions
from cryptography import x509
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from kbs.errors import ChainInvalid, SignatureInvalid
from kbs.trust.nvidia.rim_xml import hardened_parser, refuse_dtd

DS_NS = "http://www.w3.org/2000/09/xmldsig#"
C14N_11 = "http://www.w3.org/2006/12/xml-c14n11"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
ECDSA_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384"
SHA384 = "http://www.w3.org/2001/04/xmldsig-more#sha384"
MAX_CERTIFICATES = 8  # NVIDIA embeds 4 (signer, L3, CA, root)
MAX_CERTIFICATE_BASE64 = 24 * 1024  # x509 refuses DER over 16 KiB anyway; this bounds the decoding
SIGNATURE = "nvgpu.rim.signature"
CHAIN = "nvgpu.rim.chain"

_CONFIG = SignatureConfiguration(
    location="./",  # the signature is a child of the root (enveloped at the top)
    expect_references=1,
    signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
    digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
)


def _ds(tag: str) -> str:
    return f"{{{DS_NS}}}{tag}"


def _bad(what: str, message: str) -> SignatureInvalid:
    return SignatureInvalid(f"{what} signature: {message}", check=SIGNATURE)


def _children(element: Any) -> list[Any]:
    return [child for child in element if isinstance(child.tag, str)]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _expect_children(element: Any, wanted: tuple[str, ...], what: str) -> list[Any]:
    children = _children(element)
    tags = tuple(child.tag for child in children)
    if tags != tuple(_ds(tag) for tag in wanted):
        seen = ", ".join(_local(tag) for tag in tags) or "nothing"
        raise _bad(what, f"{_local(element.tag)} holds {seen}, wanted exactly {', '.join(wanted)}")
    return children


def _algorithm(element: Any, wanted: str, what: str) -> None:
    seen = element.get("Algorithm")
    if seen != wanted:
        raise _bad(what, f"{_local(element.tag)} is {seen!r}, wanted {wanted!r}")


def signature_element(root: Any, what: str) -> Any:
    """The one ds:Signature of the document, a child of the root, in NVIDIA's profile (module docstring)."""
    signatures = list(root.iter(_ds("Signature")))
    if len(signatures) != 1:
        raise _bad(what, f"the document holds {len(signatures)} ds:Signature elements, wanted exactly one")
    signature = signatures[0]
    if signature.getparent() is not root:
        raise _bad(what, "ds:Signature is not a child of the root element (an enveloped signature over the whole "
                         "document is expected)")
    signed_info, _, _ = _expect_children(signature, ("SignedInfo", "SignatureValue", "KeyInfo"), what)
    c14n, method, reference = _expect_children(
        signed_info, ("CanonicalizationMethod", "SignatureMethod", "Reference"), what)
    _algorithm(c14n, C14N_11, what)
    _algorithm(method, ECDSA_SHA384, what)
    if reference.get("URI") != "":
        raise _bad(what, f"the Reference URI is {reference.get('URI')!r}, wanted \"\" (the whole document)")
    transforms, digest, _ = _expect_children(reference, ("Transforms", "DigestMethod", "DigestValue"), what)
    steps = _children(transforms)
    algorithms = [step.get("Algorithm") for step in steps]
    if [step.tag for step in steps] != [_ds("Transform")] * 2 or algorithms != [ENVELOPED, C14N_11]:
        raise _bad(what, f"the Reference transforms are {algorithms}, wanted [{ENVELOPED!r}, {C14N_11!r}]")
    _algorithm(digest, SHA384, what)
    return signature


def embedded_certificates(signature: Any, what: str) -> list[bytes]:
    """The DER certificates of KeyInfo/X509Data, in document order (the signer first)."""
    key_info = signature.find(_ds("KeyInfo"))
    children = _children(key_info)
    if [child.tag for child in children] != [_ds("X509Data")]:
        seen = ", ".join(_local(child.tag) for child in children) or "nothing"
        raise ChainInvalid(f"{what}: KeyInfo holds {seen}, wanted one X509Data with the signing chain", check=CHAIN)
    certificates = _children(children[0])
    if not certificates or any(cert.tag != _ds("X509Certificate") for cert in certificates):
        raise ChainInvalid(f"{what}: X509Data holds no certificate, or something other than X509Certificate",
                           check=CHAIN)
    if len(certificates) > MAX_CERTIFICATES:
        raise ChainInvalid(f"{what}: X509Data holds {len(certificates)} certificates, more than the "
                           f"{MAX_CERTIFICATES} allowed", check=CHAIN)
    ders = []
    for number, cert in enumerate(certificates):
        text = "".join((cert.text or "").split())
        if len(text) > MAX_CERTIFICATE_BASE64:
            raise ChainInvalid(f"{what}: X509Certificate #{number} is {len(text)} base64 characters, more than the "
                               f"{MAX_CERTIFICATE_BASE64} allowed", check=CHAIN)
        try:
            ders.append(base64.b64decode(text, validate=True))
        except binascii.Error as exc:
            raise ChainInvalid(f"{what}: X509Certificate #{number} is not base64", check=CHAIN) from exc
    return ders


def verify_signed_document(xml: bytes, signer_der: bytes, at: datetime, what: str) -> Any:
    """signxml's verification of `xml` with `signer_der`'s key (already chained to a pinned root) in the
    profile above; returns the signed document (the root element of what was signed)."""
    # signxml checks the signer's validity itself: at the caller's time, never the clock.
    try:
        signer = x509.load_der_x509_certificate(signer_der)
        verified = XMLVerifier().verify(xml, x509_cert=signer, parser=hardened_parser(),
                                        expect_config=dataclasses.replace(_CONFIG, verification_time=at))
    except (SignXMLException, etree.LxmlError, ValueError, cryptography.exceptions.InvalidSignature) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise _bad(what, f"does not verify with {_subject(signer_der)}'s key ({type(exc).__name__}: "
                         f"{reason[:300]})") from exc
    signed = getattr(verified, "signed_xml", None)
    if signed is None:
        raise _bad(what, "signxml returned no signed XML document")
    refuse_dtd(signed, what)
    return signed


def _subject(der: bytes) -> str:
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return "the signer"
