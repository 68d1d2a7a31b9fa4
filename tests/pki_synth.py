"""Synthetic PKIs of every algorithm the trust layer accepts, for tests of the chain walker and revocation.

`Pki(algorithm)` makes a root; `issue` makes intermediates, leaves and OCSP responders under any
issuer, with any defect a test needs (another signing key, dates, constraints, extensions); `crl`
and `ocsp` make revocation collateral.  Keys are generated once per (kind, slot) and reused, so a
suite of tests stays fast; `fresh_key` gives a key no certificate has used.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kbs.trust.x509 import Certificate, parse_certificate
from tests import der as dertools

NOW = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)

Algorithm = Literal["rsa-pss-sha256", "rsa-pss-sha384", "rsa-pss-sha512", "rsa-pkcs1-sha256", "rsa-pkcs1-sha384",
                    "rsa-pkcs1-sha512", "ecdsa-p256-sha256", "ecdsa-p384-sha384", "ecdsa-p256-sha384"]
ALGORITHMS: tuple[Algorithm, ...] = ("rsa-pss-sha256", "rsa-pss-sha384", "rsa-pss-sha512", "rsa-pkcs1-sha256",
                                     "rsa-pkcs1-sha384", "rsa-pkcs1-sha512", "ecdsa-p256-sha256",
                                     "ecdsa-p384-sha384", "ecdsa-p256-sha384")
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
Hash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512
RsaPadding = padding.PSS | padding.PKCS1v15
_HASHES: dict[str, Hash] = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}


def key_kind(algorithm: Algorithm) -> str:
    return "rsa" if algorithm.startswith("rsa") else algorithm.split("-")[1]


@functools.cache
def shared_key(kind: str, slot: int = 0) -> PrivateKey:
    """A key of `kind` ('rsa', 'p256', 'p384', 'p521', 'rsa1024'), the same for the same slot."""
    return fresh_key(kind)


def fresh_key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    if kind == "rsa1024":
        return rsa.generate_private_key(65537, 1024)
    curve = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[kind]
    return ec.generate_private_key(curve)


def signing(algorithm: Algorithm) -> tuple[Hash, RsaPadding | None]:
    """(hash, RSA padding) for cryptography's builders."""
    digest = _HASHES[algorithm.rsplit("-", 1)[1]]
    if algorithm.startswith("rsa-pss"):
        return digest, padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
    if algorithm.startswith("rsa-pkcs1"):
        return digest, padding.PKCS1v15()
    return digest, None


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Synthetic PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


@dataclass
class Node:
    """One certificate and the private key of its subject."""

    cn: str
    key: PrivateKey
    cert: x509.Certificate
    algorithm: Algorithm  # what this subject signs with

    @property
    def der(self) -> bytes:
        return der(self.cert)

    @property
    def parsed(self) -> Certificate:
        return parse_certificate(self.der)


_UNSET: object = object()


class Pki:
    """A root of one algorithm and whatever it issues."""

    def __init__(self, algorithm: Algorithm = "ecdsa-p384-sha384", *, root_cn: str = "Synthetic Root CA",
                 slot: int = 0, root_path_length: int | None = None) -> None:
        self.algorithm = algorithm
        self._slot = slot
        self.root = self.issue(root_cn, None, key=self.key(0),
                               path_length=root_path_length, serial=0x1000 + slot)

    def key(self, offset: int = 1) -> PrivateKey:
        return shared_key(key_kind(self.algorithm), self._slot * 16 + offset)

    def issue(self, cn: str, issuer: Node | None, *, key: PrivateKey | None = None, ca: bool | None = True,
              path_length: int | None = None, algorithm: Algorithm | None = None,
              signer: PrivateKey | None = None, issuer_name: x509.Name | None = None, serial: int = 0x2000,
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
              key_usage: x509.KeyUsage | object | None = _UNSET, eku: list[x509.ObjectIdentifier] | None = None,
              extra: tuple[tuple[x509.ExtensionType, bool], ...] = ()) -> Node:
        """A certificate for `cn` under `issuer` (self-signed when None).

        `ca` None leaves basicConstraints out; `signer` signs with another key than the issuer's (a
        forged link); `algorithm` is the subject's own signing algorithm (default: the PKI's)."""
        subject_algorithm = algorithm or self.algorithm
        key = key or self.key()
        signed_with = issuer.algorithm if issuer is not None else subject_algorithm
        builder = (x509.CertificateBuilder().subject_name(name(cn))
                   .issuer_name(issuer_name or (issuer.cert.subject if issuer is not None else name(cn)))
                   .public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(not_before or NOW - 30 * DAY).not_valid_after(not_after or NOW + 365 * DAY))
        if ca is not None:
            builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
                                            critical=True)
        if key_usage is _UNSET:
            key_usage = _CA_USAGE if ca else _LEAF_USAGE
        if isinstance(key_usage, x509.KeyUsage):
            builder = builder.add_extension(key_usage, critical=True)
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        for extension, critical in extra:
            builder = builder.add_extension(extension, critical=critical)
        digest, rsa_padding = signing(signed_with)
        signing_key = signer or (issuer.key if issuer is not None else key)
        if isinstance(signing_key, rsa.RSAPrivateKey):
            cert = builder.sign(signing_key, digest, rsa_padding=rsa_padding)
        else:
            cert = builder.sign(signing_key, digest)
        return Node(cn, key, cert, subject_algorithm)

    def chain(self) -> tuple[Node, Node]:
        """(intermediate, leaf): the usual three-certificate chain under the root."""
        intermediate = self.issue("Synthetic Intermediate CA", self.root, key=self.key(1), path_length=0,
                                  serial=0x3000)
        leaf = self.issue("Synthetic Leaf", intermediate, key=self.key(2), ca=False, serial=0x4000)
        return intermediate, leaf

    def responder(self, issuer: Node, *, cn: str = "Synthetic OCSP Responder", eku: bool = True,
                  **kwargs: object) -> Node:
        return self.issue(cn, issuer, key=self.key(3), ca=False,
                          eku=[ExtendedKeyUsageOID.OCSP_SIGNING] if eku else None, serial=0x5000,
                          **kwargs)  # type: ignore[arg-type]

    # -- revocation collateral -----------------------------------------------------------------

    @staticmethod
    def crl(issuer: Node, revoked: tuple[int, ...] = (), *, this_update: dt.datetime | None = None,
            next_update: dt.datetime | object | None = _UNSET, signer: PrivateKey | None = None,
            issuer_name: x509.Name | None = None, reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise,
            extensions: tuple[tuple[x509.ExtensionType, bool], ...] = ()) -> bytes:
        builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer_name or issuer.cert.subject)
                   .last_update(this_update or NOW - DAY))
        if next_update is _UNSET:
            builder = builder.next_update(NOW + 7 * DAY)
        elif isinstance(next_update, dt.datetime):
            builder = builder.next_update(next_update)
        for serial in revoked:
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - 2 * DAY)
            if reason is not None:
                entry = entry.add_extension(x509.CRLReason(reason), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        digest, rsa_padding = signing(issuer.algorithm)
        key = signer or issuer.key
        crl = (builder.sign(key, digest, rsa_padding=rsa_padding) if isinstance(key, rsa.RSAPrivateKey)
               else builder.sign(key, digest))
        return crl.public_bytes(Encoding.DER)

    @staticmethod
    def ocsp(cert: Node, issuer: Node, status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD, *,
             responder: Node | None = None, signer: PrivateKey | None = None,
             this_update: dt.datetime | None = None, next_update: dt.datetime | object | None = _UNSET,
             revocation_time: dt.datetime | None = None, reason: x509.ReasonFlags | None = None,
             nonce: bytes | None = None, cert_id_hash: hashes.HashAlgorithm | None = None,
             by_name: bool = False, include: tuple[Node, ...] | None = None,
             digest: Hash | None = None) -> bytes:
        """An OCSP response about `cert`, signed by `responder` (default: the issuer itself).

        `include` lists the certificates carried in the response (default: the responder if delegated)."""
        signed_by = responder or issuer
        this = this_update or NOW - dt.timedelta(hours=1)
        nxt = NOW + DAY if next_update is _UNSET else next_update
        assert nxt is None or isinstance(nxt, dt.datetime)
        if status == ocsp.OCSPCertStatus.REVOKED:
            revocation_time = revocation_time or NOW - 3 * DAY
        builder = (ocsp.OCSPResponseBuilder()
                   .add_response(cert=cert.cert, issuer=issuer.cert, algorithm=cert_id_hash or hashes.SHA384(),
                                 cert_status=status, this_update=this, next_update=nxt,
                                 revocation_time=revocation_time, revocation_reason=reason)
                   .responder_id(ocsp.OCSPResponderEncoding.NAME if by_name else ocsp.OCSPResponderEncoding.HASH,
                                 signed_by.cert))
        carried = include if include is not None else ((responder,) if responder is not None else ())
        if carried:
            builder = builder.certificates([n.cert for n in carried])
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        key = signer or signed_by.key
        response = builder.sign(key, digest or signing(signed_by.algorithm)[0])
        return response.public_bytes(Encoding.DER)


_CA_USAGE = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)
_LEAF_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                            encipher_only=False, decipher_only=False)


def key_usage(**bits: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{n: bits.get(n, False) for n in names})


# -- DER surgery on signed objects (for collateral pyca's builders refuse to make) --------------------







def sign_raw(key: PrivateKey, algorithm: Algorithm, data: bytes) -> bytes:
    digest, rsa_padding = signing(algorithm)
    if isinstance(key, rsa.RSAPrivateKey):
        assert rsa_padding is not None
        return key.sign(data, rsa_padding, digest)
    return key.sign(data, ec.ECDSA(digest))


def resign_crl(crl: bytes, key: PrivateKey, algorithm: Algorithm, *, drop_next_update: bool = False) -> bytes:
    """`crl` signed again by `key` (its algorithm identifiers unchanged), optionally without nextUpdate."""
    tbs, algorithm_id, _ = dertools.split(dertools.contents(crl))
    fields = dertools.split(dertools.contents(tbs))
    if drop_next_update:
        times = [i for i, f in enumerate(fields) if f[0] in (0x17, 0x18)]
        del fields[times[1]]
    tbs = dertools.tlv(0x30, b"".join(fields))
    return dertools.tlv(0x30, tbs + algorithm_id + dertools.tlv(0x03, b"\x00" + sign_raw(key, algorithm, tbs)))


def resign_ocsp(response: bytes, key: PrivateKey, algorithm: Algorithm) -> bytes:
    """An OCSP response whose BasicOCSPResponse is signed again by `key`, everything else unchanged."""
    status, wrapper = dertools.split(dertools.contents(response))
    response_type, octets = dertools.split(dertools.contents(dertools.contents(wrapper)))
    tbs, algorithm_id, _, *certs = dertools.split(dertools.contents(dertools.contents(octets)))
    signature = dertools.tlv(0x03, b"\x00" + sign_raw(key, algorithm, tbs))
    basic = dertools.tlv(0x30, tbs + algorithm_id + signature + b"".join(certs))
    wrapped = dertools.tlv(0xA0, dertools.tlv(0x30, response_type + dertools.tlv(0x04, basic)))
    return dertools.tlv(0x30, status + wrapped)
