"""The real NVIDIA GPU and NVSwitch attestation reports of the shared vectors (gpu/SOURCES.md), read in place.

`real_reports(root)` returns every report with the device chain it comes with (PEM, leaf first), the
nonce its source states and whether SOURCES.md says its signature verifies.  The transports differ:
hex text beside a PEM file (nvtrust, attestation-sdk, trustee), JSON lists of {evidence, certificate:
base64} (attestation-sdk, nvtrust ppcie), and jsonpickle dumps with {"py/b64": ...} fields
(go-nvattest-tools MPT and PPCIe, whose switches are NVSwitch LS10 reports).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

GPU = "gpu"
SAMPLES = "attestation-sdk/unit-tests/sample_attestation_data/gpu"
NONCE_931D = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"

# (report hex file, chain PEM file, stated nonce, genuine) relative to gpu/; nonces from SOURCES.md.
HEX_REPORTS = (
    ("nvtrust/hopperAttestationReport.txt", "nvtrust/hopperCertChain.txt", NONCE_931D, True),
    ("attestation-sdk/unit-tests/hopperAttestationReport.txt", "attestation-sdk/unit-tests/hopperCertChain.txt",
     "5bb22e377702d4e1e8215a903ba094826b9ac7f731dee1fe8102958bf2840aca", True),
    (f"{SAMPLES}/hopperAttestationReport.txt", f"{SAMPLES}/hopperCertChain.txt",
     "27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66", True),
    (f"{SAMPLES}/hopperAttestationReportExpired.txt", f"{SAMPLES}/hopperCertChainExpired.txt", NONCE_931D, True),
    (f"{SAMPLES}/blackwellAttestationReport.txt", f"{SAMPLES}/blackwellCertChain.txt", NONCE_931D, True),
    ("trustee/hopper_coco_report1.txt", "trustee/hopper_coco_certs1.txt",
     "87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec", True),
    # NEGATIVE: NVIDIA's GpuEvidenceInvalidSignature test pairs it with the "Expired" chain.
    (f"{SAMPLES}/hopperAttestationReportInvalidSignature.txt", f"{SAMPLES}/hopperCertChainExpired.txt",
     NONCE_931D, False),
)
# JSON lists [{arch, certificate: base64(PEM), evidence: base64(report), nonce: hex, ...}]
JSON_BUNDLES = (
    "attestation-sdk/common-test-data/hopper_evidence.json",
    "attestation-sdk/common-test-data/multi_gpu_hopper.json",
    "attestation-sdk/common-test-data/hopper_evidence_cert_hold.json",
    "attestation-sdk/unit-tests/evidence_hopper_590_12.json",
    "nvtrust/ppcie-verifier-sdk-cpp/gpu_evidence.json",
)
MPT = "go-nvattest-tools/test_mpt_data.json"
MPT_NONCE = "cdb72201e569085d6de41863745f6f77db1f75962c29564ec6abe91f0221861f"  # testing/testdata/mpt_data.go
PPCIE = "go-nvattest-tools/test_ppcie_data.json"
PPCIE_NONCE = "1234567890123456789012345678901234567890123456789012345678901234"


@dataclass(frozen=True)
class GpuReport:
    name: str  # path under gpu/, with [i] for the i-th report of a bundle
    data: bytes
    chain_pem: bytes  # the device chain, leaf first
    nonce: bytes  # the nonce its source states
    genuine: bool  # the signature verifies with the chain's leaf key (SOURCES.md)

    @property
    def leaf_point(self) -> bytes:
        """The leaf certificate's P-384 key, 0x04 || X || Y."""
        cert = x509.load_pem_x509_certificates(self.chain_pem)[0]
        return cert.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

    @property
    def is_switch(self) -> bool:
        return "switch" in self.name


def _pems(chain: list[dict[str, Any]]) -> bytes:
    """jsonpickle'd OpenSSL X509 objects: each {"pem": base64(PEM)} (one may hold the whole chain)."""
    return b"".join(base64.b64decode(c["pem"]) for c in chain)


def real_reports(root: Path) -> list[GpuReport]:
    """Every report under root/gpu (root is the vectors directory), or [] when absent."""
    gpu = root / GPU
    if not (gpu / "SOURCES.md").is_file():
        return []
    found = []
    for report, chain, nonce, genuine in HEX_REPORTS:
        data = bytes.fromhex((gpu / report).read_text().strip())
        found.append(GpuReport(report, data, (gpu / chain).read_bytes(), bytes.fromhex(nonce), genuine))
    for bundle in JSON_BUNDLES:
        for i, e in enumerate(json.loads((gpu / bundle).read_text())):
            found.append(GpuReport(f"{bundle}[{i}]", base64.b64decode(e["evidence"]),
                                   base64.b64decode(e["certificate"]), bytes.fromhex(e["nonce"]), True))
    mpt = json.loads((gpu / MPT).read_text())
    for i, g in enumerate(mpt["gpus"]):
        found.append(GpuReport(f"{MPT}[gpu {i}]", base64.b64decode(g["AttestationReport"]["py/b64"]),
                               _pems(g["CertificateChains"]["GpuAttestationCertificateChain"]),
                               bytes.fromhex(MPT_NONCE), True))
    ppcie = json.loads((gpu / PPCIE).read_text())
    for i, g in enumerate(ppcie["gpus"]):
        found.append(GpuReport(f"{PPCIE}[gpu {i}]", base64.b64decode(g["AttestationReport"]["py/b64"]),
                               _pems(g["CertificateChains"]["GpuAttestationCertificateChain"]),
                               bytes.fromhex(PPCIE_NONCE), True))
    for i, s in enumerate(ppcie["nvswitches"]):
        found.append(GpuReport(f"{PPCIE}[switch {i}]", base64.b64decode(s["attestation_report"]["py/b64"]),
                               _pems(s["attestation_cert_chain"]), bytes.fromhex(PPCIE_NONCE), True))
    return found


def first_pem(chain_pem: bytes) -> bytes:
    """The first certificate of a PEM chain (the leaf), as PEM."""
    match = re.search(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", chain_pem, re.S)
    assert match is not None
    return match.group(0)
