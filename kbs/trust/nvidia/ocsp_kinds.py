"""NVIDIA OCSP responses in the collateral cache (`kbs collateral`); RIMs are `rim_kinds`'.

An OCSP response (kind ``nvidia.ocsp``, service ``nvidia-ocsp``) is stored exactly as the responder sent
it, under the SHA-384 CertID of its certificate (`ocsp_service.cache_key`, where `OcspClient` looks),
with that certificate and its issuers up to the root recorded beside it (`CHAIN_HEADER`), so every
entry can be checked on its own, here and after `kbs collateral export` / `import`.  Before it enters:

- the recorded chain (the certificate asked about, its issuer, …, the root) walks to a pinned NVIDIA
  root, the Device Identity CA or the CoRIM signing root (or `--trust-root`), at the given time;
- the response is authentic for that certificate: successful, matched by CertID, signed with
  ECDSA-SHA384 by the issuer or by a responder certificate the issuer issued for OCSP signing
  (checked at the response's own thisUpdate), and stored under that certificate's key;
- it is in force already (thisUpdate <= now); it stays cached until its nextUpdate, and `prune` drops it
  after.  Revoked and unknown answers are cached like good ones: they are as authentic, and the checker
  refuses on them.

`kbs collateral add` takes response files (DER, or base64 of DER as go-nvattest-tools keeps them) with
the PEM chain they belong to (a GPU's device chain names the BROM, ICA and identity CA it answers for):
`split_ocsp_files` picks them out of the files given, and `entries_from_inputs` names each response's
certificate from those (or cached) certificates.  `kbs collateral fetch --nvidia-chain` asks NVIDIA for
the responses a device chain needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography.x509 import ocsp

from kbs.errors import ChainInvalid, CollateralUnavailable, KbsError, MalformedEvidence, UsageError
from kbs.trust import revocation
from kbs.trust.cachedir import Entry
from kbs.trust.chain import walk_chain
from kbs.trust.collateral_cache import ArtefactKind, CheckContext
from kbs.trust.nvidia.certs import NVIDIA_SIGNATURE_ALGORITHMS, nvidia_roots
from kbs.trust.nvidia.ocsp_service import (
    CHAIN_HEADER,
    KIND_OCSP,
    MAX_CHAIN,
    SERVICE,
    cache_key,
    decode_chain,
    encode_chain,
    response_valid_until,
    verify_authentic,
)
from kbs.trust.nvidia.ocsp_store import MAX_FILE, decode_response
from kbs.trust.revocation import CertId, cert_id_of
from kbs.trust.x509 import Certificate, load_certificates

MAX_INPUT = 1 << 20  # a certificate file given with responses (a device chain is 4.8 KB)
_PEM = b"-----BEGIN CERTIFICATE-----"


def _chain_of(entry: Entry) -> list[Certificate]:
    value = entry.headers.get(CHAIN_HEADER)
    if value is None:
        raise MalformedEvidence(f"the cached OCSP response lacks its certificate chain ({CHAIN_HEADER}), so the "
                                "certificate it answers for cannot be named", check="collateral.form")
    return decode_chain(value)


def check_ocsp_entry(entry: Entry, context: CheckContext) -> None:
    """The module docstring's checks of one cached OCSP response."""
    chain = _chain_of(entry)
    cert, issuer = chain[0], chain[1]
    wanted = cache_key(cert, issuer)
    if entry.key != wanted:
        raise MalformedEvidence(f"stored under {entry.key}, but a response about {cert.subject_cn!r} serial "
                                f"{cert.serial:#x} belongs under {wanted}", check="collateral.key")
    walked = walk_chain(cert, chain[1:], nvidia_roots(context.trust_roots), context.at, max_depth=MAX_CHAIN,
                        algorithms=NVIDIA_SIGNATURE_ALGORITHMS)
    if walked.certificates[1].der != issuer.der:
        raise ChainInvalid(f"{cert.subject_cn!r} verifies through {walked.certificates[1].subject_cn!r}, not through "
                           f"the issuer recorded with the response, {issuer.subject_cn!r}", check="collateral.chain")
    result = verify_authentic(entry.body, cert, issuer)
    if result.this_update > context.now:
        raise ChainInvalid(f"the OCSP response about {cert.subject_cn!r} is not in force before "
                           f"{result.this_update.isoformat()}", check="collateral.validity")


def ocsp_certificates(entry: Entry) -> Sequence[Certificate]:
    """The certificates recorded with a cached response, offered to name other responses."""
    try:
        return _chain_of(entry)
    except KbsError:
        return ()


NVIDIA_OCSP_KINDS = (
    ArtefactKind(KIND_OCSP, SERVICE, "NVIDIA OCSP response", check_ocsp_entry, valid_until=response_valid_until,
                 certificates=ocsp_certificates),
)


# -- entries from what an operator has ---------------------------------------------------------------

@dataclass
class OcspInputs:
    """OCSP responses given to `kbs collateral add`, and the NVIDIA certificates given with them."""

    responses: list[tuple[str, bytes]] = field(default_factory=list)  # (source, DER OCSP response)
    certificates: list[Certificate] = field(default_factory=list)  # to name what the responses answer for

    def __bool__(self) -> bool:
        return bool(self.responses)


def ocsp_response_in(data: bytes) -> bytes | None:
    """The DER of the OCSP response `data` holds (DER, or base64 of DER), or None if it holds none."""
    try:
        der = decode_response(data)
        revocation.load_ocsp_response(der)
    except (ValueError, KbsError):
        return None
    return der


def is_nvidia_certificate(cert: Certificate) -> bool:
    """Issued to or by NVIDIA (O=NVIDIA…; device leaves are named "GH100 A01 GSP FMC LF" without it)."""
    return b"NVIDIA" in cert.subject_der or b"NVIDIA" in cert.issuer_der


def _issuer_for(cert_id: CertId, pool: Sequence[Certificate]) -> Certificate | None:
    """The certificate whose name and key `cert_id` hashes: the issuer of the certificate asked about."""
    for cert in pool:
        mine = cert_id_of(cert, cert, cert_id.hash)  # `cert` hashed as an issuer (its own serial is unused)
        if (mine.issuer_name_hash, mine.issuer_key_hash) == (cert_id.issuer_name_hash, cert_id.issuer_key_hash):
            return cert
    return None


def _up_to_root(start: list[Certificate], pool: Sequence[Certificate]) -> list[Certificate]:
    """`start` extended by name through `pool` until a self-issued certificate (pinned ones preferred)."""
    roots = nvidia_roots(None)
    chain = list(start)
    while len(chain) < MAX_CHAIN and chain[-1].issuer_der != chain[-1].subject_der:
        named = [c for c in pool if c.subject_der == chain[-1].issuer_der and c not in chain]
        if not named:
            break
        named.sort(key=lambda c: roots.pin_of(c) is None)
        chain.append(named[0])
    return chain


def entries_from_inputs(inputs: OcspInputs, pool: Sequence[Certificate], now: datetime) -> list[Entry]:
    """Cache entries for OCSP response files; each names its certificate and issuer from the given (or cached,
    `pool`) certificates.  Checked later, with the rest of the batch (`CollateralCache.admit`)."""
    certificates = list({c.der: c for c in (*inputs.certificates, *pool)}.values())
    entries: list[Entry] = []
    for source, der in inputs.responses:
        loaded = revocation.load_ocsp_response(der)
        if loaded.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise MalformedEvidence(f"{source}: the OCSP responder answered {loaded.response_status.name}; only "
                                    "successful responses are cached", check="collateral.file")
        for cert_id in revocation.response_cert_ids(loaded):
            issuer = _issuer_for(cert_id, certificates)
            cert = next((c for c in certificates if issuer is not None and c.issuer_der == issuer.subject_der
                         and c.serial == cert_id.serial), None)
            if issuer is None or cert is None:
                whose = f"issued by {issuer.subject_cn!r}" if issuer is not None else "of an issuer not given"
                raise CollateralUnavailable(f"{source}: the OCSP response is about serial {cert_id.serial:#x} {whose}: "
                                            "give the certificate chain it belongs to too (the GPU's PEM device "
                                            "chain, or the RIM's certificates)", check="collateral.issuer_chain")
            chain = _up_to_root([cert, issuer], certificates)
            entries.append(Entry(SERVICE, KIND_OCSP, cache_key(cert, issuer), der, source, now,
                                 headers={CHAIN_HEADER: encode_chain(chain)}))
    return entries


def _nvidia_certificates(data: bytes) -> list[Certificate]:
    """The certificates in `data` if it holds certificates and all are NVIDIA's, else []."""
    if _PEM not in data and data[:1] != b"\x30":
        return []
    try:
        certs = load_certificates(data)
    except KbsError:
        return []
    return certs if all(is_nvidia_certificate(c) for c in certs) else []


def split_ocsp_files(names: Sequence[str]) -> tuple[OcspInputs, list[str]]:
    """(the OCSP responses among `names` and the NVIDIA certificates given with them, the other names): what
    `kbs collateral add` does with NVIDIA's files.  Reads are bounded; nothing is checked yet."""
    inputs = OcspInputs()
    others: list[str] = []
    for name in names:
        path = Path(name)
        if not path.is_file():
            others.append(name)
            continue
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_INPUT + 1)
        except OSError as exc:
            raise UsageError(f"cannot read file {path}: {exc.strerror}") from exc
        source = f"file:{path.resolve()}"
        der = ocsp_response_in(data) if len(data) <= MAX_FILE else None
        certs = _nvidia_certificates(data) if der is None and len(data) <= MAX_INPUT else []
        if der is not None:
            inputs.responses.append((source, der))
        elif certs:
            inputs.certificates += certs
        else:
            others.append(name)
    return inputs, others
