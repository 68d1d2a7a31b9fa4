"""A synthetic NVIDIA RIM PKI and a signer of RIMs, for tests that need RIMs the shared vectors do not have
(a RIM for a synthetic GPU's report, a RIM signed wrongly in exactly one way).

    rims = SyntheticRims(now)
    xml = rims.sign("NV_GPU_DRIVER_GH100_550.90.07", "550.90.07", {7: digest, 35: [alt0, alt1]})
    verify_rim(xml, now, trust_roots=rims.trust_roots)
    rims.sign_pair(spdm_blocks)   # {driver RIM id: XML, VBIOS RIM id: XML} matching a synthetic report

The PKI mirrors NVIDIA's (reference/gpu.md §3.1): root, CA, L3 and an L4 signer, all P-384 with
ECDSA-SHA384, the chain embedded leaf first with the root last.  Documents mirror NVIDIA's SWID tags
(SoftwareIdentity, Meta with colloquialVersion and FirmwareManufacturerId, a Payload of 64 Resources, the
given indices active, the rest inactive with zero hashes) and are signed with signxml exactly as NVIDIA
signs them: enveloped, C14N 1.1, ecdsa-sha384, sha384.  Every knob a negative test needs is a keyword.
Nothing here comes from the shared vectors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner

from kbs.trust.nvidia.rim_ids import driver_rim_id, vbios_rim_id
from kbs.trust.nvidia.rim_xml import HASH_NS, SWID_NS, TCG_RIM_NS
from kbs.trust.x509 import Certificate
from tests.pki_synth import DAY, Node, Pki

ZERO = bytes(48)
BLOCKS = 64
# Which RIM indices each RIM holds on Hopper (reference/gpu.md §3.3).
DRIVER_INDICES = (7, *range(21, 41))
VBIOS_INDICES = (*range(0, 7), *range(8, 13))
Golden = bytes | Sequence[bytes]
Mutate = Callable[[Any], None]


def _element(tag: str, **attributes: str) -> Any:
    return etree.Element(f"{{{SWID_NS}}}{tag}", attrib=attributes)


def document(rim_id: str, version: str, entries: Mapping[int, Golden], *, name: str = "GH100",
             inactive: Mapping[int, Golden] | None = None, blocks: int = BLOCKS, size: int = 48,
             manufacturer_id: str = "5703") -> Any:
    """A SoftwareIdentity element like NVIDIA's: `entries` active, every other index up to `blocks`
    inactive (with `inactive`'s hashes, or zeros)."""
    root = etree.Element(f"{{{SWID_NS}}}SoftwareIdentity", nsmap={None: SWID_NS, "ns0": SWID_NS, "ns2": HASH_NS},
                         attrib={"corpus": "false", "name": name, "patch": "false", "supplemental": "false",
                                 "tagId": rim_id.encode().hex()[:96], "version": "1.0", "tagVersion": "0"})
    root.append(_element("Entity", name="NVIDIA Corporation", role="softwareCreator tagCreator"))
    meta = etree.SubElement(root, f"{{{SWID_NS}}}Meta", nsmap={"ns1": TCG_RIM_NS})
    meta.set("colloquialVersion", version)
    meta.set("edition", "GPU")
    meta.set("product", name)
    meta.set(f"{{{TCG_RIM_NS}}}FirmwareManufacturerId", manufacturer_id)
    payload = etree.SubElement(root, f"{{{SWID_NS}}}Payload")
    for index in range(max(blocks, *(i + 1 for i in entries))):
        active = index in entries
        golden = entries[index] if active else (inactive or {}).get(index, ZERO)
        hashes = [golden] if isinstance(golden, bytes) else list(golden)
        resource = etree.SubElement(payload, f"{{{SWID_NS}}}Resource", attrib={
            "type": "Measurement", "index": str(index), "active": "True" if active else "False",
            "alternatives": str(len(hashes))})
        for number, value in enumerate(hashes):
            resource.set(f"{{{HASH_NS}}}Hash{number}", value.hex())
        resource.set("name", f"Measurement_{index}")
        resource.set("size", str(size))
    return root


class SyntheticRims:
    """A RIM PKI valid around `now` (root, CA, L3, L4 signer) and a RIM signer."""

    def __init__(self, now: dt.datetime, *, root_cn: str = "Synthetic CoRIM Signing Root CA", slot: int = 7,
                 signer_days: int = 365) -> None:
        self.now = now
        self.pki = Pki("ecdsa-p384-sha384", root_cn=root_cn, slot=slot)
        before, after = now - 30 * DAY, now + 3650 * DAY
        self.root = self.pki.issue(root_cn, None, key=self.pki.key(0), serial=0x71, not_before=before,
                                   not_after=after)
        self.ca = self.pki.issue("Synthetic Reference Value CA", self.root, key=self.pki.key(1), serial=0x72,
                                 not_before=before, not_after=after)
        self.l3 = self.pki.issue("Synthetic Reference Value L3", self.ca, key=self.pki.key(2), path_length=0,
                                 serial=0x73, not_before=before, not_after=after)
        self.signer = self.pki.issue("Synthetic RIM L4 Signer", self.l3, key=self.pki.key(3), ca=False, serial=0x74,
                                     not_before=now - DAY, not_after=now + signer_days * DAY)

    @property
    def chain(self) -> list[Node]:
        """The embedded chain as NVIDIA embeds it: signer, L3, CA, root."""
        return [self.signer, self.l3, self.ca, self.root]

    @property
    def trust_roots(self) -> list[Certificate]:
        return [self.root.parsed]

    @property
    def chain_certificates(self) -> list[Certificate]:
        return [node.parsed for node in self.chain]

    def issue_signer(self, *, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
                     not_after: dt.datetime | None = None, **kwargs: Any) -> Node:
        """Another L4 signer under the L3 (another key, dates, constraints)."""
        options: dict[str, Any] = {"ca": False, "serial": 0x75, "not_before": self.now - DAY, **kwargs}
        return self.pki.issue("Synthetic RIM L4 Signer", self.l3, key=key or self.pki.key(4),
                              not_after=not_after or self.now + 365 * DAY, **options)

    def sign_document(self, root: Any, *, signer: Node | None = None, chain: Sequence[Node] | None = None,
                      key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
                      signature_method: SignatureMethod = SignatureMethod.ECDSA_SHA384,
                      digest: DigestAlgorithm = DigestAlgorithm.SHA384,
                      c14n: CanonicalizationMethod = CanonicalizationMethod.CANONICAL_XML_1_1,
                      reference_uri: str | None = None, after: Mutate | None = None) -> bytes:
        """`root` signed (enveloped) by `signer` (default: the L4 signer) with `chain` embedded (default: the
        signer, L3, CA and root); `after` edits the signed tree before it is serialized."""
        signer = signer or self.signer
        embedded = list(chain) if chain is not None else [signer, self.l3, self.ca, self.root]
        signed = XMLSigner(signature_algorithm=signature_method, digest_algorithm=digest, c14n_algorithm=c14n).sign(
            root, key=key or signer.key, cert=[n.cert.public_bytes(Encoding.PEM).decode() for n in embedded],
            reference_uri=reference_uri)
        if after is not None:
            after(signed)
        return bytes(etree.tostring(signed, xml_declaration=False, encoding="UTF-8"))

    def sign(self, rim_id: str, version: str, entries: Mapping[int, Golden], *, name: str = "GH100",
             inactive: Mapping[int, Golden] | None = None, size: int = 48, **kwargs: Any) -> bytes:
        """A signed RIM whose active entries are `entries` (RIM index, 0-based -> hash or alternatives)."""
        return self.sign_document(document(rim_id, version, entries, name=name, inactive=inactive, size=size),
                                  **kwargs)


    def sign_pair(self, blocks: Mapping[int, bytes], *, driver_version: str = "550.90.07",
                  vbios_version: str = "96.00.9f.00.01", arch: str = "HOPPER", chip_info: str | None = None,
                  project: str = "1010", project_sku: str = "0200", chip_sku: str = "882",
                  driver_indices: Sequence[int] = DRIVER_INDICES,
                  vbios_indices: Sequence[int] = VBIOS_INDICES) -> dict[str, bytes]:
        """A driver and a VBIOS RIM matching a report's measurement `blocks` (SPDM index, 1-based -> value),
        split between them as on Hopper, keyed by the RIM ids the report's values name: write them to a
        directory as ``<id>.xml`` for a `RimStore`, or serve them."""
        driver_id = driver_rim_id(driver_version, arch, chip_info)
        vbios_id = vbios_rim_id(project, project_sku, chip_sku, vbios_version)
        chip = driver_id.split("_")[-2]
        return {
            driver_id: self.sign(driver_id, driver_version, {i: blocks[i + 1] for i in driver_indices}, name=chip),
            vbios_id: self.sign(vbios_id, vbios_version.upper(), {i: blocks[i + 1] for i in vbios_indices}, name=chip),
        }
