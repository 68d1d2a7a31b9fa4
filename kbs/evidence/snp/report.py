"""SEV-SNP report: bytes -> decoded, typed fields (no cryptography here).

The C core checks the format and decodes the integers; this module gives the bit
fields their names (reference/snp.md §2) and decodes TCB versions per product
family, because Turin's layout (with FMC) differs from Milan's and Genoa's.
"""

from __future__ import annotations

from dataclasses import dataclass

from kbs import native
from kbs.native import RawSnpReport


def _bit(value: int, n: int) -> bool:
    return bool(value >> n & 1)


@dataclass(frozen=True)
class GuestPolicy:
    """Guest policy (u64 at 0x008): what the guest owner allowed at launch."""

    raw: int
    abi_minor: int
    abi_major: int
    smt_allowed: bool
    migrate_ma_allowed: bool
    debug_allowed: bool
    single_socket_required: bool
    cxl_allowed: bool
    mem_aes_256_xts_required: bool
    rapl_disable_required: bool
    ciphertext_hiding_required: bool
    page_swap_disabled: bool

    @classmethod
    def decode(cls, v: int) -> GuestPolicy:
        return cls(raw=v, abi_minor=v & 0xFF, abi_major=v >> 8 & 0xFF, smt_allowed=_bit(v, 16),
                   migrate_ma_allowed=_bit(v, 18), debug_allowed=_bit(v, 19),
                   single_socket_required=_bit(v, 20), cxl_allowed=_bit(v, 21),
                   mem_aes_256_xts_required=_bit(v, 22), rapl_disable_required=_bit(v, 23),
                   ciphertext_hiding_required=_bit(v, 24), page_swap_disabled=_bit(v, 25))


@dataclass(frozen=True)
class PlatformInfo:
    """Platform info (u64 at 0x040).

    Bit 6 is reserved in the public ABI sources but set on real Turin hardware
    (reference/snp.md §8), so unknown bits are not rejected: they are reported in
    `reserved_bits` for policies to judge.
    """

    raw: int
    smt_enabled: bool
    tsme_enabled: bool
    ecc_enabled: bool
    rapl_disabled: bool
    ciphertext_hiding_enabled: bool
    alias_check_complete: bool
    tio_enabled: bool
    reserved_bits: int

    @classmethod
    def decode(cls, v: int) -> PlatformInfo:
        known = 0b1011_1111
        return cls(raw=v, smt_enabled=_bit(v, 0), tsme_enabled=_bit(v, 1), ecc_enabled=_bit(v, 2),
                   rapl_disabled=_bit(v, 3), ciphertext_hiding_enabled=_bit(v, 4),
                   alias_check_complete=_bit(v, 5), tio_enabled=_bit(v, 7), reserved_bits=v & ~known)


SIGNING_KEYS = {0: "VCEK", 1: "VLEK", 7: "NONE"}


@dataclass(frozen=True)
class SignerInfo:
    """Signer info (u32 at 0x048)."""

    raw: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: str  # VCEK, VLEK or NONE (the C core rejects the reserved values)

    @classmethod
    def decode(cls, v: int) -> SignerInfo:
        return cls(raw=v, author_key_en=_bit(v, 0), mask_chip_key=_bit(v, 1),
                   signing_key=SIGNING_KEYS[v >> 2 & 7])


@dataclass(frozen=True)
class TcbVersion:
    """One TCB_VERSION, decoded with the byte layout of its product family."""

    raw: int
    bl: int
    tee: int
    snp: int
    ucode: int
    fmc: int | None  # Turin and later only

    @classmethod
    def decode(cls, raw: int, family: str) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if family == "Turin":
            return cls(raw=raw, fmc=b[0], bl=b[1], tee=b[2], snp=b[3], ucode=b[7])
        return cls(raw=raw, fmc=None, bl=b[0], tee=b[1], snp=b[6], ucode=b[7])

    def parts(self) -> dict[str, int]:
        parts = {"bl": self.bl, "tee": self.tee, "snp": self.snp, "ucode": self.ucode}
        if self.fmc is not None:
            parts["fmc"] = self.fmc
        return parts


def family_from_cpuid(family: int, model: int) -> str | None:
    """Product family from the report's CPUID bytes (v3+); None when unknown."""
    if family == 0x19 and model <= 0x0F:
        return "Milan"
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return "Genoa"  # 0xA0-0xAF is Siena/Bergamo, served by KDS as Genoa
    if family == 0x1A and model <= 0x11:
        return "Turin"
    if family == 0x1A and (0x50 <= model <= 0x57 or 0x90 <= model <= 0xAF or 0xC0 <= model <= 0xC7):
        return "Venice"
    return None


@dataclass(frozen=True)
class SnpReport:
    """A format-checked SNP report with its fields decoded."""

    data: bytes
    raw: RawSnpReport
    policy: GuestPolicy
    platform: PlatformInfo
    signer: SignerInfo

    @property
    def version(self) -> int:
        return self.raw.version

    @property
    def cpuid_family(self) -> str | None:
        """The product family the report's CPUID names (v3+), else None."""
        if self.raw.version < 3:
            return None
        return family_from_cpuid(self.raw.cpuid_fam_id, self.raw.cpuid_mod_id)

    @property
    def chip_id_zero(self) -> bool:
        return not any(self.raw.chip_id)

    def tcbs(self, family: str) -> dict[str, TcbVersion]:
        r = self.raw
        return {name: TcbVersion.decode(value, family) for name, value in (
            ("current", r.current_tcb), ("reported", r.reported_tcb),
            ("committed", r.committed_tcb), ("launch", r.launch_tcb))}


def parse_report(data: bytes) -> SnpReport:
    """Bytes -> SnpReport, or MalformedEvidence naming the field that is wrong."""
    raw = native.snp_parse(data)
    return SnpReport(data=bytes(data), raw=raw, policy=GuestPolicy.decode(raw.policy),
                     platform=PlatformInfo.decode(raw.platform_info),
                     signer=SignerInfo.decode(raw.signer_info))
