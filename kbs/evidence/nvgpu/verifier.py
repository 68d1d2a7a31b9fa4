"""The `nvgpu` verifier behind the registry: NVIDIA GPUs' SPDM reports as additional evidence, every GPU
of an attestation verified, all or nothing.

Per GPU, cheapest and most hostile-input-facing checks first, on the verification pool: the report parsed
in C; its requester nonce equal to the device binding (`hD`, SHA-384 of the canonical {nonce, tee-pubkey},
cut to 32 bytes: trustee-kbs.md §2.1); the device chain walked to the pinned NVIDIA Device Identity CA
(cached by its bytes); its model the architecture the guest named; the P-384 signature over request and
response in C, through per-key tables (a GPU signs every report it makes); the report's FWID equal to the
leaf's.  No GPU may appear twice (one GPU's report sent twice must not pass for two GPUs).  Then, on the
loop: OCSP for the device chain (stance `require`, `cached` or `off`); the driver and VBIOS RIMs by the ids
the report spells, from the RIM directory or NVIDIA's RIM service (verified XML-DSig to the pinned CoRIM
root), OCSP for their signing chains; and the golden measurements compared with the report's blocks
(a mismatch or a conflict is a refusal naming the RIM index, the value seen and the values wanted).

Warm, a report costs its parse, one signature with a key table and the comparisons: the verified chain,
the verified RIMs (by id, re-read at most every `RIM_TTL` seconds) and the OCSP statuses (until the
responses' nextUpdate, re-checked at most every `OCSP_TTL` seconds) are remembered.

Labels: `nvgpu.evidence`, `nvgpu.parse`, `nvgpu.nonce`, `nvgpu.arch`, `nvgpu.duplicate`, `nvgpu.chain`,
`nvgpu.fwid`, `nvgpu.signature`, `nvgpu.ocsp`, `nvgpu.rim.id`, `nvgpu.rim.missing`, `nvgpu.rim.parse`,
`nvgpu.rim.signature`, `nvgpu.rim.chain`, `nvgpu.measurement`; every message starts with the GPU's
position in the evidence list.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, cast

from kbs import native
from kbs.errors import EvidenceError, KbsError, MalformedEvidence
from kbs.evidence.base import (
    GPU,
    Appraisal,
    Binding,
    Offload,
    VerifierConfigError,
    VerifierContext,
    describe_roots,
    load_trust_roots,
    read_table,
)
from kbs.evidence.nvgpu.claims import RimOutcome, gpu_claims, nvgpu_trust_vector
from kbs.evidence.nvgpu.cli import NvgpuVerifyCommand
from kbs.evidence.nvgpu.evidence import GpuEvidence, decode_evidence
from kbs.trust.nvidia import ocsp_service, rim_store
from kbs.trust.nvidia.certs import DEVICE_PIN, DeviceChain, check_fwid, verify_device_chain
from kbs.trust.nvidia.golden import FAIL, GoldenResult, compare
from kbs.trust.nvidia.ocsp import DEVICE_OCSP_INDICES, RIM_OCSP_INDICES, STANCES, OcspChecker, OcspStatus, Stance
from kbs.trust.nvidia.rim import VerifiedRim
from kbs.trust.nvidia.rim_ids import BLACKWELL, HOPPER, driver_rim_id, vbios_rim_id
from kbs.trust.nvidia.rim_roots import CORIM_ROOT_PIN
from kbs.trust.x509 import Certificate

NONCE_SIZE = 32  # the SPDM requester nonce
EVIDENCE_KEY = "nvidia"  # Trustee's TEE name: the annotated-evidence key and additional_evidence key
# The chip family the device chain's BROM certificate names ("GH100 A01 GSP BROM") for each architecture.
ARCH_CHIPS = {HOPPER: ("GH",), BLACKWELL: ("GB",)}
RIM_TTL = 300.0  # seconds a verified RIM is used by id before its source is read again
OCSP_TTL = 60.0  # seconds OCSP statuses are reused (within their validity) before being checked again
MEMO_ENTRIES = 1024

DEFAULTS: dict[str, Any] = {
    "trust_roots": [],  # PEM roots replacing the pinned NVIDIA Device Identity CA (labs, tests)
    "rim_roots": [],  # PEM roots replacing the pinned NVIDIA CoRIM signing root
    "rim_dir": "",  # <rim id>.xml files; looked in before the RIM service
    "rim_url": rim_store.DEFAULT_BASE_URL,  # "" for none: then no golden comparison (measres not_checked)
    "ocsp": "require",  # require | cached | off, for the device chains
    "rim_ocsp": "",  # the same for the RIM signing chains; "" follows `ocsp`
    "ocsp_dir": "",  # stored OCSP responses (DER or base64), matched by CertID
    "ocsp_url": ocsp_service.DEFAULT_BASE_URL,
    "offline": False,  # never contact NVIDIA: the cache, rim_dir and ocsp_dir only
    "cache_dir": "",  # default <state_dir>/nvidia (what `kbs collateral` fills)
    "key_tables": 64,  # per-GPU P-384 tables kept (24 KB each; a GPU gets one from its second report)
}


@dataclass(frozen=True)
class _Prepared:
    """A GPU after every check that needs neither OCSP nor RIMs."""

    gpu: GpuEvidence
    report: native.SpdmReport
    chain: DeviceChain
    fwid_match: bool


@contextmanager
def gpu_context(gpu: GpuEvidence) -> Iterator[None]:
    """Name the GPU in any refusal raised inside (its label is kept)."""
    try:
        yield
    except KbsError as exc:
        uuid = f" ({gpu.uuid})" if gpu.uuid else ""
        exc.args = (f"GPU {gpu.position}{uuid}: {exc.args[0] if exc.args else exc}", *exc.args[1:])
        raise


def device_nonce(report_data: bytes) -> bytes:
    """The requester nonce a GPU must have used: the device binding cut (or zero-padded) to 32 bytes."""
    return report_data[:NONCE_SIZE].ljust(NONCE_SIZE, b"\0")


def check_arch(gpu: GpuEvidence, chain: DeviceChain) -> None:
    if not chain.hwmodel.startswith(ARCH_CHIPS[gpu.arch]):
        raise EvidenceError(f"the evidence says {gpu.arch}, but the device chain is a {chain.hwmodel!r}, wanted a "
                            f"{' or '.join(ARCH_CHIPS[gpu.arch])}… chip", check="nvgpu.arch")


def prepare_gpu(gpu: GpuEvidence, nonce: bytes | None, at: datetime, trust_roots: Sequence[Certificate] | None,
                key_tables: native.P384KeyCache | None) -> _Prepared:
    """Parse, nonce (None: not checked, the command line without --nonce), chain, architecture, FWID and
    signature of one GPU."""
    with gpu_context(gpu):
        report = native.spdm_parse(gpu.report)
        if nonce is not None and not hmac.compare_digest(report.request_nonce, nonce):
            raise EvidenceError(f"the report's requester nonce is {report.request_nonce.hex()}, wanted "
                                f"{nonce.hex()} (this session's device binding): a report made for another "
                                "session or another guest", check="nvgpu.nonce")
        chain = verify_device_chain(gpu.chain_pem, at, trust_roots=trust_roots)
        check_arch(gpu, chain)
        native.spdm_verify_signature(gpu.report, chain.public_point, key_tables)  # parsed above already
        fwid_match = check_fwid(chain, report.fwid)
    return _Prepared(gpu, report, chain, fwid_match)


def prepare_all(evidence: Any, nonce: bytes | None, at: datetime, trust_roots: Sequence[Certificate] | None,
                key_tables: native.P384KeyCache | None) -> list[_Prepared]:
    """Every GPU of the evidence through `prepare_gpu`, then no GPU twice."""
    prepared = [prepare_gpu(gpu, nonce, at, trust_roots, key_tables) for gpu in decode_evidence(evidence)]
    seen: dict[bytes, int] = {}
    for p in prepared:
        key = p.chain.leaf.der
        if key in seen:
            raise EvidenceError(f"GPU {p.gpu.position} is GPU {seen[key]} again (the same device certificate, "
                                f"ueid {p.chain.ueid}): each GPU may be sent once", check="nvgpu.duplicate")
        seen[key] = p.gpu.position
    return prepared


def rim_ids(p: _Prepared) -> tuple[str, str]:
    """The driver and VBIOS RIM ids the report spells (gpu.md §3.2)."""
    report = p.report
    with gpu_context(p.gpu):
        missing = [name for name, value in (("DRIVER_VERSION", report.driver_version),
                                            ("VBIOS_VERSION", report.vbios_version), ("PROJECT", report.project),
                                            ("PROJECT_SKU", report.project_sku), ("CHIP_SKU", report.chip_sku))
                   if value is None]
        if missing:
            raise MalformedEvidence(f"the report has no {', '.join(missing)}: its RIM ids cannot be formed",
                                    check="nvgpu.rim.id")
        return (driver_rim_id(cast(str, report.driver_version), p.gpu.arch, report.chip_info),
                vbios_rim_id(cast(str, report.project), cast(str, report.project_sku), cast(str, report.chip_sku),
                             cast(str, report.vbios_version)))


def judge_golden(p: _Prepared, driver: VerifiedRim | None, vbios: VerifiedRim | None) -> GoldenResult:
    """The golden comparison; a mismatch or a conflict is a refusal naming each index."""
    report = p.report
    status = report.nvdec0_status
    result = compare(report.measurements, driver, vbios, nvdec0_status=None if status is None else bytes([status]),
                     driver_version=report.driver_version, vbios_version=report.vbios_version)
    if result.measres == FAIL:
        with gpu_context(p.gpu):
            raise EvidenceError(f"measurements do not match the RIMs: {'; '.join(result.explain().splitlines())}",
                                check="nvgpu.measurement")
    return result


class _Memo:
    """A small LRU of values that expire (monotonic time)."""

    def __init__(self, entries: int = MEMO_ENTRIES) -> None:
        self._items: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._entries = entries

    def get(self, key: Any) -> Any:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: Any, value: Any, ttl: float) -> None:
        self._items[key] = (time.monotonic() + ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self._entries:
            self._items.popitem(last=False)


class NvgpuVerifier:
    name: ClassVar[str] = "nvgpu"
    device_class: ClassVar[str] = GPU

    def __init__(self, *, rims: rim_store.RimStore | None, ocsp: OcspChecker, ocsp_stance: Stance = "require",
                 rim_ocsp_stance: Stance | None = None, trust_roots: Sequence[Certificate] | None = None,
                 key_tables: int = 64, rim_roots: Sequence[Certificate] | None = None) -> None:
        self.rims = rims
        self.ocsp = ocsp
        self.ocsp_stance: Stance = ocsp_stance
        self.rim_ocsp_stance: Stance = rim_ocsp_stance or ocsp_stance
        self.trust_roots = list(trust_roots) if trust_roots else None
        self.rim_roots = list(rim_roots) if rim_roots else None  # held by `rims`; kept here to report them
        self.key_tables = native.P384KeyCache(max_tables=key_tables)
        self._rim_memo = _Memo(256)
        self._ocsp_memo = _Memo()

    @classmethod
    def from_config(cls, table: Mapping[str, Any], context: VerifierContext) -> NvgpuVerifier:
        where = f"verifiers.{cls.name}"
        values = read_table(table, DEFAULTS, where, minimum={"key_tables": 1})
        for key in ("ocsp", "rim_ocsp"):
            allowed = STANCES if key == "ocsp" else ("", *STANCES)
            if values[key] not in allowed:
                raise VerifierConfigError(f"[{where}] {key} must be one of {', '.join(map(repr, allowed))}, "
                                          f"got {values[key]!r}")
        for key in ("rim_dir", "ocsp_dir"):
            if values[key] and not Path(values[key]).is_dir():
                raise VerifierConfigError(f"[{where}] {key}: {values[key]} is not a directory")
        roots = load_trust_roots(values["trust_roots"], where) or None
        rim_roots = load_trust_roots(values["rim_roots"], where) or None
        cache_dir = Path(values["cache_dir"] or context.state_dir / "nvidia")
        service = (rim_store.RimServiceClient(values["rim_url"], cache_dir=cache_dir, offline=values["offline"],
                                              trust_roots=rim_roots) if values["rim_url"] else None)
        rim_dir = Path(values["rim_dir"]) if values["rim_dir"] else None
        rims = (rim_store.RimStore(directory=rim_dir, service=service, trust_roots=rim_roots)
                if rim_dir is not None or service is not None else None)
        client = ocsp_service.OcspClient(values["ocsp_url"], cache_dir=cache_dir, offline=values["offline"])
        ocsp = OcspChecker(client, Path(values["ocsp_dir"]) if values["ocsp_dir"] else None)
        return cls(rims=rims, ocsp=ocsp, ocsp_stance=values["ocsp"], rim_ocsp_stance=values["rim_ocsp"] or None,
                   trust_roots=roots, key_tables=values["key_tables"], rim_roots=rim_roots)

    @classmethod
    def offline_appraisal(cls, claims: Mapping[str, Any]) -> Appraisal | None:
        """One GPU's claims as `kbs verify nvgpu --json` printed them."""
        if "measres" in claims and "x-nvidia-gpu-attestation-report-cert-chain" in claims:
            return nvgpu_appraisal(claims)
        return None

    @classmethod
    def verify_command(cls) -> NvgpuVerifyCommand:
        return NvgpuVerifyCommand()

    async def _ocsp(self, chain: Sequence[Certificate], at: datetime, indices: Sequence[int], stance: Stance,
                    what: str) -> tuple[OcspStatus, ...]:
        key = (stance, tuple(indices), tuple(cert.der for cert in chain))
        remembered = self._ocsp_memo.get(key)
        if remembered is not None and all(s.this_update is None or s.this_update <= at < cast(datetime, s.next_update)
                                          for s in remembered if s.status == "good"):
            return cast(tuple[OcspStatus, ...], remembered)
        statuses = await self.ocsp.check(chain, at, indices=indices, stance=stance, what=what)
        if all(s.status == "good" and s.next_update is not None for s in statuses) or stance == "off":
            self._ocsp_memo.put(key, statuses, OCSP_TTL)
        return statuses

    async def _rim(self, rims: rim_store.RimStore, rim_id: str, at: datetime, kind: str) -> RimOutcome:
        rim = self._rim_memo.get(rim_id)
        if rim is None or not rim.valid_at(at):
            rim = await rims.get(rim_id, at)
            self._rim_memo.put(rim_id, rim, RIM_TTL)
        statuses = await self._ocsp(rim.chain, at, RIM_OCSP_INDICES, self.rim_ocsp_stance,
                                    f"{kind} RIM {rim_id} signing chain")
        return RimOutcome(rim_id, rim, statuses)

    async def appraise_gpu(self, p: _Prepared, at: datetime) -> dict[str, Any]:
        """OCSP, RIMs and the golden comparison of a prepared GPU -> its claims."""
        with gpu_context(p.gpu):
            device_ocsp = await self._ocsp(p.chain.certificates, at, DEVICE_OCSP_INDICES, self.ocsp_stance,
                                           "device chain")
            driver = vbios = None
            golden = None
            if self.rims is not None:
                driver_id, vbios_id = rim_ids(p)
                driver = await self._rim(self.rims, driver_id, at, "driver")
                vbios = await self._rim(self.rims, vbios_id, at, "VBIOS")
        if driver is not None and vbios is not None:
            golden = judge_golden(p, driver.rim, vbios.rim)
        return gpu_claims(p.gpu.arch, p.gpu.uuid, p.report, p.chain, fwid_match=p.fwid_match,
                          device_ocsp=device_ocsp, driver=driver, vbios=vbios, golden=golden)

    async def verify(self, evidence: Any, binding: Binding, at: datetime, offload: Offload) -> list[Appraisal]:
        prepared = await offload(prepare_all, evidence, device_nonce(binding.report_data), at, self.trust_roots,
                                 self.key_tables)
        return [nvgpu_appraisal(await self.appraise_gpu(p, at)) for p in prepared]

    def describe_trust_roots(self) -> list[dict[str, str]]:
        return (describe_roots([DEVICE_PIN], self.trust_roots, "evidence")
                + describe_roots([CORIM_ROOT_PIN], self.rim_roots, "reference values (RIMs)"))

    async def close(self) -> None:
        if self.rims is not None:
            await self.rims.close()
        if self.ocsp.client is not None:
            await self.ocsp.client.close()


def nvgpu_appraisal(claims: Mapping[str, Any]) -> Appraisal:
    return Appraisal(tee=NvgpuVerifier.name, device_class=GPU, claims=claims, vector=nvgpu_trust_vector(claims),
                     evidence_key=EVIDENCE_KEY)
