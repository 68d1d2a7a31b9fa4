"""Intel collateral from files: the directory `kbs verify tdx --collateral DIR` reads, and the collateral
bundles of Phala's dcap-qvl (the shared test vectors carry three).

The directory holds PCS answers exactly as PCS sends them, the issuer chains decoded from their headers::

    tcb_info.json                  {"tcbInfo":{…},"signature":"…"}       (required)
    tcb_info_issuer_chain.pem      TCB Signing certificate + root CA      (required)
    qe_identity.json               {"enclaveIdentity":{…},"signature":"…"} (required)
    qe_identity_issuer_chain.pem   TCB Signing certificate + root CA      (required)
    pck_crl.der                    the PCK CA's CRL
    pck_crl_issuer_chain.pem       PCK Platform (or Processor) CA + root CA
    root_ca_crl.der                the Intel SGX Root CA's CRL

The CRLs may be absent here (a directory made before they were fetched), but never in verification:
`collateral.verify_collateral` refuses without them, naming the missing one.  Nothing is checked on
loading beyond sizes and presence; everything is verified where it is used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kbs.errors import CollateralUnavailable, MalformedEvidence
from kbs.files import write_atomic
from kbs.trust.intel.collateral import MAX_BODY, QE_IDENTITY_MEMBER, TCB_INFO_MEMBER, IntelCollateral

TCB_INFO_FILE = "tcb_info.json"
TCB_INFO_CHAIN_FILE = "tcb_info_issuer_chain.pem"
QE_IDENTITY_FILE = "qe_identity.json"
QE_IDENTITY_CHAIN_FILE = "qe_identity_issuer_chain.pem"
PCK_CRL_FILE = "pck_crl.der"
PCK_CRL_CHAIN_FILE = "pck_crl_issuer_chain.pem"
ROOT_CA_CRL_FILE = "root_ca_crl.der"
_FIELDS = {"tcb_info": TCB_INFO_FILE, "tcb_info_issuer_chain": TCB_INFO_CHAIN_FILE, "qe_identity": QE_IDENTITY_FILE,
           "qe_identity_issuer_chain": QE_IDENTITY_CHAIN_FILE, "pck_crl": PCK_CRL_FILE,
           "pck_crl_issuer_chain": PCK_CRL_CHAIN_FILE, "root_ca_crl": ROOT_CA_CRL_FILE}
MAX_BUNDLE = 4 * MAX_BODY


def _read(path: Path, required: bool) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BODY + 1)
    except FileNotFoundError:
        if required:
            raise CollateralUnavailable(f"the collateral directory lacks {path.name} ({path})",
                                        check="collateral.missing") from None
        return None
    except OSError as exc:
        raise CollateralUnavailable(f"cannot read {path}: {exc.strerror}", check="collateral.missing") from exc
    if len(data) > MAX_BODY:
        raise MalformedEvidence(f"{path} is larger than {MAX_BODY} bytes", check="collateral.file")
    return data


def load_collateral_dir(directory: Path) -> IntelCollateral:
    """The collateral in `directory` (module docstring), unverified."""
    if not directory.is_dir():
        raise CollateralUnavailable(f"collateral directory {directory} is not a directory", check="collateral.missing")

    def need(file: str) -> bytes:
        data = _read(directory / file, True)
        assert data is not None
        return data

    return IntelCollateral(tcb_info=need(TCB_INFO_FILE), tcb_info_issuer_chain=need(TCB_INFO_CHAIN_FILE),
                           qe_identity=need(QE_IDENTITY_FILE), qe_identity_issuer_chain=need(QE_IDENTITY_CHAIN_FILE),
                           pck_crl=_read(directory / PCK_CRL_FILE, False),
                           pck_crl_issuer_chain=_read(directory / PCK_CRL_CHAIN_FILE, False),
                           root_ca_crl=_read(directory / ROOT_CA_CRL_FILE, False))


def save_collateral_dir(collateral: IntelCollateral, directory: Path) -> list[Path]:
    """Write `collateral` in the directory layout (files 0600, the directory created 0700); returns the files."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = []
    for name, file in _FIELDS.items():
        data = getattr(collateral, name)
        if data is not None:
            write_atomic(directory / file, data)
            written.append(directory / file)
    return written


def pcs_body(member: str, signed: bytes, signature_hex: str) -> bytes:
    """A PCS response body around a signed document's exact bytes: ``{"<member>":<signed>,"signature":"…"}``."""
    return b'{"' + member.encode() + b'":' + signed + b',"signature":' + json.dumps(signature_hex).encode() + b"}"


def _field(bundle: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = bundle.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        problem = "missing" if value is None else "not a string"
        raise MalformedEvidence(f"dcap-qvl collateral bundle: {name!r} is {problem}", check="collateral.bundle")
    return value


def _hex(bundle: dict[str, Any], name: str) -> bytes | None:
    value = _field(bundle, name, required=False)
    if value is None:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise MalformedEvidence(f"dcap-qvl collateral bundle: {name!r} is not hex", check="collateral.bundle") from exc


def load_dcap_qvl_bundle(data: bytes) -> IntelCollateral:
    """A dcap-qvl `QuoteCollateralV3` JSON object (strings: `tcb_info` and `qe_identity` are the exact signed
    documents, `*_signature` their hex r ‖ s, `*_issuer_chain` PEM, `pck_crl` and `root_ca_crl` hex DER),
    as the PCS bodies and files this package reads.  The signed documents' bytes are kept exactly."""
    if len(data) > MAX_BUNDLE:
        raise MalformedEvidence(f"dcap-qvl collateral bundle is larger than {MAX_BUNDLE} bytes",
                                check="collateral.bundle")
    try:
        bundle = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedEvidence(f"dcap-qvl collateral bundle is not JSON: {exc}", check="collateral.bundle") from exc
    if not isinstance(bundle, dict):
        raise MalformedEvidence("dcap-qvl collateral bundle is not a JSON object", check="collateral.bundle")

    def text(name: str) -> bytes:
        value = _field(bundle, name)
        assert value is not None
        return value.encode()

    return IntelCollateral(
        tcb_info=pcs_body(TCB_INFO_MEMBER, text("tcb_info"), text("tcb_info_signature").decode()),
        tcb_info_issuer_chain=text("tcb_info_issuer_chain"),
        qe_identity=pcs_body(QE_IDENTITY_MEMBER, text("qe_identity"), text("qe_identity_signature").decode()),
        qe_identity_issuer_chain=text("qe_identity_issuer_chain"),
        pck_crl=_hex(bundle, "pck_crl"),
        pck_crl_issuer_chain=(_field(bundle, "pck_crl_issuer_chain", required=False) or "").encode() or None,
        root_ca_crl=_hex(bundle, "root_ca_crl"))
