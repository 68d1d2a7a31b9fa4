"""Signatures over X.509 objects (certificates, CRLs, OCSP responses), for every algorithm vendors use.

AMD signs with RSASSA-PSS (SHA-384, MGF1-SHA-384, salt 48), Intel with ECDSA P-256/SHA-256, NVIDIA with
ECDSA P-384/SHA-384; RSA PKCS#1 v1.5 is common elsewhere.  Each algorithm identifier is decoded
strictly: RSASSA-PSS takes its hash, MGF1 hash and salt length from the parameters (trailer field 1);
PKCS#1 v1.5 takes NULL or absent parameters; ECDSA takes none.  Anything else (SHA-1, MD5, DSA,
Ed25519, RSA-PSS keys, curves other than P-256 and P-384) is refused with a named check.

A profile (a frozenset of `SignatureAlgorithm`) narrows what a caller accepts, as AMD accepts only
RSASSA-PSS-SHA384.  The signer's key must fit the algorithm: an RSA key of at least 2048 bits for
the RSA schemes, a P-256 or P-384 key (the curve named in its SubjectPublicKeyInfo) for ECDSA.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pyasn1.codec.der import decoder
from pyasn1.error import PyAsn1Error
from pyasn1_modules import rfc4055, rfc5280

from kbs.errors import ChainInvalid
from kbs.trust.x509 import (
    OID_EC_PUBLIC_KEY,
    OID_RSA_ENCRYPTION,
    OID_RSASSA_PSS,
    OID_SECP256R1,
    OID_SECP384R1,
    Certificate,
)

OID_MGF1 = "1.2.840.113549.1.1.8"
OID_SHA256_WITH_RSA = "1.2.840.113549.1.1.11"
OID_SHA384_WITH_RSA = "1.2.840.113549.1.1.12"
OID_SHA512_WITH_RSA = "1.2.840.113549.1.1.13"
OID_ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2"
OID_ECDSA_WITH_SHA384 = "1.2.840.10045.4.3.3"
OID_ECDSA_WITH_SHA512 = "1.2.840.10045.4.3.4"

HashName = Literal["SHA-256", "SHA-384", "SHA-512"]
_HASH_OIDS: dict[str, HashName] = {
    "2.16.840.1.101.3.4.2.1": "SHA-256",
    "2.16.840.1.101.3.4.2.2": "SHA-384",
    "2.16.840.1.101.3.4.2.3": "SHA-512",
}
_RSA_PKCS1_OIDS: dict[str, HashName] = {
    OID_SHA256_WITH_RSA: "SHA-256", OID_SHA384_WITH_RSA: "SHA-384", OID_SHA512_WITH_RSA: "SHA-512"}
_ECDSA_OIDS: dict[str, HashName] = {
    OID_ECDSA_WITH_SHA256: "SHA-256", OID_ECDSA_WITH_SHA384: "SHA-384", OID_ECDSA_WITH_SHA512: "SHA-512"}
# Names of algorithms we refuse, so an operator reads "sha1WithRSAEncryption", not an OID.
_KNOWN_REFUSED = {
    "1.2.840.113549.1.1.5": "sha1WithRSAEncryption",
    "1.2.840.113549.1.1.4": "md5WithRSAEncryption",
    "1.2.840.113549.1.1.14": "sha224WithRSAEncryption",
    "1.2.840.10045.4.1": "ecdsa-with-SHA1",
    "1.2.840.10045.4.3.1": "ecdsa-with-SHA224",
    "1.2.840.10040.4.3": "dsa-with-SHA1",
    "2.16.840.1.101.3.4.3.2": "dsa-with-SHA256",
    "1.3.101.112": "Ed25519",
    "1.3.101.113": "Ed448",
}
_NULL = b"\x05\x00"
_CURVES = {OID_SECP256R1: "P-256", OID_SECP384R1: "P-384"}
MIN_RSA_BITS = 2048
SUPPORTED = "RSASSA-PSS, RSA PKCS#1 v1.5 or ECDSA, with SHA-256, SHA-384 or SHA-512"


@dataclass(frozen=True)
class SignatureAlgorithm:
    """One decoded signature algorithm: the scheme, its hash and (PSS) its MGF1 hash and salt length."""

    scheme: Literal["rsa-pss", "rsa-pkcs1", "ecdsa"]
    hash: HashName
    mgf1_hash: HashName | None = None
    salt_length: int | None = None

    def __str__(self) -> str:
        if self.scheme == "rsa-pss":
            return f"RSASSA-PSS ({self.hash}, MGF1-{self.mgf1_hash}, salt {self.salt_length})"
        if self.scheme == "rsa-pkcs1":
            return f"RSA PKCS#1 v1.5 with {self.hash}"
        return f"ECDSA with {self.hash}"

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return _hash(self.hash)


def _hash(name: HashName) -> hashes.HashAlgorithm:
    if name == "SHA-256":
        return hashes.SHA256()
    if name == "SHA-384":
        return hashes.SHA384()
    return hashes.SHA512()


def rsa_pss(hash_name: HashName) -> SignatureAlgorithm:
    """RSASSA-PSS with MGF1 over the same hash and a salt as long as the hash (the usual profile)."""
    return SignatureAlgorithm("rsa-pss", hash_name, hash_name, {"SHA-256": 32, "SHA-384": 48, "SHA-512": 64}[hash_name])


RSA_PSS_SHA256 = rsa_pss("SHA-256")
RSA_PSS_SHA384 = rsa_pss("SHA-384")  # AMD's ARK, ASK/ASVK, VCEK/VLEK and CRLs
RSA_PSS_SHA512 = rsa_pss("SHA-512")
RSA_PKCS1_SHA256 = SignatureAlgorithm("rsa-pkcs1", "SHA-256")
RSA_PKCS1_SHA384 = SignatureAlgorithm("rsa-pkcs1", "SHA-384")
RSA_PKCS1_SHA512 = SignatureAlgorithm("rsa-pkcs1", "SHA-512")
ECDSA_SHA256 = SignatureAlgorithm("ecdsa", "SHA-256")  # Intel's PCK chain and collateral
ECDSA_SHA384 = SignatureAlgorithm("ecdsa", "SHA-384")  # NVIDIA's device and RIM chains, OCSP
ECDSA_SHA512 = SignatureAlgorithm("ecdsa", "SHA-512")

Profile = Collection[SignatureAlgorithm]


def describe_profile(allowed: Profile) -> str:
    return " or ".join(sorted(str(a) for a in allowed))


def _decode(der: bytes, spec: object, what: str, check: str) -> object:
    try:
        value, rest = decoder.decode(der, asn1Spec=spec)
    except PyAsn1Error as exc:
        raise ChainInvalid(f"{what} has a malformed signature algorithm", check=check) from exc
    if rest:
        raise ChainInvalid(f"{what} signature algorithm has trailing bytes", check=check)
    return value


def algorithm_identifier(der: bytes, *, what: str, check: str) -> tuple[str, bytes]:
    """(OID, parameter bytes or b'') of a DER AlgorithmIdentifier."""
    value = _decode(der, rfc5280.AlgorithmIdentifier(), what, check)
    assert isinstance(value, rfc5280.AlgorithmIdentifier)
    params = value["parameters"]
    return str(value["algorithm"]), bytes(params) if params.hasValue() else b""


def _hash_of(identifier: rfc5280.AlgorithmIdentifier, role: str, what: str, check: str) -> HashName:
    if not identifier.hasValue():
        raise ChainInvalid(f"{what} RSASSA-PSS parameters leave the {role} at its default, SHA-1; "
                           f"wanted SHA-256, SHA-384 or SHA-512", check=check)
    oid = str(identifier["algorithm"])
    params = identifier["parameters"]
    if oid not in _HASH_OIDS or (params.hasValue() and bytes(params) != _NULL):
        raise ChainInvalid(f"{what} RSASSA-PSS {role} is {oid}, wanted SHA-256, SHA-384 or SHA-512",
                           check=check)
    return _HASH_OIDS[oid]


def _pss(parameters: bytes, what: str, check: str) -> SignatureAlgorithm:
    if not parameters:
        raise ChainInvalid(f"{what} RSASSA-PSS has no parameters (the defaults mean SHA-1)", check=check)
    params = _decode(parameters, rfc4055.RSASSA_PSS_params(), what, check)
    assert isinstance(params, rfc4055.RSASSA_PSS_params)
    hash_name = _hash_of(params["hashAlgorithm"], "hash", what, check)
    mgf = params["maskGenAlgorithm"]
    if not mgf.hasValue():
        raise ChainInvalid(f"{what} RSASSA-PSS parameters leave the mask generation at its default, "
                           "MGF1-SHA-1", check=check)
    if str(mgf["algorithm"]) != OID_MGF1 or not mgf["parameters"].hasValue():
        raise ChainInvalid(f"{what} RSASSA-PSS mask generation is {mgf['algorithm']}, wanted MGF1",
                           check=check)
    mgf_hash = _decode(bytes(mgf["parameters"]), rfc5280.AlgorithmIdentifier(), what, check)
    assert isinstance(mgf_hash, rfc5280.AlgorithmIdentifier)
    mgf1_hash = _hash_of(mgf_hash, "MGF1 hash", what, check)
    trailer = int(params["trailerField"])
    if trailer != 1:
        raise ChainInvalid(f"{what} RSASSA-PSS trailer field is {trailer}, wanted 1", check=check)
    salt = int(params["saltLength"])
    if salt < 0 or salt > 1024:
        raise ChainInvalid(f"{what} RSASSA-PSS salt length is {salt}", check=check)
    return SignatureAlgorithm("rsa-pss", hash_name, mgf1_hash, salt)


def signature_algorithm(oid: str, parameters: bytes, *, what: str,
                        check: str = "chain.signature_algorithm") -> SignatureAlgorithm:
    """Decode an algorithm identifier (OID and its parameter bytes); refuse what is not supported."""
    if oid == OID_RSASSA_PSS:
        return _pss(parameters, what, check)
    if oid in _RSA_PKCS1_OIDS:
        if parameters not in (b"", _NULL):
            raise ChainInvalid(f"{what} RSA PKCS#1 v1.5 algorithm has parameters other than NULL", check=check)
        return SignatureAlgorithm("rsa-pkcs1", _RSA_PKCS1_OIDS[oid])
    if oid in _ECDSA_OIDS:
        if parameters:
            raise ChainInvalid(f"{what} ECDSA algorithm identifier has parameters; it must have none",
                               check=check)
        return SignatureAlgorithm("ecdsa", _ECDSA_OIDS[oid])
    name = _KNOWN_REFUSED.get(oid, oid)
    raise ChainInvalid(f"{what} is signed with {name}, which is not accepted (wanted {SUPPORTED})", check=check)


def check_allowed(algorithm: SignatureAlgorithm, allowed: Profile | None, *, what: str,
                  check: str = "chain.signature_algorithm") -> None:
    if allowed is not None and algorithm not in allowed:
        raise ChainInvalid(f"{what} is signed with {algorithm}, wanted {describe_profile(allowed)}", check=check)


def _describe_key(signer: Certificate) -> str:
    if signer.spki_algorithm == OID_EC_PUBLIC_KEY:
        return f"an EC key on {_CURVES.get(signer.spki_curve or '', signer.spki_curve or 'no named curve')}"
    if signer.spki_algorithm == OID_RSA_ENCRYPTION:
        return "an RSA key"
    if signer.spki_algorithm == OID_RSASSA_PSS:
        return "an RSASSA-PSS-only RSA key (not accepted)"
    return f"a key of type {signer.spki_algorithm}"


def verify_signature(signer: Certificate, algorithm: SignatureAlgorithm, signature: bytes, data: bytes, *,
                     what: str, check: str = "chain.signature", key_check: str = "chain.key_type") -> None:
    """`signature` over `data` verifies with `signer`'s key under `algorithm`, or ChainInvalid.

    `what` names the signed object in messages; `check` labels a signature that does not verify,
    `key_check` a key that cannot make this kind of signature."""
    wrong_key = ChainInvalid(f"{what} is signed with {algorithm}, but {signer.subject_cn}'s key is "
                             f"{_describe_key(signer)}", check=key_check)
    if algorithm.scheme == "ecdsa":
        if signer.spki_algorithm != OID_EC_PUBLIC_KEY or signer.spki_curve not in _CURVES:
            raise wrong_key
    elif signer.spki_algorithm != OID_RSA_ENCRYPTION:
        raise wrong_key
    try:
        key = load_der_public_key(signer.spki_der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ChainInvalid(f"{signer.subject_cn}'s public key does not load: {exc}", check=key_check) from exc
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm.hash_algorithm()))
        elif isinstance(key, rsa.RSAPublicKey):
            if key.key_size < MIN_RSA_BITS:
                raise ChainInvalid(f"{signer.subject_cn}'s RSA key has {key.key_size} bits, wanted at least "
                                   f"{MIN_RSA_BITS}", check=key_check)
            if algorithm.scheme == "rsa-pss":
                assert algorithm.mgf1_hash is not None and algorithm.salt_length is not None
                pss = padding.PSS(mgf=padding.MGF1(_hash(algorithm.mgf1_hash)), salt_length=algorithm.salt_length)
                key.verify(signature, data, pss, algorithm.hash_algorithm())
            else:
                key.verify(signature, data, padding.PKCS1v15(), algorithm.hash_algorithm())
        else:
            raise wrong_key
    except (InvalidSignature, ValueError) as exc:
        raise ChainInvalid(f"{what} signature does not verify with {signer.subject_cn}'s key",
                           check=check) from exc


def certificate_algorithm(cert: Certificate) -> SignatureAlgorithm:
    """The algorithm `cert` is signed with; both copies of its identifier must be identical."""
    if (cert.signature_algorithm, cert.signature_parameters) != \
            (cert.tbs_signature_algorithm, cert.tbs_signature_parameters):
        raise ChainInvalid(f"{cert.subject_cn}: the signed copy of the signature algorithm "
                           f"({cert.tbs_signature_algorithm}) differs from the unsigned one "
                           f"({cert.signature_algorithm})", check="chain.signature_algorithm")
    return signature_algorithm(cert.signature_algorithm, cert.signature_parameters, what=cert.subject_cn)


def verify_link(cert: Certificate, issuer: Certificate, allowed: Profile | None = None) -> SignatureAlgorithm:
    """`cert` was signed by `issuer`'s key, with a supported algorithm (and one of `allowed`, if given).

    Checks only the signature; names, CA flags and validity are the chain walker's."""
    algorithm = certificate_algorithm(cert)
    check_allowed(algorithm, allowed, what=cert.subject_cn)
    verify_signature(issuer, algorithm, cert.signature, cert.tbs, what=cert.subject_cn)
    return algorithm
