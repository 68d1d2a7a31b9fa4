"""Complete synthetic NVIDIA GPU evidence with everything an offline verifier needs: signed reports, device
chains, RIMs, OCSP responses and the roots they verify to, built from tests/nvidia_synth.py (device PKI),
tests/spdm_synth.py (reports) and tests/nvidia_rim_synth.py (RIM PKI and RIM signing).

    fleet = SyntheticFleet(now)                                   # one device PKI + one RIM PKI
    gpu = fleet.gpu("HOPPER", driver="550.90.07", vbios="96.00.9f.00.01")
    report = gpu.report(nonce32)                                  # signed SPDM report over nonce32
    entry = gpu.evidence_entry(nonce32, encoding="base64")        # {"arch", "uuid", "evidence", "certificate"}
    fleet.evidence(nonce32, [gpu0, gpu1])                         # {"device_evidence_list": [...]}
    fleet.write_rims(rim_dir, [gpu0, gpu1], mismatch=(gpu0, 25))  # <rim id>.xml, one golden value changed
    fleet.write_ocsp(ocsp_dir, [gpu0, gpu1])                      # good responses, DER files
    device_pem, rim_pem = fleet.write_roots(root_dir)
    verify_device_chain(gpu.pem_chain, now, trust_roots=fleet.device_roots)
    verify_rim(xml, now, trust_roots=fleet.rim_roots)

A GPU (`FleetGpu`) has a leaf key and PEM chain from the device PKI, the FWID its leaf carries (also put in
its reports' FWID field), a UUID, and 64 SHA-384 measurement blocks (SPDM indices 1..64).  The blocks a RIM
covers (RIM index i = block i + 1; VBIOS RIM indices 0-6 and 8-12, driver RIM 7 and 21-40, disjoint, as
NVIDIA's Hopper RIMs) are a function of that RIM's id only, so GPUs with the same driver (and
architecture) share a driver RIM, and GPUs with the same VBIOS version and project/SKU fields share a VBIOS
RIM, with the same golden values.  The other blocks are per GPU (seeded by its number in the fleet), so
everything is deterministic except keys and signatures.

Reports carry the H100 opaque TLVs of `spdm_synth.hopper_opaque` with the GPU's driver and VBIOS versions,
PROJECT / PROJECT_SKU / CHIP_SKU and FWID (and, for Blackwell, CHIP_INFO and GPU_INFO of a GB100), so the
RIM ids `kbs.trust.nvidia.rim_ids` computes from a parsed report are the ones `write_rims` writes.

Things to know:

- NVDEC0_STATUS is 0x55 (NVDEC disabled) by default, as on the real H100 samples, and golden matching then
  *skips* RIM index 35 (block 36): a `mismatch` at index 35 still gives measres "success" unless the GPU
  was made with ``nvdec_enabled=True``.
- A `mismatch` changes the golden value in the RIM that covers that index for that GPU, a RIM every GPU
  with the same version shares: they all fail at that index.  `rim_index` outside both RIMs is a ValueError.
- `write_ocsp` writes device responses (certificates 1, 2, 3 of each chain) signed by each issuer's delegated
  responder, and RIM chain responses (signer, L3, CA) signed by the issuer itself; each is current from an
  hour before `now` for 24 hours.  Certificates shared by several chains (ICA, identity CA) get one file.
- `report(nonce, **changes)` passes `changes` to `SyntheticSpdm` (blocks, opaque, signature, padding…)
  for a test that breaks one thing; the defaults are the GPU's own.
- RIM XML and OCSP responses are cached per fleet (XML signing costs milliseconds).
- CA keys are `pki_synth.shared_key`s chosen by `slot`: two fleets of the same slot have the same CA keys
  and names, and RIM verification (which walks to a root by name and key) accepts one fleet's RIMs under
  the other's root.  `SyntheticFleet(now, slot=1)` is an independent fleet.

Nothing here comes from the shared vectors.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import uuid as uuidlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec

from kbs.trust.nvidia.rim_ids import driver_rim_id, vbios_rim_id
from kbs.trust.x509 import Certificate
from tests.nvidia_rim_synth import DRIVER_INDICES, VBIOS_INDICES, SyntheticRims
from tests.nvidia_synth import BLACKWELL, HOPPER, Arch, SyntheticGpu, SyntheticNvidia, pem
from tests.pki_synth import NOW, Node, Pki
from tests.spdm_synth import Block, SyntheticSpdm, hopper_opaque, point_of

BLOCKS = 64
DEVICE_OCSP_INDICES = (1, 2, 3)  # BROM, provisioner ICA, identity CA
RIM_OCSP_INDICES = (0, 1, 2)  # L4 signer, L3, CA
NVDEC_ENABLED = b"\xaa"
NVDEC_DISABLED = b"\x55"
NVDEC0_STATUS = 11
CHIP_INFO = 35
GPU_INFO = 4
_GPU_INFO = {HOPPER: bytes.fromhex("8001000000000000"), BLACKWELL: bytes.fromhex("a001000000000000")}
_VBIOS = re.compile(r"[0-9A-Fa-f]{2}(\.[0-9A-Fa-f]{2}){4}")
Encoding = Literal["base64", "hex"]


def vbios_bytes(version: str) -> bytes:
    """The 8-byte VBIOS_VERSION field that prints as `version` ("96.00.9f.00.01" -> 009f009601000000):
    NVIDIA prints b3.b2.b1.b0.b4."""
    if not _VBIOS.fullmatch(version):
        raise ValueError(f"VBIOS version {version!r} is not five dot-separated hex bytes like 96.00.9f.00.01")
    b3, b2, b1, b0, b4 = (int(part, 16) for part in version.split("."))
    return bytes([b0, b1, b2, b3, b4, 0, 0, 0])


def golden_value(rim_id: str, rim_index: int) -> bytes:
    """The measurement a RIM `rim_id` expects at `rim_index` (and every GPU it covers has)."""
    return hashlib.sha384(b"gpu_synth golden %s %d" % (rim_id.encode(), rim_index)).digest()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


@dataclass(frozen=True)
class FleetGpu:
    """One synthetic GPU of a fleet: its device (key, chain, FWID), versions, RIM ids and blocks."""

    number: int
    device: SyntheticGpu = field(repr=False)
    uuid: str
    driver: str
    vbios: str
    project: str
    project_sku: str
    chip_sku: str
    chip_info: str | None
    nvdec0_status: bytes
    blocks: Mapping[int, bytes] = field(repr=False)  # SPDM index (1-based) -> 48-byte value

    @property
    def arch(self) -> str:
        return self.device.arch

    @property
    def key(self) -> ec.EllipticCurvePrivateKey:
        return self.device.key

    @property
    def point(self) -> bytes:
        """The leaf's public point (97 bytes), as `spdm_verify` takes it."""
        return point_of(self.device.key)

    @property
    def pem_chain(self) -> bytes:
        return self.device.pem_chain

    @property
    def fwid(self) -> bytes:
        return self.device.fwid

    @property
    def certificates(self) -> tuple[Certificate, ...]:
        return self.device.certificates

    @property
    def driver_rim_id(self) -> str:
        return driver_rim_id(self.driver, self.arch, self.chip_info)

    @property
    def vbios_rim_id(self) -> str:
        return vbios_rim_id(self.project, self.project_sku, self.chip_sku, self.vbios)

    def opaque(self) -> list[tuple[int, bytes]]:
        """The report's opaque TLVs: an H100's (spdm_synth.hopper_opaque) with this GPU's values."""
        tlvs = hopper_opaque(driver=self.driver, vbios=vbios_bytes(self.vbios), blocks=BLOCKS, fwid=self.fwid)
        values = {15: self.chip_sku.encode().ljust(9, b"\0"), 17: self.project.encode() + b"\0",
                  18: self.project_sku.encode() + b"\0", NVDEC0_STATUS: self.nvdec0_status,
                  GPU_INFO: _GPU_INFO[self.arch]}
        tlvs = [(kind, values.get(kind, data)) for kind, data in tlvs]
        if self.chip_info is not None:
            tlvs.append((CHIP_INFO, self.chip_info.encode() + b"\0"))
        return tlvs

    def report(self, nonce: bytes, **changes: Any) -> bytes:
        """A signed SPDM report whose request nonce is `nonce` (32 bytes); `changes` go to SyntheticSpdm."""
        if len(nonce) != 32:
            raise ValueError(f"a GPU nonce is 32 bytes, got {len(nonce)}")
        options: dict[str, Any] = {
            "blocks": [Block(index, value) for index, value in sorted(self.blocks.items())],
            "opaque": self.opaque(),
            "responder_nonce": hashlib.sha256(b"responder %s " % self.uuid.encode() + nonce).digest(),
            **changes}
        return SyntheticSpdm(self.key, nonce=nonce, **options).build()

    def evidence_entry(self, nonce: bytes, encoding: Encoding = "base64", **changes: Any) -> dict[str, str]:
        """One item of trustee's device_evidence_list: the report in base64 (or hex), the chain as base64(PEM)."""
        report = self.report(nonce, **changes)
        if encoding == "base64":
            evidence = base64.b64encode(report).decode()
        elif encoding == "hex":
            evidence = report.hex()
        else:
            raise ValueError(f"encoding {encoding!r} is not base64 or hex")
        return {"arch": self.arch, "uuid": self.uuid, "evidence": evidence,
                "certificate": base64.b64encode(self.pem_chain).decode()}


class SyntheticFleet:
    """One device PKI and one RIM PKI valid at `now`, and the GPUs made under them (module docstring)."""

    def __init__(self, now: dt.datetime = NOW, *, slot: int = 0) -> None:
        self.now = now
        # Keys come from pki_synth.shared_key by slot: fleets of the same `slot` share every CA key (and so
        # trust each other's RIMs, whose chains are walked to a root by name and key); give a second fleet
        # another slot.  Slot 0 is nvidia_synth's and nvidia_rim_synth's default PKIs' keys.
        if not 0 <= slot < 64:
            raise ValueError(f"fleet slot {slot} is not 0..63")
        self.nvidia = SyntheticNvidia(now, slot=slot)
        self.rims = SyntheticRims(now, slot=7 if slot == 0 else 64 + slot)
        self._count = 0
        self._xml: dict[tuple[str, int | None], bytes] = {}
        self._ocsp: dict[str, bytes] = {}

    # -- GPUs -------------------------------------------------------------------------------------

    def gpu(self, arch: Arch = "HOPPER", driver: str = "550.90.07", vbios: str = "96.00.9f.00.01", *,
            project: str = "1010", project_sku: str = "0200", chip_sku: str = "882",
            chip_info: str | None = None, nvdec_enabled: bool = False) -> FleetGpu:
        """A new GPU.  `chip_info` defaults to "GB100" on Blackwell (none on Hopper); `vbios` is printed as
        NVIDIA prints it.  Blocks at RIM-covered indices follow the RIM ids; the rest are this GPU's own."""
        vbios_bytes(vbios)  # refuse a malformed version here, not in the first report
        self._count += 1
        number = self._count
        if arch == BLACKWELL and chip_info is None:
            chip_info = "GB100"
        fwid = hashlib.sha384(b"gpu_synth fwid %d" % number).digest()
        device = self.nvidia.issue_gpu(arch, fwid=fwid)
        name = uuidlib.UUID(bytes=hashlib.sha256(b"gpu_synth uuid %d" % number).digest()[:16], version=4)
        blocks = {index: hashlib.sha384(b"gpu_synth block %d %d" % (number, index)).digest()
                  for index in range(1, BLOCKS + 1)}
        for rim_id, indices in ((driver_rim_id(driver, arch, chip_info), DRIVER_INDICES),
                                (vbios_rim_id(project, project_sku, chip_sku, vbios), VBIOS_INDICES)):
            for rim_index in indices:
                blocks[rim_index + 1] = golden_value(rim_id, rim_index)
        return FleetGpu(number=number, device=device, uuid=f"GPU-{name}", driver=driver, vbios=vbios,
                        project=project, project_sku=project_sku, chip_sku=chip_sku, chip_info=chip_info,
                        nvdec0_status=NVDEC_ENABLED if nvdec_enabled else NVDEC_DISABLED, blocks=blocks)

    def evidence(self, nonce: bytes, gpus: Sequence[FleetGpu], encoding: Encoding = "base64") -> dict[str, Any]:
        """Trustee's NVIDIA additional evidence: {"device_evidence_list": [one entry per GPU, in order]}."""
        return {"device_evidence_list": [gpu.evidence_entry(nonce, encoding) for gpu in gpus]}

    # -- RIMs -------------------------------------------------------------------------------------

    def _rim(self, rim_id: str, version: str, chip: str, indices: Sequence[int], mismatch: int | None) -> bytes:
        key = (rim_id, mismatch)
        if key not in self._xml:
            entries = {i: golden_value(rim_id, i) for i in indices}
            if mismatch is not None:
                entries[mismatch] = hashlib.sha384(b"gpu_synth mismatch %s %d" % (rim_id.encode(), mismatch)).digest()
            self._xml[key] = self.rims.sign(rim_id, version, entries, name=chip)
        return self._xml[key]

    def rim_documents(self, gpus: Iterable[FleetGpu], *,
                      mismatch: tuple[FleetGpu, int] | None = None) -> dict[str, bytes]:
        """{RIM id: signed XML} for each GPU's driver and VBIOS RIM; `mismatch` (gpu, RIM index) changes the
        golden value at that index of the RIM covering it for that GPU."""
        changed: tuple[str, int] | None = None
        if mismatch is not None:
            target, rim_index = mismatch
            if rim_index in DRIVER_INDICES:
                changed = (target.driver_rim_id, rim_index)
            elif rim_index in VBIOS_INDICES:
                changed = (target.vbios_rim_id, rim_index)
            else:
                raise ValueError(f"RIM index {rim_index} is in neither RIM (driver {list(DRIVER_INDICES)}, "
                                 f"VBIOS {list(VBIOS_INDICES)})")
        documents: dict[str, bytes] = {}
        for gpu in gpus:
            chip = gpu.driver_rim_id.split("_")[-2]
            for rim_id, version, indices in ((gpu.driver_rim_id, gpu.driver, DRIVER_INDICES),
                                             (gpu.vbios_rim_id, gpu.vbios.upper(), VBIOS_INDICES)):
                if rim_id not in documents:
                    bad = changed[1] if changed is not None and changed[0] == rim_id else None
                    documents[rim_id] = self._rim(rim_id, version, chip, indices, bad)
        return documents

    def write_rims(self, directory: Path, gpus: Iterable[FleetGpu], *,
                   mismatch: tuple[FleetGpu, int] | None = None) -> dict[str, Path]:
        """`<rim id>.xml` in `directory` (made if missing) for each GPU's RIMs (`rim_documents`); returns the paths."""
        directory.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for rim_id, xml in self.rim_documents(gpus, mismatch=mismatch).items():
            paths[rim_id] = directory / f"{rim_id}.xml"
            paths[rim_id].write_bytes(xml)
        return paths

    # -- OCSP and roots ----------------------------------------------------------------------------

    def _device_response(self, cert: Certificate) -> bytes:
        if cert.fingerprint not in self._ocsp:
            self._ocsp[cert.fingerprint] = self.nvidia.ocsp_response(cert)
        return self._ocsp[cert.fingerprint]

    def _rim_response(self, node: Node, issuer: Node) -> bytes:
        fingerprint = node.parsed.fingerprint
        if fingerprint not in self._ocsp:
            this = self.now - dt.timedelta(hours=1)
            self._ocsp[fingerprint] = Pki.ocsp(node, issuer, this_update=this,
                                               next_update=this + dt.timedelta(hours=24))
        return self._ocsp[fingerprint]

    def ocsp_responses(self, gpus: Iterable[FleetGpu]) -> dict[str, bytes]:
        """{file name: DER} of good responses for each GPU chain's certificates 1, 2, 3 and the RIM signing
        chain's 0, 1, 2, one per certificate."""
        responses: dict[str, bytes] = {}
        for gpu in gpus:
            for index in DEVICE_OCSP_INDICES:
                cert = gpu.certificates[index]
                responses[_safe(f"device-{cert.subject_cn}-{cert.serial:x}") + ".der"] = self._device_response(cert)
        chain = self.rims.chain
        for index in RIM_OCSP_INDICES:
            node = chain[index]
            responses[_safe(f"rim-{node.cn}-{node.cert.serial_number:x}") + ".der"] = \
                self._rim_response(node, chain[index + 1])
        return responses

    def write_ocsp(self, directory: Path, gpus: Iterable[FleetGpu]) -> list[Path]:
        """The `ocsp_responses` as DER files in `directory` (made if missing), an OCSP directory for OcspChecker."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, der in self.ocsp_responses(gpus).items():
            path = directory / name
            path.write_bytes(der)
            paths.append(path)
        return paths

    @property
    def device_roots(self) -> list[Certificate]:
        """The device PKI's root, for `trust_roots=` of the device chain."""
        return self.nvidia.trust_roots

    @property
    def rim_roots(self) -> list[Certificate]:
        """The RIM PKI's root, for `trust_roots=` of RIM verification."""
        return self.rims.trust_roots

    def write_roots(self, directory: Path) -> tuple[Path, Path]:
        """(device root PEM path, RIM root PEM path) in `directory` (made if missing)."""
        directory.mkdir(parents=True, exist_ok=True)
        device, rim = directory / "synthetic-device-root.pem", directory / "synthetic-rim-root.pem"
        device.write_bytes(pem(self.device_roots))
        rim.write_bytes(pem(self.rim_roots))
        return device, rim
